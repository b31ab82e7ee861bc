"""The LM variants of a cell's stages: the text world, token-level training, LM evaluation.

Same shape as :mod:`inheritlab.flows.stages` (the data-condition and record stages are shared), so a study spec with ``modality: lm`` runs through the same flow, run directory and
results table as CLIP.
"""

from __future__ import annotations

from typing import Any

from inheritlab.flows.grid import Cell
from inheritlab.flows.stages import DataSources, cell_corruptors, launch_options
from inheritlab.infra.rundir import CellDir, RunDir


def prepare_text_data(data_config: dict[str, Any], study_seed: int, run: RunDir) -> DataSources:
    """Generate the built-in text world (and its tokenizer) once per study."""
    from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world

    cfg = TextWorldConfig(seed=study_seed, **data_config["text_world"])
    return DataSources(world=write_text_world(cfg, run.root / "text_world"))


def stage_pretrain_lm(
    cell: Cell, cdir: CellDir, data: DataSources, *, use_gpu: bool, storage_path: str
) -> dict[str, Any]:
    """Pre-train the cell's LM through Ray Train workers; ``samples_seen`` counts packed sequences."""
    from inheritlab.trainers.lm_pretrain import LMTrainConfig
    from inheritlab.trainers.ray_launch import launch_lm_training

    c, ex = cell.config, cell.execution
    cfg = LMTrainConfig(
        rung=c["model"],
        train_shards=list(data.train),
        tokenizer=str(data.world.tokenizer),
        cell_dir=str(cdir.root),
        corruptors=list(cell_corruptors(cell, data)),
        study_seed=c["study_seed"],
        plan_dir=str(cdir.data),
        seed=c["seed"],
        samples=c["samples_seen"],
        batch_size=c["train"]["batch_size"],
        lr=c["train"]["lr"],
        warmup_steps=c["train"]["warmup_steps"],
        zero_stage=c["train"]["zero_stage"],
        ckpt_every=ex["ckpt_every"],
        bad_sample_ceiling=c["bad_sample_ceiling"],
    )
    return launch_lm_training(cfg, **launch_options(cell, use_gpu=use_gpu, storage_path=storage_path))


def stage_evaluate_lm(
    cell: Cell, cdir: CellDir, data: DataSources, exports: list[dict[str, Any]], *, use_gpu: bool
) -> list[dict[str, Any]]:
    """Every export × LM task as Ray tasks; memorisation and contamination read the cell's manifest."""
    import ray

    from inheritlab.corruptors.duplication import leaked_keys
    from inheritlab.trainers.lm_evaluate import duplicated_keys, evaluate_lm

    final_only = cell.config["train"]["eval_checkpoints"] == "final"
    chosen = exports[-1:] if final_only else exports
    dup = duplicated_keys(cdir.data)
    leaked = leaked_keys(cdir.data)
    remote = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=2)(evaluate_lm)
    futures = [
        remote.remote(
            e["path"],
            data.world,
            tasks=tuple(cell.config["eval"]["tasks"]),
            checkpoint_step=e["step"],
            samples_seen=e["samples_seen"],
            duplicated_keys=dup,
            leaked_keys=leaked,
            train_shards=list(data.train),
            device="cuda" if use_gpu else "cpu",
        )
        for e in chosen
    ]
    return [row for rows in ray.get(futures) for row in rows]
