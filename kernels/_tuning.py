"""Launch-config choice for the kernels: measure a few candidates once per shape, keep the best.

Triton's own autotuner re-runs a kernel into the same output buffers while it measures, which is
wrong for kernels that write per-program partial sums laid out by block size. Our launchers are
pure (inputs in, fresh outputs back), so choosing a config is just calling the launcher with each
candidate and timing it. Under ``TRITON_INTERPRET=1`` the first candidate is used untimed, and
so it is with ``INHERITLAB_KERNEL_TUNING=0`` (quick GPU test runs: one compile per kernel).
"""

from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["interpreting", "pick_config"]

_CHOSEN: dict[tuple[Any, ...], dict[str, int]] = {}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (CI correctness runs)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pick_config(
    key: tuple[Any, ...],
    candidates: list[dict[str, int]],
    launch: Callable[[dict[str, int]], object],
) -> dict[str, int]:
    """The fastest of ``candidates`` for ``key``, measured once with ``launch(cfg)`` and cached."""
    if interpreting() or len(candidates) == 1 or os.environ.get("INHERITLAB_KERNEL_TUNING", "1") == "0":
        return candidates[0]
    hit = _CHOSEN.get(key)
    if hit is not None:
        return hit
    from triton.testing import do_bench

    best, best_ms, errors = None, float("inf"), []
    for cfg in candidates:
        try:
            ms = do_bench(lambda: launch(cfg), warmup=5, rep=25, return_mode="median")
        except Exception as exc:  # a config can exceed shared memory or registers on this GPU
            errors.append(f"{cfg}: {exc!r}"[:200])
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise RuntimeError(f"no launch config ran for {key}: " + "; ".join(errors))
    _CHOSEN[key] = best
    return best


def chosen_configs() -> dict[tuple[Any, ...], dict[str, int]]:
    """The configs picked so far (benchmarks record them next to the timings)."""
    return dict(_CHOSEN)
