"""Synthetic scaling curves and run directories with known ground truth.

Used to check that the fits recover parameters they were given, to benchmark them, and to try
the report on a study shaped like a real one without training anything. Noise is
multiplicative (log-normal), as scaling-law residuals are, and drawn from a seeded generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from inheritlab.analysis.results import POLARS_TYPES
from inheritlab.infra.atomic import atomic_open
from inheritlab.infra.hashing import stable_hex
from inheritlab.infra.rundir import RunDir
from inheritlab.infra.schema import RESULT_COLUMNS


def power_law(x: np.ndarray, a: float, b: float, c: float = 0.0) -> np.ndarray:
    """E = a·x^-b + c."""
    return a * np.asarray(x, dtype=float) ** (-b) + c


def bnsl(x: np.ndarray, a: float, b: float, c0: float, breaks: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Broken neural scaling law: a + b·x^-c0 · Π_i (1 + (x/d_i)^(1/f_i))^(-c_i·f_i).

    ``breaks`` is a sequence of (c_i, d_i, f_i): the change of slope, where it happens, and
    how sharp it is (small f = sharp).
    """
    x = np.asarray(x, dtype=float)
    y = b * x ** (-c0)
    for ci, di, fi in breaks:
        y = y * (1.0 + (x / di) ** (1.0 / fi)) ** (-ci * fi)
    return a + y


def noisy(y: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply by log-normal noise of log-standard-deviation ``sigma``."""
    return np.asarray(y) * np.exp(rng.normal(0.0, sigma, np.shape(y)))


def write_cell(run: RunDir, rows: list[dict], *, complete: bool = True) -> Path:
    """Write one cell's results table (and its completion marker, unless told not to)."""
    cell_id = rows[0]["cell_id"]
    cdir = run.cell(cell_id)
    cdir.eval.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame([{k: r[k] for k in RESULT_COLUMNS} for r in rows],
                      schema={k: POLARS_TYPES[t] for k, t in RESULT_COLUMNS.items()}, orient="row")
    with atomic_open(cdir.results, "wb") as fh:
        df.write_parquet(fh)
    if complete:
        cdir.mark_complete({"cell_id": cell_id, "rows": df.height})
    return cdir.root


def write_synthetic_run(
    run_dir: str | Path,
    *,
    levels: Sequence[float] = (0.0, 0.2, 0.4),
    scales: Sequence[float] = (1e5, 3e5, 1e6, 3e6, 1e7),
    seeds: Sequence[int] = (0,),
    bias_type: str = "label_noise",
    sigma: float = 0.02,
    seed: int = 0,
) -> RunDir:
    """A study run directory whose zero-shot error follows a known law per level.

    Error on the ID split: E = 3·x^-0.3 + 0.1 + 0.5·level (bias raises the floor); OOD adds
    0.1 + 0.3·level (bias also widens the ID–OOD gap). Metric acc1 = 1 − E. The clean level
    is recorded with ``bias_type="none"``, as the study flow does.
    """
    run = RunDir.at(run_dir)
    rng = np.random.default_rng(seed)
    for lvl in levels:
        btype = "none" if lvl == 0 else bias_type
        for sc in scales:
            for s in seeds:
                cid = stable_hex("synthetic", btype, lvl, sc, s)
                rows = []
                for split, extra in (("id", 0.0), ("ood", 0.1 + 0.3 * lvl)):
                    err = float(noisy(power_law(sc, 3.0, 0.3, 0.1 + 0.5 * lvl + extra), sigma, rng))
                    rows.append({
                        "study": "synthetic", "cell_id": cid, "modality": "clip", "bias_type": btype,
                        "bias_level": float(lvl), "model": "tiny", "data_scale": float(sc),
                        "unique_samples": int(sc), "seed": int(s), "params": 1000,
                        "checkpoint_step": 10, "samples_seen": int(sc), "flops": 6.0 * 1000 * sc,
                        "task": "zeroshot", "split": split, "metric": "acc1", "value": min(max(1.0 - err, 0.0), 1.0),
                    })
                write_cell(run, rows)
    return run
