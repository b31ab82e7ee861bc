"""How a report is written: markdown summary, LaTeX fit and Δ tables, JSON fits, CSV tables, plots.

Every renderer takes a computed :class:`~inheritlab.analysis.report_data.Report` and nothing
else: it formats numbers the report already holds and never fits, so all formats agree and a
format can be rendered again (or added later) at no cost. Every interval travels with its
provenance — resamples kept of those requested, the bootstrap seed and method, and the seeds
behind each point — in every format: a table column, a JSON object, a figure caption. Text renderers return the text;
:func:`build_report <inheritlab.analysis.report.build_report>` writes it atomically.
:func:`render_plots` draws with :mod:`inheritlab.analysis.plots` and returns the files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from inheritlab.analysis import plots
from inheritlab.analysis.fits import FitResult
from inheritlab.analysis.report_data import Curve, Report
from inheritlab.analysis.results import curve_label

_NAN_CI = (math.nan, math.nan)


def _ci(ci: dict[str, tuple[float, float]], name: str) -> tuple[float, float]:
    # A parameter without a bootstrap interval (too few points to resample) reads as (nan, nan).
    return ci.get(name, _NAN_CI)


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _prov(f: FitResult | None) -> str:
    """Short provenance of a fit's intervals: "200/200 wild, seed 123; 2 seeds/pt"."""
    if f is None:
        return "—"
    b = f.boot
    if b.reason:
        return f"no interval: {b.reason}; {b.seeds_text()} seed(s)/pt"
    return f"{b.kept}/{b.requested} {b.method}, seed {b.seed}; {b.seeds_text()} seed(s)/pt"


def _seeds(c: Curve) -> str:
    lo, hi = (int(c.n_seeds.min()), int(c.n_seeds.max())) if len(c.n_seeds) else (0, 0)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _bullets(heading: str, items: Sequence[str]) -> list[str]:
    """A markdown section: a bold heading and one bullet per item; nothing when there are none."""
    return ["", heading, ""] + [f"- {item}" for item in items] if items else []


# --- markdown -----------------------------------------------------------------------------------


def render_markdown(report: Report) -> str:
    """The summary: fits table, then each inheritance finding, then the notes on what is missing."""
    r, x = report, report.x
    out = _fits_table(r)
    out += _bullets("**Model comparison** (held-out RMSLE, best first):", [
        f"{c.label}: " + ", ".join(f"{row['form']} {_fmt(row['holdout_rmsle'])}" for row in c.comparison)
        for c in r.curves if c.comparison])
    out += _bullets("**Number of breaks** (0–3, chosen by held-out RMSLE on the largest scales; more breaks only "
                    "when below 0.9 × the fewer's score):", [
        f"{c.label}: chose {next(s['n_breaks'] for s in c.break_selection if s['chosen'])} — " + ", ".join(
            f"{s['n_breaks']}: " + (_fmt(s['holdout_rmsle']) if not s.get("skipped") else f"not scored ({s['skipped']})")
            for s in c.break_selection)
        for c in r.curves if c.break_selection])
    out += _bullets(f"**Critical scale** (break of the broken scaling law, `{x}`):", [
        f"{c.label}: {b['d']:.4g} [{_fmt(b['d_lo'])}, {_fmt(b['d_hi'])}], slope change {b['slope_change']:+.3g}"
        + (f" — {b['beyond_data']} the observed scales: the data only begin to show it" if b.get("beyond_data") else "")
        + f" ({_prov(c.fit)})"
        for c in r.curves for b in c.breaks])
    out += _bullets("**Compute frontier** (best result per bin of log FLOPs over all models, E = β·C^α):", [
        f"{fr.label}: E = {fr.fit.beta:.4g}·C^{fr.fit.alpha:.4f} (α 95 % CI [{_fmt(_ci(fr.fit.ci, 'alpha')[0])}, "
        f"{_fmt(_ci(fr.fit.ci, 'alpha')[1])}]; {len(fr.fit.frontier_x)} frontier points of {fr.fit.n_points}; "
        f"{fr.fit.provenance.caption()})"
        for fr in r.frontier])
    out += _bullets("**Joint fits** (one exponent b shared by all levels, own a and c per level):", [
        f"{j.label or 'all'}: b = {j.fit.params['b']:.3g} [{_fmt(_ci(j.fit.ci, 'b')[0])}, {_fmt(_ci(j.fit.ci, 'b')[1])}] "
        f"over levels {', '.join(f'{v:g}' for v in j.levels)} ({_prov(j.fit)})"
        for j in r.joint])
    out += _bullets("**Two-variable fits** (E = E0 + A/N^α + B/D^β over model size N and data D; what a bias "
                    "costs in capacity, in data and in the floor; least squares, then the Huber loss as "
                    "Besiroglu et al. 2024 fit it):", [
        f"{t.label} ({f.form.name}): " + "; ".join(
            f"{n} = {f.params[n]:.3g} [{_fmt(_ci(f.ci, n)[0])}, {_fmt(_ci(f.ci, n)[1])}]" for n in ("alpha", "beta", "E0"))
        + f" ({_prov(f)})"
        for t in r.two_variable for f in (t.fit, t.huber) if f is not None])
    out += _decision_md(r)
    out += _bullets("**Two-step task prediction** (scale → loss → accuracy, Bhagia et al. 2024; fitted below the "
                    "largest scale, scored at it):", [_two_step_md(p) for p in r.task_prediction])
    out += _delta_table(r)
    out += _bullets("**Critical level** (lowest level whose Δ at the largest scale is below −tol and beyond 2 s.e.):", [
        f"{row.get('bias_type', '')}: " + (f"{row['critical_level']:g}" if row["critical_level"] is not None else "none")
        + f" (tol {row['tol']:g}, at {x} = {row['scale']:.4g})"
        for row in r.critical_level.iter_rows(named=True)])
    out += _bullets("**Effective-data multiplier** (clean scale reaching the biased result ÷ the biased scale; "
                    "— when outside 1000× either way or below the clean floor):", [
        f"level {row['bias_level']:g}{', ' + str(row['bias_type']) if 'bias_type' in row else ''} at {row[x]:.4g}: "
        f"{_fmt(row['multiplier'])}"
        for row in r.multiplier.iter_rows(named=True)])
    if not r.id_ood_gap.is_empty():
        per = r.id_ood_gap.group_by("bias_level").agg(pl.col("gap").mean()).sort("bias_level")
        out += ["", f"**ID − OOD gap** ({r.metric}, mean over scales): " +
                ", ".join(f"level {a:g}: {b:+.4f}" for a, b in per.iter_rows())]
    if r.chance is not None:
        out += ["", f"**Chance level** ({r.metric}): {r.chance:.4g} — drawn in the figures as a dotted grey line."]
    out += _bullets("**Notes**", r.notes)
    return "\n".join(out) + "\n"


def _fits_table(r: Report) -> list[str]:
    tgt = f"E = 1 − {r.metric}" if r.hib else f"E = {r.metric}"
    out = [f"# Scaling report — {r.title}", "", f"Fits of {tgt} against `{r.x}` (final checkpoint of each cell; "
           "95 % bootstrap intervals, with the resamples kept of those requested, the bootstrap method and seed, "
           "and the training seeds behind each point; held-out RMSLE = error on the largest scales of a refit "
           "on the smaller ones).", ""]
    out += ["| curve | scales | seeds/point | form | parameters [95 % CI] | held-out RMSLE | intervals from |",
            "|---|---|---|---|---|---|---|"]
    for c in r.curves:
        f = c.fit
        if f is None:
            out.append(f"| {c.label} | {len(c.x)} | {_seeds(c)} | — | — | — | — |")
            continue
        ho = (f.holdout or {}).get("rmsle", math.nan)
        out.append(f"| {c.label} | {len(c.x)} | {_seeds(c)} | {f.form.name} | {'; '.join(_param_md(f, n) for n in f.form.params)} "
                   f"| {_fmt(ho)} | {_prov(f)} |")
    return out


def _decision_md(r: Report) -> list[str]:
    d = r.decision
    if d.is_empty():
        return []
    keys = [k for k in ("bias_type", "model", "data_scale") if k in d.columns and k != "scale"]
    out = ["", f"**Decision accuracy** (DataDecide, Magnusson et al. 2025): the share of pairs of bias levels whose "
           f"order at a smaller `{r.x}` matches their order at the largest; 95 % interval from a bootstrap over seeds.", "",
           "| curve | scale | target | levels (pairs) | decision accuracy [95 % CI] | intervals from |", "|---|---|---|---|---|---|"]
    for row in d.iter_rows(named=True):
        ci = f" [{row['lo']:.2f}, {row['hi']:.2f}]" if row["lo"] is not None and not math.isnan(row["lo"]) else ""
        prov = (f"{row['n_boot_kept']}/{row['n_boot_requested']} seed resamples, seed {row['boot_seed']}"
                if row["boot_seed"] is not None else f"no interval: {row['note']}")
        seeds = f"{row['seeds_min']}" if row["seeds_min"] == row["seeds_max"] else f"{row['seeds_min']}–{row['seeds_max']}"
        out.append(f"| {curve_label(keys, [row[k] for k in keys])} | {row['scale']:.4g} | {row['target_scale']:.4g} | "
                   f"{row['n_levels']} ({row['n_pairs']}) | {_fmt(row['decision_accuracy'])}{ci} | {prov}; {seeds} seed(s)/pt |")
    return out


def _two_step_md(p: Any) -> str:
    if p.predicted is None:
        return f"{p.label}: no prediction — {p.note}"
    ci = f" [{p.interval[0]:.3f}, {p.interval[1]:.3f}]" if p.interval else ""
    prov = f"; {_prov(p.step1)}" if p.step1 is not None else ""
    return (f"{p.label}: at {p.target_scale:.4g} predicted {p.predicted:.3f}{ci}, measured {p.actual:.3f} "
            f"(|error| {p.abs_error:.3f}; loss predicted {p.loss_predicted:.4g}, measured {p.loss_actual:.4g}; {p.note}{prov})")


def _param_md(f: FitResult, name: str) -> str:
    lo, hi = _ci(f.ci, name)
    return f"{name} = {f.params[name]:.3g}" + ("" if math.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]")


def _delta_table(r: Report) -> list[str]:
    delta, x = r.delta, r.x
    if delta.is_empty() or not delta.filter(pl.col("bias_level") > 0).height:
        return []
    out = ["", f"**Δ {r.metric} vs clean at equal scale**", "", "| curve | " + x + " | Δ | ± s.e. |", "|---|---|---|---|"]
    keys = [k for k in ("bias_type", "bias_level", "model", "data_scale") if k in delta.columns and k != x]
    for row in delta.filter(pl.col("bias_level") > 0).iter_rows(named=True):
        out.append(f"| {curve_label(keys, [row[k] for k in keys])} | {row[x]:.4g} | {row['delta']:+.4f} | {row['delta_se']:.4f} |")
    return out


# --- tables: fit rows (CSV, LaTeX), JSON ----------------------------------------------------------


def _fit_rows(curves: Sequence[Curve]) -> list[dict[str, Any]]:
    """One flat row per curve: key, form, parameters with their interval bounds, held-out errors."""
    rows = []
    for c in curves:
        f = c.fit
        base = {**c.key, "label": c.label, "n_scales": len(c.x)}
        if f is None:
            rows.append({**base, "form": "none", "note": c.note})
            continue
        row = {**base, "form": f.form.name, "loss": f.loss, "note": f.note}
        for n, v in f.params.items():
            row[n] = v
            row[f"{n}_lo"], row[f"{n}_hi"] = _ci(f.ci, n)
        ho = f.holdout or {}
        row["holdout_rmsle"] = ho.get("rmsle", math.nan)
        row["holdout_rel_err"] = ho.get("rel_err", math.nan)
        row.update(_prov_cols(f, c))
        rows.append(row)
    return rows


def _prov_cols(f: FitResult, c: Curve) -> dict[str, Any]:
    b = f.boot
    return {"ci_level": b.level, "boot_method": b.method, "n_boot_requested": b.requested, "n_boot_kept": b.kept,
            "boot_seed": b.seed, "seeds_min": int(c.n_seeds.min()), "seeds_max": int(c.n_seeds.max()),
            "n_dropped_nonfinite": f.n_dropped}


def render_fits_csv(report: Report) -> str:
    """The per-curve fit table as CSV (empty text when there are no curves)."""
    rows = _fit_rows(report.curves)
    return pl.DataFrame(rows).write_csv() if rows else ""


def render_tables_csv(report: Report) -> dict[str, str]:
    """CSV text of the tables the study gives: ``delta``, ``id_ood_gap``, ``multiplier``, ``decision``."""
    tables = (("delta", report.delta), ("id_ood_gap", report.id_ood_gap), ("multiplier", report.multiplier),
              ("decision", report.decision))
    return {name: frame.write_csv() for name, frame in tables if not frame.is_empty()}


_PARAM_TEX = {"a": "a", "b": "b", "c": "c", "c0": "c_0", "alpha": r"\alpha", "beta": r"\beta", "E0": "E_0"}
_FORM_TEX = {
    "power_law": r"$E = a x^{-b} + c$",
    "power_law_no_floor": r"$E = a x^{-b}$",
    "bnsl": r"$E = a + b x^{-c_0} \prod_i (1 + (x/d_i)^{1/f_i})^{-c_i f_i}$",
}
_TEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "−": "$-$",
    "±": r"$\pm$", "–": "--", "—": "---", "·": r"$\cdot$", "√": r"$\surd$", "²": r"$^2$", "₀": r"$_0$",
}


def tex_escape(text: str) -> str:
    """Plain text (a label, a curve name) as LaTeX source that pdflatex reads without extra packages."""
    return "".join(_TEX_CHARS.get(ch, ch) for ch in str(text))


def _tex_label(report: Report, what: str) -> str:
    # A \\label may hold letters, digits and - _ : . but no spaces or braces.
    return f"tab:{re.sub(r'[^A-Za-z0-9_:.-]', '-', report.tag)}-{what}"


def _tex_table(caption: str, label: str, colspec: str, header: str, rows: Sequence[str], comments: Sequence[str] = ()) -> str:
    """A booktabs table float: caption above (as journals ask), label, rule lines."""
    lines = ["% needs \\usepackage{booktabs}", *[f"% {c}" for c in comments],
             r"\begin{table}[tbp]", r"\centering", r"\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             f"\\begin{{tabular}}{{{colspec}}}", r"\toprule", header + r" \\", r"\midrule", *rows,
             r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _form_tex(name: str) -> str:
    return _FORM_TEX["bnsl"] if name.startswith("bnsl") else _FORM_TEX.get(name, "")


def render_latex(report: Report) -> str:
    """The fit table as a booktabs float: one row per curve, its form, parameters with their
    bootstrap intervals, held-out error, scales, seeds and resamples; a caption saying what the
    numbers are (metric, split, axis, interval level and provenance) and ``\\label{tab:<tag>-fits}``."""
    r = report
    forms = {c.fit.form.name: c.fit.form.params for c in r.curves if c.fit is not None}
    fitted = [c for c in r.curves if c.fit is not None]
    lv = "/".join(f"{100 * v:g}\\%" for v in sorted({c.fit.boot.level for c in fitted})) or "95\\%"
    methods = ", ".join(sorted({c.fit.boot.method for c in fitted})) or "--"
    seeds = (f"{min(int(c.n_seeds.min()) for c in r.curves)}" if r.curves else "0")
    hi_seeds = max((int(c.n_seeds.max()) for c in r.curves), default=0)
    seeds = seeds if seeds == f"{hi_seeds}" else f"{seeds}--{hi_seeds}"
    metric = tex_escape(f"{plots.lower_first(plots.metric_label(r.task, None, r.metric))} ({plots.split_label(r.split)})")
    target = tex_escape(f"the error E = 1 − {r.metric}" if r.hib else f"E = {r.metric}")
    form_text = "; ".join(f"{tex_escape(n)}: {_form_tex(n)}" for n in forms if _form_tex(n))
    caption = (f"Scaling fits of {metric} against {tex_escape(_x_words(r))}, one row per curve, fitted as {target} "
               f"on the final checkpoint of every cell" + (f" ({form_text})" if form_text else "") + ". "
               f"Brackets: {lv} bootstrap intervals ({tex_escape(methods)} bootstrap; resamples kept/requested and the "
               f"bootstrap seed per row). Seeds: training seeds behind each point ({seeds}). Held-out RMSLE: error on "
               "the largest scales of a refit on the smaller ones. A curve with fewer scales than its law needs has "
               "no fit (--).")
    if r.chance is not None:
        caption += f" Chance level: {r.chance:.3g}."
    rows = []
    for row, c in zip(_fit_rows(r.curves), r.curves):
        parts = []
        for n in forms.get(row["form"], ()):
            sym = _PARAM_TEX.get(n, f"{n[0]}_{{{n[1:]}}}" if len(n) > 1 else n)
            lo, hi = row.get(f"{n}_lo", math.nan), row.get(f"{n}_hi", math.nan)
            ci = "" if lo is None or math.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]"
            parts.append(f"${sym}={row[n]:.3g}${ci}")
        ho = row.get("holdout_rmsle", math.nan)
        name = tex_escape(row["label"])
        form = tex_escape(row["form"]) if row["form"] != "none" else "--"
        sd = _seeds(c).replace("–", "--")
        prov = "--" if "boot_seed" not in row else (f"{row['n_boot_kept']}/{row['n_boot_requested']} {row['boot_method']} ({row['boot_seed']})"
                                                    if row["n_boot_kept"] else "none")
        rows.append(f"{name} & {form} & {'; '.join(parts) or '--'} & "
                    f"{'--' if ho is None or math.isnan(ho) else f'{ho:.3g}'} & {row['n_scales']} & {sd} & {prov} \\\\")
    return _tex_table(
        caption, _tex_label(r, "fits"), r"llp{0.4\linewidth}rrrl",
        f"curve & form & parameters [{lv} CI] & held-out RMSLE & scales & seeds & resamples (seed)", rows,
        comments=[f"scaling fits of E = {r.target} against {r.x} ({r.task} / {r.split} / {r.metric})"])


def render_latex_delta(report: Report) -> str:
    """The Δ-vs-clean table as a booktabs float (``\\label{tab:<tag>-delta}``): per biased curve and
    scale, Δ with its standard error and the seeds on each side; "" when the study has no Δ."""
    r, delta = report, report.delta
    if delta.is_empty() or not delta.filter(pl.col("bias_level") > 0).height:
        return ""
    biased = delta.filter(pl.col("bias_level") > 0)
    keys = [k for k in ("bias_type", "bias_level", "model", "data_scale") if k in delta.columns and k != r.x]
    xw = tex_escape(_x_words(r))
    caption = (f"{tex_escape(plots.metric_label(r.task, None, r.metric, delta=True))} "
               f"({tex_escape(plots.split_label(r.split))}) at equal {xw}: the mean over training seeds of each biased "
               "cell minus that of the clean control (level 0), final checkpoints. "
               r"s.e.: one standard error, $\sqrt{s^2/n + s_0^2/n_0}$ from the seed spread on both sides "
               r"(-- with one seed on each side: no seed spread to estimate it from); $\Delta \pm 2$\,s.e. is a rough "
               f"95\\% interval. Seeds: biased/clean ({tex_escape(_seed_range(biased, 'n_seeds', 'clean_n'))}).")
    rows = []
    for row in biased.iter_rows(named=True):
        one = int(row["n_seeds"]) <= 1 and int(row["clean_n"]) <= 1
        se = "--" if one or row["delta_se"] is None or math.isnan(row["delta_se"]) else f"{row['delta_se']:.4f}"
        rows.append(f"{tex_escape(curve_label(keys, [row[k] for k in keys]))} & {plots.scale_text(float(row[r.x]))} & "
                    f"${row['delta']:+.4f}$ & {se} & {int(row['n_seeds'])}/{int(row['clean_n'])} \\\\")
    return _tex_table(caption, _tex_label(r, "delta"), "lrrrr",
                      rf"curve & {tex_escape(plots.axis_label(r.x))} & $\Delta$ & s.e. & seeds", rows,
                      comments=[f"delta of {r.task} / {r.split} / {r.metric} vs the clean control at equal {r.x}"])


def render_json(report: Report) -> dict[str, Any]:
    """The fits as plain JSON values (NaN and ±inf become null): what other tools read."""
    r = report
    return _jsonable({
        "metric": r.metric, "task": r.task, "split": r.split, "x": r.x, "target": r.target, "chance": r.chance,
        "curves": [{"label": c.label, **c.key, "seeds_per_point": c.n_seeds.tolist(),
                    "fit": c.fit.to_dict() if c.fit else None, "note": c.note,
                    "comparison": c.comparison, "break_selection": c.break_selection, "breaks": c.breaks} for c in r.curves],
        "joint": [{"label": j.label, "levels": j.levels, "fit": j.fit.to_dict()} for j in r.joint],
        "frontier": [{"label": f.label, "fit": f.fit.to_dict()} for f in r.frontier],
        "two_variable": [{"label": t.label, "fit": t.fit.to_dict(), "huber": t.huber.to_dict() if t.huber else None}
                         for t in r.two_variable],
        "decision_accuracy": r.decision.to_dicts() if not r.decision.is_empty() else [],
        "task_prediction": [p.to_dict() for p in r.task_prediction],
        "critical_level": r.critical_level.to_dicts() if not r.critical_level.is_empty() else [],
        "effective_data_multiplier": r.multiplier.to_dicts() if not r.multiplier.is_empty() else [],
        "notes": r.notes,
    })


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


# --- plots --------------------------------------------------------------------------------------


def _x_words(r: Report) -> str:
    return plots.lower_first(plots.axis_label(r.x))


def _curves_caption(r: Report, extrapolate_to: float | None) -> list[str]:
    """Where the curves figure's bars, lines and bands come from, one line each."""
    lines = [plots.points_caption(np.concatenate([c.n_seeds for c in r.curves]) if r.curves else [])]
    fitted = [c for c in r.curves if c.fit is not None]
    if fitted:
        tgt = f"E = 1 − {r.metric}" if r.hib else f"E = {r.metric}"
        levels = sorted({c.fit.boot.level for c in fitted})
        lv = "/".join(f"{100 * v:g} %" for v in levels)
        lines.append(f"Lines: fit of {tgt} over the scales it was fitted on; bands: pointwise {lv} bootstrap interval "
                     "of the fit (per curve: resamples kept/requested, method, bootstrap seed; seeds per point).")
        lines += [f"  {c.label}: {_prov(c.fit)}" for c in fitted]
        if extrapolate_to is not None:
            lines.append(f"Dashed: the fit extrapolated beyond the observed {_x_words(r)} to {extrapolate_to:.3g}.")
    bare = [c for c in r.curves if c.fit is None]
    if bare:
        lines.append("No fit drawn (too few scales for the law's parameters, or the fit failed; the notes say which): "
                     + "; ".join(c.label for c in bare) + ".")
    if r.chance is not None and r.hib:
        lines.append(f"Dotted grey: chance ({r.chance:.3g}).")
    return [ln for ln in lines if ln]


def _seed_range(frame: pl.DataFrame, *cols: str) -> str:
    vals = [int(v) for c in cols if c in frame.columns for v in frame.get_column(c).to_list() if v is not None]
    return "" if not vals else (f"{min(vals)}" if min(vals) == max(vals) else f"{min(vals)}–{max(vals)}")


def report_figures(report: Report, *, extrapolate_to: float | None = None) -> dict[str, Any]:
    """The report's figures, drawn and not saved: ``curves`` (metric vs scale with fits), ``delta``
    (Δ vs clean against level) and ``id_ood`` (OOD vs ID); a figure without data is left out.

    Every figure uses one colour per bias level of the study (``report.levels``), the readable
    names of :func:`~inheritlab.analysis.plots.metric_label` and
    :func:`~inheritlab.analysis.plots.axis_label`, and a caption saying what the bars and bands are.
    """
    r = report
    colors = plots.level_colors([*r.levels, *(c.level for c in r.curves)])
    chance = r.chance if r.hib else None
    ylabel = plots.metric_label(r.task, r.split, r.metric)
    figs: dict[str, Any] = {}
    figs["curves"] = plots.draw_curves(
        r.curves, xlabel=plots.axis_label(r.x), ylabel=ylabel, title=f"{ylabel}, vs {_x_words(r)}",
        to_metric=r.to_metric, caption=_curves_caption(r, extrapolate_to), colors=colors, chance=chance,
        extrapolate_to=extrapolate_to)
    if not r.delta.is_empty() and r.delta.filter(pl.col("bias_level") > 0).height:
        n = _seed_range(r.delta.filter(pl.col("bias_level") > 0), "n_seeds", "clean_n")
        figs["delta"] = plots.draw_delta(
            r.delta, x=r.x, ylabel=plots.metric_label(r.task, r.split, r.metric, delta=True),
            title=f"Cost of bias at equal {_x_words(r)}", colors=colors,
            caption=[(f"Δ: mean over seeds at each biased level minus that of the clean control (level 0) at the same "
                      f"{_x_words(r)}; bars ± 1 standard error, √(sd²/n + sd₀²/n₀), over {n} seed(s) per side "
                      "(no bar with one seed each)."),
                     f"Marker colour: bias level, as in every figure of the study; line shade: {_x_words(r)}, darker = larger."])
    if not r.id_ood_gap.is_empty():
        g = r.id_ood_gap
        n_scales = g.get_column(r.x).n_unique()
        figs["id_ood"] = plots.draw_id_ood(
            g, xlabel=plots.metric_label(r.task, "id", r.metric), ylabel=plots.metric_label(r.task, "ood", r.metric),
            gap_label=f"ID − OOD gap, {plots.lower_first(plots.metric_label(r.task, None, r.metric))}",
            title=f"{plots.metric_label(r.task, None, r.metric)}: in- vs out-of-distribution", colors=colors, chance=chance,
            caption=[f"Left: one point per curve and {_x_words(r)}, each the mean over its seeds; dashed: no gap."
                     + (f" Dotted grey: chance ({chance:.3g})." if chance is not None else ""),
                     (f"Right: the gap averaged over the {n_scales} scale(s) ({_x_words(r)}), bars ± 1 sd over them "
                      "(the spread across scales, not a seed interval).")])
    return figs


def render_plots(report: Report, out_dir: Path, formats: Sequence[str], *, extrapolate_to: float | None = None) -> dict[str, Path]:
    """Curves with fits, Δ vs level and ID vs OOD (:func:`report_figures`), in each image format; name → path.

    Names are ``curves_<fmt>``, ``delta_<fmt>`` and ``id_ood_<fmt>``; a figure without data
    (no biased level, no OOD split) is not drawn. Fitted lines stop at the largest observed scale
    unless ``extrapolate_to`` names a scale to draw them to (dashed beyond the data).
    """
    r, paths = report, {}
    img = [f for f in formats if f in plots.IMAGE_FORMATS]
    if not img:
        return paths
    # One ID-vs-OOD figure per task and metric, whichever split the report is for.
    stems = {"curves": out_dir / f"curves_{r.tag}", "delta": out_dir / f"delta_{r.tag}",
             "id_ood": out_dir / f"id_ood_{r.task}_{r.metric}".replace("@", "at").replace("/", "_")}
    for name, fig in report_figures(r, extrapolate_to=extrapolate_to).items():
        for p in plots.save(fig, stems[name], img):
            paths[f"{name}_{p.suffix[1:]}"] = p
    return paths


__all__ = ["render_fits_csv", "render_json", "render_latex", "render_latex_delta", "render_markdown", "render_plots",
           "render_tables_csv", "report_figures"]
