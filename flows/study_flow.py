"""The Prefect flow: one flow run per study, one sub-run per grid cell.

Ray is called from inside Prefect tasks (never through a Ray task runner: that starts a
temporary Prefect server in every Ray worker and the task runs never reach the dashboard).
Retries: Ray retries dead workers and training restarts from its last checkpoint; Prefect
retries a failed cell stage a bounded number of times; application errors (bad spec, bad data)
are not retried — they fail once with their message.
"""

from __future__ import annotations

import contextvars
import logging
import time
from pathlib import Path
from typing import Any

from inheritlab.flows import interrupts, launches, progress, stages
from inheritlab.flows.grid import expand_grid
from inheritlab.flows.publish import publish_results
from inheritlab.flows.preflight import check_before_start, check_data, left_out
from inheritlab.flows.scheduler import PlacementLog, check_fits, demand_of, resolve, run_admitted
from inheritlab.flows.spec import StudySpec
from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.cell import Cell
from inheritlab.infra.errors import InheritlabError, StopRequested, StudyStopped
from inheritlab.infra.lease import CellLease, Heartbeat, launch_id
from inheritlab.infra.raycluster import check_shared_dir, init_ray, release, session_log_dir, wait_for_resources
from inheritlab.infra.rundir import RunDir
from inheritlab.trainers.checkpoint import committed_step
from inheritlab.trainers.modality import DataSources, get_modality
from inheritlab.trainers.ray_launch import Placement
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled


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


# A stop request is honoured before these stages; a cell that has trained finishes (evaluation
# and the record are short next to training, and without them the training is not usable yet).
_STOPPABLE = ("condition", "pretrain")


def run_cell(cell: Cell, run: RunDir, data: DataSources, *, use_gpu: bool, retries: int,
             placement_timeout_s: float) -> Any:
    """Body of a cell's sub-run: reserve its resources, the four stages (timed), release.
    Returns the cell's outcome, or a Cancelled state when the operator stopped the study."""
    log = get_run_logger()
    cdir = run.cell(cell.cell_id)
    # What an earlier launch left for its own cells: a stop request, a failure note, the
    # progress of training it did not finish (the next trainer writes its own).
    for leftover in (cdir.stop_request, cdir.failure, cdir.progress):
        leftover.unlink(missing_ok=True)
    from prefect.runtime import flow_run

    launches.note_run(cell.label, flow_run.id)
    timings: dict[str, float] = {}
    current = ["placement"]  # the stage running: named in the progress line if the cell fails
    last: list[tuple[str, float]] = []

    def timed(stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if stage in _STOPPABLE and progress.stop_requested():
            raise StopRequested(f"stopped before {stage}")
        current[0] = stage
        note = ""
        if stage == "pretrain":
            step = committed_step(cdir.ckpt)
            note = f"resuming from the checkpoint of step {step}" if step else ""
        progress.stage_started(cell.label, stage, last[-1] if last else None, cell_dir=cdir.root, dashboard=log,
                               note=note)
        if stage == "pretrain":
            _progress_artifact(cell)
        t0 = time.perf_counter()
        out = _stage_task(fn, f"{stage}", retries).with_options(task_run_name=f"{stage}[{cell.label}]")(*args, **kwargs)
        timings[stage] = round(time.perf_counter() - t0, 3)
        last.append((stage, timings[stage]))
        log.info("cell %s: %s took %.1f s", cell.label, stage, timings[stage])
        return out

    try:
        stages.write_cell_config(cell, cdir)
        demand = demand_of(cell, use_gpu)
        t0 = time.perf_counter()
        group = wait_for_resources(demand.bundles, timeout_s=placement_timeout_s, what=f"cell {cell.label}")
        timings["placement"] = round(time.perf_counter() - t0, 3)
        placement = Placement(group=group, bundles=tuple(demand.bundles), wait_s=placement_timeout_s)
        try:
            counters = timed("condition", stages.stage_condition, cell, cdir, data, placement)
            summary = timed("pretrain", stages.stage_pretrain, cell, cdir, data, placement, use_gpu=use_gpu)
            progress.post_to_dashboard(only=cell.label)  # where training ended, however short it was
            rows = timed("evaluate", stages.stage_evaluate, cell, cdir, data, summary, placement, use_gpu=use_gpu)
            df = timed("record", stages.stage_record, cell, cdir, rows, summary, counters, timings)
        finally:
            release(group)  # however the cell ends
    except StopRequested:
        step = committed_step(cdir.ckpt)
        where = (f"training stopped; checkpoint of step {step} committed" if current[0] == "pretrain" and step
                 else f"stopped before {current[0]}" + (f" (checkpoint of step {step} kept)" if step else ""))
        progress.cell_stopped(cell.label, current[0], where)
        return Cancelled(message=f"stopped by the operator in {current[0]}: {where}; a rerun resumes")
    except BaseException as exc:
        progress.cell_failed(cell.label, current[0], exc)
        _note_failure(cdir, current[0], exc)
        raise
    progress.cell_finished(cell.label, timings)
    return {"cell_id": cell.cell_id, "rows": df.height, "timings": timings}


def _note_failure(cdir: Any, stage: str, exc: BaseException) -> None:
    """``failure.json`` in the cell directory: the stage and the cause, for ``inheritlab status``."""
    try:
        atomic_write_json(cdir.failure, {"stage": stage, "error": f"{type(exc).__name__}: {exc}"[:4000],
                                         "time": time.time()})
    except OSError:
        pass


def _progress_artifact(cell: Cell) -> None:
    """The cell's training progress in the dashboard: a progress artifact of its sub-run, kept
    up to date by the progress ticker. The dashboard is a view: failing to make it is logged."""
    try:
        from prefect.artifacts import create_progress_artifact

        progress.set_artifact(cell.label, create_progress_artifact(
            0.0, description=f"pretrain {cell.label}: starting"))
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("inheritlab.flows").warning("no progress artifact for %s: %s", cell.label, exc)


@flow(name="inheritlab-cell", persist_result=False, log_prints=True)
def cell_flow(cell: Cell, run_root: str, data: DataSources, use_gpu: bool, retries: int,
              placement_timeout_s: float = 1800.0) -> Any:
    """One grid cell as its own sub-run in the dashboard."""
    return run_cell(cell, RunDir.at(run_root), data, use_gpu=use_gpu, retries=retries,
                    placement_timeout_s=placement_timeout_s)


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
    owner = launch_id()
    record = launches.LaunchRecord(run.launches, owner)
    launches.set_current(record)  # the cells' sub-runs add themselves (the context is copied into their threads)
    _mark_killed_launches(run, owner, spec.execution.lease_stale_s)
    from prefect.runtime import flow_run

    record.add(f"study {spec.name}", flow_run.id)
    log.info("study %s: %d cells, %d already complete, %d to run", spec.name, len(cells), len(cells) - len(todo), len(todo))
    progress.study_started(spec.name, len(cells), len(cells) - len(todo), [c.label for c in todo])

    timings: dict[str, float] = {}
    outcome: dict[str, Any] = {"ran": [], "elsewhere": [], "failed": []}
    if todo:
        # Check the data first (seconds): a missing label or shard fails here, before any cluster work.
        t0 = time.perf_counter()
        timings["check_data"] = round(check_data(spec), 3)
        log.info("data checked in %.1f s", timings["check_data"])
        for name, why in left_out(spec).items():
            log.warning("task %s is left out: it needs %s", name, why)
        t0 = time.perf_counter()
        prepare = get_modality(spec.modality).prepare_data
        data = task(prepare, name="prepare-data", cache_policy=NO_CACHE, persist_result=False)(
            cells[0].config.data, spec.seed, run.root
        )
        timings["prepare_data"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        cluster = init_ray(ray_address, log_to_driver=progress.workers_to_terminal())
        interrupts.reinstall()  # ray.init sets a SIGTERM handler of its own
        _note_worker_logs()
        check_shared_dir(run.root)
        timings["ray_init"] = round(time.perf_counter() - t0, 3)
        log.info("ray: %s cpus=%s gpus=%s nodes=%s", cluster.address, cluster.cpus, cluster.gpus, cluster.nodes)
        use_gpu = stages.resolve_use_gpu(spec.train.use_gpu, cluster.gpus)
        todo = resolve(todo, cluster, use_gpu=use_gpu)
        check_fits(todo, cluster, use_gpu=use_gpu)
        try:
            outcome = _run_cells(spec, run, data, todo, cluster, use_gpu, owner, record)
        finally:
            record.close()
    else:
        record.close()
    if progress.stop_requested():
        # Stopped by the operator: no analysis of a partial grid; the dashboard says Cancelled.
        timings["total"] = round(time.perf_counter() - t_start, 3)
        _record_launch(run, {"timings_s": timings, "cells": outcome.get("summaries", []), "stopped": outcome.get("stopped", []),
                             "failed": outcome["failed"], "ran": len(outcome["ran"]), "elsewhere": len(outcome["elsewhere"])})
        return Cancelled(message=f"stopped by the operator: {len(outcome.get('stopped', []))} cell(s) stopped, "
                                 f"{len(progress.cells_not_started())} not started; a rerun resumes")
    t0 = time.perf_counter()
    report = task(publish_results, name="analyse-and-publish", cache_policy=NO_CACHE, persist_result=False)(spec, run)
    timings["analyse"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    failures = outcome["failed"]
    _record_launch(run, {"timings_s": timings, "cells": outcome["summaries"] if "summaries" in outcome else [],
                         "failed": failures, "ran": len(outcome["ran"]), "elsewhere": len(outcome["elsewhere"])})
    if failures:
        raise InheritlabError(f"{len(failures)} of {len(todo)} cells failed:\n  " + "\n  ".join(failures))
    return {"run_dir": str(run.root), "cells": len(cells), "ran": len(outcome["ran"]),
            "elsewhere": len(outcome["elsewhere"]), "timings": timings,
            "report": {k: str(v) for k, v in report.items()}}


def _mark_killed_launches(run: RunDir, owner: str, stale_s: float) -> None:
    """The flow runs a killed launch left open become Crashed (:mod:`.launches`)."""
    try:
        marked = launches.mark_crashed(run.launches, me=owner, stale_s=stale_s)
    except Exception as exc:  # noqa: BLE001 - the dashboard's bookkeeping never blocks a study
        logging.getLogger("inheritlab.flows").warning("could not mark the runs of killed launches Crashed: %s", exc)
        return
    if marked:
        progress.LOGGER.info("an earlier launch was killed: its %d open run(s) are marked Crashed in the dashboard",
                             len(marked))


def _run_cells(spec: StudySpec, run: RunDir, data: DataSources, todo: list[Cell], cluster: Any,
               use_gpu: bool, owner: str, record: launches.LaunchRecord) -> dict[str, Any]:
    """Admit the cells as resources free up (largest first), each under its lease; gather outcomes."""
    stale = spec.execution.lease_stale_s
    heartbeat = Heartbeat(every_s=max(1.0, stale / 4))
    heartbeat.add(record)  # type: ignore[arg-type]  # renewed as the leases are: a live launch's record stays fresh
    leases: dict[str, CellLease] = {}

    def claim(cell: Cell) -> str:
        cdir = run.cell(cell.cell_id)
        if cdir.is_complete():
            progress.cell_elsewhere(cell.label)
            return "done"
        lease = leases.setdefault(cell.cell_id, CellLease(cdir.root, owner, stale_s=stale))
        if not lease.acquire():
            return "busy"
        if cdir.is_complete():  # finished by another launch just before we took the lease
            lease.release()
            progress.cell_elsewhere(cell.label)
            return "done"
        heartbeat.add(lease)
        return "mine"

    def one(cell: Cell) -> Any:
        try:
            return cell_flow.with_options(flow_run_name=f"cell {cell.label}")(
                cell, str(run.root), data, use_gpu, spec.execution.cell_retries, spec.execution.placement_timeout_s,
                return_state=True)
        finally:
            heartbeat.remove(leases[cell.cell_id])
            leases[cell.cell_id].release()

    # contextvars are copied so every cell's sub-run nests under this study's flow run.
    context = contextvars.copy_context()
    try:
        results = run_admitted(todo, cluster, lambda c: context.copy().run(one, c), use_gpu=use_gpu,
                               log=PlacementLog(run.root / "placement.jsonl"), claim=claim,
                               max_concurrent=spec.execution.max_concurrent_cells, stop=progress.stop_requested)
    finally:
        heartbeat.stop()
    outcome: dict[str, Any] = {"ran": [], "elsewhere": [], "failed": [], "summaries": [], "stopped": []}
    for cell, state, error in results:
        if state == "elsewhere":
            outcome["elsewhere"].append(cell.cell_id)
            continue
        if state == "not admitted":  # a stop came first
            continue
        if error is None and state.is_cancelled():
            outcome["stopped"].append(cell.cell_id)
            continue
        outcome["ran"].append(cell.cell_id)
        # A failed cell does not stop the others; the study fails at the end, naming it.
        if error is not None:
            outcome["failed"].append(f"{cell.label} ({cell.cell_id}): {error}")
            progress.cell_failed(cell.label, "", error)  # a no-op where the cell reported it already
        elif state.is_completed():
            outcome["summaries"].append(state.result())
        else:
            try:
                state.result()
                outcome["failed"].append(f"{cell.label} ({cell.cell_id}): {state.message}")
                progress.cell_failed(cell.label, "", str(state.message))
            except Exception as exc:  # the cell's own error, e.g. a bad shard
                outcome["failed"].append(f"{cell.label} ({cell.cell_id}): {exc}")
                progress.cell_failed(cell.label, "", exc)
    return outcome


def _note_worker_logs() -> None:
    """Say in the driver's log where Ray keeps the workers' stdout and stderr."""
    where = session_log_dir()
    logging.getLogger("inheritlab.flows").info(
        "ray workers' stdout/stderr (training, evaluation; DeepSpeed, open_clip) are in %s%s",
        where or "the Ray session directory of each node (/tmp/ray/session_latest/logs)",
        "" if progress.workers_to_terminal() else " (not forwarded to this terminal: log_to_driver is off)")


def _record_launch(run: RunDir, launch: dict[str, Any]) -> None:
    """Append this launch's stage timings to ``results/study_timings.json`` (one entry a launch)."""
    path = run.results / "study_timings.json"
    history = read_json(path).get("launches", []) if path.is_file() else []
    launch["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(path, {"launches": [*history, launch]})


def run_study(spec: StudySpec, run_dir: str | Path, ray_address: str | None = None) -> dict[str, Any]:
    """Entry point used by the CLI and tests. The paths and the run directory are checked
    before the flow (and with it Prefect and Ray) starts."""
    run_dir = check_before_start(spec, run_dir)
    state = study_flow.with_options(flow_run_name=f"study {spec.name}")(spec, str(run_dir), ray_address,
                                                                        return_state=True)
    if state.is_cancelled():
        raise StudyStopped(state.message or "stopped by the operator")
    return state.result()  # the flow's error, if it failed
