"""The two-variable Chinchilla form: E(N, D) = E0 + A/N^α + B/D^β.

N is model size (parameters), D data (samples or tokens seen). Fitting both at once separates
what a bias costs in model capacity from what it costs in data — e.g. whether label noise is
cured by more data (B, β change) or only lowers the floor (E0). Residuals are log E, as in
Hoffmann et al.'s fit; the initialisation grid spans their exponent and coefficient ranges;
bootstrap and held-out scoring (ordered by N·D, a compute proxy) come from the shared engine.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from inheritlab.analysis.fits import FitResult, Form, fit_form


def _fn(X: np.ndarray, th: np.ndarray) -> np.ndarray:
    th = np.asarray(th)
    e0, A, al, B, be = (th[..., i : i + 1] for i in range(5))
    return e0 + A * X[:, 0] ** (-al) + B * X[:, 1] ** (-be)


def _bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ymax = float(np.max(np.abs(y))) or 1.0
    return (np.array([0.0, 1e-8 * ymax, 0.0, 1e-8 * ymax, 0.0]),
            np.array([max(float(np.min(y)), 1e-12), 1e4 * ymax, 3.0, 1e4 * ymax, 3.0]))


def _grid(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    ymin, ymed = float(np.min(y)), max(float(np.median(y)), 1e-12)
    e0 = ymin * np.array([0.0, 0.3, 0.6, 0.9])
    coef = ymed * np.geomspace(0.03, 10.0, 6)
    exps = np.array([0.05, 0.15, 0.3, 0.5, 0.8, 1.2])
    return np.array(list(itertools.product(e0, coef, exps, coef, exps)))


def _units(th: np.ndarray, ref: np.ndarray) -> np.ndarray:
    th = np.array(th, dtype=float, copy=True)
    th[..., 1] = th[..., 1] * ref[0] ** th[..., 2]
    th[..., 3] = th[..., 3] * ref[1] ** th[..., 4]
    return th


CHINCHILLA = Form(
    name="chinchilla",
    params=("E0", "A", "alpha", "B", "beta"),
    fn=_fn,
    bounds=_bounds,
    grid=_grid,
    log_params=(False, True, False, True, False),
    to_units=_units,
    min_points=6,
)


def fit_chinchilla(n: Sequence[float] | np.ndarray, d: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, **kw: Any) -> FitResult:
    """Fit E = E0 + A/N^α + B/D^β to points (n_i, d_i, y_i)."""
    X = np.column_stack([np.asarray(n, dtype=float), np.asarray(d, dtype=float)])
    return fit_form(CHINCHILLA, X, y, **kw)


def optimal_allocation(fit: FitResult, compute: float, flops_per_param_sample: float = 6.0) -> tuple[float, float]:
    """The (N, D) minimising E at compute C = k·N·D (k = 6 for training FLOPs per token).

    Closed form from setting the derivative along N·D = C/k to zero:
    N* = G·(C/k)^(β/(α+β)), G = (α·A / (β·B))^(1/(α+β)), D* = (C/k)/N*.
    """
    A, al, B, be = (fit.params[k] for k in ("A", "alpha", "B", "beta"))
    nd = compute / flops_per_param_sample
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    n_opt = G * nd ** (be / (al + be))
    return float(n_opt), float(nd / n_opt)
