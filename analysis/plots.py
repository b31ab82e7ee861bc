"""Paper-style plots (matplotlib, Agg backend: no display needed on a cluster node).

Each ``draw_*`` function draws one figure and returns it (tests and notebooks look at it);
each ``plot_*`` function draws the same figure and saves it in every requested image format
(png, pdf), returning the paths. What a paper needs is decided here once:

- readable names: :func:`metric_label` turns (task, split, metric) into "Zero-shot top-1
  accuracy, ID", :func:`axis_label` a results column into "Samples seen"; every figure and
  table caption of a report goes through them;
- one colour per bias level for a whole study (:func:`level_colors`, darker = more bias),
  whichever figure the level appears in;
- a fitted line only over the scales it was fitted on (:func:`curve_grid`), unless an
  extrapolation is asked for, and then dashed beyond the data;
- the chance level, where the caller knows it, as a dotted grey line;
- where every bar and band comes from, in the figure's caption.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

IMAGE_FORMATS = ("png", "pdf")
CHANCE_STYLE = {"ls": ":", "color": "0.45", "lw": 1.1}  # the chance line, wherever it is drawn
MARKERS = ("o", "s", "^", "D", "v", "P")  # bias types / models sharing a level's colour

# --- names --------------------------------------------------------------------------------------

_AXES = {
    "data_scale": "Samples seen", "samples_seen": "Samples seen", "unique_samples": "Unique samples",
    "params": "Parameters", "flops": "Training FLOPs", "bias_level": "Bias level", "checkpoint_step": "Training step",
}
_TASKS = {
    "zeroshot": "zero-shot", "linear_probe": "linear-probe", "mlp_tune": "MLP-tuned", "nmtune": "NMTune",
    "finetune": "fine-tuned", "lora": "LoRA", "few_shot": "few-shot", "retrieval_i2t": "image→text retrieval",
    "retrieval_t2i": "text→image retrieval", "retrieval": "retrieval", "perplexity": "LM", "qa": "QA",
    "qa_finetune": "fine-tuned QA", "qa_by_frequency": "QA", "memorization": "memorization",
    "diagnostics": "feature",
}
_METRICS = {
    "acc": "accuracy", "mean_per_class_recall": "mean per-class recall", "loss": "loss", "perplexity": "perplexity",
    "exact_continuation": "exact-continuation rate", "loss_gap": "loss gap (unique − duplicated)",
    "inflation": "inflation", "sv_entropy": "singular-value entropy", "sv_top_ratio": "largest singular-value share",
    "error": "error",
}
_SPLITS = {"id": "ID", "ood": "OOD", "test_id": "ID", "test_ood": "OOD", "train": "train", "all": "all"}


def _words(name: str) -> str:
    return name.replace("_", " ").strip()


def lower_first(s: str) -> str:
    # "Samples seen" → "samples seen", but "LoRA", "ID", "NMTune" (a capital after the first
    # letter of the first word) keep theirs.
    word = s.split(" ", 1)[0]
    return s[0].lower() + s[1:] if word[:1].isupper() and word[1:] == word[1:].lower() else s


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def axis_label(column: str) -> str:
    """A results column as an axis is titled: ``data_scale`` → "Samples seen", ``flops`` →
    "Training FLOPs"; an unknown column reads as its words ("my_axis" → "My axis")."""
    return _AXES.get(column, _upper_first(_words(column)))


def _task_words(task: str) -> str:
    if task in _TASKS:
        return _TASKS[task]
    if m := re.fullmatch(r"few_shot_k(\d+)", task):
        return f"{m.group(1)}-shot"
    if task.startswith("suite/"):
        return task.split("/", 1)[1]
    if m := re.fullmatch(r"contamination_(.+)", task):
        return f"contamination ({_words(m.group(1))})"
    return _words(task)


def _metric_words(metric: str) -> str:
    if metric in _METRICS:
        return _METRICS[metric]
    if m := re.fullmatch(r"(?:acc|top)(\d+)", metric):
        return f"top-{m.group(1)} accuracy"
    if m := re.fullmatch(r"(image|text)_retrieval_recall@(\d+)", metric):
        return f"{m.group(1)} retrieval recall@{m.group(2)}"
    if m := re.fullmatch(r"acc@docs(.+)", metric):
        return f"accuracy (facts seen in {_words(m.group(1))} documents)"
    return _words(metric)


def split_label(split: str) -> str:
    """A split as captions name it: ``id`` → "ID", ``test_ood`` → "OOD"; others as given."""
    return _SPLITS.get(split, split)


def metric_label(task: str, split: str | None, metric: str, *, delta: bool = False) -> str:
    """The one name of a (task, split, metric) in every figure and caption of a report.

    ``("zeroshot", "id", "acc1")`` → "Zero-shot top-1 accuracy, ID"; ``("linear_probe", "ood",
    "acc1")`` → "Linear-probe top-1 accuracy, OOD"; with ``delta=True`` → "Δ zero-shot top-1
    accuracy vs clean, ID". ``split=None`` leaves the split out. Unknown tasks and metrics read as
    their words ("my_task", "f1_macro" → "My task f1 macro"), so a new evaluation still gets a label.
    """
    task_w, metric_w = _task_words(task), _metric_words(metric)
    if task_w and metric_w.lower().startswith(task_w.lower()):
        task_w = ""  # "perplexity" / "perplexity" → "Perplexity", not "Perplexity perplexity"
    body = f"{task_w} {metric_w}".strip()
    tail = "" if split is None else f", {split_label(split)}"
    if delta:
        return f"Δ {lower_first(body)} vs clean{tail}"
    return _upper_first(body) + tail


def scale_text(v: float) -> str:
    """A scale as papers write it: 24576 → "24.6k", 1e9 → "1B"."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def series_label(key: Mapping[str, Any]) -> str:
    """A curve's legend entry from its key: "Label noise, level 0.2, model tiny"; level 0 is "clean"."""
    parts = []
    for k, v in key.items():
        if k == "bias_type":
            parts.append(_upper_first(_words(str(v))))
        elif k == "bias_level":
            parts.append("clean" if float(v) == 0.0 else f"level {float(v):g}")
        elif k in ("data_scale", "samples_seen", "unique_samples", "params", "flops"):
            parts.append(f"{scale_text(float(v))} {lower_first(axis_label(k))}")
        else:
            parts.append(f"{_words(k)} {v:g}" if isinstance(v, float) else f"{_words(k)} {v}")
    return ", ".join(parts)


def chance_level(metric: str, n_classes: int | None) -> float | None:
    """Accuracy of a uniform guess among ``n_classes``: 1/K for top-1 accuracy and mean per-class
    recall, k/K for top-k; None for anything else (a loss has no chance level) or unknown K."""
    if not n_classes or n_classes < 1:
        return None
    if metric in ("acc", "acc1", "top1", "mean_per_class_recall"):
        return 1.0 / n_classes
    if m := re.fullmatch(r"(?:acc|top)(\d+)", metric):
        return min(int(m.group(1)) / n_classes, 1.0)
    return None


# --- shared pieces ------------------------------------------------------------------------------


def _caption(fig: Any, lines: Sequence[str]) -> None:
    """Small print under the axes: where the bars and bands come from (saved with bbox_inches="tight")."""
    if lines:
        fig.text(0.01, -0.02, "\n".join(lines), ha="left", va="top", fontsize=6, wrap=True)


def save(fig: Any, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each image format asked for, close it, return the paths."""
    out = []
    for fmt in formats:
        if fmt in IMAGE_FORMATS:
            p = stem.with_suffix(f".{fmt}")
            p.parent.mkdir(parents=True, exist_ok=True)
            # Fixed metadata: the same data gives byte-identical PNGs across runs.
            meta = {"Software": None} if fmt == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
            fig.savefig(p, dpi=150, bbox_inches="tight", metadata=meta)
            out.append(p)
    plt.close(fig)
    return out


def level_colors(levels: Sequence[float]) -> dict[float, Any]:
    """One colour per bias level on one sequential map (darker = more bias).

    Pass every level of the study (``Report.levels``) and hand the result to each figure: a
    level then has the same colour in all of them, whichever levels a figure happens to show.
    """
    cmap = plt.get_cmap("viridis_r")
    lv = sorted({float(v) for v in levels}) or [0.0]
    span = (max(lv) - min(lv)) or 1.0
    return {v: cmap(0.15 + 0.8 * (v - min(lv)) / span) for v in lv}


def _color_for(colors: Mapping[float, Any] | None, levels: Sequence[float]) -> Mapping[float, Any]:
    if colors is not None:
        missing = sorted({float(v) for v in levels} - set(colors))
        if missing:
            raise ValueError(f"level colours given without levels {missing}: pass every level of the study")
        return colors
    return level_colors(levels)


def curve_grid(x: Sequence[float] | np.ndarray, extrapolate_to: float | None = None, n: int = 200) -> np.ndarray:
    """Where a fitted curve is drawn: log-spaced over the fitted scales, min(x) to max(x).

    ``extrapolate_to`` widens the grid to that scale (beyond the largest, or below the smallest);
    a value inside the data changes nothing. Nothing is drawn beyond the data unless asked.
    """
    xs = np.asarray(x, dtype=float)
    xs = xs[np.isfinite(xs) & (xs > 0)]
    if not len(xs):
        raise ValueError("curve_grid: no positive finite scale to draw a curve over")
    lo, hi = float(xs.min()), float(xs.max())
    if extrapolate_to is not None:
        if not (math.isfinite(extrapolate_to) and extrapolate_to > 0):
            raise ValueError(f"extrapolate_to={extrapolate_to!r}: expected a positive scale")
        lo, hi = min(lo, float(extrapolate_to)), max(hi, float(extrapolate_to))
    return np.geomspace(lo, hi, n) if hi > lo else np.array([lo])


def _seed_text(lo: int, hi: int) -> str:
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"{n} seed{'s' if hi != 1 else ''}"


def points_caption(n_seeds: Sequence[int] | np.ndarray) -> str:
    """How a figure's points and bars are made: "Points: mean ± 1 sd over 3 seeds"."""
    ns = np.asarray(n_seeds, dtype=int)
    if not len(ns):
        return ""
    lo, hi = int(ns.min()), int(ns.max())
    if hi <= 1:
        return "Points: one seed each (no seed error bars)."
    return f"Points: mean ± 1 sd over {_seed_text(lo, hi)} per point."


# --- figures of a report ------------------------------------------------------------------------


class FittedCurve(Protocol):
    """What :func:`plot_curves` draws of a curve (``report_data.Curve`` is one)."""

    @property
    def label(self) -> str: ...
    @property
    def key(self) -> Mapping[str, Any]: ...
    @property
    def level(self) -> float: ...
    @property
    def x(self) -> np.ndarray: ...
    @property
    def mean(self) -> np.ndarray: ...
    @property
    def std(self) -> np.ndarray: ...
    @property
    def fit(self) -> Any: ...  # None, or a fit with predict(x), band(x, level) → (lo, hi) and boot.level


def draw_curves(
    curves: Sequence[FittedCurve], *, xlabel: str, ylabel: str, title: str,
    to_metric: Callable[[np.ndarray], np.ndarray] = lambda e: e, caption: Sequence[str] = (),
    colors: Mapping[float, Any] | None = None, chance: float | None = None, extrapolate_to: float | None = None,
) -> Any:
    """Metric vs scale, one series per curve: points ± seed sd, the fitted line and its band.

    Points (``x``, ``mean``, ``std``) are in metric units; ``fit``, when there is one, is on the
    fit target and mapped back with ``to_metric``. The line and band cover the fitted scales only
    (:func:`curve_grid`); with ``extrapolate_to`` they go on to that scale, dashed beyond the data.
    Colour follows ``level`` (``colors`` from :func:`level_colors`). ``chance`` adds a dotted grey
    line. ``caption`` lines are printed under the axes. Returns the figure, unsaved; its fitted
    lines carry ``gid="fit"`` (over the data) or ``"fit-extrapolated"``, the chance line
    ``gid="chance"``, for whoever inspects it.
    """
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    colors = _color_for(colors, [c.level for c in curves])
    # Colour is the level; with several bias types (or models) the marker tells them apart.
    others = sorted({tuple((k, str(v)) for k, v in (getattr(c, "key", None) or {}).items() if k != "bias_level")
                     for c in curves})
    fitted = extrapolated = False
    for c in curves:
        col = colors[float(c.level)]
        key = getattr(c, "key", None) or {}
        label = series_label(key) if key else c.label
        other = tuple((k, str(v)) for k, v in key.items() if k != "bias_level")
        marker = MARKERS[others.index(other) % len(MARKERS)] if other in others else "o"
        ax.errorbar(c.x, c.mean, yerr=c.std, fmt=marker, ms=4, capsize=2, color=col, label=label)
        fit = c.fit
        if fit is None:
            continue
        fitted = True
        level = getattr(getattr(fit, "boot", None), "level", 0.95)
        grid = curve_grid(c.x, extrapolate_to)
        lo_x, hi_x = float(np.min(c.x)), float(np.max(c.x))
        inside = (grid >= lo_x) & (grid <= hi_x)
        for part, style in ((inside, "-"), (grid < lo_x, "--"), (grid > hi_x, "--")):
            if not part.any():
                continue
            xs = grid[part]
            if style == "-":  # exactly the fitted range, whatever the grid's spacing
                xs = np.unique(np.concatenate([xs, [lo_x, hi_x]]))
            else:  # join the dashed piece to the solid one
                xs = np.unique(np.concatenate([xs, [lo_x if xs.max() <= lo_x else hi_x]]))
                extrapolated = True
            ax.plot(xs, to_metric(fit.predict(xs)), style, color=col, lw=1.3,
                    gid="fit" if style == "-" else "fit-extrapolated")
            lo, hi = fit.band(xs, level)
            ax.fill_between(xs, to_metric(lo), to_metric(hi), color=col, alpha=0.15 if style == "-" else 0.07, lw=0)
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE, label="chance", gid="chance")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if curves or chance is not None:
        handles, labels = ax.get_legend_handles_labels()
        if fitted:
            handles.append(Line2D([], [], color="0.2", lw=1.3))
            labels.append("fit and band")
        if extrapolated:
            handles.append(Line2D([], [], color="0.2", lw=1.3, ls="--"))
            labels.append("fit, extrapolated")
        ax.legend(handles, labels, fontsize=7, frameon=False)
    _caption(fig, caption)
    return fig


def plot_curves(curves: Sequence[FittedCurve], stem: Path, *, formats: Sequence[str], **kw: Any) -> list[Path]:
    """:func:`draw_curves`, saved as ``stem.<fmt>`` for each image format; the paths."""
    return save(draw_curves(curves, **kw), stem, formats)


def draw_delta(
    delta: pl.DataFrame, *, x: str, ylabel: str, title: str, colors: Mapping[float, Any] | None = None,
    caption: Sequence[str] = (),
) -> Any:
    """Δ metric vs bias level, one line per scale (and bias type or model): bars ± 1 s.e.

    Levels are the x axis here, so lines are scales, in shades of grey (darker = larger) and one
    line style per bias type or model; each marker is filled with its level's colour, the colour
    the level has in every other figure of the study. Returns the figure, unsaved.
    """
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    levels = delta.get_column("bias_level").unique().to_list() if not delta.is_empty() else []
    colors = _color_for(colors, levels)
    outer = [c for c in ("bias_type", "model") if c in delta.columns and delta.get_column(c).n_unique() > 1]
    scales = sorted(delta.get_column(x).unique().to_list()) if not delta.is_empty() else []
    outers = (sorted(delta.select(outer).unique().rows()) if outer else [()]) if not delta.is_empty() else []
    grey = plt.get_cmap("Greys")
    styles = ("-", "--", "-.", ":")
    for key, grp in (delta.sort(outer + [x, "bias_level"]).group_by(outer + [x], maintain_order=True)
                     if not delta.is_empty() else []):
        key = tuple(key)
        sc, rest = key[-1], key[:-1]
        line = grey(0.45 + 0.5 * scales.index(sc) / max(len(scales) - 1, 1))
        ls = styles[outers.index(rest) % len(styles)]
        lv, d, se = grp["bias_level"].to_numpy(), grp["delta"].to_numpy(), grp["delta_se"].to_numpy()
        ax.errorbar(lv, d, yerr=se, fmt="none", ecolor=line, capsize=2, lw=1.0)
        ax.plot(lv, d, ls=ls, color=line, lw=1.2)
        ax.scatter(lv, d, s=30, c=[colors[float(v)] for v in lv], edgecolors=[line], linewidths=0.8, zorder=3)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(axis_label("bias_level"))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if not delta.is_empty():
        # One entry per scale (shade), per bias type or model (line style), per level (marker colour).
        handles, labels = [], []
        for i, sc in enumerate(scales):
            handles.append(Line2D([], [], color=grey(0.45 + 0.5 * i / max(len(scales) - 1, 1)), lw=1.2))
            labels.append(f"{scale_text(float(sc))} {lower_first(axis_label(x))}")
        for i, rest in enumerate(outers if len(outers) > 1 else []):
            handles.append(Line2D([], [], color="0.2", lw=1.2, ls=styles[i % len(styles)]))
            labels.append(", ".join(series_label({k: v}) for k, v in zip(outer, rest)))
        for v in sorted(float(v) for v in levels):
            handles.append(Line2D([], [], marker="o", ls="", color=colors[v], ms=5))
            labels.append(series_label({"bias_level": v}))
        ax.legend(handles, labels, fontsize=7, frameon=False)
    _caption(fig, caption)
    return fig


def plot_delta(delta: pl.DataFrame, stem: Path, *, formats: Sequence[str], **kw: Any) -> list[Path]:
    """:func:`draw_delta`, saved as ``stem.<fmt>`` for each image format; the paths."""
    return save(draw_delta(delta, **kw), stem, formats)


def draw_id_ood(
    gap: pl.DataFrame, *, xlabel: str, ylabel: str, gap_label: str, title: str,
    colors: Mapping[float, Any] | None = None, chance: float | None = None, caption: Sequence[str] = (),
) -> Any:
    """Left: OOD vs ID metric per point (coloured by level). Right: ID−OOD gap vs level, mean
    over scales ± 1 sd over scales. ``chance`` draws the chance level on both axes of the left."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 4.0))
    if not gap.is_empty():
        colors = _color_for(colors, gap.get_column("bias_level").to_list())
        for lvl, grp in gap.sort("bias_level").group_by("bias_level", maintain_order=True):
            col = colors[float(lvl[0])]
            a1.scatter(grp["id"].to_numpy(), grp["ood"].to_numpy(), color=col, s=18, label=series_label({"bias_level": lvl[0]}))
        lo = float(min(gap["id"].min(), gap["ood"].min()))
        hi = float(max(gap["id"].max(), gap["ood"].max()))
        a1.plot([lo, hi], [lo, hi], "--", color="0.65", lw=0.8, label="no gap (OOD = ID)")
        if chance is not None:
            a1.axhline(chance, **CHANCE_STYLE, label="chance", gid="chance")
            a1.axvline(chance, **CHANCE_STYLE, gid="chance")
        per = gap.group_by("bias_level").agg(pl.col("gap").mean(), pl.col("gap").std(ddof=1).fill_null(0.0).alias("sd")).sort("bias_level")
        lv = per["bias_level"].to_numpy()
        a2.errorbar(lv, per["gap"].to_numpy(), yerr=per["sd"].to_numpy(), fmt="-", color="0.3", capsize=2, lw=1.0)
        a2.scatter(lv, per["gap"].to_numpy(), s=30, c=[colors[float(v)] for v in lv], zorder=3)
        a1.legend(fontsize=7, frameon=False)
    a1.set_xlabel(xlabel)
    a1.set_ylabel(ylabel)
    a2.set_xlabel(axis_label("bias_level"))
    a2.set_ylabel(gap_label)
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.32)
    _caption(fig, caption)
    return fig


def plot_id_ood(gap: pl.DataFrame, stem: Path, *, formats: Sequence[str], **kw: Any) -> list[Path]:
    """:func:`draw_id_ood`, saved as ``stem.<fmt>`` for each image format; the paths."""
    return save(draw_id_ood(gap, **kw), stem, formats)


def plot_frontier(
    x: np.ndarray, y: np.ndarray, fx: np.ndarray, fy: np.ndarray, fit_line: Callable[[np.ndarray], np.ndarray],
    stem: Path, *, xlabel: str, ylabel: str, title: str, formats: Sequence[str], groups: Sequence[str] | None = None,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, caption: Sequence[str] = (),
    extrapolate_to: float | None = None,
) -> list[Path]:
    """All points (grey or by group), the frontier points (black), the fitted line, a caption.

    The line and ``band`` cover the observed x range only (:func:`curve_grid`), or reach
    ``extrapolate_to`` when given."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    if groups is not None:
        for g in sorted(set(groups)):
            m = np.array([gg == g for gg in groups])
            ax.scatter(x[m], y[m], s=16, alpha=0.7, label=g)
    else:
        ax.scatter(x, y, s=16, color="0.6", label="runs")
    ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="k", label="frontier")
    xs = curve_grid(x, extrapolate_to)
    ax.plot(xs, fit_line(xs), "k-", lw=1.3, label="fit")
    if band is not None:
        bx, blo, bhi = (np.asarray(a, dtype=float) for a in band)
        keep = (bx >= xs.min() * (1 - 1e-12)) & (bx <= xs.max() * (1 + 1e-12))
        ax.fill_between(bx[keep], blo[keep], bhi[keep], color="k", alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    _caption(fig, caption)
    return save(fig, stem, formats)


def plot_spectrum(table: pl.DataFrame, stem: Path, *, title: str, formats: Sequence[str]) -> list[Path]:
    """Feature spectrum against bias level: rows singular-value entropy and largest-singular-value
    ratio, columns the splits; one colour per feature set (the frozen checkpoint's, and after each
    adaptation that changes them), one line style per data scale; bars one standard deviation
    over seeds (``table`` is ``analysis.adaptation.spectrum_table``)."""
    splits = sorted(table.get_column("split").unique().to_list()) if not table.is_empty() else ["id"]
    fig, axes = plt.subplots(2, len(splits), figsize=(4.6 * len(splits), 6.4), squeeze=False)
    if table.is_empty():
        return save(fig, stem, formats)
    features = list(dict.fromkeys(["frozen", *sorted(table.get_column("features").unique().to_list())]))
    cmap = plt.get_cmap("tab10")
    colour = {f: cmap(i) for i, f in enumerate(features)}
    scales = sorted(table.get_column("data_scale").unique().to_list())
    styles = ("-", "--", ":", "-.")
    names = {"sv_entropy": "Singular-value entropy", "sv_top_ratio": "Largest singular value / sum"}
    seeds = int(table.get_column("n_seeds").max())
    for r, metric in enumerate(("sv_entropy", "sv_top_ratio")):
        for c, split in enumerate(splits):
            ax = axes[r][c]
            part = table.filter((pl.col("metric") == metric) & (pl.col("split") == split))
            for (feat, scale), grp in part.sort("features", "data_scale", "bias_level").group_by(
                    ["features", "data_scale"], maintain_order=True):
                ax.errorbar(grp["bias_level"].to_numpy(), grp["mean"].to_numpy(), yerr=grp["std"].to_numpy(),
                            fmt="o", ls=styles[scales.index(scale) % len(styles)], ms=3, capsize=2,
                            color=colour[feat], label=f"{feat}, {scale:.3g} samples")
            ax.set_xlabel("Pre-training bias level")
            ax.set_ylabel(f"{names[metric]}, {split.upper()}")
            ax.grid(True, alpha=0.3)
    # One legend under the panels: inside an axis it covers the lines it names.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), fontsize=6,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, -0.08 - 0.02 * ((len(labels) + 3) // 4), f"Bars: one standard deviation over up to {seeds} seeds. "
             "'frozen': the pre-trained features; the rest: after each adaptation.", ha="left", va="top", fontsize=6)
    return save(fig, stem, formats)
