"""Two-step task prediction for LM cells: scale → loss → task accuracy (Bhagia et al., 2024).

Task accuracy rarely follows a power law in scale — it sits at chance, then rises in an S
shape — but it is a smooth function of the model's loss, and the loss does follow a power
law. So, as Bhagia et al. ("Establishing Task Scaling Laws via Compute-Efficient Model
Ladders") do, the prediction takes two steps fitted on the smaller scales only:

1. loss(x) = a·x^-b + c on the cells' final checkpoints (the engine's power law);
2. acc(L) = lo + span / (1 + exp((L − L0)/s)), a falling sigmoid of the loss, on every
   evaluated checkpoint below the target scale (intermediate checkpoints add points along the
   curve, as Bhagia et al. use them);

then predicts the accuracy at the largest scale from the predicted loss there, and scores it
against the measured accuracy. The interval carries step 1's bootstrap band of the loss through
step 2 (step 2's own uncertainty is not in it; the note says so).

A task that does not have that shape gets a note instead of a number: accuracy that does not
fall as loss rises (no sigmoid of the loss to fit), accuracy flat below the target scale (at
chance: nothing to extrapolate), or too few scales.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

from inheritlab.analysis.fit_inputs import FitInputError, InsufficientData, stack_columns
from inheritlab.analysis.fits import FitResult
from inheritlab.analysis.fits_power import fit_best_power_law

# Accuracy that moves less than this over the training scales is treated as flat (at chance).
FLAT = 0.02
# Accuracy must fall with loss at least this consistently (Spearman ρ) for step 2.
MIN_RANK_CORR = -0.5


@dataclass(frozen=True)
class Sigmoid:
    """acc(L) = lo + span / (1 + exp((L − L0)/s)): falls from lo + span to lo as L rises."""

    lo: float
    span: float
    L0: float
    s: float
    rmse: float
    n_points: int

    def __call__(self, L: np.ndarray | float) -> np.ndarray:
        z = np.clip((np.asarray(L, dtype=float) - self.L0) / self.s, -700.0, 700.0)
        return self.lo + self.span / (1.0 + np.exp(z))

    def to_dict(self) -> dict[str, float]:
        return {"lo": self.lo, "span": self.span, "L0": self.L0, "s": self.s, "rmse": self.rmse, "n_points": self.n_points}


@dataclass(frozen=True)
class TwoStepPrediction:
    """A two-step prediction of one curve's accuracy at its largest scale, or why there is none."""

    label: str
    target_scale: float
    actual: float | None = None
    predicted: float | None = None
    interval: tuple[float, float] | None = None
    loss_predicted: float | None = None
    loss_actual: float | None = None
    step1: FitResult | None = None
    step2: Sigmoid | None = None
    note: str = ""

    @property
    def abs_error(self) -> float | None:
        if self.predicted is None or self.actual is None:
            return None
        return abs(self.predicted - self.actual)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "target_scale": self.target_scale, "actual": self.actual, "predicted": self.predicted,
            "interval95": list(self.interval) if self.interval else None, "abs_error": self.abs_error,
            "loss_predicted": self.loss_predicted, "loss_actual": self.loss_actual,
            "step1": self.step1.to_dict() if self.step1 else None, "step2": self.step2.to_dict() if self.step2 else None,
            "note": self.note,
        }


def fit_sigmoid(loss: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> Sigmoid:
    """Fit acc = lo + span / (1 + exp((L − L0)/s)) by least squares in accuracy units.

    Accuracy in [0, 1]; loss > 0. Started from a small grid of (L0, s) with (lo, span) solved
    linearly for each, then refined within bounds (lo, lo + span inside [0, 1], s > 0).
    """
    A = stack_columns("sigmoid fit", loss=loss, acc=acc)
    A = A[np.all(np.isfinite(A), axis=1)]
    L, y = A[:, 0], A[:, 1]
    if np.any(L <= 0):
        raise FitInputError(f"sigmoid fit: column 'loss' has {float(L[L <= 0][0])!r}; allowed: loss > 0")
    if np.any((y < 0) | (y > 1)):
        raise FitInputError(f"sigmoid fit: column 'acc' has {float(y[(y < 0) | (y > 1)][0])!r}; allowed: 0 ≤ acc ≤ 1")
    if len(np.unique(L)) < 4:
        raise InsufficientData(f"sigmoid fit: {len(np.unique(L))} distinct losses, need at least 4")
    spread = float(L.max() - L.min()) or 1.0
    best, best_cost = None, math.inf
    for L0 in np.linspace(L.min() - 0.5 * spread, L.max() + 0.5 * spread, 9):
        for s in spread * np.array([0.03, 0.1, 0.3, 1.0]):
            g = 1.0 / (1.0 + np.exp(np.clip((L - L0) / s, -700, 700)))
            M = np.column_stack([np.ones_like(g), g])
            (lo, span), *_ = np.linalg.lstsq(M, y, rcond=None)
            cost = float(np.sum((lo + span * g - y) ** 2))
            if cost < best_cost:
                best, best_cost = (float(np.clip(lo, 0, 1)), float(np.clip(span, 1e-6, 1)), L0, s), cost

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] + p[1] / (1.0 + np.exp(np.clip((L - p[2]) / p[3], -700, 700))) - y

    lo_b = [0.0, 1e-6, L.min() - 5 * spread, 1e-4 * spread]
    hi_b = [1.0, 1.0, L.max() + 5 * spread, 10 * spread]
    x0 = np.clip(np.asarray(best), np.asarray(lo_b) + 1e-9, np.asarray(hi_b) - 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = least_squares(resid, x0, bounds=(lo_b, hi_b), method="trf", x_scale="jac")
    p = sol.x
    return Sigmoid(lo=float(p[0]), span=float(p[1]), L0=float(p[2]), s=float(p[3]),
                   rmse=float(np.sqrt(np.mean(resid(p) ** 2))), n_points=len(L))


def two_step_prediction(
    label: str,
    final_x: np.ndarray, final_loss: np.ndarray, final_acc: np.ndarray,
    all_x: np.ndarray, all_loss: np.ndarray, all_acc: np.ndarray,
    *, n_boot: int = 200, seed: int = 0,
) -> TwoStepPrediction:
    """Predict the accuracy at the largest scale from the smaller ones, in two steps.

    ``final_*``: one row per cell (final checkpoint): scale, loss, accuracy. ``all_*``: every
    evaluated checkpoint, with its cell's scale (for the cut) and its own loss and accuracy.
    """
    F = stack_columns("two-step prediction", x=final_x, loss=final_loss, acc=final_acc)
    F = F[np.all(np.isfinite(F), axis=1)]
    P = stack_columns("two-step prediction", x=all_x, loss=all_loss, acc=all_acc)
    P = P[np.all(np.isfinite(P), axis=1)]
    if not len(F):
        return TwoStepPrediction(label=label, target_scale=math.nan, note="no finite (scale, loss, accuracy) rows")
    target = float(F[:, 0].max())
    tr, te = F[F[:, 0] < target], F[F[:, 0] == target]
    base = TwoStepPrediction(label=label, target_scale=target, actual=float(te[:, 2].mean()), loss_actual=float(te[:, 1].mean()))
    n_scales = len(np.unique(tr[:, 0]))
    if n_scales < 3:
        return _with(base, note=f"only {n_scales} scale(s) below the target: two steps need at least 3")
    pts = P[P[:, 0] < target]
    acc_range = float(pts[:, 2].max() - pts[:, 2].min())
    if acc_range < FLAT:
        return _with(base, note=f"accuracy flat below the target scale (range {acc_range:.3f} < {FLAT}): "
                                "at chance, nothing to extrapolate; the task does not fit the two-step shape")
    rho = float(stats.spearmanr(pts[:, 1], pts[:, 2]).statistic)
    if not rho <= MIN_RANK_CORR:
        return _with(base, note=f"accuracy does not fall as loss rises (Spearman ρ = {rho:+.2f}, need ≤ {MIN_RANK_CORR}): "
                                "no sigmoid of the loss; the task does not fit the two-step shape")
    try:
        step1 = fit_best_power_law(tr[:, 0], tr[:, 1], n_boot=n_boot, seed=seed, holdout=False)
        step2 = fit_sigmoid(pts[:, 1], pts[:, 2])
    except (InsufficientData, FitInputError) as exc:
        return _with(base, note=f"two-step fit failed: {exc}")
    assert step1 is not None  # three or more scales
    L_hat = float(step1.predict([target])[0])
    lo_L, hi_L = (float(v[0]) for v in step1.band([target]))
    # The sigmoid falls with loss: the loss band's upper end is the accuracy's lower end.
    interval = (float(step2(hi_L)), float(step2(lo_L))) if step1.boot.has_interval else None
    note = "interval: step 1's bootstrap band of the loss carried through step 2 (step 2's own uncertainty not included)"
    return _with(base, predicted=float(step2(L_hat)), interval=interval, loss_predicted=L_hat, step1=step1, step2=step2,
                 note=note)


def _with(p: TwoStepPrediction, **kw: Any) -> TwoStepPrediction:
    return replace(p, **kw)
