"""Ctrl-C and SIGTERM during ``inheritlab run``: the first stops the study gracefully, the
second exits at once.

The first signal admits no more cells and asks each running cell to stop: its trainer commits a
checkpoint after the step it is on and stops (``stop.request`` in the cell directory,
:class:`inheritlab.trainers.loop.CellControl`); a cell between stages stops before the next one.
The flow then marks the stopped cells and the study Cancelled in the dashboard, and the command
says where each cell stopped and exits non-zero; a rerun resumes. A second signal exits at once
(a rerun still resumes, from the last checkpoint each cell committed on its own schedule).

Ctrl-C in a terminal signals the whole foreground process group. Ray's processes block SIGINT
themselves; Prefect's temporary server does not, and would shut down under the flow it has yet
to record the cancellation in. :func:`start_prefect_server` therefore starts that server early,
with SIGINT blocked, which its process keeps.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from inheritlab.flows import progress

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_previous: dict[int, Any] = {}
_received = 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Take over SIGINT and SIGTERM for this launch (main thread only; elsewhere a no-op)."""
    global _received
    if not _main_thread():
        return
    _received = 0
    for sig in _SIGNALS:
        before = signal.signal(sig, _handle)
        _previous.setdefault(sig, before)


def reinstall() -> None:
    """Take them back after a library replaced them (``ray.init`` sets its own SIGTERM handler,
    which exits the interpreter mid-flow); only where :func:`install` was called."""
    if _previous and _main_thread():
        for sig in _SIGNALS:
            if signal.getsignal(sig) is not _handle:
                signal.signal(sig, _handle)


def uninstall() -> None:
    """Put the handlers found by :func:`install` back (in-process callers, tests)."""
    if not _main_thread():
        return
    for sig, before in list(_previous.items()):
        signal.signal(sig, before if before is not None else signal.SIG_DFL)
    _previous.clear()


def received() -> int:
    """How many stop signals this launch got."""
    return _received


def _handle(signum: int, frame: Any) -> None:
    global _received
    _received += 1
    name = signal.Signals(signum).name
    if _received == 1:
        progress.request_stop()
        asked = progress.ask_running_cells_to_stop()
        progress.LOGGER.warning(
            "%s: stopping — no new cells start; %s commit a checkpoint and stop. %s again exits at once.",
            name, f"the {asked} running cell(s)" if asked else "running cells", "Ctrl-C" if signum == signal.SIGINT else name)
        return
    progress.LOGGER.error("%s again: exiting now; a rerun resumes each cell from its last committed checkpoint", name)
    _exit_now(128 + signum)


def _exit_now(code: int) -> None:
    """Leave without unwinding the flow (which would wait for its cells): flush the logs, give
    the local Ray a few seconds to stop its processes, and exit."""
    for handler in logging.getLogger().handlers + progress.LOGGER.handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    try:
        import sys

        if "ray" in sys.modules:
            import ray

            t = threading.Thread(target=ray.shutdown, daemon=True)
            t.start()
            t.join(timeout=5)
    finally:
        os._exit(code)


def start_prefect_server() -> None:
    """Start Prefect's temporary server now, with SIGINT blocked so that its process ignores the
    terminal's Ctrl-C (a blocked signal stays pending; it is stopped with SIGTERM at exit). Only
    when no server is configured (``PREFECT_API_URL``) and on the main thread."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    # The same condition under which Prefect's client would start it on first use.
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value() or not _main_thread():
        return
    from prefect.server.api.server import SubprocessASGIServer

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        SubprocessASGIServer().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
