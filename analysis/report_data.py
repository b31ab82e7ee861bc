"""What a report says: the typed, frozen :class:`Report`, computed once from a results table.

:func:`compute_report` does every fit and every inheritance table of one (task, split, metric)
on one scale axis. The renderers in :mod:`inheritlab.analysis.render` only format what a
``Report`` holds, so the markdown summary, the LaTeX table, the JSON fits and the plots always
show the same numbers, and writing one more format never refits.

Small studies degrade instead of failing: a curve is never fitted through as few points as its
law has parameters, so one or two scales give points without a fit (a two-parameter power law
through two points passes through both, checks nothing and has no interval), three scales give a
power law without the irreducible term, one seed gives no seed error bars, one level gives no Δ
— each said in ``Report.notes``.

Accuracy-like metrics (acc1, recall@k) are fitted as error = 1 − metric, the quantity that
follows a power law towards a floor; points and tables keep the metric itself.

Beside the fits: the number of breaks of each long curve chosen by held-out error (every
candidate's score kept), the two-variable law fitted by least squares and by the Huber loss,
the decision accuracy of the smaller scales (:mod:`.decision`) and, for LM cells, the two-step
prediction of task accuracy through the loss (:mod:`.task_prediction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from inheritlab.analysis import inheritance as inh
from inheritlab.analysis.decision import decision_accuracy
from inheritlab.analysis.fits import FitResult, compare_forms
from inheritlab.analysis.fits_bnsl import break_scales, select_breaks
from inheritlab.analysis.fits_chinchilla import fit_chinchilla
from inheritlab.analysis.fits_frontier import FrontierFit, fit_frontier
from inheritlab.analysis.fits_power import POWER_LAW_NO_FLOOR, fit_best_power_law, fit_joint_power_law
from inheritlab.analysis.results import (
    aggregate_seeds,
    curve_keys,
    curve_label,
    final_checkpoints,
    higher_is_better,
    select,
    with_clean_controls,
)
from inheritlab.analysis.task_prediction import TwoStepPrediction, two_step_prediction
from inheritlab.infra.errors import InheritlabError
from inheritlab.infra.hashing import stable_int

N_BOOT = 200
# A one-break BNSL has six parameters; with eight scales two are left for the held-out score.
BNSL_MIN_SCALES = 8
# ... and it replaces the power law only when its held-out error is this much lower (and every
# break is significant): extra parameters must earn their place.
BNSL_MARGIN = 0.8
# The LM loss that two-step task prediction goes through (task, metric), per split when it has one.
LOSS_TASK, LOSS_METRIC = "perplexity", "loss"
# The fewest scales a curve is fitted on: the simplest law's parameters and one more to check
# them (the power law with a floor asks for four itself).
MIN_FIT_SCALES = POWER_LAW_NO_FLOOR.n_params + 1


def _read_only(a: Any) -> np.ndarray:
    # A frozen report must not change under a renderer's feet: its arrays refuse writes.
    arr = np.asarray(a)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, kw_only=True)
class Curve:
    """One scaling curve: a (bias type, level[, model or data scale]) over the scale axis.

    Points are seed-aggregated in metric units; ``fit`` is on the fit target (E = 1 − metric for
    accuracy-like metrics), or None when there was nothing to fit (``note`` says why).
    """

    label: str
    key: Mapping[str, Any]  # curve-key column → value, in curve-key order (read-only)
    level: float
    x: np.ndarray  # (n_scales,) distinct scales, ascending
    mean: np.ndarray  # (n_scales,) mean over seeds, metric units
    std: np.ndarray  # (n_scales,) standard deviation over seeds (0 with one seed)
    n_seeds: np.ndarray  # (n_scales,) seeds behind each point
    fit: FitResult | None
    note: str = ""
    comparison: tuple[dict[str, Any], ...] = ()  # power law vs BNSL, best held-out score first
    breaks: tuple[dict[str, Any], ...] = ()  # breaks of an accepted BNSL, original x units
    break_selection: tuple[dict[str, Any], ...] = ()  # 0–3 breaks: held-out score of each, the chosen one

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", MappingProxyType(dict(self.key)))
        for name in ("x", "mean", "std", "n_seeds"):
            object.__setattr__(self, name, _read_only(getattr(self, name)))


@dataclass(frozen=True, kw_only=True)
class JointFit:
    """E = a_ℓ·x^-b + c_ℓ across the levels of one bias type (and model): one shared exponent b."""

    label: str
    levels: tuple[float, ...]  # the level of group index 0, 1, … of the fit's a_k and c_k
    fit: FitResult


@dataclass(frozen=True, kw_only=True)
class ComputeFrontier:
    """E = β·C^α on the compute frontier of one (bias type, level), over all its models and scales."""

    label: str
    fit: FrontierFit


@dataclass(frozen=True, kw_only=True)
class TwoVariableFit:
    """E = E0 + A/N^α + B/D^β over model size N (params) and data D, for one (bias type, level).

    ``fit`` by least squares on log residuals; ``huber`` by the Huber loss as Besiroglu et al.
    (2024) recommend (None when it could not be fitted; the report's notes say why).
    """

    label: str
    fit: FitResult
    huber: FitResult | None = None


@dataclass(frozen=True, kw_only=True)
class Report:
    """Everything a report shows, for one (task, split, metric) on scale axis ``x``.

    Tables are empty (no columns) when the study cannot give them — e.g. no Δ without a clean
    and a biased level, no ID − OOD gap without both splits; ``notes`` says which and why.
    """

    metric: str
    task: str
    split: str
    x: str
    hib: bool  # higher is better: fitted as E = 1 − metric
    tag: str  # file-name part: <task>_<split>_<metric>, "@" written "at", "/" written "_"
    title: str  # "<task> / <split> / <metric>"
    curves: tuple[Curve, ...]
    joint: tuple[JointFit, ...]
    frontier: tuple[ComputeFrontier, ...]  # only for x = flops
    two_variable: tuple[TwoVariableFit, ...]  # only with >= 2 model sizes x >= 2 data scales
    delta: pl.DataFrame  # Δ metric vs clean at equal scale (inheritance.delta_vs_clean)
    critical_level: pl.DataFrame  # per bias type (inheritance.critical_level)
    multiplier: pl.DataFrame  # effective-data multiplier per biased point
    id_ood_gap: pl.DataFrame  # ID − OOD metric per (curve, scale), both splits of task and metric
    notes: tuple[str, ...]
    decision: pl.DataFrame = field(default_factory=pl.DataFrame)  # decision accuracy per smaller scale
    task_prediction: tuple[TwoStepPrediction, ...] = ()  # LM cells: scale → loss → accuracy
    chance: float | None = None  # the metric's chance level, when given and the metric is an accuracy
    levels: tuple[float, ...] = ()  # every bias level of the study (any task): one colour each in every figure

    @property
    def target(self) -> str:
        """The fitted quantity, as the JSON fits name it: "1 - acc1" or the metric itself."""
        return f"1 - {self.metric}" if self.hib else self.metric

    def to_metric(self, e: np.ndarray) -> np.ndarray:
        """Fit-target values (E) back to metric units, for plotting a fit over its points."""
        return 1.0 - e if self.hib else e


def compute_report(
    df: pl.DataFrame, *, metric: str = "acc1", task: str = "zeroshot", split: str = "id", x: str = "data_scale",
    chance: float | None = None,
) -> Report:
    """Fit every curve and compute every inheritance table of one (task, split, metric) on ``x``.

    ``df`` is the results table as loaded: the clean control is recorded once (``bias_type =
    "none"``) and repeated here as level 0 of every bias type, since each curve needs its own.
    Every fit is seeded by what its curve is, so the same table gives the same report.
    ``chance`` is the metric's chance level (1/K for top-1 accuracy over K classes; see
    ``plots.chance_level``), which the results table does not hold: the figures draw it when
    the metric is an accuracy.
    """
    notes: list[str] = []
    if chance is not None and not (isinstance(chance, (int, float)) and 0.0 <= float(chance) <= 1.0):
        raise ValueError(f"chance={chance!r}: expected an accuracy in [0, 1] (1/K for K classes), or None")
    df = with_clean_controls(df)
    hib = higher_is_better(metric)
    if chance is not None and not hib:
        notes.append(f"chance level {chance:g} given for {metric!r}, which is not an accuracy: not drawn")
        chance = None
    levels = tuple(sorted(float(v) for v in df.get_column("bias_level").unique().to_list())) if not df.is_empty() else ()
    sub = select(df, metric=metric, task=task, split=split) if not df.is_empty() else df
    if sub.is_empty():
        notes.append(f"no completed rows for task={task!r}, split={split!r}, metric={metric!r}")
    keys = curve_keys(sub, x) if not sub.is_empty() else ["bias_type", "bias_level"]
    curves = _fit_curves(sub, x=x, keys=keys, hib=hib, notes=notes) if not sub.is_empty() else ()
    joint = _joint_fits(sub, x=x, keys=keys, hib=hib, notes=notes) if not sub.is_empty() else ()
    frontier = _frontier_fits(sub, hib=hib, notes=notes) if x == "flops" and not sub.is_empty() else ()
    two_variable = _two_variable_fits(sub, hib=hib, notes=notes) if not sub.is_empty() else ()
    delta, crit = _delta_tables(sub, x=x, keys=keys, notes=notes)
    mult = _multipliers(curves, keys, x, hib)
    both = df.filter((pl.col("task") == task) & (pl.col("metric") == metric)) if not df.is_empty() else df
    gap = inh.id_ood_gap(final_checkpoints(both), x=x, keys=keys) if not both.is_empty() else pl.DataFrame()
    if gap.is_empty() and not df.is_empty():
        notes.append("no ID/OOD pair for this task and metric: no ID–OOD gap")
    decision = _decision(sub, x=x, keys=keys, notes=notes) if not sub.is_empty() else pl.DataFrame()
    predictions = _task_predictions(df, task=task, split=split, metric=metric, x=x, keys=keys, hib=hib, notes=notes)
    return Report(
        metric=metric, task=task, split=split, x=x, hib=hib,
        tag=f"{task}_{split}_{metric}".replace("@", "at").replace("/", "_"), title=f"{task} / {split} / {metric}",
        curves=curves, joint=joint, frontier=frontier, two_variable=two_variable,
        delta=delta, critical_level=crit, multiplier=mult, id_ood_gap=gap, notes=tuple(notes),
        decision=decision, task_prediction=predictions,
        chance=None if chance is None else float(chance), levels=levels,
    )


def _fit_seed(*parts: Any) -> int:
    # One bootstrap stream per curve, fixed by what the curve is (not by its position).
    return stable_int("analysis.bootstrap", *parts) % (2**32)


def _target(hib: bool) -> pl.Expr:
    # The fitted quantity: error-like, falling with scale towards a floor.
    return (1.0 - pl.col("value")) if hib else pl.col("value")


def _fit_curves(sub: pl.DataFrame, *, x: str, keys: list[str], hib: bool, notes: list[str]) -> tuple[Curve, ...]:
    """One :class:`Curve` per curve key: seed-aggregated points and the fit of the raw seeds."""
    pts = aggregate_seeds(sub, x=x, keys=keys)
    rows = sub.with_columns(_target(hib).alias("_target"))
    curves = []
    for key, grp in pts.group_by(keys, maintain_order=True):
        key = tuple(key)
        cond = pl.all_horizontal([pl.col(k) == v for k, v in zip(keys, key)])
        raw = rows.filter(cond).sort([x, "seed"])
        label = curve_label(keys, key)
        fit, note, comparison, selection = _fit_curve(raw[x].to_numpy(), raw["_target"].to_numpy(), grp.height, key)
        if note or (fit is not None and fit.note):
            notes.append(f"{label}: {note or fit.note}")
        curves.append(Curve(
            label=label, key=dict(zip(keys, key)), level=float(key[keys.index("bias_level")]),
            x=grp[x].to_numpy(), mean=grp["mean"].to_numpy(), std=grp["std"].to_numpy(),
            n_seeds=grp["n_seeds"].to_numpy(), fit=fit, note=fit.note if fit else note,
            comparison=tuple(comparison), break_selection=tuple(selection),
            breaks=tuple(break_scales(fit)) if fit is not None and fit.form.name.startswith("bnsl") else (),
        ))
    if pts.height and int(pts["n_seeds"].max()) <= 1:
        notes.append("one seed per point: no seed error bars; fit bands come from the bootstrap over scales only")
    return tuple(curves)


def _fit_curve(
    x: np.ndarray, y: np.ndarray, n_scales: int, key: Sequence[Any],
) -> tuple[FitResult | None, str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The curve's fit (power law, or a BNSL that earned its place), why there is none, the
    ranking of forms and the break-count candidates."""
    fit: FitResult | None = None
    note = ""
    comparison: list[dict[str, Any]] = []
    selection: list[dict[str, Any]] = []
    if n_scales == 1:
        return None, "one scale: no fit", comparison, selection
    if n_scales < MIN_FIT_SCALES:
        return None, (f"only {n_scales} scales: no fit — the simplest law, E = a·x^-b, has "
                      f"{POWER_LAW_NO_FLOOR.n_params} parameters and would pass through every point, with nothing "
                      f"left to check it and no interval; at least {MIN_FIT_SCALES} scales are needed "
                      "(points and seed bars only)"), comparison, selection
    try:
        fit = fit_best_power_law(x, y, n_boot=N_BOOT, seed=_fit_seed(*key))
        if fit is None:
            note = "one scale: no fit"
        elif n_scales >= BNSL_MIN_SCALES:
            fit, comparison, selection = _maybe_broken(fit, x, y, key)
    except InheritlabError as exc:  # too few scales, or input a fit refuses (said by name)
        note = str(exc)
    except Exception as exc:  # a pathological curve must not sink the whole report
        note = f"fit failed: {type(exc).__name__}: {exc}"
    return fit, note, comparison, selection


def _maybe_broken(pl_fit: FitResult, x: np.ndarray, y: np.ndarray, key: Sequence[Any]) -> tuple[FitResult, list[dict[str, Any]], list[dict[str, Any]]]:
    """Choose 0–3 breaks by held-out error; keep a broken law only when its breaks are real.

    A BNSL has three more parameters per break than a power law and will always fit a little
    better, so breaks are declared only when (1) the chosen count is at least one, (2) its
    held-out error is at most ``BNSL_MARGIN`` × the power law's, and (3) the bootstrap interval
    of every slope change c_i excludes 0. Otherwise the power law stays (fewer parameters). A
    break outside the observed scales is kept and marked: the data only begin to show it.
    """
    try:
        sel = select_breaks(x, y, n_boot=N_BOOT, seed=_fit_seed("bnsl", *key))
    except (InheritlabError, ValueError):
        return pl_fit, [], []
    broken = sel.fit
    ranked = compare_forms([pl_fit, broken])
    ho_pl, ho_b = (pl_fit.holdout or {}).get("rmsle"), (broken.holdout or {}).get("rmsle")
    n = sel.n_breaks
    significant = all(_excludes_zero(broken.ci.get(f"c{i}", (math.nan, math.nan))) for i in range(1, n + 1))
    real = n >= 1 and ho_pl is not None and ho_b is not None and ho_b <= BNSL_MARGIN * ho_pl and significant
    if not real:
        return pl_fit, ranked, list(sel.candidates)
    where = [f"{b['d']:.3g}" + (f" ({b['beyond_data']} the data)" if b["beyond_data"] else "") for b in break_scales(broken)]
    note = f"broken law ({n} break(s), chosen by held-out error) extrapolates better on held-out scales (break at {', '.join(where)})"
    return broken.with_note(note), ranked, list(sel.candidates)


def _excludes_zero(ci: tuple[float, float]) -> bool:
    lo, hi = ci
    return lo > 0 or hi < 0  # False for (nan, nan): no interval, no evidence


def _joint_fits(sub: pl.DataFrame, *, x: str, keys: list[str], hib: bool, notes: list[str]) -> tuple[JointFit, ...]:
    """Shared-exponent fit across the levels of each bias type (and model, when split)."""
    outer = [k for k in keys if k != "bias_level"]
    out = []
    rows = sub.with_columns(_target(hib).alias("_t")).sort(outer + ["bias_level", x, "seed"])
    for key, grp in rows.group_by(outer, maintain_order=True):
        levels = sorted(grp["bias_level"].unique().to_list())
        if len(levels) < 2:
            continue
        gi = np.searchsorted(np.asarray(levels), grp["bias_level"].to_numpy())
        label = curve_label(outer, key)
        try:
            r = fit_joint_power_law(grp[x].to_numpy(), gi, grp["_t"].to_numpy(), n_boot=N_BOOT, seed=_fit_seed("joint", *key))
        except (InheritlabError, ValueError) as exc:
            notes.append(f"joint fit {label}: {exc}")
            continue
        if grp[x].n_unique() < 4:
            notes.append(f"joint fit {label}: only {grp[x].n_unique()} scales, the floors c_level are weakly determined")
        out.append(JointFit(label=label, levels=tuple(levels), fit=r))
    return tuple(out)


def _frontier_fits(sub: pl.DataFrame, *, hib: bool, notes: list[str]) -> tuple[ComputeFrontier, ...]:
    """Per bias type and level: the compute frontier over every model and data scale.

    Only for ``x = flops`` — compute is the one axis on which runs of different models compare.
    """
    out = []
    rows = sub.with_columns(_target(hib).alias("_t")).sort(["bias_type", "bias_level", "flops", "_t"])
    for key, grp in rows.group_by(["bias_type", "bias_level"], maintain_order=True):
        label = curve_label(["bias_type", "bias_level"], key)
        if grp["flops"].n_unique() < 3:
            continue
        try:
            fit = fit_frontier(grp["flops"].to_numpy(), grp["_t"].to_numpy(), n_bins=min(5, grp["flops"].n_unique()),
                               n_boot=N_BOOT, seed=_fit_seed("frontier", *key))
        except (InheritlabError, ValueError) as exc:
            notes.append(f"frontier {label}: {exc}")
            continue
        out.append(ComputeFrontier(label=label, fit=fit))
    return tuple(out)


def _two_variable_fits(sub: pl.DataFrame, *, hib: bool, notes: list[str]) -> tuple[TwoVariableFit, ...]:
    """Per bias type and level: E(N, D) over model size and data scale, when the grid spans both.

    Needs at least 2 model sizes and 2 data scales, and 6 distinct (N, D) points (the form has
    five parameters); otherwise the study is not a model × data grid and nothing is said.
    """
    out = []
    rows = sub.with_columns(_target(hib).alias("_t")).sort(["bias_type", "bias_level", "params", "data_scale", "seed"])
    for key, grp in rows.group_by(["bias_type", "bias_level"], maintain_order=True):
        points = grp.select("params", "data_scale").unique()
        if grp["params"].n_unique() < 2 or grp["data_scale"].n_unique() < 2 or points.height < 6:
            continue
        label = curve_label(["bias_type", "bias_level"], key)
        cols = (grp["params"].to_numpy(), grp["data_scale"].to_numpy(), grp["_t"].to_numpy())
        try:
            fit = fit_chinchilla(*cols, n_boot=N_BOOT, seed=_fit_seed("two-variable", *key))
        except (InheritlabError, ValueError) as exc:
            notes.append(f"two-variable fit {label}: {exc}")
            continue
        huber = None
        try:
            huber = fit_chinchilla(*cols, loss="huber", n_boot=N_BOOT, seed=_fit_seed("two-variable-huber", *key))
        except (InheritlabError, ValueError) as exc:
            notes.append(f"two-variable Huber fit {label}: {exc}")
        out.append(TwoVariableFit(label=label, fit=fit, huber=huber))
    return tuple(out)


def _decision(sub: pl.DataFrame, *, x: str, keys: list[str], notes: list[str]) -> pl.DataFrame:
    """Decision accuracy of each smaller scale against the largest, per bias type (and model)."""
    outer = [k for k in keys if k != "bias_level"]
    seed = _fit_seed("decision", *outer)
    table = decision_accuracy(sub.select(outer + ["bias_level", x, "seed", "value"]), x=x, keys=outer, seed=seed)
    if table.is_empty():
        notes.append("decision accuracy needs two levels at two or more common scales: none")
    return table


def _task_predictions(
    df: pl.DataFrame, *, task: str, split: str, metric: str, x: str, keys: list[str], hib: bool, notes: list[str],
) -> tuple[TwoStepPrediction, ...]:
    """LM cells, accuracy-like metric: predict the largest scale through the LM loss, per curve."""
    if df.is_empty() or "lm" not in df["modality"].unique().to_list() or not hib:
        return ()
    if task == LOSS_TASK:
        return ()
    loss_rows = df.filter((pl.col("task") == LOSS_TASK) & (pl.col("metric") == LOSS_METRIC))
    if loss_rows.is_empty():
        notes.append(f"two-step task prediction: no {LOSS_TASK}/{LOSS_METRIC} rows to go through")
        return ()
    loss_split = split if split in loss_rows["split"].unique().to_list() else "id"
    loss_rows = loss_rows.filter(pl.col("split") == loss_split).select("cell_id", "checkpoint_step", pl.col("value").alias("_loss"))
    acc = df.filter((pl.col("task") == task) & (pl.col("split") == split) & (pl.col("metric") == metric))
    rows = acc.join(loss_rows, on=["cell_id", "checkpoint_step"], how="inner")
    if rows.is_empty():
        notes.append(f"two-step task prediction: no checkpoint has both {task}/{split}/{metric} and "
                     f"{LOSS_TASK}/{loss_split}/{LOSS_METRIC}")
        return ()
    out = []
    for key, grp in rows.sort(keys + [x, "seed", "checkpoint_step"]).group_by(keys, maintain_order=True):
        final = final_checkpoints(grp)
        label = curve_label(keys, key)
        pred = two_step_prediction(
            label, final[x].to_numpy(), final["_loss"].to_numpy(), final["value"].to_numpy(),
            grp[x].to_numpy(), grp["_loss"].to_numpy(), grp["value"].to_numpy(),
            n_boot=N_BOOT, seed=_fit_seed("two-step", *key))
        out.append(pred)
    return tuple(out)


def _delta_tables(sub: pl.DataFrame, *, x: str, keys: list[str], notes: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Δ vs clean at equal scale, and the critical level it implies (empty when not defined)."""
    pts = aggregate_seeds(sub, x=x, keys=keys) if not sub.is_empty() else pl.DataFrame()
    delta = inh.delta_vs_clean(pts, x=x, keys=keys) if not pts.is_empty() else pl.DataFrame()
    if not pts.is_empty() and pts.filter(pl.col("bias_level") > 0).is_empty():
        notes.append("a single (clean) level: no Δ vs clean")
    elif not pts.is_empty() and pts.filter(pl.col("bias_level") == 0).is_empty():
        notes.append("no clean (level 0) cells: no Δ vs clean, no effective-data multiplier")
    others = [k for k in keys if k != "bias_level"]
    crit = inh.critical_level(delta, x=x, keys=others) if not delta.is_empty() else pl.DataFrame()
    return delta, crit


def _multipliers(curves: Sequence[Curve], keys: list[str], x: str, hib: bool) -> pl.DataFrame:
    """Effective-data multiplier of each biased point against its clean curve's fit."""
    rows = []
    others = [k for k in keys if k != "bias_level"]
    clean = {tuple(c.key[k] for k in others): c for c in curves if c.level == 0.0 and c.fit is not None}
    for c in curves:
        if c.level == 0.0:
            continue
        ref = clean.get(tuple(c.key[k] for k in others))
        if ref is None or ref.fit is None:
            continue
        target = (1.0 - c.mean) if hib else c.mean
        frame = pl.DataFrame({x: c.x.astype(float), "mean": target.astype(float)})
        eff = inh.effective_data_multiplier(frame, ref.fit.predict, x=x)
        for (xv, xe, m) in eff.select(x, "x_effective", "multiplier").iter_rows():
            rows.append({**c.key, x: xv, "x_effective": xe, "multiplier": m})
    return pl.DataFrame(rows) if rows else pl.DataFrame()


__all__ = ["BNSL_MARGIN", "BNSL_MIN_SCALES", "MIN_FIT_SCALES", "N_BOOT", "ComputeFrontier", "Curve", "JointFit", "Report",
           "TwoVariableFit", "compute_report"]
