"""Paper-style plots (matplotlib, Agg backend: no display needed on a cluster node).

Each function draws one figure and saves it in every requested image format (png, pdf),
returning the paths. Curves are coloured by bias level on one sequential colormap so that
"more bias" reads as "darker" across all figures of a study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

IMAGE_FORMATS = ("png", "pdf")


def _caption(fig: Any, lines: Sequence[str]) -> None:
    """Small print under the axes: where the bands come from (saved with bbox_inches="tight")."""
    if lines:
        fig.text(0.01, -0.02, "\n".join(lines), ha="left", va="top", fontsize=6)


def _save(fig: Any, stem: Path, formats: Sequence[str]) -> list[Path]:
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


def _colors(levels: Sequence[float]) -> dict[float, Any]:
    cmap = plt.get_cmap("viridis_r")
    lv = sorted(set(levels))
    span = (max(lv) - min(lv)) or 1.0
    return {v: cmap(0.1 + 0.8 * (v - min(lv)) / span) for v in lv}


class FittedCurve(Protocol):
    """What :func:`plot_curves` draws of a curve (``report_data.Curve`` is one)."""

    @property
    def label(self) -> str: ...
    @property
    def level(self) -> float: ...
    @property
    def x(self) -> np.ndarray: ...
    @property
    def mean(self) -> np.ndarray: ...
    @property
    def std(self) -> np.ndarray: ...
    @property
    def fit(self) -> Any: ...  # None, or a fit with predict(x) and band(x) → (lo, hi)


def plot_curves(
    curves: Sequence[FittedCurve], stem: Path, *, x: str, metric: str, title: str, formats: Sequence[str],
    to_metric: Callable[[np.ndarray], np.ndarray] = lambda e: e, caption: Sequence[str] = (),
) -> list[Path]:
    """Metric vs scale, one series per curve: points ± seed std, fitted line and 95 % band.

    Points (``x``, ``mean``, ``std``) are in metric units; ``fit``, when there is one, is on the
    fit target and mapped back with ``to_metric``. Colour follows ``level``. ``caption`` lines
    are printed under the axes (the bands' provenance).
    """
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    colors = _colors([c.level for c in curves] or [0.0])
    for c in curves:
        col = colors[c.level]
        ax.errorbar(c.x, c.mean, yerr=c.std, fmt="o", ms=4, capsize=2, color=col, label=c.label)
        fit = c.fit
        if fit is not None:
            xs = np.geomspace(min(c.x) / 1.5, max(c.x) * 1.5, 200)
            ax.plot(xs, to_metric(fit.predict(xs)), "-", color=col, lw=1.3)
            lo, hi = fit.band(xs)
            ax.fill_between(xs, to_metric(lo), to_metric(hi), color=col, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(fontsize=7, frameon=False)
    _caption(fig, caption)
    return _save(fig, stem, formats)


def plot_delta(delta: pl.DataFrame, stem: Path, *, x: str, metric: str, title: str, formats: Sequence[str]) -> list[Path]:
    """Δ metric vs bias level, one line per scale (and bias type)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    group_cols = [c for c in ("bias_type", "model") if c in delta.columns and delta.get_column(c).n_unique() > 1] + [x]
    scales = sorted(delta.get_column(x).unique().to_list()) if not delta.is_empty() else []
    cmap = plt.get_cmap("plasma")
    for key, grp in delta.sort(group_cols + ["bias_level"]).group_by(group_cols, maintain_order=True):
        sc = key[-1]
        col = cmap(0.1 + 0.75 * (scales.index(sc) / max(len(scales) - 1, 1)))
        label = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{v}" for k, v in zip(group_cols, key))
        ax.errorbar(grp["bias_level"].to_numpy(), grp["delta"].to_numpy(), yerr=grp["delta_se"].to_numpy(),
                    fmt="o-", ms=4, capsize=2, color=col, label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("bias level")
    ax.set_ylabel(f"Δ {metric} vs clean")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if not delta.is_empty():
        ax.legend(fontsize=7, frameon=False)
    return _save(fig, stem, formats)


def plot_id_ood(gap: pl.DataFrame, stem: Path, *, metric: str, title: str, formats: Sequence[str]) -> list[Path]:
    """Left: OOD vs ID metric per point (coloured by level). Right: ID−OOD gap vs level."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 4.0))
    if not gap.is_empty():
        colors = _colors(gap.get_column("bias_level").to_list())
        for lvl, grp in gap.sort("bias_level").group_by("bias_level", maintain_order=True):
            col = colors[lvl[0]]
            a1.scatter(grp["id"].to_numpy(), grp["ood"].to_numpy(), color=col, s=18, label=f"level {lvl[0]:g}")
        lo = float(min(gap["id"].min(), gap["ood"].min()))
        hi = float(max(gap["id"].max(), gap["ood"].max()))
        a1.plot([lo, hi], [lo, hi], ":", color="grey", lw=0.8)
        per = gap.group_by("bias_level").agg(pl.col("gap").mean(), pl.col("gap").std(ddof=1).fill_null(0.0).alias("sd")).sort("bias_level")
        a2.errorbar(per["bias_level"].to_numpy(), per["gap"].to_numpy(), yerr=per["sd"].to_numpy(), fmt="o-", capsize=2)
        a1.legend(fontsize=7, frameon=False)
    a1.set_xlabel(f"ID {metric}")
    a1.set_ylabel(f"OOD {metric}")
    a2.set_xlabel("bias level")
    a2.set_ylabel(f"ID − OOD {metric} (mean over scales)")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem, formats)


def plot_frontier(
    x: np.ndarray, y: np.ndarray, fx: np.ndarray, fy: np.ndarray, fit_line: Callable[[np.ndarray], np.ndarray],
    stem: Path, *, xlabel: str, ylabel: str, title: str, formats: Sequence[str], groups: Sequence[str] | None = None,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, caption: Sequence[str] = (),
) -> list[Path]:
    """All points (grey or by group), the frontier points (black), the fitted line, a caption."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    if groups is not None:
        for g in sorted(set(groups)):
            m = np.array([gg == g for gg in groups])
            ax.scatter(x[m], y[m], s=16, alpha=0.7, label=g)
    else:
        ax.scatter(x, y, s=16, color="0.6", label="runs")
    ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="k", label="frontier")
    xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 200)
    ax.plot(xs, fit_line(xs), "k-", lw=1.3, label="fit")
    if band is not None:
        ax.fill_between(band[0], band[1], band[2], color="k", alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    _caption(fig, caption)
    return _save(fig, stem, formats)


def plot_spectrum(table: pl.DataFrame, stem: Path, *, title: str, formats: Sequence[str]) -> list[Path]:
    """Feature spectrum against bias level: rows singular-value entropy and largest-singular-value
    ratio, columns the splits; one colour per feature set (the frozen checkpoint's, and after each
    adaptation that changes them), one line style per data scale; bars one standard deviation
    over seeds (``table`` is ``analysis.adaptation.spectrum_table``)."""
    splits = sorted(table.get_column("split").unique().to_list()) if not table.is_empty() else ["id"]
    fig, axes = plt.subplots(2, len(splits), figsize=(4.6 * len(splits), 6.4), squeeze=False)
    if table.is_empty():
        return _save(fig, stem, formats)
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
    axes[0][-1].legend(fontsize=6, frameon=False, loc="best")
    fig.suptitle(title, fontsize=10)
    _caption(fig, [f"Bars: one standard deviation over up to {seeds} seeds. 'frozen': the pre-trained features; "
                   "the rest: after each adaptation."])
    return _save(fig, stem, formats)
