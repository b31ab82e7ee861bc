"""The stages of one cell, as plain functions: data condition → pre-train → evaluate → record.

The Prefect flow wraps each in a task (retries, logs, dashboard); keeping the work here, free of
Prefect, lets the stages be called and tested on their own. Each stage is idempotent: it reads
what an earlier attempt committed and continues from there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from inheritlab.flows.grid import Cell
from inheritlab.infra.atomic import atomic_open, atomic_write_json, read_json
from inheritlab.infra.errors import SpecError
from inheritlab.infra.rundir import CellDir, RunDir
from inheritlab.infra.schema import RESULT_COLUMNS

_POLARS_TYPES = {"str": pl.Utf8, "int": pl.Int64, "float": pl.Float64}


@dataclass(frozen=True)
class DataSources:
    """Where a study's splits live, and what the classes are called (for zero-shot prompts)."""

    world: Any  # corruptors.world.WorldInfo

    @property
    def train(self) -> list[str]:
        return list(self.world.splits["train"])


def prepare_data(data_config: dict[str, Any], study_seed: int, run: RunDir) -> DataSources:
    """Generate the built-in world once per study (idempotent), or open the user's shards."""
    from inheritlab.corruptors.shards import list_shards
    from inheritlab.corruptors.world import ImageWorldConfig, WorldInfo, load_world_info, write_image_world

    if data_config["source"] == "builtin":
        cfg = ImageWorldConfig(seed=study_seed, **data_config["world"])
        return DataSources(world=write_image_world(cfg, run.root / "world"))
    paths = {k: v for k, v in data_config["shards"].items() if v}
    # Class names (for zero-shot prompts and probes) come from a world.json beside the splits
    # when there is one; plain img2dataset shards carry captions only.
    parent = Path(paths["train"]).expanduser().parent
    base = load_world_info(parent) if (parent / "world.json").is_file() else None
    splits = {split: list_shards(p) for split, p in paths.items()}
    if base is not None:
        return DataSources(world=WorldInfo(root=base.root, class_names=base.class_names, prompt_templates=base.prompt_templates, splits=splits, num_classes=base.num_classes, config=base.config))
    from inheritlab.corruptors.world import PROMPT_TEMPLATES

    return DataSources(world=WorldInfo(root=parent, class_names=[], prompt_templates=list(PROMPT_TEMPLATES), splits=splits, num_classes=0))


def cell_corruptors(cell: Cell, data: DataSources) -> list[dict[str, Any]]:
    """The corruptor chain of a cell: the unique-pool selector, then the bias under study."""
    c = cell.config
    specs: list[dict[str, Any]] = []
    pool = c.get("unique_samples")
    total = c["data"].get("pool")
    if pool is not None and total and pool < total:
        specs.append({"type": "subsample", "level": pool / total})
    if c["bias"]["type"] != "none":
        specs.append(dict(c["bias"]))
    return specs


def stage_condition(cell: Cell, cdir: CellDir, data: DataSources) -> dict[str, Any]:
    """Stage 1: plan and account the cell's data condition (manifest + counters).

    Image and text cells differ only in the sample kind and in having classes; the splits are
    passed so that contamination finds the test items it leaks on any data source.
    """
    from inheritlab.corruptors.chain import condition_data

    if cdir.counters.is_file():
        return read_json(cdir.counters)
    text = cell.config["modality"] == "lm"
    return condition_data(
        data.train,
        cell_corruptors(cell, data),
        study_seed=cell.config["study_seed"],
        out_dir=cdir.data,
        num_classes=None if text else data.world.num_classes,
        class_names=None if text else list(data.world.class_names),
        bad_sample_ceiling=cell.config["bad_sample_ceiling"],
        sources=data.world.splits,
        kind="text" if text else "image",
    )


def stage_pretrain(
    cell: Cell, cdir: CellDir, data: DataSources, *, use_gpu: bool, storage_path: str
) -> dict[str, Any]:
    """Stage 2: pre-train through Ray Train workers; resumes from the last committed checkpoint."""
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig
    from inheritlab.trainers.ray_launch import launch_clip_training

    c, ex = cell.config, cell.execution
    cfg = ClipTrainConfig(
        rung=c["model"],
        train_shards=tuple(data.train),
        corruptors=tuple(cell_corruptors(cell, data)),
        study_seed=c["study_seed"],
        seed=c["seed"],
        plan_dir=str(cdir.data),
        num_classes=data.world.num_classes,
        class_names=tuple(data.world.class_names),
        samples_seen=c["samples_seen"],
        unique_samples=c["unique_samples"],
        batch_size=c["train"]["batch_size"],
        lr=c["train"]["lr"],
        warmup_steps=c["train"]["warmup_steps"],
        zero_stage=c["train"]["zero_stage"],
        ckpt_every=ex["ckpt_every"],
        eval_every_ckpt=c["train"]["eval_checkpoints"] == "all",
        cell_dir=str(cdir.root),
        bad_sample_ceiling=c["bad_sample_ceiling"],
        loader_workers=ex["loader_workers"],
    )
    return launch_clip_training(cfg, **launch_options(cell, use_gpu=use_gpu, storage_path=storage_path))


def launch_options(cell: Cell, *, use_gpu: bool, storage_path: str) -> dict[str, Any]:
    """How a cell's training is placed on the cluster (the same for every modality)."""
    ex = cell.execution
    return {
        "num_workers": ex["workers"],
        "use_gpu": use_gpu,
        "cpus_per_worker": ex["cpus_per_worker"],
        "storage_path": storage_path,
        "max_failures": ex["max_failures"],
    }


def stage_evaluate(
    cell: Cell, cdir: CellDir, data: DataSources, exports: list[dict[str, Any]], *, use_gpu: bool
) -> list[dict[str, Any]]:
    """Stage 3: every exported checkpoint × downstream task, fanned out as Ray tasks."""
    import ray

    from inheritlab.trainers.evaluate import evaluate_clip

    remote = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=2)(evaluate_clip)
    futures = [
        remote.remote(
            e["path"],
            cell.config["model"],
            data.world,
            tasks=tuple(cell.config["eval"]["tasks"]),
            seed=cell.config["seed"],
            checkpoint_step=e["step"],
            samples_seen=e["samples_seen"],
        )
        for e in exports
    ]
    rows: list[dict[str, Any]] = []
    for batch in ray.get(futures):
        rows.extend(batch)
    return rows


def stage_record(
    cell: Cell, cdir: CellDir, rows: list[dict[str, Any]], train: dict[str, Any],
    counters: dict[str, Any], timings: dict[str, float],
) -> pl.DataFrame:
    """Stage 4: tidy rows with grid coordinates → results.parquet, then the completion marker."""
    c = cell.config
    if "flops_per_sample" in train:
        flops_per_sample = float(train["flops_per_sample"])
    else:  # the LM trainer reports total FLOPs of the run
        flops_per_sample = float(train.get("flops", 0.0)) / max(1, int(train.get("samples_seen", 1)))
    base = {
        "study": c["study"],
        "cell_id": cell.cell_id,
        "modality": c["modality"],
        "bias_type": cell.bias_type,
        "bias_level": cell.bias_level,
        "model": c["model"],
        "data_scale": float(c["samples_seen"]),
        "unique_samples": int(c["unique_samples"] if c["unique_samples"] is not None else counters.get("pool_out", -1)),
        "seed": int(c["seed"]),
        "params": int(train.get("params", 0)),
    }
    full = []
    for r in rows:
        row = {**base, **r}
        row.setdefault("flops", flops_per_sample * float(row["samples_seen"]))
        full.append({k: row.get(k) for k in RESULT_COLUMNS})
    schema = {k: _POLARS_TYPES[t] for k, t in RESULT_COLUMNS.items()}
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
            "train": {k: v for k, v in train.items() if k not in ("loss_curve", "exports")},
            "counters": counters,
        }
    )
    return df


def write_cell_config(cell: Cell, cdir: CellDir) -> None:
    """Record the cell's config beside its artifacts; refuse to reuse a dir of another config."""
    cdir.root.mkdir(parents=True, exist_ok=True)
    if cdir.config.is_file():
        existing = read_json(cdir.config)
        if existing.get("config") != cell.config:
            raise SpecError(
                f"{cdir.config}: this cell directory holds a different config than cell "
                f"{cell.cell_id}; the run directory is inconsistent"
            )
        return
    atomic_write_json(cdir.config, {"cell_id": cell.cell_id, "config": cell.config, "execution": cell.execution})


def resolve_use_gpu(setting: str, cluster_gpus: float) -> bool:
    """``auto`` trains on GPUs when the cluster has any; ``yes`` demands them."""
    if setting == "yes":
        if cluster_gpus < 1:
            raise SpecError("train.use_gpu is 'yes' but the Ray cluster reports no GPUs")
        return True
    if setting == "no":
        return False
    return cluster_gpus >= 1


def storage_path_for(run: RunDir) -> str:
    """Ray Train's storage: the run dir (it must be shared storage on a multi-node cluster)."""
    p = Path(run.root) / "ray_train"
    p.mkdir(parents=True, exist_ok=True)
    return str(p)
