"""Analyse a run directory and publish the results as Prefect artifacts.

The analysis layer writes the files (table, fits, plots, summary); this module only attaches
them to the flow run so they appear in the dashboard beside the logs.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import polars as pl
from inheritlab.flows.spec import StudySpec
from inheritlab.infra.atomic import atomic_open, atomic_write_text, read_json
from inheritlab.infra.rundir import RunDir


def analyse(run: RunDir, spec: StudySpec, formats: tuple[str, ...] = ("png", "csv", "md")) -> dict[str, Path]:
    """Load the completed cells, write the study's tables, fits and plots under ``results/``.

    Clean controls (``bias_type="none"``, shared by every bias axis) are expanded into each
    bias type's level 0 by the report itself.
    """
    if not run.completed_cells():
        return {}
    from inheritlab.analysis.report import build_report
    from inheritlab.analysis.results import load_results

    df = load_results(str(run.root))
    if df.is_empty():
        return {}
    a = spec.analysis
    from inheritlab.analysis.adaptation import is_adaptation
    from inheritlab.analysis.plots import chance_level

    # A uniform guess over the study's classes bounds a classifier's accuracy from below;
    # retrieval and suite tasks have item counts of their own.
    chance = chance_level(a.metric, num_classes(spec)) if is_adaptation(a.task) else None
    paths = build_report(
        df, run.results, metric=a.metric, task=a.task, split=a.split, x=a.x, formats=formats, chance=chance
    )
    from inheritlab.analysis.adaptation import write_adaptation_report

    adapted, adapted_md = write_adaptation_report(df, run.results, formats, metric=a.metric)
    paths.update(adapted)
    bad = bad_sample_table(run)
    if "csv" in formats:
        paths["bad_samples_csv"] = run.results / "bad_samples.csv"
        with atomic_open(paths["bad_samples_csv"], "wb") as fh:
            bad.write_csv(fh)
    if "summary_md" in paths:
        md = Path(paths["summary_md"])
        tail = (adapted_md + "\n" if adapted_md else "") + render_conventions(spec.modality, df["task"].unique().to_list()) \
            + "\n" + render_bad_samples(bad)
        atomic_write_text(md, md.read_text(encoding="utf-8") + "\n" + tail)
    return paths


def num_classes(spec: StudySpec) -> int | None:
    """The number of classes of a CLIP study's data (the built-in world's, or the class names
    beside the user's train shards); ``None`` when unknown or not a classification study."""
    if spec.modality != "clip":
        return None
    if spec.data.source == "builtin":
        return spec.data.world.num_classes
    from inheritlab.corruptors.classes import class_info, metadata_dir

    shards = spec.data.shards
    try:
        info = class_info(metadata_dir(shards.train), classnames=shards.classnames)
    except Exception:  # noqa: BLE001 - the chance line is a courtesy; a report never fails for it
        return None
    return len(info.names) if info else None


def render_conventions(modality: str, tasks: list[str]) -> str:
    """The summary's section saying how each task in the results was measured (the task's own
    docstring), so a number read from the table is never mistaken for another convention's."""
    from inheritlab.trainers.modality import get_modality

    registry = get_modality(modality).tasks()
    out = ["## How each task is measured", ""]
    for name in sorted({t.split("/")[0] for t in tasks}):
        # Result tasks are registry names, a registered name's variants (retrieval_i2t) or a suite task (suite/<x>).
        key = "suites" if name == "suite" else next((k for k in registry if name == k or name.startswith(k + "_")), None)
        if key is not None:
            out.append(f"- **{name}**: {' '.join(registry[key].doc.split())}")
    return "\n".join(out + [""])


def bad_sample_table(run: RunDir) -> pl.DataFrame:
    """One row per (cell, stage, split, reason) with a skipped sample, and the samples that
    stage read: from each completed cell's record (``flows.stages.bad_samples``)."""
    rows = []
    for c in run.completed_cells():
        record = read_json(c.complete)
        stages = record.get("bad_samples") or {}
        parts = [("condition", "train", stages.get("condition")), ("train", "train", stages.get("train"))]
        parts += [("evaluation", split, p) for split, p in (stages.get("evaluation") or {}).items()]
        for stage, split, part in parts:
            for reason, n in ((part or {}).get("skipped") or {}).items():
                rows.append({"cell_id": c.root.name, "label": record.get("label", ""), "stage": stage, "split": split,
                             "reason": reason, "skipped": int(n), "read": int(part.get("read", 0))})
    schema = {"cell_id": pl.Utf8, "label": pl.Utf8, "stage": pl.Utf8, "split": pl.Utf8, "reason": pl.Utf8,
              "skipped": pl.Int64, "read": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def render_bad_samples(bad: pl.DataFrame) -> str:
    """The summary's section on skipped samples: totals by stage, split and reason."""
    out = ["## Bad samples skipped", ""]
    if bad.is_empty():
        return "\n".join(out + ["None: every sample of every split read by every stage was good.", ""])
    totals = bad.group_by("stage", "split", "reason").agg(pl.col("skipped").sum(), pl.col("cell_id").n_unique().alias("cells"))
    out += ["| stage | split | reason | skipped | cells |", "|---|---|---|---|---|"]
    for r in totals.sort("stage", "split", "reason").iter_rows(named=True):
        out.append(f"| {r['stage']} | {r['split']} | {r['reason']} | {r['skipped']} | {r['cells']} |")
    return "\n".join(out + ["", "Per cell: `bad_samples.csv`; the first problems of each stage, naming shard and "
                             "member, are in the cell's `_COMPLETE.json` (`bad_samples`).", ""])


def _attach(paths: dict[str, Path], spec: StudySpec) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = spec.name.lower().replace("_", "-").replace(".", "-")
    md = next((p for n, p in paths.items() if str(p).endswith(".md")), None)
    body = Path(md).read_text(encoding="utf-8") if md else ""
    create_markdown_artifact(key=f"{key}-summary", markdown=body or "(no results yet)",
                             description=f"study {spec.name}: summary, inheritance verdict and fits")
    # The plots, an artifact of their own. The dashboard renders markdown images; embedding each
    # PNG keeps the artifact self-contained (a file:// link would only work on the machine that
    # ran the study).
    plots = ""
    for name, p in paths.items():
        if str(p).endswith(".png") and Path(p).stat().st_size < 2_000_000:
            b64 = base64.b64encode(Path(p).read_bytes()).decode()
            plots += f"\n\n### {name}\n\n![{name}](data:image/png;base64,{b64})\n"
    if plots:
        create_markdown_artifact(key=f"{key}-curves", markdown=f"# {spec.name}: curves{plots}",
                                 description=f"study {spec.name}: scaling curves and the cost of bias")
    csv = next((p for p in paths.values() if str(p).endswith(".csv")), None)
    if csv:
        table = pl.read_csv(csv)
        create_table_artifact(key=f"{key}-results", table=table.head(500).to_dicts(), description=f"study {spec.name}: tidy results ({table.height} rows)")


def publish_results(spec: StudySpec, run: RunDir) -> dict[str, Any]:
    """Analyse and attach the artifacts to the current flow run."""
    paths = analyse(run, spec)
    if paths:
        _attach(paths, spec)
    return paths
