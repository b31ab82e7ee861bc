"""Adaptations side by side: accuracy after each, what a mitigation wins back, and the spectrum.

The CLIP evaluation runs each checkpoint through several adaptations (``eval.adaptations``:
zero-shot, linear probe, few-shot, fine-tuning, LoRA, NMTune and its MLP-only baseline). The
study's questions about them are comparisons across cells, answered here from the tidy table:

* :func:`adaptation_table` — each adaptation's metric per split, bias level and scale (mean,
  standard deviation and number of seeds);
* :func:`recovered_fraction` — how much of the gap that pre-training bias opened under a base
  adaptation (the linear probe) a mitigation (NMTune) closes at a level: ``(method(level) −
  base(level)) / (base(clean) − base(level))``, with a bootstrap interval over seeds;
* :func:`spectrum_table` — singular-value entropy and largest-singular-value ratio of the
  features before adaptation (``diagnostics``) and after each adaptation that changes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inheritlab.analysis.results import final_checkpoints
from inheritlab.infra.atomic import atomic_open

# Result tasks that are adaptations of a classification head (few-shot rows are few_shot_k<k>).
ADAPTATION_TASKS = ("zeroshot", "linear_probe", "mlp_tune", "nmtune", "finetune", "lora")
# Tasks whose rows carry the spectrum of the features they classify; "frozen" is the checkpoint's.
SPECTRUM_TASKS = {"diagnostics": "frozen", "mlp_tune": "mlp_tune", "nmtune": "nmtune", "finetune": "finetune",
                  "lora": "lora"}
SPECTRUM_METRICS = ("sv_entropy", "sv_top_ratio")


def is_adaptation(task: str) -> bool:
    """Whether a result task is a classification head's adaptation (accuracy bounded by chance)."""
    return task in ADAPTATION_TASKS or task.startswith("few_shot_k")


def _is_adaptation(task: pl.Expr) -> pl.Expr:
    return task.is_in(list(ADAPTATION_TASKS)) | task.str.starts_with("few_shot_k")


def _summary(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return (df.group_by(keys).agg(pl.col("value").mean().alias("mean"),
                                  pl.col("value").std(ddof=1).fill_null(0.0).alias("std"),
                                  pl.col("seed").n_unique().alias("n_seeds"))
            .sort(keys))


def adaptation_table(df: pl.DataFrame, *, metric: str = "acc1") -> pl.DataFrame:
    """Each adaptation's ``metric`` per (task, split, model, data scale, bias level), final
    checkpoints only: mean, std and number of seeds. Empty when the study ran none."""
    sub = final_checkpoints(df.filter(_is_adaptation(pl.col("task")) & (pl.col("metric") == metric)))
    if sub.is_empty():
        return pl.DataFrame()
    return _summary(sub, ["task", "split", "model", "data_scale", "bias_type", "bias_level"])


def spectrum_table(df: pl.DataFrame) -> pl.DataFrame:
    """Spectrum metrics before (``frozen``) and after each feature-changing adaptation, per
    split, model, scale and level (mean, std, seeds). Empty without ``diagnostics`` rows."""
    sub = final_checkpoints(df.filter(pl.col("task").is_in(list(SPECTRUM_TASKS))
                                      & pl.col("metric").is_in(list(SPECTRUM_METRICS))))
    if sub.is_empty() or "diagnostics" not in sub.get_column("task").to_list():
        return pl.DataFrame()
    sub = sub.with_columns(pl.col("task").replace_strict(SPECTRUM_TASKS).alias("features"))
    return _summary(sub, ["features", "metric", "split", "model", "data_scale", "bias_type", "bias_level"])


def recovered_fraction(df: pl.DataFrame, *, method: str = "nmtune", base: str = "linear_probe", split: str = "ood",
                       metric: str = "acc1", level: float | None = None, n_boot: int = 2000, seed: int = 0,
                       ci: float = 0.95) -> pl.DataFrame:
    """The share of the bias gap under ``base`` that ``method`` wins back, per (model, scale).

    ``gap = base(clean) − base(level)``, ``gain = method(level) − base(level)``, ``fraction =
    gain / gap`` at ``level`` (default: the largest in the table). ``method`` and ``base`` are
    measured on the same checkpoint, so the gain is paired by seed; the clean cells are other
    checkpoints, resampled on their own. The interval is a percentile bootstrap over seeds
    (``n_boot`` resamples, generator seeded with ``seed``); it is wide, or undefined (NaN), when
    the gap is within noise — a fraction of nothing is not a finding. Rows: model, data_scale,
    level, gap, gain, fraction, fraction_lo, fraction_hi, n_seeds.
    """
    sub = final_checkpoints(df.filter((pl.col("split") == split) & (pl.col("metric") == metric)
                                      & pl.col("task").is_in([method, base])))
    cols = ["model", "data_scale", "level", "gap", "gain", "fraction", "fraction_lo", "fraction_hi", "n_seeds"]
    if sub.is_empty() or sub.get_column("task").n_unique() < 2:
        return pl.DataFrame(schema={c: (pl.Utf8 if c == "model" else pl.Int64 if c == "n_seeds" else pl.Float64)
                                    for c in cols})
    top = float(sub.get_column("bias_level").max()) if level is None else float(level)
    rng = np.random.default_rng(seed)
    rows = []
    for (model, scale), grp in sub.sort("model", "data_scale").group_by(["model", "data_scale"], maintain_order=True):
        wide = grp.pivot(on="task", index=["bias_level", "seed"], values="value", aggregate_function="mean")
        clean = wide.filter(pl.col("bias_level") == 0.0).get_column(base).drop_nulls().to_numpy()
        noisy = wide.filter((pl.col("bias_level") == top) & pl.col(base).is_not_null() & pl.col(method).is_not_null())
        if len(clean) == 0 or noisy.is_empty():
            continue
        b, m = noisy.get_column(base).to_numpy(), noisy.get_column(method).to_numpy()

        def frac(c: np.ndarray, bb: np.ndarray, mm: np.ndarray) -> float:
            gap = c.mean() - bb.mean()
            return float((mm.mean() - bb.mean()) / gap) if gap != 0 else float("nan")

        boots = np.array([frac(clean[rng.integers(0, len(clean), len(clean))], *(a[i] for a in (b, m)))
                          for i in (rng.integers(0, len(b), len(b)) for _ in range(n_boot))])
        boots = boots[np.isfinite(boots)]
        lo, hi = (np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2]) if len(boots) else (np.nan, np.nan))
        point = frac(clean, b, m)
        # An interval always contains its point estimate (percentile intervals of a ratio can miss it).
        lo, hi = min(lo, point), max(hi, point)
        rows.append({"model": model, "data_scale": float(scale), "level": top, "gap": float(clean.mean() - b.mean()),
                     "gain": float(m.mean() - b.mean()), "fraction": point, "fraction_lo": float(lo),
                     "fraction_hi": float(hi), "n_seeds": int(min(len(clean), len(b)))})
    return pl.DataFrame(rows, schema={c: (pl.Utf8 if c == "model" else pl.Int64 if c == "n_seeds" else pl.Float64)
                                      for c in cols})


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def render_markdown(table: pl.DataFrame, mitigation: pl.DataFrame, *, metric: str = "acc1") -> str:
    """The summary's adaptation section: each adaptation's metric per split and level at the
    largest scale (mean ± std over seeds), and what NMTune wins back at the top level."""
    if table.is_empty():
        return ""
    top = table.get_column("data_scale").max()
    part = table.filter(pl.col("data_scale") == top)
    levels = sorted(part.get_column("bias_level").unique().to_list())
    out = ["## Adaptations", "",
           f"{metric} after each adaptation at the largest scale ({top:.4g} samples seen), mean ± std over seeds "
           f"(n = {int(part.get_column('n_seeds').max())}); few-shot values are the mean over each cell's draws.", "",
           "| adaptation | split | " + " | ".join(f"level {lv:g}" for lv in levels) + " |",
           "|---|---|" + "---|" * len(levels)]
    for (task, split), grp in part.sort("task", "split").group_by(["task", "split"], maintain_order=True):
        by = {r["bias_level"]: _pm(r["mean"], r["std"]) for r in grp.iter_rows(named=True)}
        out.append(f"| {task} | {split} | " + " | ".join(by.get(lv, "—") for lv in levels) + " |")
    if not mitigation.is_empty():
        out += ["", "**Mitigation.** Share of the OOD gap opened by pre-training bias under the linear probe that "
                "NMTune wins back, (NMTune − probe) / (probe at clean − probe), 95 % bootstrap interval over seeds:", ""]
        for r in mitigation.iter_rows(named=True):
            head = f"- {r['model']}, {r['data_scale']:.4g} samples, level {r['level']:g}: gap {r['gap']:+.3f}, "
            if r["gap"] <= 0:  # bias did not lower the probe here: a share of it means nothing
                out.append(head + f"gain {r['gain']:+.3f}; no gap to win back (n = {r['n_seeds']})")
                continue
            out.append(head + f"gain {r['gain']:+.3f}, fraction {r['fraction']:.2f} "
                       f"[{r['fraction_lo']:.2f}, {r['fraction_hi']:.2f}] (n = {r['n_seeds']})")
    return "\n".join(out + [""])


def write_adaptation_report(df: pl.DataFrame, out_dir: Path, formats: Sequence[str], *,
                            metric: str = "acc1") -> tuple[dict[str, Path], str]:
    """Write the adaptation, mitigation and spectrum tables (csv) and the spectrum plot; return
    the paths and the summary's markdown section ("" when the study ran no adaptation)."""
    from inheritlab.analysis.plots import plot_spectrum

    table = adaptation_table(df, metric=metric)
    if table.is_empty():
        return {}, ""
    mitigation = recovered_fraction(df, metric=metric)
    spectrum = spectrum_table(df)
    paths: dict[str, Path] = {}
    if "csv" in formats:
        for name, t in (("adaptations", table), ("mitigation", mitigation), ("spectrum", spectrum)):
            if not t.is_empty():
                paths[f"{name}_csv"] = Path(out_dir) / f"{name}.csv"
                with atomic_open(paths[f"{name}_csv"], "wb") as fh:
                    t.write_csv(fh)
    if not spectrum.is_empty():
        for p in plot_spectrum(spectrum, Path(out_dir) / "spectrum", formats=formats,
                               title="Feature spectrum before and after adaptation"):
            paths[f"spectrum_{p.suffix[1:]}"] = p
    md = render_markdown(table, mitigation, metric=metric)
    if not spectrum.is_empty():
        md += "\nThe features' spectrum before and after adaptation: `spectrum.png` (`spectrum.csv`).\n"
    return paths, md


__all__ = ["ADAPTATION_TASKS", "adaptation_table", "is_adaptation", "recovered_fraction", "render_markdown", "spectrum_table",
           "write_adaptation_report"]
