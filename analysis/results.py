"""Load a study's results into one tidy polars table, and shape it for fitting.

A run directory holds one ``eval/results.parquet`` per cell (see ``inheritlab.infra.rundir``);
a cell counts only once its ``_COMPLETE.json`` exists. Studies are read while they still run, so
a cell directory that is half written (no marker yet, or vanishing under our feet) is skipped
without complaint. A *completed* cell whose table is missing or unreadable is a real error and
is reported with the file and column at fault.

The run directory may be a local path or any fsspec URL (``s3://…``, ``gs://…``, ``file://…``).
"""

from __future__ import annotations

import io
import posixpath
from typing import Any, Iterable, Sequence

import fsspec
import polars as pl

from inheritlab.infra.errors import InheritlabError, did_you_mean
from inheritlab.infra.rundir import COMPLETE_MARKER
from inheritlab.infra.schema import DRAW_COLUMN, RESULT_COLUMNS

# How the schema's type names map to polars dtypes, and which stored dtypes are accepted for
# each (an integer column written as int32 is fine; a string where a number belongs is not).
POLARS_TYPES: dict[str, pl.DataType] = {"str": pl.Utf8(), "int": pl.Int64(), "float": pl.Float64()}
_ACCEPTED = {
    "str": (pl.Utf8, pl.Categorical, pl.Null),
    "int": (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Null),
    "float": (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
              pl.UInt64, pl.Null),
}

# Accuracy-like metrics live in [0, 1] and grow with scale; scaling laws are fitted to their
# error (1 - metric), which falls towards an irreducible floor. Everything else (loss,
# perplexity) is fitted as it is.
_HIGHER_IS_BETTER_PREFIXES = ("acc", "recall", "top", "map", "mean_per_class", "f1", "auc", "precision")


class ResultsError(InheritlabError):
    """A results table is missing, unreadable or does not match the schema."""


def empty_results() -> pl.DataFrame:
    """A zero-row table with the schema's columns and types."""
    return pl.DataFrame(schema={k: POLARS_TYPES[t] for k, t in RESULT_COLUMNS.items()})


def validate_results(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Check columns and types against the schema; return the table cast to canonical dtypes.

    ``source`` names the file in the error, so a bad cell can be found and removed.
    """
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"{source}: missing column(s) {missing}; expected the schema columns {list(RESULT_COLUMNS)}")
    for col, kind in RESULT_COLUMNS.items():
        dtype = df.schema[col]
        if not isinstance(dtype, _ACCEPTED[kind]):
            raise ResultsError(f"{source}: column {col!r} has type {dtype}, expected {kind}")
    return df.select([pl.col(c).cast(POLARS_TYPES[t]) for c, t in RESULT_COLUMNS.items()])


def _cell_dirs(fs: fsspec.AbstractFileSystem, cells_root: str) -> list[str]:
    try:
        entries = fs.ls(cells_root, detail=True)
    except FileNotFoundError:
        return []
    dirs = [e["name"] for e in entries if e.get("type") == "directory"]
    return sorted(d.rstrip("/") for d in dirs)


def _is_complete(fs: fsspec.AbstractFileSystem, cell: str) -> bool:
    try:
        return bool(fs.isfile(posixpath.join(cell, COMPLETE_MARKER)))
    except (FileNotFoundError, OSError):
        # The directory vanished or is being written: not complete, not an error.
        return False


def _mean_over_draws(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """One row per measurement: the draws of a sampled adaptation (rows with a ``draw_seed``)
    replaced by their mean, so a cell counts once in every seed average and fit downstream."""
    if DRAW_COLUMN not in df.columns:
        return df
    draws = df.filter(pl.col(DRAW_COLUMN).is_not_null())
    if draws.is_empty():
        return df.drop(DRAW_COLUMN)
    if draws.get_column("value").is_nan().any():
        raise ResultsError(f"{source}: a draw of an adaptation has a NaN value")
    keys = [c for c in df.columns if c not in ("value", DRAW_COLUMN)]
    merged = draws.group_by(keys, maintain_order=True).agg(pl.col("value").mean())
    return pl.concat([df.filter(pl.col(DRAW_COLUMN).is_null()).drop(DRAW_COLUMN), merged.select(df.drop(DRAW_COLUMN).columns)])


def _read_cell(fs: fsspec.AbstractFileSystem, path: str, shown: str, draws: bool = False) -> pl.DataFrame:
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise ResultsError(f"{shown}: the cell is marked complete but its results table is missing") from exc
    try:
        df = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises several types for a torn or foreign file
        raise ResultsError(f"{shown}: not a readable parquet file ({type(exc).__name__}: {exc})") from exc
    if draws:
        seeds = df.get_column(DRAW_COLUMN).cast(pl.Int64) if DRAW_COLUMN in df.columns else pl.Series(DRAW_COLUMN, [None] * df.height, pl.Int64)
        return validate_results(df, shown).with_columns(seeds.alias(DRAW_COLUMN))
    return validate_results(_mean_over_draws(df, shown), shown)


def load_results(run_dir: str, *, draws: bool = False) -> pl.DataFrame:
    """Read every completed cell of ``run_dir`` into one tidy table (schema columns, sorted).

    The draws of a sampled adaptation (few-shot) are averaged into one row per measurement;
    ``draws=True`` keeps them, one row each, with their ``draw_seed`` (null for the rest).

    Cells without ``_COMPLETE.json`` are skipped (running, failed or half written). The rows are
    sorted by every column so the table — and every fit made from it — does not depend on the
    order in which a file system lists directories.
    """
    fs, root = fsspec.core.url_to_fs(str(run_dir))
    if not fs.exists(root):
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    cells_root = posixpath.join(root, "cells")
    frames = []
    for cell in _cell_dirs(fs, cells_root):
        if not _is_complete(fs, cell):
            continue
        path = posixpath.join(cell, "eval", "results.parquet")
        frames.append(_read_cell(fs, path, shown=_shown(run_dir, root, path), draws=draws))
    if not frames:
        return empty_results() if not draws else empty_results().with_columns(pl.lit(None, pl.Int64).alias(DRAW_COLUMN))
    columns = list(RESULT_COLUMNS) + ([DRAW_COLUMN] if draws else [])
    return pl.concat(frames).sort(columns, nulls_last=True)


def _shown(run_dir: str, root: str, path: str) -> str:
    # Name the file the way the user named the run directory (URL or local path).
    return str(run_dir).rstrip("/") + path[len(root.rstrip("/")):]


def with_clean_controls(df: pl.DataFrame) -> pl.DataFrame:
    """Repeat the clean control (``bias_type == "none"``) as level 0 of every bias type.

    A level-0 cell is shared by all bias axes and recorded once; curves per bias type need it.
    A table that has no "none" rows (already expanded) is returned unchanged.
    """
    if df.is_empty():
        return df
    types = sorted(t for t in df.get_column("bias_type").unique().to_list() if t != "none")
    clean = df.filter(pl.col("bias_type") == "none")
    if not types or clean.is_empty():
        return df
    biased = df.filter(pl.col("bias_type") != "none")
    return pl.concat([biased] + [clean.with_columns(pl.lit(t).alias("bias_type")) for t in types])


def higher_is_better(metric: str) -> bool:
    """Whether a metric is accuracy-like (fitted as error = 1 - value)."""
    m = metric.lower()
    return m.startswith(_HIGHER_IS_BETTER_PREFIXES)


def final_checkpoints(df: pl.DataFrame) -> pl.DataFrame:
    """Keep, per cell, only the rows of its last evaluated checkpoint (the cell's result).

    Rows keep their order (a join would shuffle them): the seed averages taken downstream then
    add in one fixed order, and the same table gives the same report to the last digit.
    """
    if df.is_empty():
        return df
    return df.filter(pl.col("checkpoint_step") == pl.col("checkpoint_step").max().over("cell_id"))


def select(df: pl.DataFrame, *, metric: str, task: str, split: str) -> pl.DataFrame:
    """Rows of one (task, split, metric), final checkpoints only."""
    sub = df.filter((pl.col("metric") == metric) & (pl.col("task") == task) & (pl.col("split") == split))
    return final_checkpoints(sub)


def check_selection(df: pl.DataFrame, *, metric: str, task: str, split: str, source: str) -> None:
    """Refuse a task, split or metric the table lacks, listing those it has (the splits of the
    task, the metrics of the task and split) and the nearest to what was asked."""
    for option, value, has in (("task", task, df), ("split", split, df.filter(pl.col("task") == task)),
                               ("metric", metric, df.filter((pl.col("task") == task) & (pl.col("split") == split)))):
        known = sorted(has.get_column(option).drop_nulls().unique().to_list())
        if value not in known:
            scope = {"task": "", "split": f" of task {task!r}", "metric": f" of task {task!r}, split {split!r}"}[option]
            raise ResultsError(f"--{option} {value!r}: the results of {source} have no such {option}"
                               f"{did_you_mean(value, known)}; the {option}s{scope} there: {', '.join(known)}")


def curve_keys(df: pl.DataFrame, x: str) -> list[str]:
    """Columns that tell one curve from another for scale axis ``x``.

    Always the bias type and level. A data-scale curve is drawn per model when the study has
    several; a params curve per data scale; a FLOPs curve pools models (compute is the
    common currency, as in frontier fits).
    """
    keys = ["bias_type", "bias_level"]
    if x in ("data_scale", "samples_seen", "unique_samples") and df.get_column("model").n_unique() > 1:
        keys.append("model")
    if x == "params" and df.get_column("data_scale").n_unique() > 1:
        keys.append("data_scale")
    return keys


def curve_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """How a curve is named in tables, legends and the JSON fits: "label_noise, level 0.2, model=tiny".

    ``keys`` are the curve's key columns (see :func:`curve_keys`), ``values`` its values in
    the same order. One function names curves everywhere, so a label in the summary finds the
    same curve in the LaTeX table and in ``fits_*.json``.
    """
    parts = []
    for k, v in zip(keys, values):
        if k == "bias_level":
            parts.append(f"level {v:g}")
        elif k == "bias_type":
            parts.append(str(v))
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def aggregate_seeds(df: pl.DataFrame, *, x: str, keys: Iterable[str]) -> pl.DataFrame:
    """Mean, standard deviation and count over seeds at each (curve, x) point."""
    keys = list(keys)
    if x not in RESULT_COLUMNS:
        raise ResultsError(f"scale axis {x!r} is not a results column; expected one of {list(RESULT_COLUMNS)}")
    return (
        df.group_by(keys + [x])
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").std(ddof=1).fill_null(0.0).alias("std"),
            pl.col("value").count().alias("n_seeds"),
        )
        .sort(keys + [x])
    )


__all__ = [
    "POLARS_TYPES",
    "ResultsError",
    "aggregate_seeds",
    "curve_keys",
    "curve_label",
    "empty_results",
    "final_checkpoints",
    "higher_is_better",
    "load_results",
    "select",
    "validate_results",
    "with_clean_controls",
]
