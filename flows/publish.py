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
    return build_report(
        df, run.results, metric=a.metric, task=a.task, split=a.split, x=a.x, formats=formats
    )


def _attach(paths: dict[str, Path], spec: StudySpec) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = spec.name.lower().replace("_", "-").replace(".", "-")
    md = next((p for n, p in paths.items() if str(p).endswith(".md")), None)
    body = Path(md).read_text(encoding="utf-8") if md else ""
    # The dashboard renders markdown images; embedding the PNG keeps the artifact self-contained
    # (a file:// link would only work on the machine that ran the study).
    for name, p in paths.items():
        if str(p).endswith(".png") and Path(p).stat().st_size < 2_000_000:
            b64 = base64.b64encode(Path(p).read_bytes()).decode()
            body += f"\n\n### {name}\n\n![{name}](data:image/png;base64,{b64})\n"
    create_markdown_artifact(key=f"{key}-summary", markdown=body or "(no results yet)", description=f"study {spec.name}: summary, fits and curves")
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
