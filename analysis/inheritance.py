"""Inheritance metrics: how much of a pre-training bias shows up downstream.

All functions take the seed-aggregated points of one (task, split, metric) — the output of
``results.aggregate_seeds`` — or the final-checkpoint rows, and return small polars tables:

- ``delta_vs_clean``: Δ metric against the clean cell (level 0) at the same scale.
- ``id_ood_gap``: in-distribution minus out-of-distribution metric, per level and scale.
- ``effective_data_multiplier``: the clean scale that reaches the biased result, divided by the
  biased cell's scale (1 = harmless, 0.5 = the bias costs half the data), by inverting the
  clean curve's fit.
- ``critical_level``: the lowest level at which the curve departs from the clean one beyond a
  tolerance. (The critical *scale*, where a fitted break sits, is ``fits_bnsl.break_scales``.)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import polars as pl
from scipy.optimize import brentq


def delta_vs_clean(points: pl.DataFrame, *, x: str, keys: Sequence[str] = ("bias_type", "bias_level")) -> pl.DataFrame:
    """Δ = mean(biased) − mean(clean) at equal scale, per curve key.

    ``points`` has columns ``keys + [x, "mean", "std", "n_seeds"]``. The clean reference of a
    curve is the level-0 curve with the same keys other than the level (same bias type, same
    model). Scales without a clean cell get no Δ. The standard error combines both sides'
    seed spread (0 with one seed each).
    """
    keys = list(keys)
    others = [k for k in keys if k != "bias_level"]
    clean = points.filter(pl.col("bias_level") == 0.0).select(
        others + [x, pl.col("mean").alias("clean_mean"), pl.col("std").alias("clean_std"),
                  pl.col("n_seeds").alias("clean_n")]
    )
    out = points.join(clean, on=others + [x], how="inner")
    se = (pl.col("std") ** 2 / pl.col("n_seeds") + pl.col("clean_std") ** 2 / pl.col("clean_n")).sqrt()
    return out.with_columns((pl.col("mean") - pl.col("clean_mean")).alias("delta"), se.alias("delta_se")).sort(keys + [x])


def id_ood_gap(rows: pl.DataFrame, *, x: str, keys: Sequence[str] = ("bias_type", "bias_level")) -> pl.DataFrame:
    """ID − OOD metric per (curve, scale), seed-averaged; needs rows of both splits.

    ``rows`` are final-checkpoint rows of one task and metric, with ``split`` in {id, ood}.
    """
    keys = list(keys)
    both = rows.filter(pl.col("split").is_in(["id", "ood"]))
    if both.is_empty() or both.get_column("split").n_unique() < 2:
        return pl.DataFrame(schema={**{k: rows.schema[k] for k in keys}, x: rows.schema[x], "id": pl.Float64,
                                    "ood": pl.Float64, "gap": pl.Float64})
    wide = (
        both.group_by(keys + [x, "seed", "split"]).agg(pl.col("value").mean())
        .pivot(on="split", index=keys + [x, "seed"], values="value")
        .drop_nulls(["id", "ood"])
        .with_columns((pl.col("id") - pl.col("ood")).alias("gap"))
        # Seeds in a fixed order: group_by returns groups in any order, and the spread over
        # seeds below would otherwise differ in its last digits from run to run.
        .sort(keys + [x, "seed"])
    )
    return wide.group_by(keys + [x]).agg(pl.col("id").mean(), pl.col("ood").mean(), pl.col("gap").mean(),
                                         pl.col("gap").std(ddof=1).fill_null(0.0).alias("gap_std")).sort(keys + [x])


def invert_curve(predict: Callable[[np.ndarray], np.ndarray], target: float, lo: float, hi: float) -> float:
    """The x in [lo, hi] (searched in log x) where a monotone curve equals ``target``.

    Returns ``nan`` when the target is outside the curve's range over [lo, hi] (e.g. below
    the clean fit's irreducible floor: no amount of clean data in range matches it).
    """
    grid = np.geomspace(lo, hi, 257)
    vals = np.asarray(predict(grid), dtype=float) - target
    sign = np.sign(vals)
    cross = np.nonzero(sign[:-1] * sign[1:] <= 0)[0]
    if len(cross) == 0:
        return math.nan
    i = int(cross[0])
    if vals[i] == 0:
        return float(grid[i])

    def f(lx: float) -> float:
        return float(np.asarray(predict(np.array([math.exp(lx)])))[0] - target)

    return math.exp(brentq(f, math.log(grid[i]), math.log(grid[i + 1]), xtol=1e-10))


def effective_data_multiplier(
    points: pl.DataFrame, clean_predict: Callable[[np.ndarray], np.ndarray], *, x: str, span: float = 1e3,
) -> pl.DataFrame:
    """For each biased point, x_eff / x where the clean curve reaches the biased value.

    ``points`` holds the *fit target* (error-like, falling with scale) in ``mean``;
    ``clean_predict`` is the clean fit's prediction in the same units. The search runs over
    [x/span, x·span]; outside it the multiplier is ``nan`` (reported, not guessed).
    """
    xs = points.get_column(x).to_numpy().astype(float)
    ms = points.get_column("mean").to_numpy().astype(float)
    eff = [invert_curve(clean_predict, m, xv / span, xv * span) for xv, m in zip(xs, ms)]
    return points.with_columns(pl.Series("x_effective", eff, dtype=pl.Float64),
                               pl.Series("multiplier", np.asarray(eff) / xs, dtype=pl.Float64))


def critical_level(delta: pl.DataFrame, *, x: str, tol: float = 0.01, keys: Sequence[str] = ("bias_type",)) -> pl.DataFrame:
    """Per bias type: the lowest level whose Δ at the largest common scale is below −tol.

    ``tol`` is in metric units (0.01 = one accuracy point); a Δ inside two standard errors of 0
    does not count, so seed noise does not declare a break. ``null`` when no level breaks.
    """
    keys = list(keys)
    rows = []
    for key, grp in delta.group_by(keys, maintain_order=True):
        grp = grp.filter(pl.col("bias_level") > 0)
        if grp.is_empty():
            continue
        top = grp.get_column(x).max()
        at = grp.filter(pl.col(x) == top).sort("bias_level")
        crit = None
        for lvl, d, se in at.select("bias_level", "delta", "delta_se").iter_rows():
            if d < -tol and d < -2 * (se or 0.0):
                crit = lvl
                break
        rows.append({**dict(zip(keys, key)), "scale": float(top), "tol": tol, "critical_level": crit})
    schema = {**{k: delta.schema[k] for k in keys}, "scale": pl.Float64, "tol": pl.Float64, "critical_level": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
