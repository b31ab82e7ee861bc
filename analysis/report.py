"""Turn a study's results table into the files of a paper: tables, fits, plots, a summary.

``build_report`` is what the study flow calls at the end of a run (and publishes as artifacts);
``curves`` is ``inheritlab curves RUN_DIR``. Both degrade instead of failing when a study is
small: one scale gives points without a fit, two or three scales give a power law without the
irreducible term, one seed gives no seed error bars, one level gives no Δ — each said in the
summary's notes.

Accuracy-like metrics (acc1, recall@k) are fitted as error = 1 − metric, the quantity that
follows a power law towards a floor; plots and tables show the metric itself.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from inheritlab.analysis import inheritance as inh
from inheritlab.analysis import plots
from inheritlab.analysis.fits import FitResult, InsufficientData, compare_forms
from inheritlab.analysis.fits_power import fit_best_power_law, fit_joint_power_law
from inheritlab.analysis.fits_bnsl import break_scales, fit_bnsl
from inheritlab.analysis.fits_frontier import fit_frontier
from inheritlab.analysis.results import (
    aggregate_seeds,
    curve_keys,
    final_checkpoints,
    higher_is_better,
    load_results,
    select,
    with_clean_controls,
)
from inheritlab.infra.atomic import atomic_open, atomic_write_json, atomic_write_text
from inheritlab.infra.hashing import stable_int

FORMATS = ("png", "pdf", "csv", "md", "latex")
N_BOOT = 200
# A one-break BNSL has six parameters; with eight scales two are left for the held-out score.
BNSL_MIN_SCALES = 8
# ... and it replaces the power law only when its held-out error is this much lower (and the
# break is significant and inside the data): extra parameters must earn their place.
BNSL_MARGIN = 0.8


def _label(keys: Sequence[str], key: Sequence[Any]) -> str:
    parts = []
    for k, v in zip(keys, key):
        if k == "bias_level":
            parts.append(f"level {v:g}")
        elif k == "bias_type":
            parts.append(str(v))
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _fit_seed(*parts: Any) -> int:
    # One bootstrap stream per curve, fixed by what the curve is (not by its position).
    return stable_int("analysis.bootstrap", *parts) % (2**32)


def _write_table(df: pl.DataFrame, out_dir: Path, formats: Sequence[str], paths: dict[str, Path]) -> None:
    pq = out_dir / "results.parquet"
    with atomic_open(pq, "wb") as fh:
        df.write_parquet(fh)
    if "csv" in formats:
        csv = out_dir / "results.csv"
        atomic_write_text(csv, df.write_csv())
        paths["table_csv"] = csv
    paths["table"] = pq


def _fit_curves(sub: pl.DataFrame, *, x: str, keys: list[str], hib: bool, notes: list[str]) -> list[dict[str, Any]]:
    """One dict per curve: points (metric units), the fit on the target, label."""
    pts = aggregate_seeds(sub, x=x, keys=keys)
    target = (1.0 - pl.col("value")) if hib else pl.col("value")
    rows = sub.with_columns(target.alias("_target"))
    curves = []
    for key, grp in pts.group_by(keys, maintain_order=True):
        key = tuple(key)
        cond = pl.all_horizontal([pl.col(k) == v for k, v in zip(keys, key)])
        raw = rows.filter(cond).sort([x, "seed"])
        label = _label(keys, key)
        fit: FitResult | None = None
        note = ""
        comparison: list[dict[str, Any]] = []
        xs_raw, ys_raw = raw[x].to_numpy(), raw["_target"].to_numpy()
        try:
            fit = fit_best_power_law(xs_raw, ys_raw, n_boot=N_BOOT, seed=_fit_seed(*key))
            if fit is None:
                note = "one scale: no fit"
            elif grp.height >= BNSL_MIN_SCALES:
                fit, comparison = _maybe_broken(fit, xs_raw, ys_raw, key)
        except InsufficientData as exc:
            note = str(exc)
        except Exception as exc:  # a pathological curve must not sink the whole report
            note = f"fit failed: {type(exc).__name__}: {exc}"
        if note or (fit is not None and fit.note):
            notes.append(f"{label}: {note or fit.note}")
        curves.append({
            "key": dict(zip(keys, key)), "label": label,
            "level": float(key[keys.index("bias_level")]),
            "x": grp[x].to_numpy(), "mean": grp["mean"].to_numpy(), "std": grp["std"].to_numpy(),
            "n_seeds": grp["n_seeds"].to_numpy(), "fit": fit, "note": fit.note if fit else note,
            "comparison": comparison,
            "breaks": break_scales(fit) if fit is not None and fit.form.name.startswith("bnsl") else [],
        })
    if pts.height and int(pts["n_seeds"].max()) <= 1:
        notes.append("one seed per point: no seed error bars; fit bands come from the bootstrap over scales only")
    return curves


def _maybe_broken(pl_fit: FitResult, x: np.ndarray, y: np.ndarray, key: Sequence[Any]) -> tuple[FitResult, list[dict[str, Any]]]:
    """Also fit a one-break BNSL; keep it only when the break is real and it extrapolates better.

    A BNSL has three more parameters than a power law and will always fit a little better, so a
    break is declared only when (1) its held-out error is at most ``BNSL_MARGIN`` × the power
    law's, (2) the bootstrap interval of the slope change c1 excludes 0, and (3) the break d1
    lies inside the observed scale range. Otherwise the power law stays (fewer parameters).
    """
    try:
        broken = fit_bnsl(x, y, n_breaks=1, n_boot=N_BOOT, seed=_fit_seed("bnsl", *key))
    except (InsufficientData, ValueError):
        return pl_fit, []
    ranked = compare_forms([pl_fit, broken])
    ho_pl, ho_b = (pl_fit.holdout or {}).get("rmsle"), (broken.holdout or {}).get("rmsle")
    c_lo, c_hi = broken.ci.get("c1", (math.nan, math.nan))
    d = broken.params["d1"]
    real = (
        ho_pl is not None and ho_b is not None and ho_b <= BNSL_MARGIN * ho_pl
        and (c_lo > 0 or c_hi < 0)
        and float(np.min(x)) < d < float(np.max(x))
    )
    if real:
        return replace(broken, note=f"broken law extrapolates better on held-out scales (break at {d:.3g})"), ranked
    return pl_fit, ranked


def _frontier_fits(sub: pl.DataFrame, *, hib: bool, notes: list[str]) -> list[dict[str, Any]]:
    """Per bias type and level: the compute frontier over every model and data scale.

    Only for ``x = flops`` — compute is the one axis on which runs of different models compare.
    """
    out = []
    target = (1.0 - pl.col("value")) if hib else pl.col("value")
    rows = sub.with_columns(target.alias("_t")).sort(["bias_type", "bias_level", "flops", "_t"])
    for key, grp in rows.group_by(["bias_type", "bias_level"], maintain_order=True):
        label = _label(["bias_type", "bias_level"], key)
        if grp["flops"].n_unique() < 3:
            continue
        try:
            fit = fit_frontier(grp["flops"].to_numpy(), grp["_t"].to_numpy(), n_bins=min(5, grp["flops"].n_unique()),
                               n_boot=N_BOOT, seed=_fit_seed("frontier", *key))
        except ValueError as exc:
            notes.append(f"frontier {label}: {exc}")
            continue
        out.append({"label": label, "fit": fit})
    return out


def _joint_fits(sub: pl.DataFrame, *, x: str, keys: list[str], hib: bool, notes: list[str]) -> list[dict[str, Any]]:
    """Shared-exponent fit across the levels of each bias type (and model, when split)."""
    outer = [k for k in keys if k != "bias_level"]
    out = []
    target = (1.0 - pl.col("value")) if hib else pl.col("value")
    for key, grp in sub.with_columns(target.alias("_t")).sort(outer + ["bias_level", x, "seed"]).group_by(outer, maintain_order=True):
        levels = sorted(grp["bias_level"].unique().to_list())
        if len(levels) < 2:
            continue
        gi = np.searchsorted(np.asarray(levels), grp["bias_level"].to_numpy())
        label = _label(outer, key)
        try:
            r = fit_joint_power_law(grp[x].to_numpy(), gi, grp["_t"].to_numpy(), n_boot=N_BOOT, seed=_fit_seed("joint", *key))
        except (InsufficientData, ValueError) as exc:
            notes.append(f"joint fit {label}: {exc}")
            continue
        if grp[x].n_unique() < 4:
            notes.append(f"joint fit {label}: only {grp[x].n_unique()} scales, the floors c_level are weakly determined")
        out.append({"label": label, "levels": levels, "fit": r})
    return out


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _fit_rows(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for c in curves:
        f: FitResult | None = c["fit"]
        base = {**{k: v for k, v in c["key"].items()}, "label": c["label"], "n_scales": len(c["x"])}
        if f is None:
            rows.append({**base, "form": "none", "note": c["note"]})
            continue
        row = {**base, "form": f.form.name, "loss": f.loss, "note": f.note}
        for n, v in f.params.items():
            row[n] = v
            lo, hi = f.ci.get(n, (math.nan, math.nan))
            row[f"{n}_lo"], row[f"{n}_hi"] = lo, hi
        ho = f.holdout or {}
        row["holdout_rmsle"] = ho.get("rmsle", math.nan)
        row["holdout_rel_err"] = ho.get("rel_err", math.nan)
        rows.append(row)
    return rows


_PARAM_TEX = {"a": "a", "b": "b", "c": "c", "c0": "c_0", "alpha": r"\alpha", "beta": r"\beta", "E0": "E_0"}


def _latex(rows: list[dict[str, Any]], forms: dict[str, tuple[str, ...]], metric: str, x: str, hib: bool) -> str:
    """A booktabs table: one row per curve, its form, parameters with 95 % intervals."""
    tgt = f"1-{metric}" if hib else metric
    lines = [
        f"% scaling fits of E = {tgt} against {x}; power_law: E = a x^{{-b}} + c;",
        "% bnsl_n: E = a + b x^{-c_0} prod_i (1 + (x/d_i)^{1/f_i})^{-c_i f_i}",
        r"\begin{tabular}{llp{0.5\linewidth}rr}",
        r"\toprule",
        r"curve & form & parameters [95\% CI] & held-out RMSLE & scales \\",
        r"\midrule",
    ]
    for r in rows:
        parts = []
        for n in forms.get(r["form"], ()):
            sym = _PARAM_TEX.get(n, f"{n[0]}_{{{n[1:]}}}" if len(n) > 1 else n)
            lo, hi = r.get(f"{n}_lo", math.nan), r.get(f"{n}_hi", math.nan)
            ci = "" if lo is None or math.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]"
            parts.append(f"${sym}={r[n]:.3g}${ci}")
        ho = r.get("holdout_rmsle", math.nan)
        name = r["label"].replace("_", "\\_")
        form = r["form"].replace("_", "\\_")
        lines.append(f"{name} & {form} & {'; '.join(parts) or '--'} & "
                     f"{'--' if ho is None or math.isnan(ho) else f'{ho:.3g}'} & {r['n_scales']} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def build_report(
    df: pl.DataFrame,
    out_dir: Path,
    *,
    metric: str = "acc1",
    task: str = "zeroshot",
    split: str = "id",
    x: str = "data_scale",
    formats: Sequence[str] = ("png", "csv", "md"),
) -> dict[str, Path]:
    """Write the tidy table, fits per level and jointly, plots and a summary; return name→path.

    Formats: ``png``/``pdf`` plots, ``csv`` tables, ``md`` summary, ``latex`` fit table. The
    parquet table and ``fits.json`` are always written (they are what other tools read).
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"formats {bad}: expected any of {list(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    notes: list[str] = []
    # The table is written as given (each cell once); the curves need the clean control under
    # every bias type, so the expansion is for the fits only.
    _write_table(df, out_dir, formats, paths)
    df = with_clean_controls(df)
    hib = higher_is_better(metric)
    tag = f"{task}_{split}_{metric}".replace("@", "at").replace("/", "_")
    title = f"{task} / {split} / {metric}"

    sub = select(df, metric=metric, task=task, split=split) if not df.is_empty() else df
    if sub.is_empty():
        notes.append(f"no completed rows for task={task!r}, split={split!r}, metric={metric!r}")
    keys = curve_keys(sub, x) if not sub.is_empty() else ["bias_type", "bias_level"]
    curves = _fit_curves(sub, x=x, keys=keys, hib=hib, notes=notes) if not sub.is_empty() else []
    joint = _joint_fits(sub, x=x, keys=keys, hib=hib, notes=notes) if not sub.is_empty() else []
    frontier = _frontier_fits(sub, hib=hib, notes=notes) if x == "flops" and not sub.is_empty() else []
    to_metric = (lambda e: 1.0 - e) if hib else (lambda e: e)

    # Inheritance metrics.
    pts = aggregate_seeds(sub, x=x, keys=keys) if not sub.is_empty() else pl.DataFrame()
    delta = inh.delta_vs_clean(pts, x=x, keys=keys) if not pts.is_empty() else pl.DataFrame()
    if not pts.is_empty() and pts.filter(pl.col("bias_level") > 0).is_empty():
        notes.append("a single (clean) level: no Δ vs clean")
    elif not pts.is_empty() and pts.filter(pl.col("bias_level") == 0).is_empty():
        notes.append("no clean (level 0) cells: no Δ vs clean, no effective-data multiplier")
    crit = inh.critical_level(delta, x=x, keys=[k for k in keys if k != "bias_level"]) if not delta.is_empty() else pl.DataFrame()
    mult = _multipliers(curves, keys, x, hib)
    both = (
        df.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        if not df.is_empty() else df
    )
    gap = inh.id_ood_gap(final_checkpoints(both), x=x, keys=keys) if not both.is_empty() else pl.DataFrame()
    if gap.is_empty() and not df.is_empty():
        notes.append("no ID/OOD pair for this task and metric: no ID–OOD gap")

    fit_rows = _fit_rows(curves)
    fits_json = {
        "metric": metric, "task": task, "split": split, "x": x,
        "target": f"1 - {metric}" if hib else metric,
        "curves": [{"label": c["label"], **c["key"], "fit": c["fit"].to_dict() if c["fit"] else None, "note": c["note"],
                    "comparison": c["comparison"], "breaks": c["breaks"]} for c in curves],
        "joint": [{"label": j["label"], "levels": j["levels"], "fit": j["fit"].to_dict()} for j in joint],
        "frontier": [{"label": f["label"], "fit": f["fit"].to_dict()} for f in frontier],
        "critical_level": crit.to_dicts() if not crit.is_empty() else [],
        "effective_data_multiplier": mult.to_dicts() if not mult.is_empty() else [],
        "notes": notes,
    }
    atomic_write_json(out_dir / f"fits_{tag}.json", _jsonable(fits_json))
    paths["fits_json"] = out_dir / f"fits_{tag}.json"
    if "csv" in formats:
        p = out_dir / f"fits_{tag}.csv"
        atomic_write_text(p, pl.DataFrame(fit_rows).write_csv() if fit_rows else "")
        paths["fits_csv"] = p
        for name, frame in (("delta", delta), ("id_ood_gap", gap), ("multiplier", mult)):
            if not frame.is_empty():
                p = out_dir / f"{name}_{tag}.csv"
                atomic_write_text(p, frame.write_csv())
                paths[f"{name}_csv"] = p
    if "latex" in formats:
        p = out_dir / f"fits_{tag}.tex"
        forms = {c["fit"].form.name: c["fit"].form.params for c in curves if c["fit"] is not None}
        atomic_write_text(p, _latex(fit_rows, forms, metric, x, hib))
        paths["fits_latex"] = p

    img = [f for f in formats if f in plots.IMAGE_FORMATS]
    if img:
        for p in plots.plot_curves(curves, out_dir / f"curves_{tag}", x=x, metric=metric, title=title, formats=img, to_metric=to_metric):
            paths[f"curves_{p.suffix[1:]}"] = p
        if not delta.is_empty() and delta.filter(pl.col("bias_level") > 0).height:
            for p in plots.plot_delta(delta, out_dir / f"delta_{tag}", x=x, metric=metric, title=title, formats=img):
                paths[f"delta_{p.suffix[1:]}"] = p
        if not gap.is_empty():
            for p in plots.plot_id_ood(gap, out_dir / f"id_ood_{task}_{metric}".replace("@", "at"), metric=metric, title=f"{task} / {metric}", formats=img):
                paths[f"id_ood_{p.suffix[1:]}"] = p

    if "md" in formats:
        p = out_dir / f"summary_{tag}.md"
        atomic_write_text(p, _summary(title, metric, x, hib, curves, joint, delta, crit, mult, gap, notes, frontier))
        # The summary first: the flow shows the first markdown file as the study's summary.
        paths = {"summary_md": p, **paths}
    return paths


def _multipliers(curves: list[dict[str, Any]], keys: list[str], x: str, hib: bool) -> pl.DataFrame:
    """Effective-data multiplier of each biased point against its clean curve's fit."""
    rows = []
    others = [k for k in keys if k != "bias_level"]
    clean = {tuple(c["key"][k] for k in others): c for c in curves if c["level"] == 0.0 and c["fit"] is not None}
    for c in curves:
        if c["level"] == 0.0:
            continue
        ref = clean.get(tuple(c["key"][k] for k in others))
        if ref is None:
            continue
        target = (1.0 - c["mean"]) if hib else c["mean"]
        frame = pl.DataFrame({x: c["x"].astype(float), "mean": target.astype(float)})
        eff = inh.effective_data_multiplier(frame, ref["fit"].predict, x=x)
        for (xv, xe, m) in eff.select(x, "x_effective", "multiplier").iter_rows():
            rows.append({**c["key"], x: xv, "x_effective": xe, "multiplier": m})
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _summary(title: str, metric: str, x: str, hib: bool, curves: list[dict[str, Any]], joint: list[dict[str, Any]],
             delta: pl.DataFrame, crit: pl.DataFrame, mult: pl.DataFrame, gap: pl.DataFrame, notes: list[str],
             frontier: Sequence[dict[str, Any]] = ()) -> str:
    tgt = f"E = 1 − {metric}" if hib else f"E = {metric}"
    out = [f"# Scaling report — {title}", "", f"Fits of {tgt} against `{x}` (final checkpoint of each cell; "
           "95 % bootstrap intervals; held-out RMSLE = error on the largest scales of a refit on the smaller ones).", ""]
    out += ["| curve | scales | form | parameters [95 % CI] | held-out RMSLE |", "|---|---|---|---|---|"]
    for c in curves:
        f: FitResult | None = c["fit"]
        if f is None:
            out.append(f"| {c['label']} | {len(c['x'])} | — | — | — |")
            continue
        def pv(n: str) -> str:
            lo, hi = f.ci.get(n, (math.nan, math.nan))
            return f"{n} = {f.params[n]:.3g}" + ("" if math.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]")
        ho = (f.holdout or {}).get("rmsle", math.nan)
        out.append(f"| {c['label']} | {len(c['x'])} | {f.form.name} | {'; '.join(pv(n) for n in f.form.params)} | {_fmt(ho)} |")
    compared = [c for c in curves if c.get("comparison")]
    if compared:
        out += ["", "**Model comparison** (held-out RMSLE, best first):", ""]
        for c in compared:
            out.append(f"- {c['label']}: " + ", ".join(f"{r['form']} {_fmt(r['holdout_rmsle'])}" for r in c["comparison"]))
    broken = [c for c in curves if c.get("breaks")]
    if broken:
        out += ["", f"**Critical scale** (break of the broken scaling law, `{x}`):", ""]
        for c in broken:
            for b in c["breaks"]:
                out.append(f"- {c['label']}: {b['d']:.4g} [{_fmt(b['d_lo'])}, {_fmt(b['d_hi'])}], slope change {b['slope_change']:+.3g}")
    if frontier:
        out += ["", "**Compute frontier** (best result per bin of log FLOPs over all models, E = β·C^α):", ""]
        for fr in frontier:
            f = fr["fit"]
            lo, hi = f.ci.get("alpha", (math.nan, math.nan))
            out.append(f"- {fr['label']}: E = {f.beta:.4g}·C^{f.alpha:.4f} (α 95 % CI [{_fmt(lo)}, {_fmt(hi)}]; "
                       f"{len(f.frontier_x)} frontier points of {f.n_points})")
    if joint:
        out += ["", "**Joint fits** (one exponent b shared by all levels, own a and c per level):", ""]
        for j in joint:
            f = j["fit"]
            lo, hi = f.ci.get("b", (math.nan, math.nan))
            out.append(f"- {j['label'] or 'all'}: b = {f.params['b']:.3g} [{lo:.3g}, {hi:.3g}] over levels "
                       f"{', '.join(f'{v:g}' for v in j['levels'])}")
    if not delta.is_empty() and delta.filter(pl.col("bias_level") > 0).height:
        out += ["", f"**Δ {metric} vs clean at equal scale**", "", "| curve | " + x + " | Δ | ± s.e. |", "|---|---|---|---|"]
        keys = [k for k in ("bias_type", "bias_level", "model", "data_scale") if k in delta.columns and k != x]
        for r in delta.filter(pl.col("bias_level") > 0).iter_rows(named=True):
            out.append(f"| {_label(keys, [r[k] for k in keys])} | {r[x]:.4g} | {r['delta']:+.4f} | {r['delta_se']:.4f} |")
    if not crit.is_empty():
        out += ["", "**Critical level** (lowest level whose Δ at the largest scale is below −tol and beyond 2 s.e.):", ""]
        for r in crit.iter_rows(named=True):
            lvl = r["critical_level"]
            name = r.get("bias_type", "")
            out.append(f"- {name}: " + (f"{lvl:g}" if lvl is not None else "none") + f" (tol {r['tol']:g}, at {x} = {r['scale']:.4g})")
    if not mult.is_empty():
        out += ["", "**Effective-data multiplier** (clean scale reaching the biased result ÷ the biased scale; "
                "— when outside 1000× either way or below the clean floor):", ""]
        for r in mult.iter_rows(named=True):
            out.append(f"- level {r['bias_level']:g}{', ' + str(r['bias_type']) if 'bias_type' in r else ''} at {r[x]:.4g}: "
                       f"{_fmt(r['multiplier'])}")
    if not gap.is_empty():
        per = gap.group_by("bias_level").agg(pl.col("gap").mean()).sort("bias_level")
        out += ["", f"**ID − OOD gap** ({metric}, mean over scales): " +
                ", ".join(f"level {a:g}: {b:+.4f}" for a, b in per.iter_rows())]
    if notes:
        out += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def curves(
    run_dir: str, *, metric: str = "acc1", task: str = "zeroshot", split: str = "id", x: str = "data_scale",
    fmt: str = "png", out: Path | None = None,
) -> list[Path]:
    """``inheritlab curves``: load a run directory and write the report in one format.

    ``png``/``pdf``: the plots; ``csv``: the tidy table, fits and inheritance tables; ``latex``:
    the fit table. The JSON fits are always written beside them.
    """
    if fmt not in ("png", "pdf", "csv", "latex"):
        raise ValueError(f"format {fmt!r}: expected png, pdf, csv or latex")
    df = load_results(str(run_dir))
    if df.is_empty():
        raise FileNotFoundError(f"{run_dir}: no completed cells yet")
    out_dir = Path(out) if out is not None else Path(str(run_dir)) / "curves"
    paths = build_report(df, out_dir, metric=metric, task=task, split=split, x=x, formats=(fmt,))
    ext = {"png": ".png", "pdf": ".pdf", "csv": ".csv", "latex": ".tex"}[fmt]
    return [p for p in paths.values() if p.suffix == ext] + [paths["fits_json"]]


__all__ = ["build_report", "curves"]
