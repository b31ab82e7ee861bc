"""The stages of one cell, as plain functions: data condition → pre-train → evaluate → record.

The Prefect flow wraps each in a task (retries, logs, dashboard); keeping the work here, free of
Prefect, lets the stages be called and tested on their own. Each stage is idempotent: it reads
what an earlier attempt committed and continues from there. No stage asks which modality a cell
holds: the cell's :class:`~inheritlab.trainers.modality.Modality` supplies the pieces.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
from inheritlab.infra.atomic import atomic_open, atomic_write_json, read_json
from inheritlab.infra.cell import Cell, CellConfig
from inheritlab.infra.errors import SpecError
from inheritlab.infra.inputs import check_inputs, record_inputs
from inheritlab.infra.raycluster import get
from inheritlab.infra.rundir import CellDir, RunDir
from inheritlab.infra.schema import DRAW_COLUMN, RESULT_COLUMNS
from inheritlab.trainers.checkpoint import Export, TrainSummary
from inheritlab.trainers.modality import DataSources, get_modality
from inheritlab.trainers.ray_launch import Placement

_POLARS_TYPES = {"str": pl.Utf8, "int": pl.Int64, "float": pl.Float64}


def stage_condition(cell: Cell, cdir: CellDir, data: DataSources, placement: Placement | None = None) -> dict[str, Any]:
    """Stage 1: plan and account the cell's data condition (manifest + counters).

    With a ``placement`` it runs as a Ray task inside the cell's reservation, its per-shard plan
    tasks too (they are captured by the placement group): conditioning uses the resources the
    cell was admitted with, never the driver's; without one, in this process. The splits are
    passed so that contamination finds the test items it leaks on any data source.
    """
    from inheritlab.corruptors.chain import condition_data

    if cdir.counters.is_file():
        return read_json(cdir.counters)
    # What the plan is made of, fingerprinted before it is made: training checks it first.
    record_inputs(data.train, cdir.inputs)
    args = (data.train, cell.config.corruptors())
    kwargs = dict(study_seed=cell.config.study_seed, out_dir=cdir.data, num_classes=len(data.class_names) or None,
                  class_names=list(data.class_names) or None, bad_sample_ceiling=cell.config.data.bad_sample_ceiling,
                  sources=data.splits, kind=data.kind, label_key=data.label_key)
    if placement is None:
        return condition_data(*args, **kwargs)
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(condition_data).options(
        scheduling_strategy=placement.strategy(0, capture=True))
    return get(task.remote(*args, **kwargs))


def stage_pretrain(cell: Cell, cdir: CellDir, data: DataSources, placement: Placement, *,
                   use_gpu: bool) -> TrainSummary:
    """Stage 2: pre-train on one worker per bundle; resumes from the last committed checkpoint."""
    from inheritlab.trainers.ray_launch import launch_training

    check_inputs(data.train, cdir.inputs)  # the shards are still the ones the condition was planned on
    modality = get_modality(cell.config.modality)
    cfg = modality.train_config(cell, cdir.root, data, device="cuda" if use_gpu else "cpu")
    return launch_training(modality.name, cfg, placement, max_failures=cell.execution.max_failures,
                           log=cdir.root / "launches.jsonl")


def _evaluate_export(cell: CellConfig, cell_dir: str, data: DataSources, export: Export, device: str) -> list[dict[str, Any]]:
    """One export of a cell, every task (runs as a Ray task)."""
    from inheritlab.trainers.caches import configure_caches
    from inheritlab.trainers.ray_launch import worker_device

    device = worker_device(device)
    configure_caches(Path(cell_dir).parent.parent, use_gpu=device == "cuda")
    return get_modality(cell.modality).evaluate(cell, Path(cell_dir), data, export, device=device)


def stage_evaluate(cell: Cell, cdir: CellDir, data: DataSources, summary: TrainSummary, placement: Placement, *,
                   use_gpu: bool) -> list[dict[str, Any]]:
    """Stage 3: the chosen exports (the final one, or all with ``eval_checkpoints: all``) ×
    every task, one Ray task per export, spread over the cell's bundles."""
    import ray

    chosen = list(summary.exports) if cell.config.train.eval_checkpoints == "all" else [summary.final_export]
    remote = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=2)(_evaluate_export)
    device = "cuda" if use_gpu else "cpu"
    futures = [remote.options(scheduling_strategy=placement.strategy(i % placement.workers)).remote(
        cell.config, str(cdir.root), data, e, device) for i, e in enumerate(chosen)]
    return [row for rows in get(futures) for row in rows]


def stage_record(
    cell: Cell, cdir: CellDir, rows: list[dict[str, Any]], summary: TrainSummary,
    counters: dict[str, Any], timings: dict[str, float],
) -> pl.DataFrame:
    """Stage 4: tidy rows with grid coordinates → results.parquet, then the completion marker."""
    c = cell.config
    base = {
        "study": c.study,
        "cell_id": cell.cell_id,
        "modality": c.modality,
        "bias_type": c.bias.label,   # the axis: two axes of one corruptor type stay apart
        "bias_level": c.bias.level,
        "model": c.model,
        "data_scale": float(c.samples_seen),
        # A user's pool is whatever the condition stage could read of the train shards.
        "unique_samples": c.unique_samples if c.unique_samples is not None else int(counters["source"]["samples"]),
        "seed": c.seed,
        "params": summary.params,
    }
    full = []
    for r in rows:
        row = {**base, **r, "flops": summary.flops_per_sample * float(r["samples_seen"])}
        full.append({k: row.get(k) for k in (*RESULT_COLUMNS, DRAW_COLUMN)})
    schema = {**{k: _POLARS_TYPES[t] for k, t in RESULT_COLUMNS.items()}, DRAW_COLUMN: _POLARS_TYPES["int"]}
    df = pl.DataFrame(full, schema=schema, orient="row") if full else pl.DataFrame(schema=schema)
    cdir.eval.mkdir(parents=True, exist_ok=True)
    with atomic_open(cdir.results, "wb") as fh:
        df.write_parquet(fh)
    atomic_write_json(cdir.timings, timings)
    cdir.mark_complete(
        {
            "cell_id": cell.cell_id,
            "label": cell.label,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rows": df.height,
            "timings_s": timings,
            "train": {k: v for k, v in summary.to_dict().items() if k not in ("loss_curve", "exports")},
            "counters": counters,
            "bad_samples": bad_samples(cdir, counters, summary),
        }
    )
    return df


def bad_samples(cdir: CellDir, counters: dict[str, Any], summary: TrainSummary) -> dict[str, Any]:
    """Every sample a stage of the cell skipped as bad, by stage and reason: the condition
    pass, the trainer's first pass (undecodable images included) and each evaluation split."""
    def part(read: dict[str, Any]) -> dict[str, Any]:
        return {"read": int(read.get("samples", 0)), "skipped": dict(read.get("skipped", {})),
                "problems": list(read.get("problems", []))[:5]}

    out = {"condition": part(counters.get("source", {})),
           "train": part(summary.data_check.get("first_pass_read", {}))}
    evaluation: dict[str, dict[str, Any]] = {}
    for log in sorted(cdir.eval.glob("read-step*.json")):
        for split, read in read_json(log).items():
            evaluation.setdefault(split, part(read))  # every export reads the same splits
    out["evaluation"] = evaluation
    return out


def write_cell_config(cell: Cell, cdir: CellDir) -> None:
    """Record the cell's config beside its artifacts; refuse to reuse a dir of another config."""
    cdir.root.mkdir(parents=True, exist_ok=True)
    if cdir.config.is_file():
        existing = read_json(cdir.config)
        if CellConfig.model_validate(existing["config"]) != cell.config:
            raise SpecError(
                f"{cdir.config}: this cell directory holds a different config than cell "
                f"{cell.cell_id}; the run directory is inconsistent"
            )
        return
    atomic_write_json(cdir.config, {"cell_id": cell.cell_id, "config": cell.config.model_dump(mode="json"),
                                    "execution": cell.execution.model_dump(mode="json")})


def read_cell_config(cdir: CellDir) -> CellConfig:
    """The config recorded in a cell directory (what ``inheritlab status`` shows)."""
    return CellConfig.model_validate(read_json(cdir.config)["config"])


def materialize_cell(run: RunDir, cell_id: str, out_dir: Path, *, samples_per_shard: int = 1000) -> list[Path]:
    """Write a conditioned cell's training stream (the bias applied) as new WebDataset shards.

    Studies corrupt in the trainer's stream (a study at scale cannot copy its data per level);
    this is for handing one condition to another tool or sharing the biased data set.
    """
    from inheritlab.corruptors.chain import materialize_condition

    cdir = run.cell(cell_id)
    if not cdir.config.is_file():
        raise SpecError(f"{cdir.root}: no cell {cell_id!r} in {run.root} (`inheritlab status` lists the ids)")
    if not cdir.counters.is_file():
        raise SpecError(f"cell {cell_id}: its data has not been conditioned yet (run the study first)")
    cell = read_cell_config(cdir)
    data = get_modality(cell.modality).prepare_data(cell.data, cell.study_seed, run.root)
    return materialize_condition(data.train, cell.corruptors(), study_seed=cell.study_seed, plan_dir=cdir.data,
                                 out_dir=out_dir, num_classes=len(data.class_names) or None,
                                 class_names=list(data.class_names) or None, samples_per_shard=samples_per_shard,
                                 kind=data.kind)


def resolve_use_gpu(setting: str, cluster_gpus: float) -> bool:
    """``auto`` trains on GPUs when the cluster has any; ``yes`` demands them."""
    if setting == "yes":
        if cluster_gpus < 1:
            raise SpecError("train.use_gpu is 'yes' but the Ray cluster reports no GPUs")
        return True
    if setting == "no":
        return False
    return cluster_gpus >= 1


