"""Each launch of a study keeps a record of its flow runs, so that the next launch can mark the
runs of a killed one Crashed in the dashboard instead of leaving them "Running" for ever.

``RUN_DIR/launches/<launch>.json`` names the launch (host, pid: :func:`inheritlab.infra.lease.launch_id`)
and the ids of the study's flow run and of each cell's sub-run. The launch's heartbeat renews it
(its modification time) while it runs; it is removed when the launch ends, however it ends, short
of being killed. A later launch that finds a record whose launch is gone — a process of this host
that no longer exists, or a record of another host not renewed for ``stale_s`` seconds — sets each
of its runs still Pending or Running to Crashed, then removes the record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_write_json
from inheritlab.infra.lease import holder_gone

LOG = logging.getLogger("inheritlab.flows.launches")
_OPEN = ("PENDING", "RUNNING", "SCHEDULED", "PAUSED", "CANCELLING")


class LaunchRecord:
    """This launch's record: its flow runs, renewed by the lease heartbeat (``renew``)."""

    def __init__(self, launches_dir: Path, owner: str) -> None:
        self.owner = owner
        self.path = Path(launches_dir) / (owner.replace(":", "_").replace("/", "_") + ".json")
        self._runs: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, flow_run_id: Any) -> None:
        """Record a flow run (``name``: the study, or a cell's label)."""
        if flow_run_id is None:
            return
        with self._lock:
            self._runs[name] = str(flow_run_id)
            atomic_write_json(self.path, {"owner": self.owner, "pid": os.getpid(), "runs": dict(self._runs),
                                          "written": time.time()})

    def renew(self) -> None:
        if self.path.exists():
            os.utime(self.path)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


_CURRENT: contextvars.ContextVar[LaunchRecord | None] = contextvars.ContextVar("inheritlab_launch", default=None)


def set_current(record: LaunchRecord) -> None:
    """This launch's record, for the flow runs started under it (:func:`note_run`)."""
    _CURRENT.set(record)


def note_run(name: str, flow_run_id: Any) -> None:
    """Add a flow run to the current launch's record (none outside a launch: nothing to do)."""
    record = _CURRENT.get()
    if record is not None:
        record.add(name, flow_run_id)


def dead_launches(launches_dir: Path, *, me: str, stale_s: float) -> list[dict[str, Any]]:
    """The records of launches that are gone (not ``me``), each with its ``path``."""
    out = []
    for path in sorted(Path(launches_dir).glob("*.json")) if Path(launches_dir).is_dir() else []:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            continue
        owner = str(rec.get("owner", ""))
        if owner == me:
            continue
        if holder_gone({"owner": owner}) or age > stale_s and not _on_this_host(owner):
            out.append({**rec, "path": str(path)})
    return out


def _on_this_host(owner: str) -> bool:
    import socket

    return owner.partition(":")[0] == socket.gethostname()


def mark_crashed(launches_dir: Path, *, me: str, stale_s: float) -> list[str]:
    """Set the still-open flow runs of every dead launch to Crashed; returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    marked: list[str] = []
    dead = dead_launches(launches_dir, me=me, stale_s=stale_s)
    if not dead:
        return marked
    with get_client(sync_client=True) as client:
        for rec in dead:
            for name, run_id in rec.get("runs", {}).items():
                try:
                    run = client.read_flow_run(run_id)
                except Exception:  # noqa: BLE001 - another server's run, or deleted: nothing to mark
                    continue
                if run.state is None or run.state.type.value not in _OPEN:
                    continue
                client.set_flow_run_state(run_id, Crashed(message=f"the launch that ran it ({rec.get('owner')}) "
                                                                  f"ended without finishing it; marked by {me}"), force=True)
                marked.append(name)
            Path(rec["path"]).unlink(missing_ok=True)
    if marked:
        LOG.info("marked %d flow run(s) of earlier killed launch(es) Crashed: %s", len(marked), ", ".join(marked))
    return marked
