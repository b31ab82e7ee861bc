"""The Prefect flow: one flow run per study, one sub-run per grid cell.

Ray is called from inside Prefect tasks (never through a Ray task runner: that starts a
temporary Prefect server in every Ray worker and the task runs never reach the dashboard).
Retries: Ray retries dead workers and training restarts from its last checkpoint; Prefect
retries a failed cell stage a bounded number of times; application errors (bad spec, bad data)
are not retried — they fail once with their message.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inheritlab.flows import stages
from inheritlab.flows.grid import expand_grid
from inheritlab.flows.publish import publish_results
from inheritlab.flows.spec import StudySpec
from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.cell import Cell
from inheritlab.infra.errors import InheritlabError
from inheritlab.infra.raycluster import init_ray
from inheritlab.infra.rundir import RunDir
from inheritlab.trainers.modality import DataSources, get_modality
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


def _retry_unless_application_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: crashes are retried, bad configs and bad data are not."""
    try:
        state.result()
    except InheritlabError:
        return False
    except Exception:
        return True
    return True


def _stage_task(fn: Any, name: str, retries: int) -> Any:
    return task(
        fn,
        name=name,
        retries=retries,
        retry_delay_seconds=2,
        retry_condition_fn=_retry_unless_application_error,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def run_cell(cell: Cell, run: RunDir, data: DataSources, *, use_gpu: bool, retries: int) -> dict[str, Any]:
    """Body of a cell's sub-run: the four stages, timed."""
    log = get_run_logger()
    cdir = run.cell(cell.cell_id)
    stages.write_cell_config(cell, cdir)
    timings: dict[str, float] = {}

    def timed(stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = _stage_task(fn, f"{stage}", retries).with_options(task_run_name=f"{stage}[{cell.label}]")(*args, **kwargs)
        timings[stage] = round(time.perf_counter() - t0, 3)
        log.info("cell %s: %s took %.1f s", cell.label, stage, timings[stage])
        return out

    counters = timed("condition", stages.stage_condition, cell, cdir, data)
    summary = timed("pretrain", stages.stage_pretrain, cell, cdir, data, use_gpu=use_gpu,
                    storage_path=stages.storage_path_for(run))
    rows = timed("evaluate", stages.stage_evaluate, cell, cdir, data, summary, use_gpu=use_gpu)
    df = timed("record", stages.stage_record, cell, cdir, rows, summary, counters, timings)
    return {"cell_id": cell.cell_id, "rows": df.height, "timings": timings}


@flow(name="inheritlab-cell", persist_result=False, log_prints=True)
def cell_flow(cell: Cell, run_root: str, data: DataSources, use_gpu: bool, retries: int) -> dict[str, Any]:
    """One grid cell as its own sub-run in the dashboard."""
    return run_cell(cell, RunDir.at(run_root), data, use_gpu=use_gpu, retries=retries)


@flow(name="inheritlab-study", persist_result=False, log_prints=True)
def study_flow(spec: StudySpec, run_root: str, ray_address: str | None = None) -> dict[str, Any]:
    """Run every unfinished cell of the study, then analyse and publish the results."""
    log = get_run_logger()
    t_start = time.perf_counter()
    run = RunDir.at(run_root)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.study, spec.model_dump(mode="json"))

    cells = expand_grid(spec)
    todo = [c for c in cells if not run.cell(c.cell_id).is_complete()]
    log.info("study %s: %d cells, %d already complete, %d to run", spec.name, len(cells), len(cells) - len(todo), len(todo))

    timings: dict[str, float] = {}
    summaries: list[dict[str, Any]] = []
    failures: list[str] = []
    if todo:
        # Open the data first: a missing shard directory fails here, before any cluster work.
        t0 = time.perf_counter()
        prepare = get_modality(spec.modality).prepare_data
        data = task(prepare, name="prepare-data", cache_policy=NO_CACHE, persist_result=False)(
            cells[0].config.data, spec.seed, run.root
        )
        timings["prepare_data"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        cluster = init_ray(ray_address)
        timings["ray_init"] = round(time.perf_counter() - t0, 3)
        log.info("ray: %s cpus=%s gpus=%s nodes=%s", cluster.address, cluster.cpus, cluster.gpus, cluster.nodes)
        use_gpu = stages.resolve_use_gpu(spec.train.use_gpu, cluster.gpus)
        def one(cell: Cell) -> tuple[Cell, Any]:
            return cell, cell_flow.with_options(flow_run_name=f"cell {cell.label}")(
                cell, str(run.root), data, use_gpu, spec.execution.cell_retries, return_state=True
            )

        # Cells run side by side up to max_concurrent_cells (each holds its own Ray workers);
        # contextvars are copied so every cell's sub-run nests under this study's flow run.
        width = min(spec.execution.max_concurrent_cells, len(todo))
        with ThreadPoolExecutor(max_workers=width) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, cell) for cell in todo]
            for fut in futures:
                cell, state = fut.result()
                # A failed cell does not stop the others; the study fails at the end, naming it.
                if state.is_completed():
                    summaries.append(state.result())
                    continue
                try:
                    state.result()
                    failures.append(f"{cell.label} ({cell.cell_id}): {state.message}")
                except Exception as exc:  # the cell's own error, e.g. a bad shard
                    failures.append(f"{cell.label} ({cell.cell_id}): {exc}")
    t0 = time.perf_counter()
    report = task(publish_results, name="analyse-and-publish", cache_policy=NO_CACHE, persist_result=False)(spec, run)
    timings["analyse"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    _record_launch(run, {"timings_s": timings, "cells": summaries, "failed": failures, "ran": len(todo)})
    if failures:
        raise InheritlabError(f"{len(failures)} of {len(todo)} cells failed:\n  " + "\n  ".join(failures))
    return {"run_dir": str(run.root), "cells": len(cells), "ran": len(todo), "timings": timings, "report": {k: str(v) for k, v in report.items()}}


def _record_launch(run: RunDir, launch: dict[str, Any]) -> None:
    """Append this launch's stage timings to ``results/study_timings.json`` (one entry a launch)."""
    path = run.results / "study_timings.json"
    history = read_json(path).get("launches", []) if path.is_file() else []
    launch["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(path, {"launches": [*history, launch]})


def run_study(spec: StudySpec, run_dir: str | Path, ray_address: str | None = None) -> dict[str, Any]:
    """Entry point used by the CLI and tests."""
    return study_flow.with_options(flow_run_name=f"study {spec.name}")(spec, str(run_dir), ray_address)
