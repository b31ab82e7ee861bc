"""Processes the tests start and end: a free local port, the command line as a session of its
own, and the end of such a session however it went. Imported by tests in every folder (the
folder of ``conftest.py`` is on ``sys.path``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_cli(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``inheritlab ARGS`` in a session of its own (a signal to its group reaches the flow, Ray
    and the trainers, not the test), its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "inheritlab.flows.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """End a process started in a session of its own, its process group, and any descendant
    that left the group: SIGTERM, then SIGKILL."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
