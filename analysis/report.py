"""Turn a study's results table into the files of a paper: tables, fits, plots, a summary.

``build_report`` is what the study flow calls at the end of a run (and publishes as artifacts);
``curves`` is ``inheritlab curves RUN_DIR``. Both are two steps: :func:`compute_report` fits
and tabulates once into a frozen :class:`Report` (see :mod:`inheritlab.analysis.report_data`,
which also says how small studies degrade), then :func:`write_report` writes each requested
format with the renderers of :mod:`inheritlab.analysis.render`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import polars as pl

from inheritlab.analysis import render
from inheritlab.analysis.report_data import Curve, Report, compute_report
from inheritlab.analysis.results import check_selection, load_results
from inheritlab.infra.atomic import atomic_open, atomic_write_json, atomic_write_text

FORMATS = ("png", "pdf", "csv", "md", "latex")


def build_report(
    df: pl.DataFrame,
    out_dir: Path,
    *,
    metric: str = "acc1",
    task: str = "zeroshot",
    split: str = "id",
    x: str = "data_scale",
    formats: Sequence[str] = ("png", "csv", "md"),
    chance: float | None = None,
    extrapolate_to: float | None = None,
) -> dict[str, Path]:
    """Write the tidy table, fits per level and jointly, plots and a summary; return name→path.

    Formats: ``png``/``pdf`` plots, ``csv`` tables, ``md`` summary, ``latex`` fit and Δ
    tables. The parquet table and ``fits.json`` are always written (they are what other tools
    read). The summary, when written, comes first. ``chance``: the metric's chance level (e.g.
    ``plots.chance_level(metric, n_classes)``; the results table does not know the class count),
    drawn as a dotted line. ``extrapolate_to``: draw fitted lines on to this scale (dashed
    beyond the data); by default they stop at the largest observed scale.
    """
    _check_formats(formats)
    report = compute_report(df, metric=metric, task=task, split=split, x=x, chance=chance)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The table is written as given (each cell once); the report repeated the clean control
    # under every bias type for its curves only.
    table = _write_table(df, out_dir, formats)
    return _summary_first({**table, **write_report(report, out_dir, formats, extrapolate_to=extrapolate_to)})


def write_report(
    report: Report, out_dir: Path, formats: Sequence[str] = ("png", "csv", "md"), *, extrapolate_to: float | None = None,
) -> dict[str, Path]:
    """Write a computed report in each requested format (and always its JSON fits); name → path.

    Files are named by ``report.tag``: ``fits_<tag>.json``/``.csv``/``.tex``, ``delta_<tag>.csv``/``.tex``,
    ``id_ood_gap_<tag>.csv``, ``multiplier_<tag>.csv``, ``summary_<tag>.md`` and the plots of
    :func:`~inheritlab.analysis.render.render_plots`. Nothing is refitted.
    """
    _check_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = report.tag
    paths = {"fits_json": out_dir / f"fits_{tag}.json"}
    atomic_write_json(paths["fits_json"], render.render_json(report))
    if "csv" in formats:
        paths["fits_csv"] = _write(out_dir / f"fits_{tag}.csv", render.render_fits_csv(report))
        for name, text in render.render_tables_csv(report).items():
            paths[f"{name}_csv"] = _write(out_dir / f"{name}_{tag}.csv", text)
    if "latex" in formats:
        paths["fits_latex"] = _write(out_dir / f"fits_{tag}.tex", render.render_latex(report))
        if delta_tex := render.render_latex_delta(report):
            paths["delta_latex"] = _write(out_dir / f"delta_{tag}.tex", delta_tex)
    paths.update(render.render_plots(report, out_dir, formats, extrapolate_to=extrapolate_to))
    if "md" in formats:
        paths["summary_md"] = _write(out_dir / f"summary_{tag}.md", render.render_markdown(report))
    return _summary_first(paths)


def curves(
    run_dir: str, *, metric: str = "acc1", task: str = "zeroshot", split: str = "id", x: str = "data_scale",
    fmt: str = "png", out: Path | None = None, chance: float | None = None, extrapolate_to: float | None = None,
) -> list[Path]:
    """``inheritlab curves``: load a run directory and write the report in one format.

    ``png``/``pdf``: the plots; ``csv``: the tidy table, fits and inheritance tables; ``latex``:
    the fit and Δ tables. The JSON fits are always written beside them. ``chance`` and
    ``extrapolate_to`` as in :func:`build_report`.
    """
    if fmt not in ("png", "pdf", "csv", "latex"):
        raise ValueError(f"format {fmt!r}: expected png, pdf, csv or latex")
    df = load_results(str(run_dir))
    if df.is_empty():
        raise FileNotFoundError(f"{run_dir}: no completed cells yet")
    check_selection(df, metric=metric, task=task, split=split, source=str(run_dir))
    out_dir = Path(out) if out is not None else Path(str(run_dir)) / "curves"
    paths = build_report(df, out_dir, metric=metric, task=task, split=split, x=x, formats=(fmt,),
                         chance=chance, extrapolate_to=extrapolate_to)
    ext = {"png": ".png", "pdf": ".pdf", "csv": ".csv", "latex": ".tex"}[fmt]
    return [p for p in paths.values() if p.suffix == ext] + [paths["fits_json"]]


def _check_formats(formats: Sequence[str]) -> None:
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"formats {bad}: expected any of {list(FORMATS)}")


def _write(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def _write_table(df: pl.DataFrame, out_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    paths = {}
    pq = out_dir / "results.parquet"
    with atomic_open(pq, "wb") as fh:
        df.write_parquet(fh)
    if "csv" in formats:
        paths["table_csv"] = _write(out_dir / "results.csv", df.write_csv())
    paths["table"] = pq
    return paths


def _summary_first(paths: dict[str, Path]) -> dict[str, Path]:
    # The flow shows the first markdown file of the returned paths as the study's summary.
    return {"summary_md": paths["summary_md"], **paths} if "summary_md" in paths else paths


__all__ = ["FORMATS", "Curve", "Report", "build_report", "compute_report", "curves", "write_report"]
