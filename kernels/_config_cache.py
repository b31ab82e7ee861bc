"""On-disk store of tuned launch configs, shared by processes (and nodes) that see one directory.

One small JSON file per key: ``<dir>/<kernel>-<blake2b of the canonical key>.json`` holding
``{"format", "key", "config", ...the tuning record}``. The key is stored in full and compared on
read, so a hash collision or a foreign file is a miss, not a wrong config.

* Directory: ``$INHERITLAB_KERNEL_CACHE_DIR`` when set (the trainers point it at the run
  directory's shared storage), else ``~/.cache/inheritlab/kernels``.
* ``INHERITLAB_KERNEL_CACHE=0`` (also ``false``/``no``/``off``) turns the disk level off.
* Writes are atomic (temp file in the same directory, flush, fsync, ``os.replace``): several
  processes may tune one key at once, the last writer wins and a reader never sees a torn file.
* The cache is only a shortcut: an unreadable, corrupt or foreign file is a miss (the caller
  re-tunes and overwrites it), and a failed write is a warning, never an error.

``kernels/`` imports torch/triton only, so the few lines of atomic writing live here rather than
in ``inheritlab.infra``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

__all__ = ["ENV_DIR", "ENV_SWITCH", "FORMAT", "cache_dir", "canonical", "enabled", "entry_path", "load", "store"]

ENV_DIR = "INHERITLAB_KERNEL_CACHE_DIR"
ENV_SWITCH = "INHERITLAB_KERNEL_CACHE"
FORMAT = 1  # layout of the file itself (not of the kernels: that is KERNEL_CONFIG_VERSION in _tuning)
_MAX_BYTES = 1 << 20  # an entry is a few KB; anything bigger is not ours
_OFF = ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether tuned configs are read from and written to disk (``INHERITLAB_KERNEL_CACHE``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF


def cache_dir() -> Path:
    """``$INHERITLAB_KERNEL_CACHE_DIR``, else ``~/.cache/inheritlab/kernels`` (read on every call)."""
    env = os.environ.get(ENV_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "inheritlab" / "kernels"


def canonical(key: dict[str, Any]) -> str:
    """The key as canonical JSON (sorted keys, no whitespace): what is hashed and compared."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_path(key: dict[str, Any], directory: Path | None = None) -> Path:
    """The file of ``key``: a readable kernel prefix and a stable 128-bit hash of the key."""
    digest = hashlib.blake2b(canonical(key).encode("ascii"), digest_size=16).hexdigest()
    kernel = key.get("kernel")
    prefix = re.sub(r"[^A-Za-z0-9_.]+", "_", kernel)[:40] if isinstance(kernel, str) and kernel else "kernel"
    return (directory if directory is not None else cache_dir()) / f"{prefix}-{digest}.json"


def _is_config(cfg: Any) -> bool:
    return (isinstance(cfg, dict) and bool(cfg)
            and all(isinstance(k, str) and type(v) is int for k, v in cfg.items()))


def load(key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored record of ``key``, or None: missing, unreadable, corrupt, foreign or stale."""
    path = entry_path(key)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            return None
        rec = json.loads(raw.decode("utf-8"))
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            return None
        if canonical(rec.get("key")) != canonical(key):  # collision or a file that is not this key's
            return None
    except Exception:  # a cache must never fail the step: OSError, bad UTF-8/JSON, odd types, ...
        return None
    if not _is_config(rec.get("config")):
        return None
    rec["path"] = str(path)
    return rec


def store(key: dict[str, Any], record: dict[str, Any]) -> Path | None:
    """Write ``record`` (which must hold ``config``) as the entry of ``key``, atomically.

    Returns the path written, or None (with a warning) when the directory cannot be written.
    """
    path = entry_path(key)
    body = {**record, "format": FORMAT, "key": key}
    try:
        data = json.dumps(body, sort_keys=True, indent=1, allow_nan=False).encode("utf-8") + b"\n"
        _atomic_write(path, data)
    except Exception as exc:  # read-only or full disk, a directory in the way, ...: just don't cache
        warnings.warn(f"inheritlab.kernels: could not save the tuned launch config to {path}: {exc!r} "
                      f"(it will be re-tuned in the next process; set {ENV_DIR} or {ENV_SWITCH}=0)",
                      RuntimeWarning, stacklevel=3)
        return None
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same directory, flush, fsync, ``os.replace``, then fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # mkstemp makes it 0600; other users may share the dir
                os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (not possible on every filesystem)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
