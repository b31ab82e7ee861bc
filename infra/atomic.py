"""Atomic artifacts: write to a temporary name, fsync, rename. A reader never sees a torn file.

A crash mid-write leaves only a ``.tmp-*`` file behind, never a half-written target; the
previous version of the target (if any) stays intact until the rename. A temp name carries its
writer (host and process id), so a later write into the same directory removes what writers of
this host that no longer exist left behind (a SIGKILL gives them no chance to clean up): the
first write there of each process, and then at most once a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterator


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the directory entry is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    # Without "." and "-": a temp name is parsed back at those (see _sweep).
    return socket.gethostname().replace(".", "_").replace("-", "_")


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _temp_prefix(target: Path) -> str:
    """``.tmp-<name>.<host>-<pid>.``: a temp name says whose it is."""
    return f".tmp-{target.name}.{_owner()}."


# When each directory was last swept by this process: a directory of many shards is listed at
# most once a minute, not once per file written into it.
_SWEPT: dict[str, float] = {}
_SWEEP_EVERY_S = 60.0


def _sweep(target: Path) -> None:
    """Remove the temp files and directories in ``target``'s directory left by dead writers of
    this host (``.tmp-<name>.<host>-<pid>.<random>``; a pid of this host that no longer exists)."""
    key = str(target.parent)
    now = time.monotonic()
    if now - _SWEPT.get(key, -_SWEEP_EVERY_S) < _SWEEP_EVERY_S:
        return
    _SWEPT[key] = now
    host = _host()
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(".tmp-")]
    except OSError:
        return
    for entry in entries:
        parts = entry.name.rsplit(".", 2)  # .tmp-<name> . <host>-<pid> . <random>
        if len(parts) != 3:
            continue
        who, _, pid = parts[1].rpartition("-")
        if who != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive: a writer at work
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for writing through a temp file that replaces it only on success."""
    if "r" in mode or "a" in mode:
        raise ValueError(f"atomic_open is for writing; got mode {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False``
    where that is not available, nothing then having changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temp name; it appears at ``path`` whole, or not at all.

    Used for checkpoints: a directory that exists under its final name is complete. An existing
    directory at ``path`` is replaced only after the new one is fully written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists() and _exchange(tmp, target):
            # One atomic swap: the new directory is at ``path`` and the old one at the temp
            # name (a kill before it is removed leaves it for the next write's sweep).
            shutil.rmtree(tmp, ignore_errors=True)
        elif target.exists():
            # Without an atomic exchange (not Linux, or a file system without it): two renames,
            # with a moment between them when nothing is at ``path`` (the old one is aside).
            old = target.parent / f".old-{target.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, naming the file in the error if it is not valid JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc
