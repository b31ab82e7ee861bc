"""Broken neural scaling laws (Caballero et al., 2023) with n breaks.

    y = a + b·x^(-c0) · Π_{i=1..n} (1 + (x/d_i)^(1/f_i))^(-c_i·f_i)

Between breaks the curve is a power law; at x ≈ d_i its log-log slope changes by c_i, over a
width set by f_i (small f = sharp). A bias that is harmless at small scale and ruinous at large
scale (or the reverse) shows up as a break: ``d_i`` is then the critical scale.

The fitting recipe is the reference one: a brute-force grid over all parameters (b and d
log-spaced, d inside the observed x range), scored by the mean squared log error in
log(y + 1), then a bounded least-squares refinement of the best grid points (what
``scipy.optimize.curve_fit`` does with bounds). Bootstrap and held-out scoring come from the
shared engine in :mod:`inheritlab.analysis.fits`.

The prediction is computed in log space with ``logaddexp`` so that sharp breaks (f → 0) and
large x/d do not overflow.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from inheritlab.analysis.fits import FitResult, Form, fit_form

_TINY = 1e-300


def _bnsl_fn(n: int):
    def fn(X: np.ndarray, th: np.ndarray) -> np.ndarray:
        th = np.asarray(th)
        lx = np.log(X[:, 0])
        a = th[..., 0:1]
        s = np.log(np.maximum(th[..., 1:2], _TINY)) - th[..., 2:3] * lx
        for i in range(n):
            c = th[..., 3 + 3 * i : 4 + 3 * i]
            d = th[..., 4 + 3 * i : 5 + 3 * i]
            f = th[..., 5 + 3 * i : 6 + 3 * i]
            s = s - c * f * np.logaddexp(0.0, (lx - np.log(np.maximum(d, _TINY))) / f)
        return a + np.exp(np.minimum(s, 700.0))

    return fn


def _bnsl_jac(n: int):
    """∂y/∂θ. With s = log b − c0·log x − Σ c_i f_i softplus(z_i), z_i = (log x − log d_i)/f_i
    and y = a + e^s: ∂y/∂a = 1, ∂y/∂θ = e^s ∂s/∂θ, where ∂s/∂b = 1/b, ∂s/∂c0 = −log x,
    ∂s/∂c_i = −f_i sp(z_i), ∂s/∂d_i = c_i σ(z_i)/d_i, ∂s/∂f_i = c_i (σ(z_i) z_i − sp(z_i))."""

    def jac(X: np.ndarray, th: np.ndarray) -> np.ndarray:
        th = np.asarray(th)
        lx = np.log(X[:, 0])
        b = np.maximum(th[..., 1:2], _TINY)
        s = np.log(b) - th[..., 2:3] * lx
        cols = [None, None, None]
        parts = []
        for i in range(n):
            c = th[..., 3 + 3 * i : 4 + 3 * i]
            d = np.maximum(th[..., 4 + 3 * i : 5 + 3 * i], _TINY)
            f = th[..., 5 + 3 * i : 6 + 3 * i]
            z = (lx - np.log(d)) / f
            sp = np.logaddexp(0.0, z)
            sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
            s = s - c * f * sp
            parts += [-f * sp, c * sig / d, c * (sig * z - sp)]
        e = np.exp(np.minimum(s, 700.0))
        cols[0] = np.ones_like(e)
        cols[1] = e / b
        cols[2] = -e * lx
        return np.stack(cols + [e * q for q in parts], axis=-1)

    return jac


def _bnsl_bounds(n: int):
    def bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ymax = float(np.max(np.abs(y))) or 1.0
        xlo, xhi = float(X[:, 0].min()), float(X[:, 0].max())
        lo = [0.0, 1e-8 * ymax, -1.0] + [-4.0, xlo / 100.0, 1e-3] * n
        hi = [ymax, 1e6 * ymax, 4.0] + [4.0, xhi * 100.0, 20.0] * n
        return np.asarray(lo), np.asarray(hi)

    return bounds


@lru_cache(maxsize=8)
def _break_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Coarser per-break grids as n grows: the product must stay evaluable (≈ 10^5–10^6 points).
    if n <= 1:
        return (np.array([0.0, 0.25, 0.5, 0.75, 0.9]), np.geomspace(0.03, 30.0, 7), np.array([0.0, 0.1, 0.25, 0.5, 1.0]),
                np.array([-0.5, -0.2, 0.1, 0.3, 0.6, 1.2]), np.linspace(0.0, 1.0, 7), np.array([0.05, 0.2, 0.6, 2.0]))
    return (np.array([0.0, 0.5, 0.9]), np.geomspace(0.1, 10.0, 5), np.array([0.0, 0.2, 0.5, 1.0]),
            np.array([-0.4, 0.1, 0.4, 1.0]), np.linspace(0.1, 0.9, 5), np.array([0.1, 0.5, 2.0]))


def _bnsl_grid(n: int):
    def grid(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        fa, fb, c0s, cs, dpos, fs = _break_grid(n)
        ymin, ymed = float(np.min(y)), float(np.median(y))
        lx = np.log(X[:, 0])
        ds = np.exp(lx.min() + dpos * (lx.max() - lx.min()))  # log-spaced inside the x range
        head = np.array(list(itertools.product(fa * ymin, fb * max(ymed, 1e-12), c0s)))
        one = np.array(list(itertools.product(cs, ds, fs)))
        if n == 0:
            return head
        parts = [one] * n
        tails = np.array([np.concatenate(t) for t in itertools.product(*parts)])
        if n > 1:  # breaks in increasing order of d: the same curve once, not n! times
            d = tails[:, 1::3]
            tails = tails[np.all(np.diff(d, axis=1) > 0, axis=1)]
        hi_ = np.repeat(head, len(tails), axis=0)
        ti_ = np.tile(tails, (len(head), 1))
        return np.concatenate([hi_, ti_], axis=1)

    return grid


def _bnsl_units(n: int):
    def units(th: np.ndarray, ref: np.ndarray) -> np.ndarray:
        th = np.array(th, dtype=float, copy=True)
        r = float(ref[0])
        # b·(x/r)^-c0 = (b·r^c0)·x^-c0; (x/r)/d = x/(d·r).
        th[..., 1] = th[..., 1] * r ** th[..., 2]
        for i in range(n):
            th[..., 4 + 3 * i] *= r
        if n > 1:  # report breaks in order of location
            brk = th[..., 3:].reshape(th.shape[:-1] + (n, 3))
            order = np.argsort(brk[..., 1], axis=-1)
            brk = np.take_along_axis(brk, order[..., None], axis=-2)
            th[..., 3:] = brk.reshape(th.shape[:-1] + (3 * n,))
        return th

    return units


@lru_cache(maxsize=8)
def bnsl_form(n_breaks: int) -> Form:
    """The BNSL form with ``n_breaks`` breaks (parameters a, b, c0, then c_i, d_i, f_i)."""
    if n_breaks < 0:
        raise ValueError(f"n_breaks={n_breaks}: expected ≥ 0")
    n = n_breaks
    names = ("a", "b", "c0") + tuple(p for i in range(1, n + 1) for p in (f"c{i}", f"d{i}", f"f{i}"))
    return Form(
        name=f"bnsl_{n}",
        params=names,
        fn=_bnsl_fn(n),
        bounds=_bnsl_bounds(n),
        grid=_bnsl_grid(n),
        log_params=(False, True, False) + (False, True, True) * n,
        to_units=_bnsl_units(n),
        space="log1p",
        min_points=3 + 3 * n + 1,
        jac=_bnsl_jac(n),
    )


def fit_bnsl(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, n_breaks: int = 1, **kw: Any) -> FitResult:
    """Fit a broken neural scaling law with ``n_breaks`` breaks (see the module docstring)."""
    return fit_form(bnsl_form(n_breaks), x, y, **kw)


def break_scales(fit: FitResult) -> list[dict[str, float]]:
    """The fitted breaks in original x units, with their 95 % intervals when bootstrapped."""
    out = []
    i = 1
    while f"d{i}" in fit.params:
        lo, hi = fit.ci.get(f"d{i}", (float("nan"), float("nan")))
        out.append({"break": i, "d": fit.params[f"d{i}"], "d_lo": lo, "d_hi": hi, "slope_change": fit.params[f"c{i}"],
                    "sharpness_f": fit.params[f"f{i}"]})
        i += 1
    return out
