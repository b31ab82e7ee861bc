"""Scaling-law fitting engine: one recipe for every parametric form.

Every parametric form goes through the same recipe, so they can be compared on equal terms:

1. **Check the input** (:func:`inheritlab.analysis.fit_inputs.check_inputs`): equal lengths, scales > 0, targets inside the
   residual space's domain, group indices 0 … G−1 with none missing. A bad value is an error
   naming the column, the row, the value and what is allowed; a non-finite row is dropped and
   counted (``FitResult.n_dropped``), never silently.
2. **Sort the input** (by x, then y): a fit must not depend on row order.
3. **Normalise x** by its geometric mean, so parameters are O(1) whatever the units (samples,
   FLOPs, GMACs). Reported parameters are converted back to the original units.
4. **Robust initialisation**: evaluate the loss on a grid of starting points (vectorised), keep
   the best few, refine each with a bounded optimiser (``scipy.optimize.least_squares``, trust
   region reflective — what ``curve_fit`` uses when bounds are given), then polish the best one
   to tight tolerances: on clean data a loosely converged optimum extrapolates visibly worse.
5. **Bootstrap** (seeded: same data, same intervals). The scales (and seeds per scale) of a
   study are fixed by its design, not sampled, so by default every resample keeps every point
   and only redraws its noise: a *wild* bootstrap, each point's own residual with a random sign
   (residuals of log(1 + y) or of a study whose seeds vary more at small scale differ in size
   from point to point; shuffling them across points would mix them up). Residuals are first
   scaled by 1/(1 − h_i), h_i the point's leverage — without it a fit with p parameters on n
   points sees residuals shrunk by about (n − p)/n and its intervals undercover (the HC3 scaling,
   which Davidson & Flachaire 2008 found most accurate with sign-flip weights). Also available:
   *residual* (shuffled residuals, scaled by 1/√(1 − h_i)) and *pairs* (points resampled with
   replacement; a resample that cannot determine the form is dropped and counted) — the form's
   own default for a Huber fit. All resamples are refitted *together* by a batched, bounded
   Levenberg–Marquardt started at the best fit; one that does not converge is dropped and
   counted. The interval is the *expanded* percentile interval (Hesterberg 2015: the percentiles
   at Student's t with n − p degrees of freedom, not the normal's 2.5 / 97.5). It is reported
   only from at least 90 % of the requested resamples, and it always contains its point
   estimate (widened when the resamples lie to one side, and said so). ``analysis/coverage.py``
   checks that 95 % means 95 %.
6. **Held-out extrapolation**: refit on the smaller scales, score the error on the larger ones.

Residuals are taken in log space (``log y`` or ``log(y + 1)``), which weighs a 10 % miss at
small and large scales alike and matches how scaling laws are read on log-log axes. A form may
ask for the Huber loss on those residuals instead of squares (``Form.huber_delta``; see
``fits_chinchilla``).

The forms live beside it: ``fits_power`` (power laws, joint fit across levels), ``fits_bnsl``
(broken laws, break-count selection) and ``fits_chinchilla``; ``fits_frontier`` fits compute
frontiers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

# The input checks and their errors live in fit_inputs; the names stay importable from here.
from inheritlab.analysis.fit_inputs import (  # noqa: F401
    FitInputError,
    InsufficientData,
    as_2d,
    check_inputs,
    stack_columns,
)

# The smallest positive value the engine lets a prediction, parameter or grid scale take before
# a logarithm: keeps log() finite without moving any realistic value.
TINY = 1e-12
# No interval is reported from fewer than this share of the requested bootstrap resamples: the
# kept ones would be a selected subset, and their spread not the fit's uncertainty.
MIN_KEPT_SHARE = 0.9
LEVEL = 0.95
# Points the initialisation grid is scored on (an even subsample of longer curves).
GRID_POINTS = 128
# Rounds of 50·(p + 1) evaluations the final polish may take (see _refine).
POLISH_ROUNDS = 12
# A bootstrap refit whose last STALL_STEPS steps gained less than STALL_GAIN of its loss has
# converged as far as the data can tell (see _batched_lm).
STALL_STEPS, STALL_GAIN = 200, 1e-7
BOOTSTRAP_METHODS = ("wild", "residual", "pairs")


@dataclass(frozen=True, kw_only=True)
class Form:
    """A parametric scaling form y = f(x; θ) with the pieces the engine needs.

    ``fn(X, theta)`` takes normalised inputs ``X`` of shape (n, d) and parameters of shape
    (..., p) and returns predictions of shape (..., n). ``bounds`` and ``grid`` see the
    normalised data, so they can adapt to it (a break location around the x range, a floor
    below the smallest y). ``log_params`` marks parameters optimised as log θ (positive, with
    a wide range). ``to_units`` converts normalised parameters to the original x units.
    ``columns`` names the columns of X in error messages; columns after ``scale_dims`` are
    group indices 0 … ``n_groups``−1.
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
    scale_dims: int | None = None  # leading columns of X that are scales; the rest are group indices
    # Optional analytic derivative: jac(X, theta) → (..., n, p), ∂fn/∂θ. Without it the
    # optimisers difference numerically (p + 1 evaluations per step instead of about two).
    jac: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    columns: tuple[str, ...] = ("x",)
    n_groups: int | None = None
    huber_delta: float | None = None  # Huber loss on the residuals instead of squares
    # Optional published starts given in original units: unit_grid(x_ref) → normalised θ rows.
    unit_grid: Callable[[np.ndarray], np.ndarray] | None = None
    top_k: int = 4  # grid points refined
    bootstrap: str = "wild"  # the default resampling scheme for this form (see the module docstring)

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


def _rho(r: np.ndarray, delta: float | None) -> np.ndarray:
    """Per-point objective: r² (least squares) or the Huber loss (quadratic inside ±δ, linear outside)."""
    if delta is None:
        return r * r
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


# --- provenance -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """Where an interval comes from: method, resamples requested and kept, seed, level, seeds.

    ``seeds_per_point`` is (fewest, most) rows per distinct scale — in a study, the training
    seeds behind each point. ``widened`` names the parameters whose percentile interval did
    not contain the point estimate and was widened to it.
    """

    method: str
    requested: int
    kept: int
    seed: int | None
    level: float = LEVEL
    seeds_per_point: tuple[int, int] = (1, 1)
    widened: tuple[str, ...] = ()
    reason: str = ""  # why there is no interval, when there is none

    @property
    def has_interval(self) -> bool:
        return not self.reason and self.kept >= 2

    def seeds_text(self) -> str:
        lo, hi = self.seeds_per_point
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    def caption(self) -> str:
        """One line for a table or figure caption."""
        head = f"{100 * self.level:g} % {self.method} bootstrap, {self.kept}/{self.requested} resamples kept, seed {self.seed}"
        tail = f"; {self.seeds_text()} seed(s) per point"
        if self.reason:
            return f"no interval ({self.reason}){tail}"
        return head + tail + (f"; widened to contain the estimate: {', '.join(self.widened)}" if self.widened else "")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "level": self.level, "n_requested": int(self.requested),
                "n_kept": int(self.kept), "seed": self.seed, "seeds_per_point": list(self.seeds_per_point),
                "widened": list(self.widened), "no_interval_reason": self.reason or None}


@dataclass(frozen=True)
class FitResult:
    """One fitted curve: parameters in original units, uncertainty, held-out error."""

    form: Form
    theta: np.ndarray              # normalised parameters (p,)
    x_ref: np.ndarray              # per-column normalisation (d,)
    params: dict[str, float]       # original units
    ci: dict[str, tuple[float, float]]
    loss: float                    # mean objective (squared or Huber residual) in the form's space
    n_points: int
    boot_theta: np.ndarray         # (B_kept, p) normalised bootstrap parameters
    holdout: dict[str, Any] | None = None
    note: str = ""
    boot: Bootstrap = field(default_factory=lambda: Bootstrap("wild", 0, 0, None))
    n_dropped: int = 0             # non-finite rows left out
    at_bound: tuple[str, ...] = ()  # parameters that ended on a bound of the search box
    scale_range: tuple[float, float] = (math.nan, math.nan)  # smallest and largest fitted scale (first column)

    def predict(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """The fitted curve at ``x`` (original units)."""
        X = as_2d(x) / self.x_ref
        return self.form.fn(X, self.theta)

    def band(self, x: np.ndarray | Sequence[float], level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap band of the prediction (equal tails), always containing the fit."""
        X = as_2d(x) / self.x_ref
        p = self.form.fn(X, self.theta)
        if len(self.boot_theta) < 2 or not self.boot.has_interval:
            return p, p
        preds = self.form.fn(X, self.boot_theta)
        q = tail_share(level, self.n_points - self.form.n_params)
        lo, hi = np.nanquantile(preds, q, axis=0), np.nanquantile(preds, 1 - q, axis=0)
        return np.minimum(lo, p), np.maximum(hi, p)

    def with_note(self, note: str) -> FitResult:
        """A copy with ``note`` appended to the existing note: caveats accumulate, none is lost."""
        return replace(self, note=f"{self.note}; {note}" if self.note else note)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: form, parameters, 95 % intervals with their provenance, loss, held-out score, note."""
        return {
            "form": self.form.name,
            "params": {k: float(v) for k, v in self.params.items()},
            "ci95": {k: [float(a), float(b)] for k, (a, b) in self.ci.items()},
            "bootstrap": self.boot.to_dict(),
            "loss": float(self.loss),
            "objective": "huber" if self.form.huber_delta is not None else "squares",
            "n_points": int(self.n_points),
            "n_dropped_nonfinite": int(self.n_dropped),
            "at_bound": list(self.at_bound),
            "holdout": self.holdout,
            "note": self.note,
        }


# --- core -------------------------------------------------------------------------------------


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

    def on_bound(self, theta: np.ndarray) -> np.ndarray:
        u = np.where(self.mask, np.log(np.maximum(theta, TINY)), theta)
        tol = 1e-6 * (self.hi - self.lo)
        return (u <= self.lo + tol) | (u >= self.hi - tol)


def _resid_jac(form: Form, X: np.ndarray, theta: np.ndarray, sp: _Space) -> np.ndarray:
    """∂(T(f) − T(y))/∂u for the optimiser's variables u, from the form's analytic jac."""
    assert form.jac is not None
    with np.errstate(all="ignore"):
        f = form.fn(X, theta)
        dT = 1.0 / np.maximum(f, TINY) if form.space == "log" else 1.0 / np.maximum(1.0 + f, TINY)
        J = form.jac(X, theta) * dT[..., None]
        J = J * np.where(sp.mask, theta, 1.0)[..., None, :]  # dθ/du = θ for log-parameters
    return np.where(np.isfinite(J), J, 0.0)


def _resid(form: Form, X: np.ndarray, ty: np.ndarray, sp: _Space, u: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        r = _t(form.fn(X, sp.to_theta(u)), form.space) - ty
    return np.where(np.isfinite(r), r, 1e3)


def _num_jac(form: Form, X: np.ndarray, ty: np.ndarray, sp: _Space, u: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Forward-difference Jacobian of the residuals for a batch of u (B, p) → (B, n, p)."""
    h = 1e-6 * (1.0 + np.abs(u))
    J = np.empty(u.shape[:-1] + (ty.shape[-1], u.shape[-1]))
    for k in range(u.shape[-1]):
        du = u.copy()
        du[..., k] += h[..., k]
        J[..., k] = (_resid(form, X, ty, sp, du) - r) / h[..., k : k + 1]
    return J


def _grid_losses(form: Form, X: np.ndarray, ty: np.ndarray, grid: np.ndarray, chunk: int = 20000) -> np.ndarray:
    out = np.empty(len(grid))
    with np.errstate(all="ignore"):
        for s in range(0, len(grid), chunk):
            r = _t(form.fn(X, grid[s : s + chunk]), form.space) - ty
            out[s : s + chunk] = np.mean(_rho(r, form.huber_delta), axis=-1)
    return np.where(np.isfinite(out), out, np.inf)


def _refine(form: Form, X: np.ndarray, ty: np.ndarray, sp: _Space, theta0: np.ndarray, w: np.ndarray | None,
            *, tight: bool = False) -> tuple[np.ndarray, float]:
    """One bounded trust-region refinement from ``theta0``; ``tight`` polishes to full precision."""
    sw = None if w is None else np.sqrt(w)

    def resid(u: np.ndarray) -> np.ndarray:
        r = _resid(form, X, ty, sp, u)
        return r if sw is None else r * sw

    jac: Any = "2-point"
    if form.jac is not None:
        def jac(u: np.ndarray) -> np.ndarray:
            J = _resid_jac(form, X, sp.to_theta(u), sp)
            return J if sw is None else J * sw[:, None]

    # Huber on the residuals is scipy's own robust loss with f_scale = δ: identical objective.
    robust = {} if form.huber_delta is None else {"loss": "huber", "f_scale": form.huber_delta}
    wts = np.ones(len(ty)) if w is None else w

    def loss(u: np.ndarray) -> float:
        return float(np.sum(wts * _rho(_resid(form, X, ty, sp, u), form.huber_delta)) / np.sum(wts))

    budget = 50 * (form.n_params + 1)
    tol = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15} if tight else {}
    u, cur = sp.to_u(theta0), math.inf
    # A polish continues in rounds while each round still cuts the loss by a tenth: a curve with a sharp
    # break beyond the data creeps along a narrow valley for thousands of steps (and extrapolates
    # only once at its floor), while a fit with spare parameters stalls at once and stops.
    for _ in range(POLISH_ROUNDS if tight else 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = least_squares(resid, u, jac=jac, bounds=(sp.lo, sp.hi), method="trf", x_scale="jac",
                                max_nfev=budget, **robust, **tol)
        new = loss(sol.x)
        improved = new < 0.9 * cur
        if new <= cur:
            u, cur = sol.x, new
        if sol.status != 0 or not improved:  # converged, or no longer worth its cost
            break
    return sp.to_theta(u), cur


def _batched_lm(form: Form, X: np.ndarray, TY: np.ndarray, W: np.ndarray, sp: _Space, theta0: np.ndarray,
                iters: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Refit B problems at once: targets ``TY`` (B, n), point weights ``W`` (B, n).

    Projected Levenberg–Marquardt (for the Huber loss: iteratively reweighted, weights
    min(1, δ/|r|)); every step is a handful of (B, n) evaluations and one batched p×p solve, so
    200 resamples cost about as much as a few single fits. Each step works on the problems not
    yet done only, so the few slow ones (a break sharper than the scales are spaced creeps along
    a flat valley) may take many steps without costing the rest. Returns θ (B, p) and whether
    each problem converged: an accepted step gained almost nothing, no step could gain, or the
    last ``STALL_STEPS`` steps together gained less than ``STALL_GAIN`` of the loss (a valley so
    flat that its floor is no better a fit; the parameters along it are what the design leaves
    undetermined, and the resamples' spread shows it).
    """
    B, p = len(W), form.n_params
    u = np.tile(sp.to_u(theta0), (B, 1))
    lam = np.full(B, 1e-2)
    wsum = W.sum(axis=1)
    delta = form.huber_delta
    r = _resid(form, X, TY, sp, u)
    cur = np.sum(W * _rho(r, delta), axis=1) / wsum
    eye = np.eye(p)
    span = 1e-9 * (sp.hi - sp.lo)
    # Reweighted steps for the Huber loss converge linearly (it is nearly an absolute-error
    # fit): stop at a relative gain of 1e-6, far below what an interval's digits show.
    rtol = 1e-9 if delta is None else 1e-6
    done = np.zeros(B, dtype=bool)
    mark = cur.copy()
    for it in range(1, iters + 1):
        i = np.flatnonzero(~done)
        if not len(i):
            break
        ui, ri, Wi, TYi = u[i], r[i], W[i], TY[i]
        J = _resid_jac(form, X, sp.to_theta(ui), sp) if form.jac is not None else _num_jac(form, X, TYi, sp, ui, ri)
        Wt = Wi if delta is None else Wi * np.minimum(1.0, delta / np.maximum(np.abs(ri), TINY))
        JW = J * Wt[:, :, None]
        A = np.einsum("bnp,bnq->bpq", JW, J)
        g = np.einsum("bnp,bn->bp", JW, ri)
        # Variables on a bound that the gradient pushes outwards are held there (an active
        # set): a clipped step would otherwise keep gaining crumbs along the bound.
        active = ((ui <= sp.lo + span) & (g > 0)) | ((ui >= sp.hi - span) & (g < 0))
        keep = (~active).astype(float)
        A = A * keep[:, :, None] * keep[:, None, :] + np.einsum("bp,pq->bpq", active.astype(float), eye)
        g = g * keep
        diag = np.einsum("bpp->bp", A)
        M = A + lam[i, None, None] * (diag[:, :, None] * eye + 1e-9 * eye)
        try:
            step = -np.linalg.solve(M, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = -g * 1e-3
        step = np.where(np.isfinite(step), step, 0.0)
        cand = np.clip(ui + step, sp.lo, sp.hi)
        rc = _resid(form, X, TYi, sp, cand)
        new = np.sum(Wi * _rho(rc, delta), axis=1) / wsum[i]
        better = new < cur[i]
        gain = np.where(better, cur[i] - new, 0.0)
        u[i] = np.where(better[:, None], cand, ui)
        r[i] = np.where(better[:, None], rc, ri)
        cur[i] = np.where(better, new, cur[i])
        lam[i] = np.clip(np.where(better, lam[i] / 3.0, lam[i] * 4.0), 1e-9, 1e9)
        # A problem is done once an accepted step gains (almost) nothing, or once the damping
        # has grown so large that no step is accepted. (A step that moves no parameter by more
        # than a part in 10⁸ counts as no gain: on a bound, projected steps gain crumbs for ever.)
        moved = np.max(np.abs(cand - ui) / (1.0 + np.abs(ui)), axis=1)
        done[i] = (better & ((gain <= rtol * cur[i] + 1e-300) | (moved <= 1e-8))) | (lam[i] >= 1e8) | (cur[i] <= 1e-30)
        if it % STALL_STEPS == 0:
            done |= mark - cur <= STALL_GAIN * cur
            mark = cur.copy()
    return sp.to_theta(u), done & np.all(np.isfinite(u), axis=1)


def refit_resamples(
    form: Form, Xn: np.ndarray, y: np.ndarray, W: np.ndarray, theta0: np.ndarray, *, batched: bool = True,
) -> np.ndarray:
    """Refit ``form`` once per row of point weights ``W`` (B, n), starting at ``theta0``; θ (B, p).

    A pairs-bootstrap resample drawn with replacement is the same data with multinomial
    weights. ``Xn`` is the normalised input (x / the fit's ``x_ref``) and ``theta0`` the best
    fit's normalised parameters. ``batched=True`` refits all rows together with one projected
    Levenberg–Marquardt (what :func:`fit_form` uses); ``batched=False`` runs one bounded scipy
    ``least_squares`` per row — the slow reference that the batched solver must match and that
    ``benchmarks/bench_fits.py`` times it against (squared residuals only).
    """
    lo, hi = form.bounds(Xn, y)
    sp = _Space(form, lo, hi)
    ty = _t(y, form.space)
    if batched:
        return _batched_lm(form, Xn, np.broadcast_to(ty, W.shape), W, sp, theta0)[0]
    if form.huber_delta is not None:
        raise ValueError(f"{form.name}: the one-by-one reference refit supports squared residuals only")
    return np.array([_refine(form, Xn, ty, sp, theta0, w)[0] for w in W], dtype=float).reshape(len(W), form.n_params)


def _fit_core(form: Form, Xn: np.ndarray, y: np.ndarray, *, top_k: int | None = None,
              x_ref: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Grid → refine the best ``top_k`` starts → polish the winner; normalised θ and its loss.

    ``x_ref`` (the normalisation of ``Xn``) lets a form add starts given in original units.
    """
    ty = _t(y, form.space)
    lo, hi = form.bounds(Xn, y)
    sp = _Space(form, lo, hi)
    # The grid only picks starts: on a long curve, an even subsample of the sorted points (ends
    # included) ranks them as well as every point does, at a fraction of the cost.
    sub = np.unique(np.linspace(0, len(y) - 1, min(len(y), GRID_POINTS)).round().astype(int))
    grid = form.grid(Xn[sub], y[sub])
    if form.unit_grid is not None and x_ref is not None:
        grid = np.concatenate([grid, form.unit_grid(x_ref)])
    grid = np.clip(grid, lo, hi)
    losses = _grid_losses(form, Xn[sub], ty[sub], grid)
    starts = grid[np.argsort(losses, kind="stable")[: top_k or form.top_k]]
    best, best_loss = starts[0], math.inf
    for s in starts:
        th, lval = _refine(form, Xn, ty, sp, s, None)
        if lval < best_loss - 1e-15:
            best, best_loss = th, lval
    th, lval = _refine(form, Xn, ty, sp, best, None, tight=True)
    return (th, lval) if lval <= best_loss else (best, best_loss)


def fit_form(
    form: Form,
    x: np.ndarray | Sequence[float],
    y: np.ndarray | Sequence[float],
    *,
    n_boot: int = 200,
    seed: int = 0,
    top_k: int | None = None,
    holdout: bool = True,
    holdout_frac: float = 0.25,
    bootstrap: str | None = None,
) -> FitResult:
    """Fit ``form`` to (x, y); bootstrap intervals and held-out score. See the module docstring."""
    if n_boot < 0:
        raise FitInputError(f"{form.name} fit: n_boot={n_boot}; allowed: n_boot ≥ 0")
    bootstrap = bootstrap or form.bootstrap
    if bootstrap not in BOOTSTRAP_METHODS:
        raise FitInputError(f"{form.name} fit: bootstrap={bootstrap!r}; allowed: {list(BOOTSTRAP_METHODS)}")
    X, yv, n_dropped = check_inputs(form, x, y)
    X, yv = _sorted(X, yv)
    n_distinct = len(np.unique(X, axis=0))
    if n_distinct < form.needs:
        raise InsufficientData(f"{form.name}: {n_distinct} distinct scale(s), need at least {form.needs}")
    if len(yv) < form.n_params:
        raise InsufficientData(f"{form.name}: {len(yv)} points for {form.n_params} parameters")
    x_ref = _geo_ref(X, form.scale_dims)
    Xn = X / x_ref
    theta, loss = _fit_core(form, Xn, yv, top_k=top_k, x_ref=x_ref)
    boot, info = _bootstrap(form, X, Xn, yv, theta, n_boot=n_boot, seed=seed, method=bootstrap)
    params_u = form.to_units(theta, x_ref)
    ci, widened = _intervals(form, params_u, boot, x_ref, len(yv) - form.n_params) if info.has_interval else ({}, ())
    info = replace(info, widened=widened)
    lo, hi = form.bounds(Xn, yv)
    at_bound = tuple(n for n, b in zip(form.params, _Space(form, lo, hi).on_bound(theta)) if b)
    res = FitResult(
        form=form, theta=theta, x_ref=x_ref, params={n: float(params_u[i]) for i, n in enumerate(form.params)},
        ci=ci, loss=loss, n_points=len(yv), boot_theta=boot, boot=info, n_dropped=n_dropped, at_bound=at_bound,
        scale_range=(float(X[:, 0].min()), float(X[:, 0].max())),
    )
    for note in _notes(res):
        res = res.with_note(note)
    if holdout:
        res = _with_holdout(res, X, yv, frac=holdout_frac, top_k=top_k)
    return res


def _notes(res: FitResult) -> list[str]:
    out = []
    if res.n_dropped:
        out.append(f"{res.n_dropped} non-finite row(s) left out")
    if res.boot.reason:
        out.append(f"no intervals ({res.boot.reason})")
    elif res.boot.kept < res.boot.requested:
        out.append(f"{res.boot.requested - res.boot.kept} of {res.boot.requested} resamples dropped "
                   "(did not converge or could not determine the form)")
    if res.boot.widened:
        out.append(f"interval(s) of {', '.join(res.boot.widened)} widened to contain the estimate")
    if res.at_bound:
        out.append(f"{', '.join(res.at_bound)} at the edge of the search box")
    return out


def _seeds_per_point(X: np.ndarray) -> tuple[int, int]:
    _, counts = np.unique(X, axis=0, return_counts=True)
    return (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)


def _bootstrap(form: Form, X: np.ndarray, Xn: np.ndarray, y: np.ndarray, theta: np.ndarray, *, n_boot: int, seed: int,
               method: str) -> tuple[np.ndarray, Bootstrap]:
    """Resampled parameters (normalised, kept ones only) and the interval's provenance."""
    empty = np.empty((0, form.n_params))
    info = Bootstrap(method, n_boot, 0, seed if n_boot else None, seeds_per_point=_seeds_per_point(X))
    if n_boot == 0:
        return empty, replace(info, reason="no bootstrap requested")
    if len(y) <= form.n_params:
        # An exact fit has no residuals to resample: every resample returns the same curve.
        return empty, replace(info, reason="no more points than parameters")
    lo, hi = form.bounds(Xn, y)
    sp = _Space(form, lo, hi)
    ty = _t(y, form.space)
    rng = np.random.default_rng(seed)
    if method == "pairs":
        W = rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=n_boot).astype(float)
        # A resample that drew too few distinct scales cannot determine the form: dropped, counted.
        _, inv = np.unique(X, axis=0, return_inverse=True)
        seen = np.zeros((n_boot, int(inv.max()) + 1))
        np.add.at(seen, (slice(None), inv.ravel()), W)
        ok = (seen > 0).sum(axis=1) >= form.needs
        TY = np.broadcast_to(ty, W.shape)
    else:
        # Wild: r/(1 − h), the HC3 scaling (MacKinnon & White 1985), which Davidson & Flachaire
        # (2008) found most accurate with sign-flip weights in small samples; shuffled: r/√(1 − h).
        e = _modified_residuals(form, Xn, ty, sp, theta, power=1.0 if method == "wild" else 0.5)
        fitted = _t(form.fn(Xn, theta), form.space)
        if method == "wild":  # each point keeps its own residual, with a random sign
            TY = fitted + e * rng.choice(np.array([-1.0, 1.0]), size=(n_boot, len(e)))
        else:  # residuals shuffled across points
            TY = fitted + (e - e.mean())[rng.integers(0, len(e), size=(n_boot, len(e)))]
        W = np.ones_like(TY)
        ok = np.ones(n_boot, dtype=bool)
    boot = empty
    if ok.any():
        th, conv = _batched_lm(form, Xn, TY[ok], W[ok], sp, theta)
        good = conv & np.all(np.isfinite(th), axis=1)
        boot = th[good]
    info = replace(info, kept=len(boot))
    if len(boot) < MIN_KEPT_SHARE * n_boot or len(boot) < 2:
        why = f"only {len(boot)} of {n_boot} resamples could be refitted; at least {MIN_KEPT_SHARE:.0%} are needed"
        return boot, replace(info, reason=why)
    return boot, info


def _modified_residuals(form: Form, Xn: np.ndarray, ty: np.ndarray, sp: _Space, theta: np.ndarray, *,
                        power: float) -> np.ndarray:
    """Residuals r_i / (1 − h_i)^power: what a fresh draw of each point's noise looks like.

    h_i is the leverage of point i under the linearised fit (the diagonal of J(JᵀJ)⁺Jᵀ); a point
    that pulls the curve onto itself shows a residual smaller than its noise by √(1 − h_i).
    """
    u = sp.to_u(theta)[None, :]
    r = _resid(form, Xn, ty[None, :], sp, u)
    J = (_resid_jac(form, Xn, theta[None, :], sp) if form.jac is not None else _num_jac(form, Xn, ty[None, :], sp, u, r))[0]
    J = J[:, np.any(J != 0, axis=0)]
    h = np.zeros(len(ty))
    if J.size:
        U, s, _ = np.linalg.svd(J, full_matrices=False)
        keep = s > s.max() * 1e-10
        h = np.sum(U[:, keep] ** 2, axis=1)
    return r[0] / np.maximum(1.0 - h, 1e-2) ** power


def tail_share(level: float, dof: int) -> float:
    """The tail share of an *expanded* percentile interval (Hesterberg 2015).

    A percentile interval is a normal-theory interval in disguise, θ̂ ± z·SE; with p parameters
    fitted to n points the honest multiplier is Student's t with n − p degrees of freedom. So
    the interval takes the percentiles at Φ(±t): for n − p = 14 and 95 %, 1.6 % and 98.4 %.
    """
    return float(stats.norm.cdf(stats.t.ppf((1 - level) / 2, max(dof, 1))))


def _intervals(form: Form, params_u: np.ndarray, boot: np.ndarray, x_ref: np.ndarray, dof: int) -> tuple[dict[str, tuple[float, float]], tuple[str, ...]]:
    """Equal-tailed expanded percentile intervals in original units, each widened to contain its estimate."""
    bu = form.to_units(boot, x_ref)
    q = tail_share(LEVEL, dof)
    lo_q, hi_q = np.nanquantile(bu, q, axis=0), np.nanquantile(bu, 1 - q, axis=0)
    ci, widened = {}, []
    for i, n in enumerate(form.params):
        est, lo, hi = float(params_u[i]), float(lo_q[i]), float(hi_q[i])
        if not lo <= est <= hi:
            widened.append(n)
            lo, hi = min(lo, est), max(hi, est)
        ci[n] = (lo, hi)
    return ci, tuple(widened)


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


def holdout_score(form: Form, X: np.ndarray, y: np.ndarray, *, frac: float = 0.25, top_k: int | None = None) -> dict[str, Any]:
    """Refit ``form`` on the smaller scales of checked, sorted (X, y); score the larger ones.

    Returns the scores, or ``{"skipped": why}`` when the split leaves too few scales to refit.
    """
    split = split_holdout(X, frac, form.scale_dims)
    if split is None:
        return {"skipped": "too few scales"}
    train, cutoff = split
    Xtr, ytr = X[train], y[train]
    if len(np.unique(Xtr, axis=0)) < form.needs:
        return {"skipped": f"too few scales to refit ({len(np.unique(Xtr, axis=0))} below the cut, {form.needs} needed)"}
    if form.n_groups is not None and len(np.unique(Xtr[:, form.scale_dims or 1 :], axis=0)) < form.n_groups:
        return {"skipped": "a group has no points below the cut"}
    ref = _geo_ref(Xtr, form.scale_dims)
    th, _ = _fit_core(form, Xtr / ref, ytr, top_k=top_k, x_ref=ref)
    pred = form.fn(X[~train] / ref, th)
    yt = y[~train]
    return {
        "train_max_scale": cutoff,
        "n_train": int(train.sum()),
        "n_test": int((~train).sum()),
        "rmsle": rmsle(pred, yt),
        "mae": float(np.mean(np.abs(pred - yt))),
        "rel_err": float(np.mean(np.abs(pred - yt) / np.maximum(np.abs(yt), TINY))),
    }


def _with_holdout(res: FitResult, X: np.ndarray, y: np.ndarray, *, frac: float, top_k: int | None) -> FitResult:
    ho = holdout_score(res.form, X, y, frac=frac, top_k=top_k)
    if "skipped" in ho:
        return replace(res, holdout=None).with_note(f"no held-out score ({ho['skipped']})")
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
