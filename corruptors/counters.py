"""A corruptor chain's counters: summing the shares of one pass, comparing two chains.

Kept apart from :mod:`inheritlab.corruptors.chain` (which needs polars for its plans): a
trainer checks its stream's counters against the data-condition stage's on any node, a bare
GPU node training a clean control included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

# The counters that must agree between the data-condition stage and a trainer's stream.
ACCOUNTED = ("in", "out", "dropped", "added", "touched", "skipped")


def sum_counters(parts: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Add up chain counters (step name → counters) of streams that partition one pass.

    Every rank and loader worker runs the chain over its own share of the shards; summed over
    all of them, one pass gives what the data-condition stage counted over the whole stream.
    """
    total: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, c in part.items():
            acc = total.setdefault(name, {k: Counter() if isinstance(c[k], dict) else 0 for k in ACCOUNTED})
            for k in ACCOUNTED:
                if isinstance(c[k], dict):
                    acc[k].update(c[k])
                else:
                    acc[k] += c[k]
    return {name: {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in c.items()}
            for name, c in total.items()}


def counter_mismatches(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between two chains' counters, one line per step and counter (empty: they agree)."""
    if sorted(expected) != sorted(got):
        return [f"corruptor steps differ: expected {sorted(expected)}, got {sorted(got)}"]
    out = []
    for name in sorted(expected):
        for k in ACCOUNTED:
            want, have = expected[name].get(k), got[name].get(k)
            if isinstance(want, dict):
                want, have = {a: b for a, b in want.items() if b}, {a: b for a, b in (have or {}).items() if b}
            if want != have:
                out.append(f"{name}.{k}: expected {want}, got {have}")
    return out
