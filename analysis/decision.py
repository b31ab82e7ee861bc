"""Decision accuracy: does a cheap small-scale study rank bias levels as the expensive one does?

DataDecide (Magnusson et al., 2025) asks of a small-scale experiment whether it makes the same
decisions as the large one; its measure, *decision accuracy*, is the fraction of pairs of
options whose order at the small scale matches their order at the target scale. Here the
options are the bias levels of one bias type: for each smaller scale, over all pairs of levels,
does level i come out better or worse than level j as it does at the largest scale?

* Pairs tied at the target scale have no order to predict and are left out; a tie at the
  small scale counts as half a match (a coin flip).
* The interval is a bootstrap over **seeds**: each (level, scale) point's seeds are resampled
  with replacement and its mean recomputed, at every scale at once (the target included —
  its order is measured too). Seeded; every resample is kept; the interval is widened to
  contain the point estimate if it does not. One seed per point gives no interval (there is
  nothing to resample) and says so.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import polars as pl

from inheritlab.analysis.fit_inputs import FitInputError

N_BOOT = 1000
LEVEL = 0.95


def _pair_agreement(small: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Decision accuracy of level means ``small`` (..., L) against ``target`` (..., L).

    Returns (...,): matches over ordered pairs at the target; nan when every pair is tied there.
    """
    i, j = np.triu_indices(small.shape[-1], k=1)
    ts = np.sign(target[..., i] - target[..., j])
    ss = np.sign(small[..., i] - small[..., j])
    match = np.where(ss == 0, 0.5, (ss == ts).astype(float))
    counted = ts != 0
    n = counted.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sum(match * counted, axis=-1) / n, np.nan)


def _check(rows: pl.DataFrame, x: str, keys: Sequence[str]) -> None:
    need = list(keys) + ["bias_level", x, "seed", "value"]
    missing = [c for c in need if c not in rows.columns]
    if missing:
        raise FitInputError(f"decision accuracy: missing column(s) {missing}; allowed: a results table with {need}")
    bad = rows.filter(pl.col(x) <= 0)
    if bad.height:
        raise FitInputError(f"decision accuracy: column {x!r} has {bad[x][0]!r}; allowed: {x} > 0 (a scale)")


def decision_accuracy(
    rows: pl.DataFrame, *, x: str, keys: Sequence[str] = ("bias_type",), n_boot: int = N_BOOT, seed: int = 0,
) -> pl.DataFrame:
    """Decision accuracy of every smaller scale against the largest, per group of ``keys``.

    ``rows`` are final-checkpoint rows of one (task, split, metric): ``keys``, ``bias_level``,
    ``x``, ``seed``, ``value``. Only scales at which every level of the group has a result are
    compared (the largest such one is the target). Non-finite values are left out and counted
    in ``n_dropped``. One row per (group, smaller scale) with the accuracy, its interval and
    the interval's provenance.
    """
    if n_boot < 0:
        raise FitInputError(f"decision accuracy: n_boot={n_boot}; allowed: n_boot ≥ 0")
    keys = list(keys)
    _check(rows, x, keys)
    finite = rows.filter(pl.col("value").is_finite())
    n_dropped = rows.height - finite.height
    out: list[dict[str, Any]] = []
    groups = finite.group_by(keys, maintain_order=True) if keys else [((), finite)]
    for key, grp in groups:
        out += _group_rows(dict(zip(keys, key)), grp, x=x, n_boot=n_boot, seed=seed, n_dropped=n_dropped)
    return pl.DataFrame(out) if out else pl.DataFrame()


def _group_rows(key: dict[str, Any], grp: pl.DataFrame, *, x: str, n_boot: int, seed: int, n_dropped: int) -> list[dict[str, Any]]:
    levels = sorted(grp["bias_level"].unique().to_list())
    if len(levels) < 2:
        return []
    per_scale = grp.group_by(x).agg(pl.col("bias_level").n_unique().alias("n"))
    scales = sorted(per_scale.filter(pl.col("n") == len(levels))[x].to_list())
    if len(scales) < 2:
        return []
    # values[s][l]: the seeds' values of level l at scale s
    values = [[grp.filter((pl.col(x) == s) & (pl.col("bias_level") == lv)).sort("seed")["value"].to_numpy()
               for lv in levels] for s in scales]
    means = np.array([[v.mean() for v in row] for row in values])  # (S, L)
    counts = np.array([[len(v) for v in row] for row in values])
    boot, reason = _resampled_means(values, n_boot, seed)
    rows = []
    for si, s in enumerate(scales[:-1]):
        acc = float(_pair_agreement(means[si], means[-1]))
        lo = hi = math.nan
        if boot is not None:
            dist = _pair_agreement(boot[:, si], boot[:, -1])
            dist = dist[np.isfinite(dist)]
            if len(dist) >= 2 and math.isfinite(acc):
                q = (1 - LEVEL) / 2
                lo, hi = float(np.quantile(dist, q)), float(np.quantile(dist, 1 - q))
                lo, hi = min(lo, acc), max(hi, acc)  # an interval contains its estimate
        rows.append({
            **key, "scale": float(s), "target_scale": float(scales[-1]), "n_levels": len(levels),
            "n_pairs": len(levels) * (len(levels) - 1) // 2, "decision_accuracy": acc, "lo": lo, "hi": hi,
            "level": LEVEL, "n_boot_requested": n_boot, "n_boot_kept": n_boot if boot is not None else 0,
            "boot_seed": seed if boot is not None else None, "seeds_min": int(counts.min()),
            "seeds_max": int(counts.max()), "n_dropped": n_dropped, "note": reason,
        })
    return rows


def _resampled_means(values: list[list[np.ndarray]], n_boot: int, seed: int) -> tuple[np.ndarray | None, str]:
    """(B, S, L) means of seed resamples of every (scale, level) point, or None and why not."""
    if n_boot == 0:
        return None, "no bootstrap requested"
    if max(len(v) for row in values for v in row) < 2:
        return None, "one seed per point: no interval (nothing to resample)"
    rng = np.random.default_rng(seed)
    S, L = len(values), len(values[0])
    out = np.empty((n_boot, S, L))
    for si in range(S):
        for li in range(L):
            v = values[si][li]
            out[:, si, li] = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return out, ""
