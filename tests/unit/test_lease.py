"""Cell leases: exclusive, renewed, taken over only when their holder is gone or silent."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from inheritlab.infra.lease import CellLease, Heartbeat, launch_id


def test_one_holder_at_a_time_and_takeover_when_silent(tmp_path: Path) -> None:
    a = CellLease(tmp_path / "cell", launch_id(), stale_s=0.5)
    b = CellLease(tmp_path / "cell", launch_id(), stale_s=0.5)
    assert a.acquire() and not b.acquire()
    beat = Heartbeat(every_s=0.1)
    beat.add(a)
    try:
        time.sleep(1.2)  # renewed all along: never stale
        assert not b.acquire()
    finally:
        beat.stop()
    assert not b.acquire()  # a went silent: b starts watching...
    time.sleep(0.6)
    assert b.acquire()  # ...and takes over once the lease has not changed for stale_s
    assert b.holder()["owner"] == b.owner
    a.release()  # not a's any more: nothing happens
    assert b.holder()["owner"] == b.owner
    b.release()
    assert not (tmp_path / "cell" / "lease.json").exists()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    import socket

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = CellLease(tmp_path / "cell", f"{socket.gethostname()}:{proc.stdout.strip()}:abcd", stale_s=3600)
    assert dead.acquire()
    assert CellLease(tmp_path / "cell", launch_id(), stale_s=3600).acquire()


def test_racing_takers_leave_one_holder(tmp_path: Path) -> None:
    leases = [CellLease(tmp_path / "cell", launch_id()) for _ in range(8)]
    won = []
    barrier = threading.Barrier(len(leases))

    def take(lease: CellLease) -> None:
        barrier.wait()
        if lease.acquire():
            won.append(lease.owner)

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and leases[0].holder()["owner"] == won[0]
