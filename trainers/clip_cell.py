"""The CLIP modality: image–caption cells on the built-in world or a user's shards.

Data: the built-in procedural world (generated once per study under ``RUN_DIR/world``) or the
user's image–caption shards, whose class names come from a ``world.json`` beside the train
split. Training: :func:`~inheritlab.trainers.clip_pretrain.train_clip`. Evaluation: the tasks
registered in :mod:`inheritlab.trainers.clip_tasks` on every export.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inheritlab.infra.cell import (
    Cell,
    CellConfig,
    DataConfig,
    EvalConfig,
    TextWorldSpec,
)
from inheritlab.trainers import clip_tasks  # noqa: F401  (registers the CLIP tasks)
from inheritlab.trainers.checkpoint import Export, TrainSummary
from inheritlab.trainers.clip_pretrain import (
    ClipTrainConfig,
    export_weights,
    train_clip,
)
from inheritlab.trainers.eval_tasks import Row
from inheritlab.trainers.modality import DataSources, Modality, register_modality

WORLD_DIR = "world"


@register_modality
class ClipModality(Modality):
    """Contrastive image–text pre-training (open_clip models on DeepSpeed)."""

    name = "clip"
    default_tasks = ("zeroshot", "linear_probe", "retrieval")

    def rungs(self) -> list[str]:
        from inheritlab.trainers.clip_models import RUNGS

        return sorted(RUNGS)

    def global_batch(self, cell: CellConfig) -> int:
        from inheritlab.trainers.clip_models import get_rung

        return cell.train.batch_size or get_rung(cell.model).batch_size

    def flops_per_sample(self, cell: CellConfig) -> float:
        from inheritlab.trainers.clip_models import flops_per_sample

        return flops_per_sample(cell.model)

    def pool_size(self, data: DataConfig) -> int | None:
        return data.world.train_size if data.source == "builtin" else None

    def cell_data(self, data: DataConfig) -> DataConfig:
        return data.model_copy(update={"text_world": TextWorldSpec()})

    def missing(self, data: DataConfig) -> dict[str, str]:
        from inheritlab.corruptors.world import user_world_json

        if data.source == "builtin" or data.shards is None:
            return {}
        meta = user_world_json(data.shards.train)
        if meta.is_file():
            return {}
        return {"class_names": f"class names, and the shards of data.shards.train ({data.shards.train}) have none: "
                               f"put a world.json with 'class_names' and 'num_classes' at {meta}, or leave the task "
                               "out of eval.tasks"}

    def check_settings(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str]) -> list[str]:
        errors = []
        defaults = EvalConfig()
        lm_only = [k for k in ("finetune_lr", "finetune_steps", "lm_adaptation") if getattr(ev, k) != getattr(defaults, k)]
        if lm_only:
            errors.append(f"eval: {lm_only} apply to LM studies (modality: lm) only")
        text_only = sorted(data.shards.model_fields_set & {"tokenizer", "vocab_size"}) if data.shards else []
        if text_only:
            errors.append(f"data.shards: {text_only} apply to LM studies (modality: lm) only")
        return errors

    def prepare_data(self, data: DataConfig, study_seed: int, root: Path) -> DataSources:
        from inheritlab.corruptors.world import (
            ImageWorldConfig,
            user_world,
            write_image_world,
        )

        if data.source == "builtin":
            world = write_image_world(ImageWorldConfig(seed=study_seed, **data.world.model_dump()), root / WORLD_DIR)
        else:
            assert data.shards is not None
            world = user_world(data.shards.given())
        return DataSources(kind="image", splits=dict(world.splits), class_names=tuple(world.class_names), world=world)

    def train_config(self, cell: Cell, cell_dir: Path, data: DataSources, *, device: str) -> ClipTrainConfig:
        return ClipTrainConfig.from_cell(cell, cell_dir, train_shards=data.train, class_names=data.class_names,
                                         device=device)

    def config_from_dict(self, data: dict[str, Any]) -> ClipTrainConfig:
        return ClipTrainConfig.from_dict(data)

    def train(self, cfg: Any) -> TrainSummary:
        return train_clip(cfg)

    def evaluate(self, cell: CellConfig, cell_dir: Path, data: DataSources, export: Export, *,
                 device: str) -> list[Row]:
        return clip_tasks.evaluate_clip(export_weights(export), cell.model, data.world, tasks=cell.eval_tasks,
                                        seed=cell.seed, checkpoint_step=export.step,
                                        samples_seen=export.samples_seen, device=device)
