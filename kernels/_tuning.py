"""Launch-config choice for the kernels: measure a few candidates once per shape, keep the best.

Triton's own autotuner re-runs a kernel into the same output buffers while it measures, which is
wrong for kernels that write per-program partial sums laid out by block size. Our launchers are
pure (inputs in, fresh outputs back), so choosing a config is just calling the launcher with each
candidate and timing it. Under ``TRITON_INTERPRET=1`` the first candidate is used untimed, and
so it is with ``INHERITLAB_KERNEL_TUNING=0`` (quick GPU test runs: one compile per kernel).

Two cache levels, so a shape is measured once per GPU type and software stack rather than once
per process (every grid cell and Ray worker is a new process):

1. this process's dict (``chosen_configs()``);
2. one JSON file per key on disk (``_config_cache``): in ``$INHERITLAB_KERNEL_CACHE_DIR`` when
   set, else ``~/.cache/inheritlab/kernels``; ``INHERITLAB_KERNEL_CACHE=0`` turns it off.

The disk key is the caller's ``key`` (kernel name, dtype, shape, flags; a ``torch.device`` in it
stands for its GPU's name and compute capability, not its index), the candidate list, and the
versions of torch, Triton and ``KERNEL_CONFIG_VERSION``: a config tuned on another GPU type or
another stack is never reused. Callers must put the dtype (and anything else the choice depends
on) in ``key``; all of ours do. Only measured choices are written: the interpreter, the untimed
``INHERITLAB_KERNEL_TUNING=0`` path and single-candidate keys neither read nor write the disk.
Each file also records when, where and with what timings its config was chosen
(``tuning_records()`` hands them to the benchmarks).
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from inheritlab.kernels import _config_cache

__all__ = ["KERNEL_CONFIG_VERSION", "interpreting", "pick_config", "chosen_configs", "tuning_records"]

# Bump whenever a kernel's body or its candidate configs change in a way that can change which
# config is fastest (or whether one runs at all): every stored tuned config, on every machine and
# shared run directory, then misses and is measured again. (The candidate list itself is in the
# disk key too, so editing it alone already invalidates that kernel's entries.)
KERNEL_CONFIG_VERSION = 1

# Timing of one candidate (triton.testing.do_bench, median): a short sweep over all candidates,
# then a longer re-run of the three fastest.
_SWEEP = dict(warmup=5, rep=25)
_RERUN = dict(warmup=5, rep=100)

_CHOSEN: dict[tuple[Any, ...], dict[str, int]] = {}
_RECORDS: dict[tuple[Any, ...], dict[str, Any]] = {}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (CI correctness runs)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _tuning_enabled() -> bool:
    return os.environ.get("INHERITLAB_KERNEL_TUNING", "1") != "0"


def pick_config(
    key: tuple[Any, ...],
    candidates: list[dict[str, int]],
    launch: Callable[[dict[str, int]], object],
) -> dict[str, int]:
    """The fastest of ``candidates`` for ``key``, measured once with ``launch(cfg)`` and cached
    in this process and on disk (see the module docstring)."""
    if interpreting() or len(candidates) == 1:
        return candidates[0]
    hit = _CHOSEN.get(key)
    if hit is not None:
        return hit
    if not _tuning_enabled():
        _CHOSEN[key] = _first_that_runs(key, candidates, launch)
        return _CHOSEN[key]
    disk_key = _disk_key(key, candidates) if _config_cache.enabled() else None
    if disk_key is not None:
        rec = _config_cache.load(disk_key)
        if rec is not None and rec["config"] in candidates:
            best = candidates[candidates.index(rec["config"])]
            _CHOSEN[key] = best
            _RECORDS[key] = {**rec, "source": "disk"}
            return best
    record = _tune(key, candidates, launch)
    best = record["config"]
    path = _config_cache.store(disk_key, record) if disk_key is not None else None
    _CHOSEN[key] = best
    _RECORDS[key] = {**record, "source": "tuned", "path": str(path) if path is not None else None}
    return best


def _measure(launch: Callable[[dict[str, int]], object], cfg: dict[str, int], *, warmup: int, rep: int) -> float:
    """Median milliseconds of ``launch(cfg)`` (the one place that times; tests patch it)."""
    from triton.testing import do_bench

    return float(do_bench(lambda: launch(cfg), warmup=warmup, rep=rep, return_mode="median"))


def _tune(key: tuple[Any, ...], candidates: list[dict[str, int]],
          launch: Callable[[dict[str, int]], object]) -> dict[str, Any]:
    """Time every candidate, re-time the finalists; the chosen config with its record."""
    t0 = time.time()
    sweep: dict[int, float] = {}
    errors: dict[int, str] = {}
    for i, cfg in enumerate(candidates):
        try:
            sweep[i] = _measure(launch, cfg, **_SWEEP)
        except Exception as exc:  # a config can exceed shared memory or registers on this GPU
            errors[i] = f"{exc!r}"[:200]
    if not sweep:
        raise RuntimeError(f"no launch config ran for {key}: "
                           + "; ".join(f"{candidates[i]}: {e}" for i, e in errors.items()))
    # Configs within a few per cent are told apart by noise in a short sweep: time the three
    # fastest again, longer, before settling.
    finalists = sorted(sweep, key=lambda i: (sweep[i], i))[:3]
    rerun = {i: _measure(launch, candidates[i], **_RERUN) for i in finalists}
    best = min(finalists, key=lambda i: (rerun[i], i))
    timings = []
    for i, cfg in enumerate(candidates):
        row: dict[str, Any] = {"config": dict(cfg), "sweep_ms": _ms(sweep.get(i))}
        if i in rerun:
            row["rerun_ms"] = _ms(rerun[i])
        if i in errors:
            row["error"] = errors[i]
        timings.append(row)
    now = time.time()
    return {
        "config": candidates[best],
        "best_ms": _ms(rerun[best]),
        "tuned_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "tuned_unix": round(now, 3),
        "tune_s": round(now - t0, 3),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "method": (f"triton.testing.do_bench median: all candidates warmup={_SWEEP['warmup']} "
                   f"rep={_SWEEP['rep']} ms, the 3 fastest again rep={_RERUN['rep']} ms"),
        "timings": timings,
    }


def _ms(t: float | None) -> float | None:
    return round(t, 6) if t is not None and math.isfinite(t) else None


def _jsonable(x: Any) -> Any:
    """A key element as JSON: a device by its type only (its GPU is described apart), dtypes by name."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise TypeError(f"non-finite float {x!r} in a kernel key")
        return x
    if isinstance(x, torch.device):
        return {"device": x.type}
    if isinstance(x, torch.dtype):
        return str(x)
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    raise TypeError(f"cannot put {type(x).__name__} into a kernel cache key")


def _gpu_identity(devices: list[torch.device]) -> list[dict[str, Any]] | None:
    """Name and compute capability of each CUDA (or ROCm) device in the key; None when there is
    none or it cannot be asked (a choice that cannot be tied to a GPU type is not persisted)."""
    out = []
    for dev in devices:
        if dev.type != "cuda":
            return None
        try:
            name = str(torch.cuda.get_device_name(dev))
            cap = [int(c) for c in torch.cuda.get_device_capability(dev)]
        except Exception:
            return None
        entry = {"name": name, "capability": cap}
        if entry not in out:
            out.append(entry)
    return out or None


def _disk_key(key: tuple[Any, ...], candidates: list[dict[str, int]]) -> dict[str, Any] | None:
    """The full on-disk key of a choice, or None when it cannot be described stably."""
    try:
        parts = _jsonable(list(key))
    except TypeError:
        return None
    gpus = _gpu_identity([x for x in key if isinstance(x, torch.device)])
    if gpus is None:
        return None
    try:
        import triton

        triton_version = str(triton.__version__)
    except Exception:
        return None
    return {
        "kernel": key[0] if key and isinstance(key[0], str) else None,
        "key": parts,
        "candidates": [dict(c) for c in candidates],
        "gpus": gpus,
        "torch": str(torch.__version__),
        "gpu_runtime": str(torch.version.cuda or getattr(torch.version, "hip", None) or ""),
        "triton": triton_version,
        "kernel_config_version": KERNEL_CONFIG_VERSION,
    }


def _first_that_runs(key: tuple[Any, ...], candidates: list[dict[str, int]],
                     launch: Callable[[dict[str, int]], object]) -> dict[str, int]:
    """Untimed choice: the first candidate that compiles and launches (fp32 tiles can exceed
    shared memory where the bf16 favourite fits)."""
    errors = []
    for cfg in candidates:
        try:
            launch(cfg)
            return cfg
        except Exception as exc:
            errors.append(f"{cfg}: {exc!r}"[:200])
    raise RuntimeError(f"no launch config ran for {key}: " + "; ".join(errors))


def chosen_configs() -> dict[tuple[Any, ...], dict[str, int]]:
    """The configs picked so far (benchmarks record them next to the timings)."""
    return dict(_CHOSEN)


def tuning_records() -> dict[tuple[Any, ...], dict[str, Any]]:
    """For each measured key of this process: the record behind its config (``source`` "tuned"
    or "disk", ``path``, ``tuned_at``, ``host``, ``best_ms``, per-candidate ``timings``, and for
    disk hits the stored ``key``). Untimed choices have none."""
    return {k: dict(v) for k, v in _RECORDS.items()}
