"""Atomic writes under SIGKILL: a writer process killed at random points never leaves a torn file.

A Python exception unwinds through ``atomic_open``'s cleanup (tests/unit/test_infra.py); SIGKILL
does not: nothing of the writer runs after it. So a child process rewrites one target in a loop
through ``infra/atomic.py`` and is killed at a random moment, twenty times over. After each kill
the target must hold a whole version — the last one the child reported done, or the one it was
writing when it died — and a reader polling while the writer runs must never see anything else.

What a kill leaves beside the target is pinned down too: only ``.tmp-<name>.*`` temp files
(``.old-<name>`` for a directory), names no reader looks at, and the next write of the target
removes those of dead writers. A directory is replaced by one atomic exchange (the test at the
end kills the writer right after it).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

ROUNDS = 20
# Big enough that a write takes a few milliseconds, so kills land inside it as well as between.
PAYLOAD_BYTES = 2 << 20

# Shared by the writer child and the checks here: version i of the content, self-describing.
VERSION_SRC = """
import random as _random
_PAYLOAD = _random.Random(0).randbytes(PAYLOAD_BYTES)

def version(i):
    head = b"v%09d\\n" % i
    return head + _PAYLOAD + head
"""

WRITER = """
import os, sys
from pathlib import Path
from inheritlab.infra.atomic import atomic_dir, atomic_write_bytes
PAYLOAD_BYTES = int(sys.argv[3])
exec(sys.argv[4])
target, mode, i = Path(sys.argv[1]), sys.argv[2], int(sys.argv[5])
print("ready", flush=True)
while True:
    if mode == "file":
        atomic_write_bytes(target, version(i))
    else:
        with atomic_dir(target) as d:
            (d / "a.bin").write_bytes(version(i))
            (d / "b.bin").write_bytes(version(i)[::-1])
    print(i, flush=True)
    i += 1
"""

_ns: dict = {"PAYLOAD_BYTES": PAYLOAD_BYTES}
exec(VERSION_SRC, _ns)
version = _ns["version"]


def _index_of(data: bytes) -> int | None:
    """The version ``data`` is, if it is one whole; ``None`` for anything torn."""
    if len(data) < 11 or not data.startswith(b"v"):
        return None
    try:
        i = int(data[1:10])
    except ValueError:
        return None
    return i if data == version(i) else None


def _read_version(target: Path, mode: str) -> int | None:
    """The whole version at ``target`` (``None`` if there is none); AssertionError if torn.
    Directories are read only while no writer runs (a reader of a directory being swapped
    could mix two versions by itself)."""
    if mode == "file":
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            return None
        i = _index_of(data)
        assert i is not None, f"torn file: {len(data)} bytes, starts {data[:12]!r}"
        return i
    if not target.exists():
        return None
    names = sorted(p.name for p in target.iterdir())
    assert names == ["a.bin", "b.bin"], f"torn directory: {names}"
    i = _index_of((target / "a.bin").read_bytes())
    assert i is not None and (target / "b.bin").read_bytes() == version(i)[::-1], "torn directory"
    return i


def _start(target: Path, mode: str, first: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode, str(PAYLOAD_BYTES), VERSION_SRC,
                             str(first)], stdout=subprocess.PIPE, text=True)


def _kill_rounds(tmp_path: Path, mode: str, seed: int) -> tuple[list[int], list[str], int]:
    """Twenty writers, each killed at a random moment. Returns the versions found after each
    kill, what was left beside the target at the end, and how many kills left no target."""
    rng = random.Random(seed)
    target = tmp_path / ("data.json" if mode == "file" else "step_7")
    current = -1
    found: list[int] = []
    missing = 0
    for _ in range(ROUNDS):
        proc = _start(target, mode, current + 1)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + rng.uniform(0.0, 0.08)
        while time.monotonic() < deadline:
            if mode == "file":
                _read_version(target, mode)  # a reader meanwhile sees only whole versions
            else:
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = [int(x) for x in proc.stdout.read().split()]
        proc.stdout.close()
        last_done = done[-1] if done else current
        got = _read_version(target, mode)
        if got is None:
            if current == -1 and not done:
                continue  # killed before its first write was whole: nothing to find yet
            assert mode == "dir", f"the target file vanished after a kill (done {done[-3:]}, before {current})"
            # Only atomic_dir's swap window leaves no directory; the old one is then .old-<name>
            # (where no atomic exchange is available). Its content must be the version it replaced.
            assert _read_version(tmp_path / f".old-{target.name}", mode) == last_done, "the old version is lost"
            missing += 1
            current = last_done
            continue
        # The last version reported done, or the next one when the kill came after its rename
        # but before its report.
        assert got in {last_done, last_done + 1}, f"found version {got}; done {done[-3:]}, before {current}"
        current = got
        found.append(got)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != target.name)
    return found, left, missing


def test_sigkilled_file_writer_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    found, left, missing = _kill_rounds(tmp_path, "file", seed=14)
    # Rounds killed before the first version was whole find nothing (more of them on a loaded
    # machine); every later round must find a whole version, and most rounds must count.
    assert missing == 0 and len(found) >= ROUNDS // 2 and found == sorted(found)
    # Only temp files, named after the target, never matching its own name or extension (no
    # glob for "*.json" or listing of ".tar" shards picks them up).
    assert all(n.startswith(".tmp-data.json.") and not n.endswith(".json") for n in left), left
    # Each write first removes the temp files of this host's dead writers: of all the rounds'
    # kills, at most the last one's temp file is left (a kill after its rename leaves none).
    assert len(left) <= 1, left


def test_sigkilled_directory_writer_never_shows_a_torn_directory(tmp_path: Path) -> None:
    found, left, missing = _kill_rounds(tmp_path, "dir", seed=15)
    assert found == sorted(found) and len(found) + missing >= ROUNDS // 2
    assert all(n.startswith((".tmp-step_7.", ".old-step_7")) for n in left), left


def _killed_mid_write(tmp_path: Path, code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_the_next_write_removes_a_killed_writers_temp_file(tmp_path: Path) -> None:
    from inheritlab.infra.atomic import atomic_write_json, read_json

    _killed_mid_write(tmp_path, """
import os, signal, sys
from pathlib import Path
from inheritlab.infra.atomic import atomic_open, atomic_write_json
target = Path(sys.argv[1]) / "counters.json"
atomic_write_json(target, {"v": 1})
with atomic_open(target, "wb") as fh:
    fh.write(b'{"v": 2, "tor')
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
""")
    target = tmp_path / "counters.json"
    assert read_json(target) == {"v": 1}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-counters.json.")]
    assert len(leftovers) == 1  # exactly the killed writer's temp file
    atomic_write_json(target, {"v": 3})  # the re-run writes the same artifact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counters.json"]


def test_a_directory_replaced_under_sigkill_is_the_old_or_the_new(tmp_path: Path) -> None:
    """atomic_dir swaps the new directory in with one atomic exchange: a kill just after it
    finds the new version whole at the final name, the old one at a temp name that the next
    write removes; at no moment is nothing there."""
    _killed_mid_write(tmp_path, """
import os, signal, sys
from pathlib import Path
from inheritlab.infra import atomic
root = Path(sys.argv[1])
with atomic.atomic_dir(root / "export") as d:
    (d / "w.bin").write_bytes(b"old")
real = atomic._exchange
def exchange(a, b):
    assert real(a, b), "no atomic exchange on this system"
    assert (b / "w.bin").read_bytes() == b"new" and (a / "w.bin").read_bytes() == b"old"
    os.kill(os.getpid(), signal.SIGKILL)  # before the old version is removed
atomic._exchange = exchange
with atomic.atomic_dir(root / "export") as d:
    (d / "w.bin").write_bytes(b"new")
""")
    from inheritlab.infra.atomic import atomic_dir

    assert (tmp_path / "export" / "w.bin").read_bytes() == b"new"
    left = [p.name for p in tmp_path.iterdir() if p.name != "export"]
    assert len(left) == 1 and left[0].startswith(".tmp-export."), left  # the old version, aside
    with atomic_dir(tmp_path / "export") as d:
        (d / "w.bin").write_bytes(b"newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (tmp_path / "export" / "w.bin").read_bytes() == b"newer"
