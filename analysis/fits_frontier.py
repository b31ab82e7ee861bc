"""Compute-frontier fits: the best result per bin of log compute, then a log-log line.

This is how Cherti et al. fit the OpenCLIP scaling laws: a grid of (model, samples seen,
dataset) runs scatters below an envelope; only the envelope — the lowest error reachable at a
compute budget — follows a clean power law E = β·C^α. Bins are equal-width in log10 C between
the smallest and largest compute (the largest run falls in the last bin); empty bins are
skipped; the line is an ordinary least-squares fit of log E on log C.

Uncertainty: bootstrap over *runs* (resample rows, recompute the frontier, refit), seeded. A
resample whose frontier has fewer than two distinct compute values cannot give a line: it is
dropped and counted, and no interval is reported from fewer than 90 % of the requested
resamples. An interval always contains its point estimate (widened, and said so, if not).
Extrapolation: refit on the runs below the last bin and score the last bin's frontier point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from inheritlab.analysis.fit_inputs import FitInputError, InsufficientData, check_inputs
from inheritlab.analysis.fits import MIN_KEPT_SHARE, Bootstrap
from inheritlab.analysis.fits_power import POWER_LAW_NO_FLOOR

# The line on log-log axes, for its input checks: compute > 0 and error > 0.
_FRONTIER = replace(POWER_LAW_NO_FLOOR, name="frontier_power_law")


@dataclass(frozen=True)
class FrontierFit:
    """E = beta · C^alpha on the compute frontier (alpha < 0 when error falls with compute)."""

    beta: float
    alpha: float
    ci: dict[str, tuple[float, float]]
    frontier_x: np.ndarray
    frontier_y: np.ndarray
    n_bins: int
    n_points: int
    boot: np.ndarray = field(repr=False)  # (B_kept, 2): beta, alpha
    holdout: dict[str, Any] | None = None
    provenance: Bootstrap = field(default_factory=lambda: Bootstrap("pairs", 0, 0, None))
    n_dropped: int = 0  # non-finite rows left out

    def predict(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        return self.beta * np.asarray(x, dtype=float) ** self.alpha

    def band(self, x: np.ndarray | Sequence[float], level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        xs = np.asarray(x, dtype=float)
        p = self.predict(xs)
        if len(self.boot) < 2 or not self.provenance.has_interval:
            return p, p
        preds = self.boot[:, :1] * xs[None, :] ** self.boot[:, 1:2]
        q = (1 - level) / 2
        return np.minimum(np.quantile(preds, q, axis=0), p), np.maximum(np.quantile(preds, 1 - q, axis=0), p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": "frontier_power_law",
            "params": {"beta": self.beta, "alpha": self.alpha},
            "ci95": {k: list(v) for k, v in self.ci.items()},
            "n_bins": self.n_bins,
            "n_points": self.n_points,
            "n_dropped_nonfinite": int(self.n_dropped),
            "bootstrap": self.provenance.to_dict(),
            "frontier": [[float(a), float(b)] for a, b in zip(self.frontier_x, self.frontier_y)],
            "holdout": self.holdout,
        }


def frontier_points(x: np.ndarray, y: np.ndarray, n_bins: int = 5, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Indices of the lowest y in each equal-width bin of log10 x (empty bins skipped).

    ``lo``/``hi`` fix the bin range (log10 units); by default the data's own range. Ties go to
    the smaller x, then the earlier row, so the choice does not depend on row order once the
    input is sorted.
    """
    lx = np.log10(x)
    lo = float(lx.min()) if lo is None else lo
    hi = float(lx.max()) if hi is None else hi
    width = (hi - lo) / n_bins if hi > lo else 1.0
    b = np.clip(np.floor((lx - lo) / width).astype(int), 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        idx = np.nonzero(b == k)[0]
        if len(idx):
            out.append(int(idx[np.argmin(y[idx])]))
    return np.asarray(out, dtype=int)


def _line(fx: np.ndarray, fy: np.ndarray) -> tuple[float, float]:
    """log E = log β + α log C by least squares; returns (β, α)."""
    A = np.column_stack([np.ones(len(fx)), np.log(fx)])
    coef, *_ = np.linalg.lstsq(A, np.log(fy), rcond=None)
    return float(math.exp(coef[0])), float(coef[1])


def fit_frontier(
    x: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    *,
    n_bins: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    holdout: bool = True,
) -> FrontierFit:
    """Fit E = β·C^α to the compute frontier of (C = x, E = y). See the module docstring."""
    if n_boot < 0 or n_bins < 2:
        raise FitInputError(f"frontier fit: n_boot={n_boot}, n_bins={n_bins}; allowed: n_boot ≥ 0, n_bins ≥ 2")
    X, yv, n_dropped = check_inputs(_FRONTIER, x, y)  # C > 0 and E > 0: both axes are logarithmic
    xv = X[:, 0]
    order = np.lexsort((yv, xv))
    xv, yv = xv[order], yv[order]
    idx = frontier_points(xv, yv, n_bins)
    if len(idx) < 2:
        raise InsufficientData(f"compute frontier: {len(idx)} non-empty bin(s), need at least 2 (points: {len(xv)})")
    beta, alpha = _line(xv[idx], yv[idx])
    lo, hi = float(np.log10(xv.min())), float(np.log10(xv.max()))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        s = np.sort(rng.integers(0, len(xv), len(xv)))
        # Same bin edges as the main fit: a resample measures the noise of the frontier, not
        # the effect of moving the bins.
        bi = frontier_points(xv[s], yv[s], n_bins, lo, hi)
        if len(np.unique(xv[s][bi])) >= 2:
            boot.append(_line(xv[s][bi], yv[s][bi]))
    boot_a = np.asarray(boot, dtype=float).reshape(-1, 2)
    _, counts = np.unique(xv, return_counts=True)
    prov = Bootstrap("pairs", n_boot, len(boot_a), seed if n_boot else None,
                     seeds_per_point=(int(counts.min()), int(counts.max())))
    ci: dict[str, tuple[float, float]] = {}
    if n_boot == 0:
        prov = replace(prov, reason="no bootstrap requested")
    elif len(boot_a) < max(2.0, MIN_KEPT_SHARE * n_boot):
        prov = replace(prov, reason=f"only {len(boot_a)} of {n_boot} resamples had a frontier of two or more "
                                    f"compute values; at least {MIN_KEPT_SHARE:.0%} are needed")
    else:
        ci, widened = _percentile(boot_a, {"beta": beta, "alpha": alpha})
        prov = replace(prov, widened=widened)
    ho = _holdout(xv, yv, n_bins, lo, hi) if holdout else None
    return FrontierFit(beta=beta, alpha=alpha, ci=ci, frontier_x=xv[idx], frontier_y=yv[idx], n_bins=n_bins,
                       n_points=len(xv), boot=boot_a, holdout=ho, provenance=prov, n_dropped=n_dropped)


def _percentile(boot: np.ndarray, est: dict[str, float]) -> tuple[dict[str, tuple[float, float]], tuple[str, ...]]:
    """95 % equal-tailed percentile intervals, each widened to contain its point estimate."""
    ci, widened = {}, []
    for i, (name, v) in enumerate(est.items()):
        lo, hi = float(np.quantile(boot[:, i], 0.025)), float(np.quantile(boot[:, i], 0.975))
        if not lo <= v <= hi:
            widened.append(name)
            lo, hi = min(lo, v), max(hi, v)
        ci[name] = (lo, hi)
    return ci, tuple(widened)


def _holdout(x: np.ndarray, y: np.ndarray, n_bins: int, lo: float, hi: float) -> dict[str, Any] | None:
    """Fit the frontier of the first n_bins-1 bins, predict the last bin's best error."""
    width = (hi - lo) / n_bins
    cut = lo + (n_bins - 1) * width
    train = np.log10(x) < cut
    if train.sum() < 2 or (~train).sum() < 1:
        return None
    ti = frontier_points(x[train], y[train], n_bins - 1, lo, cut)
    if len(ti) < 2:
        return None
    beta, alpha = _line(x[train][ti], y[train][ti])
    test = np.nonzero(~train)[0]
    j = test[np.argmin(y[test])]
    pred = beta * x[j] ** alpha
    return {"train_max_log10_x": cut, "test_x": float(x[j]), "test_y": float(y[j]), "pred": float(pred),
            "rel_err": float(abs(pred - y[j]) / y[j]), "rmsle": float(abs(np.log1p(pred) - np.log1p(y[j])))}
