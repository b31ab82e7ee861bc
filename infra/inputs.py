"""The input shards a cell's data condition was planned on, fingerprinted, and checked again
before training reads them.

The condition stage's manifest names samples by key and position in the shards it read; a shard
rewritten underneath a study (re-downloaded, re-encoded, truncated by a failed copy) would make
training read other bytes under the same names, silently. So the condition stage records each
local shard's size and SHA-256 (``cells/<id>/data/inputs.json``), and the pre-train stage checks
them first: a shard that changed is an error naming it.

A shard is fingerprinted by its size and the SHA-256 of its first and last MiB (the whole of a
shard up to 2 MiB): at most 2 MiB read per shard, twice per cell. Hashing every byte would
re-read the whole training set before every cell, which costs more than training a small cell;
a rewrite, re-encode or truncation almost always moves the size or one of the ends. Remote
shards (``s3://``…) are recorded as not checked.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.errors import InheritlabError

_EDGE = 1 << 20
FULL_HASH_BYTES = 2 * _EDGE   # up to here the two ends are the whole file


class InputChangedError(InheritlabError):
    """An input shard differs from the one the cell's data condition was planned on."""


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size", "sha256", "how"}`` of a local file (``how``: ``full`` or ``edges``)."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: fh.read(_EDGE), b""):
                h.update(chunk)
            how = "full"
        else:
            h.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
            how = "edges"
    return {"size": size, "sha256": h.hexdigest(), "how": how}


def _local(shard: str) -> bool:
    return "://" not in shard or shard.startswith("file://")


def _path(shard: str) -> str:
    return shard[len("file://"):] if shard.startswith("file://") else shard


def record_inputs(shards: Iterable[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Fingerprint every local shard into ``out`` (atomically); returns the record."""
    files: dict[str, Any] = {}
    for shard in shards:
        files[str(shard)] = fingerprint(_path(str(shard))) if _local(str(shard)) else {"how": "not checked (remote)"}
    record = {"recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
    atomic_write_json(out, record)
    return record


def check_inputs(shards: Iterable[str], record_path: str | os.PathLike[str]) -> int:
    """Check the shards against the record the condition stage wrote; returns how many were
    checked. No record (a run directory from before records existed): one is written now."""
    shards = [str(s) for s in shards]
    path = Path(record_path)
    if not path.is_file():
        record_inputs(shards, path)
        return 0
    record = read_json(path)
    files, when = record.get("files", {}), record.get("recorded", "?")
    checked = 0
    for shard in shards:
        want = files.get(shard)
        if want is None:
            raise InputChangedError(f"input shard {shard} was not among the shards the cell's data condition was "
                                    f"planned on ({path}); the study's data paths changed since: start the cell "
                                    f"over by deleting {path.parent}")
        if "sha256" not in want:
            continue
        local = _path(shard)
        if not Path(local).is_file():
            raise InputChangedError(f"input shard {shard} is gone since the cell's data were conditioned ({when})")
        got = fingerprint(local)
        if got["size"] != want["size"] or got["sha256"] != want["sha256"]:
            what = (f"size {want['size']} → {got['size']} bytes" if got["size"] != want["size"]
                    else f"SHA-256 ({want['how']}) {want['sha256'][:12]}… → {got['sha256'][:12]}…")
            raise InputChangedError(
                f"input shard {shard} changed since the cell's data were conditioned ({when}): {what}. The "
                f"condition's manifest no longer describes it: restore the shard, or start the cell over "
                f"by deleting {path.parent}")
        checked += 1
    return checked
