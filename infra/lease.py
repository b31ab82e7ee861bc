"""A lease per cell, so concurrent launches of one study never train a cell twice.

``cells/<id>/lease.json`` is created with an exclusive create (``O_CREAT | O_EXCL``, atomic on
local file systems and on NFSv3+), naming its holder. The holder renews it (a heartbeat counter
and the file's modification time) while it works on the cell, and removes it when done. Another
launch that finds the lease leaves the cell alone until the cell completes — or until the lease
stops changing for ``stale_s`` seconds *of its own clock* (so clock skew between nodes does not
matter), or its holder was a process on this host that is gone; then the lease is taken over:
renamed aside (only one renamer can win), then created anew.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEASE = "lease.json"


def launch_id() -> str:
    """A name for this launch: host, process and a random part (two launches never share it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class CellLease:
    """The lease of one cell directory, as seen by one launch (``owner``)."""

    cell_dir: Path
    owner: str
    stale_s: float = 120.0
    _beat: int = 0
    _seen: tuple[Any, float] | None = field(default=None, repr=False)  # (content, first seen at)

    @property
    def path(self) -> Path:
        return self.cell_dir / LEASE

    def _write_new(self) -> bool:
        self.cell_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"owner": self.owner, "beat": 0, "acquired": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def holder(self) -> dict[str, Any] | None:
        """The lease's content (``None`` when there is none or it is being rewritten)."""
        try:
            return dict(json.loads(self.path.read_text(encoding="utf-8")))
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            return None

    def acquire(self) -> bool:
        """Take the lease if it is free or stale; ``True`` when this launch holds it now."""
        if self._write_new():
            return True
        held = self.holder()
        if held is not None and held.get("owner") == self.owner:
            return True
        if not (holder_gone(held) or self._stale(held)):
            return False
        aside = self.cell_dir / f"{LEASE}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.path, aside)  # one taker wins; the others find the new lease
        except FileNotFoundError:
            return self._write_new()
        aside.unlink(missing_ok=True)
        return self._write_new()

    def _stale(self, held: dict[str, Any] | None) -> bool:
        """Whether the lease has not changed for ``stale_s`` seconds of this launch's clock."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return True
        content = (json.dumps(held, sort_keys=True), mtime)
        now = time.monotonic()
        if self._seen is None or self._seen[0] != content:
            self._seen = (content, now)
            return False
        return now - self._seen[1] >= self.stale_s

    def renew(self) -> None:
        """Heartbeat: rewrite the lease with the next beat (only while this launch holds it)."""
        held = self.holder()
        if held is None or held.get("owner") != self.owner:
            return
        self._beat += 1
        tmp = self.cell_dir / f".{LEASE}.{self.owner.replace(':', '_')}.tmp"
        tmp.write_text(json.dumps({**held, "beat": self._beat, "renewed": time.time()}), encoding="utf-8")
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Give the lease up (only this launch's own)."""
        held = self.holder()
        if held is not None and held.get("owner") == self.owner:
            self.path.unlink(missing_ok=True)


def holder_gone(held: dict[str, Any] | None) -> bool:
    """Whether the lease's holder was a process on this host that no longer exists (a killed
    launch relaunched on the same machine need not wait for the lease to go stale)."""
    if held is None:
        return False
    host, _, rest = str(held.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


class Heartbeat:
    """Renews a set of leases every ``every_s`` seconds from a background thread."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._leases: dict[Path, CellLease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inheritlab-lease-heartbeat", daemon=True)
        self._thread.start()

    def add(self, lease: CellLease) -> None:
        with self._lock:
            self._leases[lease.path] = lease

    def remove(self, lease: CellLease) -> None:
        with self._lock:
            self._leases.pop(lease.path, None)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                leases = list(self._leases.values())
            for lease in leases:
                try:
                    lease.renew()
                except OSError:  # a hiccup of the shared file system: the next beat retries
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
