"""Scaling-law fitting engine: one recipe for every parametric form.

Every parametric form goes through the same recipe, so they can be compared on equal terms:

1. **Sort the input** (by x, then y): a fit must not depend on row order.
2. **Normalise x** by its geometric mean, so parameters are O(1) whatever the units (samples,
   FLOPs, GMACs). Reported parameters are converted back to the original units.
3. **Robust initialisation**: evaluate the loss on a grid of starting points (vectorised), keep
   the best few, refine each with a bounded optimiser (``scipy.optimize.least_squares``, trust
   region reflective — what ``curve_fit`` uses when bounds are given), keep the best.
4. **Bootstrap**: resampling points with replacement is the same as giving them multinomial
   weights, so all resamples share one x and are refitted *together* with a batched, bounded
   Levenberg–Marquardt started at the best fit. The generator is seeded: same data, same CIs.
5. **Held-out extrapolation**: refit on the smaller scales, score the error on the larger ones.

Residuals are taken in log space (``log y`` or ``log(y + 1)``), which weighs a 10 % miss at
small and large scales alike and matches how scaling laws are read on log-log axes.

The forms live beside it: ``fits_power`` (power laws, joint fit across levels) and ``fits_bnsl``
(broken laws); ``fits_frontier`` fits compute frontiers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import least_squares

# The smallest positive value the engine lets a prediction, parameter or grid scale take before
# a logarithm: keeps log() finite without moving any realistic value.
TINY = 1e-12


@dataclass(frozen=True, kw_only=True)
class Form:
    """A parametric scaling form y = f(x; θ) with the pieces the engine needs.

    ``fn(X, theta)`` takes normalised inputs ``X`` of shape (n, d) and parameters of shape
    (..., p) and returns predictions of shape (..., n). ``bounds`` and ``grid`` see the
    normalised data, so they can adapt to it (a break location inside the x range, a floor
    below the smallest y). ``log_params`` marks parameters optimised as log θ (positive, with
    a wide range). ``to_units`` converts normalised parameters to the original x units.
    """

    name: str
    params: tuple[str, ...]
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    bounds: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    grid: Callable[[np.ndarray, np.ndarray], np.ndarray]
    log_params: tuple[bool, ...]
    to_units: Callable[[np.ndarray, np.ndarray], np.ndarray]
    space: str = "log"  # residual space: "log" → log y, "log1p" → log(y + 1)
    min_points: int | None = None  # distinct x values needed (default: number of parameters)
    scale_dims: int | None = None  # leading columns of X that are scales; the rest are covariates
    # Optional analytic derivative: jac(X, theta) → (..., n, p), ∂fn/∂θ. Without it the
    # optimisers difference numerically (p + 1 evaluations per step instead of about two).
    jac: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def n_params(self) -> int:
        return len(self.params)

    @property
    def needs(self) -> int:
        return self.min_points if self.min_points is not None else self.n_params


def _t(y: np.ndarray, space: str) -> np.ndarray:
    if space == "log":
        return np.log(np.maximum(y, TINY))
    if space == "log1p":
        return np.log1p(np.maximum(y, -1 + TINY))
    raise ValueError(f"residual space {space!r}: expected 'log' or 'log1p'")


@dataclass(frozen=True)
class FitResult:
    """One fitted curve: parameters in original units, uncertainty, held-out error."""

    form: Form
    theta: np.ndarray              # normalised parameters (p,)
    x_ref: np.ndarray              # per-column normalisation (d,)
    params: dict[str, float]       # original units
    ci: dict[str, tuple[float, float]]
    loss: float                    # mean squared residual in the form's space
    n_points: int
    boot_theta: np.ndarray         # (B, p) normalised bootstrap parameters
    holdout: dict[str, Any] | None = None
    note: str = ""

    def predict(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """The fitted curve at ``x`` (original units)."""
        X = as_2d(x) / self.x_ref
        return self.form.fn(X, self.theta)

    def band(self, x: np.ndarray | Sequence[float], level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap band of the prediction (equal tails)."""
        X = as_2d(x) / self.x_ref
        if len(self.boot_theta) < 2:
            p = self.form.fn(X, self.theta)
            return p, p
        preds = self.form.fn(X, self.boot_theta)
        q = (1 - level) / 2
        return np.nanquantile(preds, q, axis=0), np.nanquantile(preds, 1 - q, axis=0)

    def with_note(self, note: str) -> FitResult:
        """A copy with ``note`` appended to the existing note: caveats accumulate, none is lost."""
        return replace(self, note=f"{self.note}; {note}" if self.note else note)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: form name, parameters, 95 % intervals, loss, held-out score, note."""
        return {
            "form": self.form.name,
            "params": {k: float(v) for k, v in self.params.items()},
            "ci95": {k: [float(a), float(b)] for k, (a, b) in self.ci.items()},
            "loss": float(self.loss),
            "n_points": int(self.n_points),
            "n_boot": int(len(self.boot_theta)),
            "holdout": self.holdout,
            "note": self.note,
        }


class InsufficientData(ValueError):
    """Too few distinct scales for the requested form."""


def as_2d(x: np.ndarray | Sequence[float]) -> np.ndarray:
    """``x`` as an (n, d) float array: a 1-D sequence of scales becomes one column.

    Every form takes X with one column per input (scale, then covariates such as a group index).
    """
    X = np.asarray(x, dtype=float)
    return X[:, None] if X.ndim == 1 else X


def _sorted(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((y,) + tuple(X[:, j] for j in reversed(range(X.shape[1]))))
    return X[order], y[order]


def _geo_ref(X: np.ndarray, scale_dims: int | None = None) -> np.ndarray:
    pos = np.where(X > 0, X, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.exp(np.nanmean(np.log(pos), axis=0))
    ref = np.where(np.isfinite(ref) & (ref > 0), ref, 1.0)
    if scale_dims is not None:
        ref[scale_dims:] = 1.0  # covariate columns (group indices) are not rescaled
    return ref


class _Space:
    """Maps between parameters θ and the optimiser's variables u (log for log-params)."""

    def __init__(self, form: Form, lo: np.ndarray, hi: np.ndarray) -> None:
        self.mask = np.asarray(form.log_params, dtype=bool)
        self.lo = np.where(self.mask, np.log(np.maximum(lo, TINY)), lo)
        self.hi = np.where(self.mask, np.log(np.maximum(hi, TINY)), hi)

    def to_u(self, theta: np.ndarray) -> np.ndarray:
        u = np.where(self.mask, np.log(np.maximum(theta, TINY)), theta)
        # Keep starts strictly inside the box: least_squares rejects x0 on a bound.
        span = self.hi - self.lo
        return np.clip(u, self.lo + 1e-9 * span, self.hi - 1e-9 * span)

    def to_theta(self, u: np.ndarray) -> np.ndarray:
        return np.where(self.mask, np.exp(u), u)


def _resid_jac(form: Form, X: np.ndarray, theta: np.ndarray, sp: _Space) -> np.ndarray:
    """∂(T(f) − T(y))/∂u for the optimiser's variables u, from the form's analytic jac."""
    assert form.jac is not None
    with np.errstate(all="ignore"):
        f = form.fn(X, theta)
        dT = 1.0 / np.maximum(f, TINY) if form.space == "log" else 1.0 / np.maximum(1.0 + f, TINY)
        J = form.jac(X, theta) * dT[..., None]
        J = J * np.where(sp.mask, theta, 1.0)[..., None, :]  # dθ/du = θ for log-parameters
    return np.where(np.isfinite(J), J, 0.0)


def _grid_losses(form: Form, X: np.ndarray, ty: np.ndarray, grid: np.ndarray, chunk: int = 20000) -> np.ndarray:
    out = np.empty(len(grid))
    with np.errstate(all="ignore"):
        for s in range(0, len(grid), chunk):
            pred = _t(form.fn(X, grid[s : s + chunk]), form.space)
            r = pred - ty
            out[s : s + chunk] = np.mean(r * r, axis=-1)
    return np.where(np.isfinite(out), out, np.inf)


def _refine(form: Form, X: np.ndarray, ty: np.ndarray, sp: _Space, theta0: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, float]:
    sw = None if w is None else np.sqrt(w)

    def resid(u: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            r = _t(form.fn(X, sp.to_theta(u)), form.space) - ty
        r = np.where(np.isfinite(r), r, 1e3)
        return r if sw is None else r * sw

    jac: Any = "2-point"
    if form.jac is not None:
        def jac(u: np.ndarray) -> np.ndarray:
            J = _resid_jac(form, X, sp.to_theta(u), sp)
            return J if sw is None else J * sw[:, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = least_squares(resid, sp.to_u(theta0), jac=jac, bounds=(sp.lo, sp.hi), method="trf", x_scale="jac",
                            max_nfev=50 * (form.n_params + 1))
    r = resid(sol.x)
    denom = len(ty) if w is None else float(np.sum(w))
    return sp.to_theta(sol.x), float(np.sum(r * r) / denom)


def _batched_lm(form: Form, X: np.ndarray, ty: np.ndarray, W: np.ndarray, sp: _Space, theta0: np.ndarray, iters: int = 100) -> np.ndarray:
    """Refit B weighted problems at once; returns θ of shape (B, p).

    Projected Levenberg–Marquardt with a forward-difference Jacobian: every step is a handful
    of (B, n) evaluations and one batched p×p solve, so 100 resamples cost about as much as a
    few single fits.
    """
    B, p = len(W), form.n_params
    u = np.tile(sp.to_u(theta0), (B, 1))
    lam = np.full(B, 1e-2)
    wsum = W.sum(axis=1)

    def resid(uu: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            r = _t(form.fn(X, sp.to_theta(uu)), form.space) - ty
        return np.where(np.isfinite(r), r, 1e3)

    def loss(r: np.ndarray) -> np.ndarray:
        return np.sum(W * r * r, axis=1) / wsum

    r = resid(u)
    cur = loss(r)
    eye = np.eye(p)
    done = np.zeros(B, dtype=bool)
    for _ in range(iters):
        if form.jac is not None:
            J = _resid_jac(form, X, sp.to_theta(u), sp)
        else:
            h = 1e-6 * (1.0 + np.abs(u))
            J = np.empty((B, len(ty), p))
            for k in range(p):
                du = u.copy()
                du[:, k] += h[:, k]
                J[:, :, k] = (resid(du) - r) / h[:, k : k + 1]
        JW = J * W[:, :, None]
        A = np.einsum("bnp,bnq->bpq", JW, J)
        g = np.einsum("bnp,bn->bp", JW, r)
        diag = np.einsum("bpp->bp", A)
        M = A + lam[:, None, None] * (diag[:, :, None] * eye + 1e-9 * eye)
        try:
            step = -np.linalg.solve(M, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = -g * 1e-3
        step = np.where(np.isfinite(step), step, 0.0)
        cand = np.clip(u + step, sp.lo, sp.hi)
        rc = resid(cand)
        new = loss(rc)
        better = new < cur
        u = np.where(better[:, None], cand, u)
        r = np.where(better[:, None], rc, r)
        gain = np.where(better, cur - new, 0.0)
        cur = np.where(better, new, cur)
        lam = np.where(better, lam / 3.0, lam * 4.0)
        lam = np.clip(lam, 1e-9, 1e9)
        # A resample is done once an accepted step gains (almost) nothing, or once the damping
        # has grown so large that no step is accepted; stop when every resample is done.
        done |= (better & (gain < 1e-8 * cur)) | (lam >= 1e8)
        if np.all(done):
            break
    return sp.to_theta(u)


def refit_resamples(
    form: Form, Xn: np.ndarray, y: np.ndarray, W: np.ndarray, theta0: np.ndarray, *, batched: bool = True,
) -> np.ndarray:
    """Refit ``form`` once per row of point weights ``W`` (B, n), starting at ``theta0``; θ (B, p).

    This is the bootstrap step: a resample drawn with replacement is the same data with
    multinomial weights. ``Xn`` is the normalised input (x / the fit's ``x_ref``) and ``theta0``
    the best fit's normalised parameters. ``batched=True`` refits all rows together with one
    projected Levenberg–Marquardt (what :func:`fit_form` uses); ``batched=False`` runs one
    bounded scipy ``least_squares`` per row — the slow reference that the batched solver must
    match and that ``benchmarks/bench_fits.py`` times it against.
    """
    lo, hi = form.bounds(Xn, y)
    sp = _Space(form, lo, hi)
    ty = _t(y, form.space)
    if batched:
        return _batched_lm(form, Xn, ty, W, sp, theta0)
    return np.array([_refine(form, Xn, ty, sp, theta0, w)[0] for w in W], dtype=float).reshape(len(W), form.n_params)


def fit_form(
    form: Form,
    x: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    *,
    n_boot: int = 200,
    seed: int = 0,
    top_k: int = 4,
    holdout: bool = True,
    holdout_frac: float = 0.25,
) -> FitResult:
    """Fit ``form`` to (x, y); bootstrap CIs and held-out score. See the module docstring."""
    X, yv = _sorted(as_2d(x), np.asarray(y, dtype=float))
    ok = np.all(np.isfinite(X), axis=1) & np.isfinite(yv)
    X, yv = X[ok], yv[ok]
    n_distinct = len(np.unique(X, axis=0))
    if n_distinct < form.needs:
        raise InsufficientData(f"{form.name}: {n_distinct} distinct scale(s), need at least {form.needs}")
    if len(yv) < form.n_params:
        raise InsufficientData(f"{form.name}: {len(yv)} points for {form.n_params} parameters")
    x_ref = _geo_ref(X, form.scale_dims)
    Xn = X / x_ref
    theta, loss = _fit_core(form, Xn, yv, top_k=top_k)
    boot = np.empty((0, form.n_params))
    note = ""
    if n_boot > 0 and len(yv) <= form.n_params:
        # An exact fit has no residuals to resample: every resample returns the same curve.
        note = "no intervals (no more points than parameters)"
    elif n_boot > 0:
        rng = np.random.default_rng(seed)
        W = rng.multinomial(len(yv), np.full(len(yv), 1.0 / len(yv)), size=n_boot).astype(float)
        # A resample that drew too few distinct scales cannot determine the form: drop it
        # (counted in n_boot of the result) rather than report its arbitrary parameters.
        _, inv = np.unique(X, axis=0, return_inverse=True)
        seen = np.zeros((n_boot, n_distinct))
        np.add.at(seen, (slice(None), inv.ravel()), W)
        W = W[(seen > 0).sum(axis=1) >= form.needs]
        if len(W):
            boot = refit_resamples(form, Xn, yv, W, theta)
    params_u = form.to_units(theta, x_ref)
    ci: dict[str, tuple[float, float]] = {}
    if len(boot) >= 2:
        bu = form.to_units(boot, x_ref)
        lo_q, hi_q = np.nanquantile(bu, 0.025, axis=0), np.nanquantile(bu, 0.975, axis=0)
        ci = {n: (float(lo_q[i]), float(hi_q[i])) for i, n in enumerate(form.params)}
    res = FitResult(
        form=form, theta=theta, x_ref=x_ref, params={n: float(params_u[i]) for i, n in enumerate(form.params)},
        ci=ci, loss=loss, n_points=len(yv), boot_theta=boot, note=note,
    )
    if holdout:
        res = _with_holdout(res, X, yv, frac=holdout_frac, top_k=top_k)
    return res


def _fit_core(form: Form, Xn: np.ndarray, y: np.ndarray, *, top_k: int, w: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    ty = _t(y, form.space)
    lo, hi = form.bounds(Xn, y)
    sp = _Space(form, lo, hi)
    grid = np.clip(form.grid(Xn, y), lo, hi)
    losses = _grid_losses(form, Xn, ty, grid)
    starts = grid[np.argsort(losses, kind="stable")[:top_k]]
    best, best_loss = starts[0], math.inf
    for s in starts:
        th, lval = _refine(form, Xn, ty, sp, s, w)
        if lval < best_loss - 1e-15:
            best, best_loss = th, lval
    return best, best_loss


def split_holdout(X: np.ndarray, frac: float = 0.25, scale_dims: int | None = None) -> tuple[np.ndarray, float] | None:
    """Mask of the training points (smaller scales) and the cutoff; None if too few scales.

    Scales are ordered by the product of the scale columns (with model size N and data D as
    two columns: N·D, a compute proxy). The largest ``frac`` of distinct scales (at least one)
    are held out.
    """
    key = np.prod(as_2d(X)[:, :scale_dims], axis=1)
    uniq = np.unique(key)
    n_test = max(1, int(round(frac * len(uniq))))
    if len(uniq) - n_test < 2:
        return None
    cutoff = uniq[len(uniq) - n_test - 1]
    return key <= cutoff, float(cutoff)


def rmsle(pred: np.ndarray, y: np.ndarray) -> float:
    """Root mean squared log error, in log(y + 1) as in the broken-scaling-law reference."""
    return float(np.sqrt(np.mean((np.log1p(np.maximum(pred, -1 + TINY)) - np.log1p(y)) ** 2)))


def _with_holdout(res: FitResult, X: np.ndarray, y: np.ndarray, *, frac: float, top_k: int) -> FitResult:
    split = split_holdout(X, frac, res.form.scale_dims)
    if split is None:
        return replace(res, holdout=None).with_note("no held-out score (too few scales)")
    train, cutoff = split
    Xtr, ytr = X[train], y[train]
    if len(np.unique(Xtr, axis=0)) < res.form.needs:
        return replace(res, holdout=None).with_note("no held-out score (too few scales to refit)")
    ref = _geo_ref(Xtr, res.form.scale_dims)
    th, _ = _fit_core(res.form, Xtr / ref, ytr, top_k=top_k)
    pred = res.form.fn(X[~train] / ref, th)
    ho = {
        "train_max_scale": cutoff,
        "n_train": int(train.sum()),
        "n_test": int((~train).sum()),
        "rmsle": rmsle(pred, y[~train]),
        "mae": float(np.mean(np.abs(pred - y[~train]))),
        "rel_err": float(np.mean(np.abs(pred - y[~train]) / np.maximum(np.abs(y[~train]), TINY))),
    }
    return replace(res, holdout=ho)


def compare_forms(results: Sequence[FitResult]) -> list[dict[str, Any]]:
    """Rank fitted forms by held-out RMSLE (lower first; forms without a score last)."""
    rows = []
    for r in results:
        ho = r.holdout or {}
        rows.append({"form": r.form.name, "n_params": r.form.n_params, "train_loss": r.loss,
                     "holdout_rmsle": ho.get("rmsle", math.nan), "holdout_rel_err": ho.get("rel_err", math.nan)})
    rows.sort(key=lambda d: (math.isnan(d["holdout_rmsle"]), d["holdout_rmsle"], d["n_params"]))
    for i, d in enumerate(rows):
        d["rank"] = i + 1
    return rows
