"""Broken neural scaling laws (Caballero et al., 2023) with n breaks, and choosing n.

    y = a + b·x^(-c0) · Π_{i=1..n} (1 + (x/d_i)^(1/f_i))^(-c_i·f_i)

Between breaks the curve is a power law; at x ≈ d_i its log-log slope changes by c_i, over a
width set by f_i (small f = sharp). A bias that is harmless at small scale and ruinous at large
scale (or the reverse) shows up as a break: ``d_i`` is then the critical scale.

The objective is the reference one — mean squared error in log(y + 1) — and so is the idea of
the initialisation (a brute grid, then a local refinement), with three changes that matter on
the paper's own curves:

* **Bounds wide enough for published optima.** The 4-digit-addition fit of the paper's
  repository has a slope change c1 ≈ 5.7 with a sharpness f1 ≈ 0.06; c_i may lie in [−30, 30],
  c0 in [−5, 10], f_i in [10⁻³, 30], b over 24 decades.
* **Breaks searched beyond the data.** Break locations are gridded from one x-range below the
  smallest scale to one x-range above the largest (in log x), and bounded two decades further:
  a break the data only begins to show still has a start near it.
* **A smaller grid that sees more.** Given the exponents and breaks, the curve is linear in
  (a, b); the grid covers only (c0, c_i, d_i, f_i) and solves (a, b) per grid point by weighted
  linear least squares (weights 1/(1+y)², the log(1 + y) residual to first order). More than two
  breaks are started from the best fit with one break fewer, plus each possible new break.

The prediction is computed in log space with ``logaddexp`` so that sharp breaks (f → 0) and
large x/d do not overflow. :func:`select_breaks` chooses the number of breaks (0–3) by held-out
error on the largest scales. Bootstrap and held-out scoring come from :mod:`.fits`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from inheritlab.analysis.fit_inputs import check_inputs
from inheritlab.analysis.fits import FitResult, Form, _fit_core, _sorted, fit_form, holdout_score, split_holdout

_TINY = 1e-300
# Search box (normalised x): published optima must sit well inside it (see the module docstring).
C0_BOUNDS = (-5.0, 10.0)
C_BOUNDS = (-30.0, 30.0)
F_BOUNDS = (1e-3, 30.0)
B_DECADES = 12  # b within 10^±12 of the largest |y|
D_MARGIN_DECADES = 2.0  # beyond one x-range past the data, in decades
MAX_BREAKS = 3
# A break count is scored only when the scales below the held-out cut exceed its parameters by
# this many: with fewer, its held-out score measures luck (on the paper's 4-digit-addition curve,
# 9 parameters on 10 scales "won" and then extrapolated 3× worse than one break).
MIN_DOF = 3


def _log_shape(n: int, lx: np.ndarray, th: np.ndarray) -> np.ndarray:
    """log of x^-c0 Π(1 + (x/d_i)^(1/f_i))^(-c_i f_i) for θ (..., p) at log x (n_points,)."""
    s = -th[..., 2:3] * lx
    for i in range(n):
        c = th[..., 3 + 3 * i : 4 + 3 * i]
        d = th[..., 4 + 3 * i : 5 + 3 * i]
        f = th[..., 5 + 3 * i : 6 + 3 * i]
        s = s - c * f * np.logaddexp(0.0, (lx - np.log(np.maximum(d, _TINY))) / f)
    return s


def _bnsl_fn(n: int):
    def fn(X: np.ndarray, th: np.ndarray) -> np.ndarray:
        th = np.asarray(th)
        s = np.log(np.maximum(th[..., 1:2], _TINY)) + _log_shape(n, np.log(X[:, 0]), th)
        return th[..., 0:1] + np.exp(np.minimum(s, 700.0))

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
        return np.stack([np.ones_like(e), e / b, -e * lx] + [e * q for q in parts], axis=-1)

    return jac


def _d_range(X: np.ndarray) -> tuple[float, float]:
    """Log-x bounds for break locations: one x-range plus two decades beyond each end."""
    lx = np.log(X[:, 0])
    lo, hi = float(lx.min()), float(lx.max())
    pad = (hi - lo) + D_MARGIN_DECADES * math.log(10.0)
    return lo - pad, hi + pad


def _bnsl_bounds(n: int):
    def bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ymax = float(np.max(np.abs(y))) or 1.0
        ld_lo, ld_hi = _d_range(X)
        lo = [min(0.0, float(np.min(y))), 10.0 ** -B_DECADES * ymax, C0_BOUNDS[0]] + [C_BOUNDS[0], math.exp(ld_lo), F_BOUNDS[0]] * n
        hi = [ymax, 10.0 ** B_DECADES * ymax, C0_BOUNDS[1]] + [C_BOUNDS[1], math.exp(ld_hi), F_BOUNDS[1]] * n
        return np.asarray(lo), np.asarray(hi)

    return bounds


# Grid axes. Break positions inside the data are fractions of the observed log-x range (0 =
# smallest scale, 1 = largest); outside it, far ones likewise, and near ones where the break's
# visible effect at the edge of the data takes a set size (see _edge_breaks).
_C0S = np.array([0.0, 0.03, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5])
_CS = np.array([-1.5, -0.75, -0.35, -0.15, 0.15, 0.35, 0.75, 1.5, 3.0, 6.0, 12.0])
_DPOS = np.concatenate([[-0.75, -0.35], np.linspace(0.0, 1.0, 11), [1.35, 1.75]])
_FS = np.array([0.02, 0.06, 0.2, 0.6, 2.0])
_EDGE_EFFECTS = np.array([1e-4, 1e-3, 1e-2, 0.05])
# The coarse full grid of two breaks (beside the starts from the one-break fit).
_C0S_2 = np.array([0.0, 0.1, 0.35, 0.75])
_CS_2 = np.array([-0.5, 0.3, 1.0, 4.0])
_DPOS_2 = np.array([0.0, 0.33, 0.67, 1.0, 1.5])
_FS_2 = np.array([0.05, 0.5])


def _linear_head(n: int, X: np.ndarray, y: np.ndarray, rest: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Complete grid rows ``rest`` = (c0, breaks…) with the best (a, b) for each: θ (G, p).

    y ≈ a + b·g(x) is linear in (a, b); weighted least squares with weights 1/(1+y)² matches
    the log(1 + y) residual to first order. a is kept inside its bounds (then b refitted alone).
    """
    lx = np.log(X[:, 0])
    w = 1.0 / np.maximum(1.0 + y, 1e-6) ** 2
    th = np.concatenate([np.zeros((len(rest), 2)), rest], axis=1)
    out = np.empty_like(th)
    for s in range(0, len(th), 4096):
        t = th[s : s + 4096].copy()
        g = np.exp(np.clip(_log_shape(n, lx, t), -700.0, 700.0))
        sw, sg, sgg = w.sum(), g @ w, (g * g) @ w
        sy, sgy = float(w @ y), (g * y) @ w
        det = sw * sgg - sg * sg
        with np.errstate(all="ignore"):
            b = np.where(det > 0, (sw * sgy - sg * sy) / det, 0.0)
            a = (sy - b * sg) / sw
            a = np.clip(np.where(np.isfinite(a), a, lo[0]), lo[0], hi[0])
            b = ((g * (y - a[:, None])) @ w) / np.maximum(sgg, _TINY)
        t[:, 0], t[:, 1] = a, np.clip(np.where(np.isfinite(b), b, lo[1]), lo[1], hi[1])
        out[s : s + 4096] = t
    return out


def _edge_breaks(lx_lo: float, lx_hi: float, c: float, f: float) -> list[float]:
    """Log break locations just outside the data whose effect at the nearest edge is a set size.

    Far from a break the curve bends by about c·f·e^(−|log x − log d|/f) (in log y), so a break
    the data only begin to show has log d = edge ± f·log(|c|·f / effect). A grid uniform in
    log d misses these for sharp breaks (small f): their effect changes e-fold every f in log d.
    """
    out = []
    for eff in _EDGE_EFFECTS:
        if eff < 0.7 * abs(c) * f:
            gap = f * math.log(abs(c) * f / eff)
            out += [lx_hi + gap, lx_lo - gap]
    return out


def _break_rows(X: np.ndarray, cs: np.ndarray, dpos: np.ndarray, fs: np.ndarray, *, edges: bool = True) -> np.ndarray:
    lx = np.log(X[:, 0])
    lo, hi = float(lx.min()), float(lx.max())
    rows = []
    for c, f in itertools.product(cs, fs):
        lds = list(lo + dpos * (hi - lo)) + (_edge_breaks(lo, hi, c, f) if edges else [])
        rows += [(c, math.exp(ld), f) for ld in lds]
    return np.array(rows)


def _bnsl_grid(n: int):
    def grid(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        lo, hi = _bnsl_bounds(n)(X, y)
        if n == 0:
            return _linear_head(0, X, y, _C0S[:, None], lo, hi)
        # The best fit with one break fewer, plus every possible new break: on a curve the
        # new break barely bends (a break beyond the data), only this start sees it, since a
        # coarse step in c0 costs more than the whole break does ...
        prev = _previous_fit(n - 1, X, y)
        new = _break_rows(X, _CS, _DPOS, _FS)
        rest = np.concatenate([np.tile(prev[2:], (len(new), 1)), new], axis=1)
        if n == 1:  # ... and the full grid, for a break that reshapes the whole curve
            full = np.concatenate([np.repeat(_C0S, len(new))[:, None], np.tile(new, (len(_C0S), 1))], axis=1)
            rest = np.concatenate([rest, full])
        if n == 2:  # ... and a coarse grid of two fresh breaks, in increasing order of d
            one = _break_rows(X, _CS_2, _DPOS_2, _FS_2, edges=False)
            pairs = np.array([np.concatenate([p, q]) for p, q in itertools.product(one, one) if p[1] < q[1]])
            coarse = np.concatenate([np.repeat(_C0S_2, len(pairs))[:, None], np.tile(pairs, (len(_C0S_2), 1))], axis=1)
            rest = np.concatenate([rest, coarse])
        return _linear_head(n, X, y, rest, lo, hi)

    return grid


_PREVIOUS: dict[tuple[int, bytes, bytes], np.ndarray] = {}


def _previous_fit(n: int, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The best n-break fit of (X, y), remembered: choosing the number of breaks fits n = 0 … 3
    on the same points, and each count starts from the one below it."""
    key = (n, X.tobytes(), y.tobytes())
    if key not in _PREVIOUS:
        if len(_PREVIOUS) >= 64:
            _PREVIOUS.pop(next(iter(_PREVIOUS)))
        _PREVIOUS[key] = _fit_core(bnsl_form(n), X, y)[0]
    return _PREVIOUS[key].copy()


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
    if not 0 <= n_breaks <= 8:
        raise ValueError(f"n_breaks={n_breaks}: expected 0 … 8")
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
        top_k=6 if n <= 1 else 4,  # refinements of many-break fits are dear: fewer, from better starts
    )


def fit_bnsl(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, n_breaks: int = 1, **kw: Any) -> FitResult:
    """Fit a broken neural scaling law with ``n_breaks`` breaks (see the module docstring)."""
    return fit_form(bnsl_form(n_breaks), x, y, **kw)


@dataclass(frozen=True)
class BreakSelection:
    """The chosen number of breaks, its full fit, and every candidate's held-out score."""

    n_breaks: int
    fit: FitResult
    candidates: tuple[dict[str, Any], ...]  # n_breaks, n_params, holdout_rmsle (or why none), chosen
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return {"n_breaks": self.n_breaks, "margin": self.margin, "candidates": [dict(c) for c in self.candidates]}


def select_breaks(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, max_breaks: int = MAX_BREAKS,
    holdout_frac: float = 0.25, margin: float = 0.9, **kw: Any,
) -> BreakSelection:
    """Choose 0 … ``max_breaks`` breaks by held-out error on the largest scales; fit the choice.

    Each candidate is refitted on the smaller scales and scored (RMSLE in log(1 + y)) on the
    largest ``holdout_frac`` of them; it needs ``MIN_DOF`` more scales below the cut than it has
    parameters. Going up from 0 breaks, a candidate with more breaks is
    chosen only when its score is below ``margin`` × the score of the count chosen so far: three
    parameters more must buy a clearly better extrapolation, not a lucky digit. A candidate that
    the split leaves too few scales for is listed with the reason and never chosen. The chosen
    count is then fitted on all points (``kw`` go to :func:`fit_form`: bootstrap, seed …).
    """
    if not 0 <= max_breaks <= MAX_BREAKS:
        raise ValueError(f"max_breaks={max_breaks}: expected 0 … {MAX_BREAKS}")
    X, yv, _ = check_inputs(bnsl_form(0), x, y)
    X, yv = _sorted(X, yv)
    n_distinct = len(np.unique(X[:, 0]))
    split = split_holdout(X, holdout_frac)
    n_below = len(np.unique(X[split[0], 0])) if split is not None else 0
    candidates: list[dict[str, Any]] = []
    chosen, best = None, math.inf
    for n in range(max_breaks + 1):
        form = bnsl_form(n)
        row: dict[str, Any] = {"n_breaks": n, "n_params": form.n_params, "holdout_rmsle": math.nan, "chosen": False}
        if n_distinct < form.needs:
            row["skipped"] = f"{n_distinct} scales, {form.needs} needed"
        elif n_below < form.n_params + MIN_DOF:
            row["skipped"] = (f"{n_below} scales below the held-out cut, {form.n_params + MIN_DOF} needed "
                              f"({MIN_DOF} more than parameters)")
        else:
            ho = holdout_score(form, X, yv, frac=holdout_frac)
            if "skipped" in ho:
                row["skipped"] = ho["skipped"]
            else:
                row["holdout_rmsle"] = ho["rmsle"]
                if chosen is None or ho["rmsle"] < margin * best:
                    chosen, best = n, ho["rmsle"]
        candidates.append(row)
    if chosen is None:  # no candidate could be scored: the simplest (fit_form says if even that cannot be fitted)
        chosen = 0
    candidates[chosen]["chosen"] = True
    fit = fit_form(bnsl_form(chosen), X, yv, holdout_frac=holdout_frac, **kw)
    return BreakSelection(n_breaks=chosen, fit=fit, candidates=tuple(candidates), margin=margin)


def break_scales(fit: FitResult) -> list[dict[str, Any]]:
    """The fitted breaks in original x units, with their 95 % intervals when bootstrapped.

    ``beyond_data`` says where a break lies outside the fitted scales ("below", "above" or
    None): such a break is an extrapolation the data only begin to show.
    """
    out = []
    lo_x, hi_x = fit.scale_range
    i = 1
    while f"d{i}" in fit.params:
        lo, hi = fit.ci.get(f"d{i}", (float("nan"), float("nan")))
        d = fit.params[f"d{i}"]
        where = "below" if d < lo_x else "above" if d > hi_x else None
        out.append({"break": i, "d": d, "d_lo": lo, "d_hi": hi, "slope_change": fit.params[f"c{i}"],
                    "sharpness_f": fit.params[f"f{i}"], "beyond_data": where})
        i += 1
    return out
