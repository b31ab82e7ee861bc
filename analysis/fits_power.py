"""Power laws: E = a·x^-b + c, E = a·x^-b, and one exponent shared across bias levels.

The workhorse forms of a scaling study, fitted by the shared engine in
:mod:`inheritlab.analysis.fits` (grid, bounded refinement, batched bootstrap, held-out score).
Both carry analytic Jacobians.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from inheritlab.analysis.fit_inputs import check_inputs, stack_columns
from inheritlab.analysis.fits import TINY, FitResult, Form, fit_form


def _pl_fn(X: np.ndarray, th: np.ndarray) -> np.ndarray:
    x = X[:, 0]
    th = np.asarray(th)
    a, b, c = th[..., 0:1], th[..., 1:2], th[..., 2:3]
    return a * x ** (-b) + c


def _pl0_fn(X: np.ndarray, th: np.ndarray) -> np.ndarray:
    th = np.asarray(th)
    return th[..., 0:1] * X[:, 0] ** (-th[..., 1:2])


def _pl_jac(X: np.ndarray, th: np.ndarray) -> np.ndarray:
    th = np.asarray(th)
    lx = np.log(X[:, 0])
    xb = X[:, 0] ** (-th[..., 1:2])  # (..., n)
    return np.stack([xb, -th[..., 0:1] * xb * lx, np.ones_like(xb)], axis=-1)


def _pl0_jac(X: np.ndarray, th: np.ndarray) -> np.ndarray:
    th = np.asarray(th)
    lx = np.log(X[:, 0])
    xb = X[:, 0] ** (-th[..., 1:2])
    return np.stack([xb, -th[..., 0:1] * xb * lx], axis=-1)


def _pl_bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ymax = float(np.max(np.abs(y))) or 1.0
    return np.array([1e-8 * ymax, -2.0, 0.0]), np.array([1e4 * ymax, 5.0, max(float(np.min(y)), 1e-12)])


def _pl_grid(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    ymin = float(np.min(y))
    a = np.geomspace(1e-3, 10, 9) * max(float(np.median(y)), TINY)
    b = np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0])
    c = ymin * np.array([0.0, 0.25, 0.5, 0.75, 0.9, 0.98])
    return np.stack(np.meshgrid(a, b, c, indexing="ij"), -1).reshape(-1, 3)


def _pl0_bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ymax = float(np.max(np.abs(y))) or 1.0
    return np.array([1e-8 * ymax, -2.0]), np.array([1e4 * ymax, 5.0])


def _pl0_grid(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = np.geomspace(1e-2, 10, 7) * max(float(np.median(y)), TINY)
    b = np.array([-0.2, 0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5])
    return np.stack(np.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)


def _pl_units(th: np.ndarray, ref: np.ndarray) -> np.ndarray:
    # a·(x/ref)^-b = (a·ref^b)·x^-b
    th = np.array(th, dtype=float, copy=True)
    th[..., 0] = th[..., 0] * ref[0] ** th[..., 1]
    return th


POWER_LAW = Form(
    name="power_law",  # E = a·x^-b + c
    params=("a", "b", "c"),
    fn=_pl_fn,
    bounds=_pl_bounds,
    grid=_pl_grid,
    log_params=(True, False, False),
    to_units=_pl_units,
    min_points=4,  # three parameters and one degree of freedom left to check them
    jac=_pl_jac,
)

POWER_LAW_NO_FLOOR = Form(
    name="power_law_no_floor",  # E = a·x^-b (a line in log-log space)
    params=("a", "b"),
    fn=_pl0_fn,
    bounds=_pl0_bounds,
    grid=_pl0_grid,
    log_params=(True, False),
    to_units=_pl_units,
    jac=_pl0_jac,
)


def fit_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, irreducible: bool = True, **kw: Any) -> FitResult:
    """Fit E = a·x^-b + c (``irreducible=True``) or E = a·x^-b."""
    return fit_form(POWER_LAW if irreducible else POWER_LAW_NO_FLOOR, x, y, **kw)


def fit_best_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, **kw: Any) -> FitResult | None:
    """The richest power law the data supports; None when fewer than two distinct scales.

    Four or more scales: with the irreducible term, unless the floor-free law extrapolates
    better on held-out scales. Two or three: without it (a note says so). One: nothing.
    """
    X, _, _ = check_inputs(POWER_LAW, x, y)  # bad input is an error here too, not a None
    n_distinct = len(np.unique(X, axis=0))
    if n_distinct < 2:
        return None
    if n_distinct < POWER_LAW.needs:
        bare = fit_power_law(x, y, irreducible=False, **kw)
        return bare.with_note(f"only {n_distinct} scales: power law without irreducible term")
    full = fit_power_law(x, y, irreducible=True, **kw)
    bare = fit_power_law(x, y, irreducible=False, **kw)
    if full.holdout and bare.holdout and bare.holdout["rmsle"] < full.holdout["rmsle"]:
        return bare.with_note("floor-free law extrapolates better on held-out scales")
    return full


# --- joint fit across bias levels -------------------------------------------------------------


def joint_power_law(n_groups: int) -> Form:
    """E = a_g·x^-b + c_g: one exponent shared by all groups (bias levels), own a and c each.

    X has two columns: the scale and the group index (0 … n_groups-1). Sharing b asks whether
    bias changes *how fast* a model improves with scale or only shifts the curve; per-level
    fits answer the first question, this one measures the shift with the slope held common.
    """
    G = n_groups

    def fn(X: np.ndarray, th: np.ndarray) -> np.ndarray:
        th = np.asarray(th)
        g = X[:, 1].astype(int)
        a = th[..., :G][..., g]
        b = th[..., G : G + 1]
        c = th[..., G + 1 :][..., g]
        return a * X[:, 0] ** (-b) + c

    def bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = X[:, 1].astype(int)
        ymax = float(np.max(np.abs(y))) or 1.0
        cmax = [max(float(np.min(y[g == k])) if np.any(g == k) else ymax, 1e-12) for k in range(G)]
        lo = np.concatenate([np.full(G, 1e-8 * ymax), [-2.0], np.zeros(G)])
        hi = np.concatenate([np.full(G, 1e4 * ymax), [5.0], cmax])
        return lo, hi

    def grid(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        base = _pl_grid(X, y)  # shared (a, b, c) starts, repeated for every group
        return np.concatenate([np.repeat(base[:, :1], G, 1), base[:, 1:2], np.repeat(base[:, 2:3], G, 1)], axis=1)

    def units(th: np.ndarray, ref: np.ndarray) -> np.ndarray:
        th = np.array(th, dtype=float, copy=True)
        th[..., :G] = th[..., :G] * ref[0] ** th[..., G : G + 1]
        return th

    return Form(
        name=f"joint_power_law_{G}",
        params=tuple(f"a_{k}" for k in range(G)) + ("b",) + tuple(f"c_{k}" for k in range(G)),
        fn=fn, bounds=bounds, grid=grid, log_params=(True,) * G + (False,) + (False,) * G, to_units=units,
        min_points=3, scale_dims=1, columns=("x", "group"), n_groups=G,
    )


def fit_joint_power_law(x: Sequence[float] | np.ndarray, group: Sequence[int] | np.ndarray, y: Sequence[float] | np.ndarray, **kw: Any) -> FitResult:
    """Fit :func:`joint_power_law` to points tagged with group indices 0 … G-1 (each present)."""
    X = stack_columns("joint power law fit", x=x, group=group)
    finite = X[np.isfinite(X[:, 1]), 1]
    # G from the largest index; check_inputs then refuses a gap (0 and 2 without 1) by name.
    G = int(max(finite.max(), 0)) + 1 if len(finite) else 1
    return fit_form(joint_power_law(G), X, y, **kw)
