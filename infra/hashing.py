"""Stable hashing: the root of every random decision in a study.

Python's ``hash()`` is salted per process, so it must never decide anything. Everything here is
blake2b over a canonical byte encoding, identical across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any, Callable

import numpy as np

_MASK53 = (1 << 53) - 1


def _encode(part: Any) -> bytes:
    """Unambiguous bytes for one hash part (type-tagged, length-prefixed)."""
    if isinstance(part, bytes):
        tag, raw = b"b", part
    elif isinstance(part, str):
        tag, raw = b"s", part.encode("utf-8")
    elif isinstance(part, bool):
        tag, raw = b"?", b"1" if part else b"0"
    elif isinstance(part, int):
        tag, raw = b"i", str(part).encode()
    elif isinstance(part, float):
        tag, raw = b"f", repr(part).encode()
    else:
        tag, raw = b"j", canonical_json(part).encode()
    return tag + struct.pack("<I", len(raw)) + raw


def stable_digest(*parts: Any, size: int = 16) -> bytes:
    """blake2b digest of ``parts``; equal inputs give equal digests everywhere."""
    h = hashlib.blake2b(digest_size=size)
    for p in parts:
        h.update(_encode(p))
    return h.digest()


def stable_hex(*parts: Any, size: int = 8) -> str:
    """Hex form of :func:`stable_digest` (``size`` bytes → ``2*size`` characters)."""
    return stable_digest(*parts, size=size).hex()


def stable_int(*parts: Any) -> int:
    """A 64-bit unsigned integer derived from ``parts`` (e.g. a seed for a generator)."""
    return int.from_bytes(stable_digest(*parts, size=8), "little")


def stable_uniform_fn(*prefix: Any) -> Callable[..., float]:
    """``f(*rest)``: a uniform float in [0, 1) derived from ``(*prefix, *rest)`` with 53 bits of
    resolution — ``(stable_int(*prefix, *rest) mod 2^53) / 2^53``.

    This is ``u = H(seed, corruptor, key)`` of DESIGN.md: a sample is corrupted iff ``u < level``,
    so the set corrupted at level 0.1 is inside the set corrupted at 0.2.

    The prefix is hashed once; each call copies the hash state and adds only ``rest`` (a
    stream decides millions of samples under the same (seed, corruptor) prefix).
    """
    base = hashlib.blake2b(digest_size=8)
    for p in prefix:
        base.update(_encode(p))
    scale = float(1 << 53)

    def uniform(*rest: Any) -> float:
        h = base.copy()
        for p in rest:
            if type(p) is str:  # the common case (a sample key), inlined from _encode
                raw = p.encode("utf-8")
                h.update(b"s" + len(raw).to_bytes(4, "little") + raw)
            else:
                h.update(_encode(p))
        return (int.from_bytes(h.digest(), "little") & _MASK53) / scale

    return uniform


def stable_rng(*parts: Any) -> np.random.Generator:
    """A numpy Generator seeded from ``parts``: for per-sample choices beyond one coin flip."""
    return np.random.default_rng(stable_int(*parts))


def _canonical(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            raise ValueError(f"non-finite float {obj!r} has no canonical form")
        # 1.0 and 1 must hash alike only if the config means the same; keep floats as floats
        # but normalise -0.0.
        return 0.0 if obj == 0 else obj
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form a config is hashed in."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_id(config: Any, epoch: int, *, size: int = 8) -> str:
    """The id of a config: hash of its canonical JSON and a code epoch (bumped on breaking change)."""
    return stable_hex("config", epoch, canonical_json(config), size=size)
