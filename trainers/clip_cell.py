"""The CLIP modality: image–caption cells on the built-in world or a user's shards.

Data: the built-in procedural world (generated once per study under ``RUN_DIR/world``) or the
user's image–caption shards (img2dataset's layout or ours), whose class names and templates
come from ``classnames.txt`` / ``zeroshot_classification_templates.txt`` or a ``world.json``
beside the train split (``corruptors/classes.py``; the contract is docs/data.md).
Training: :func:`~inheritlab.trainers.clip_pretrain.train_clip`. Evaluation: the tasks
registered in :mod:`inheritlab.trainers.clip_tasks` on every export, and the evaluation suites
on disk named by ``eval.suites``.
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
        from inheritlab.corruptors.classes import CLASSNAMES, class_info, metadata_dir
        from inheritlab.infra.errors import ShardError

        if data.source == "builtin" or data.shards is None:
            return {}
        where = metadata_dir(data.shards.train)
        try:  # a malformed file is reported by the check before training, naming the file
            if class_info(where, classnames=data.shards.classnames, templates=data.shards.templates) is not None:
                return {}
        except ShardError:
            return {}
        return {"class_names": f"class names, and the shards of data.shards.train ({data.shards.train}) have none: "
                               f"put a {CLASSNAMES} (one name per line, in label order) at {where / CLASSNAMES}, or "
                               "name one in data.shards.classnames, or leave the task out of eval.tasks (docs/data.md)"}

    def implied_tasks(self, ev: EvalConfig) -> tuple[str, ...]:
        # Each adaptation is a task; the spectrum before adaptation (diagnostics) goes with them.
        adapted = (*ev.adaptations, "diagnostics") if ev.adaptations else ()
        return adapted + (("suites",) if ev.suites is not None else ())

    def check_settings(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str]) -> list[str]:
        errors = []
        defaults = EvalConfig()
        lm_only = [k for k in ("finetune_lr", "finetune_steps", "lm_adaptation") if getattr(ev, k) != getattr(defaults, k)]
        if lm_only:
            errors.append(f"eval: {lm_only} apply to LM studies (modality: lm) only")
        text_only = sorted(data.shards.model_fields_set & {"tokenizer", "vocab_size"}) if data.shards else []
        if text_only:
            errors.append(f"data.shards: {text_only} apply to LM studies (modality: lm) only")
        if "suites" in tasks and ev.suites is None:
            errors.append("eval.tasks: 'suites' scores the evaluation sets of eval.suites; set eval.suites (root, tasks)")
        return errors

    def preflight(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str], biases: Sequence[dict[str, Any]], *,
                  study_seed: int) -> list[str]:
        from inheritlab.trainers.clip_preflight import check_clip_data

        return check_clip_data(data, ev, tasks, biases, study_seed=study_seed)

    def prepare_data(self, data: DataConfig, study_seed: int, root: Path) -> DataSources:
        from inheritlab.corruptors.classes import user_world
        from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

        label_key = None
        if data.source == "builtin":
            world = write_image_world(ImageWorldConfig(seed=study_seed, **data.world.model_dump()), root / WORLD_DIR)
        else:
            assert data.shards is not None
            world = user_world(data.shards.given(), classnames=data.shards.classnames,
                               templates=data.shards.templates)
            label_key = data.shards.label_key
        return DataSources(kind="image", splits=dict(world.splits), class_names=tuple(world.class_names), world=world,
                           label_key=label_key)

    def train_config(self, cell: Cell, cell_dir: Path, data: DataSources, *, device: str) -> ClipTrainConfig:
        return ClipTrainConfig.from_cell(cell, cell_dir, train_shards=data.train, class_names=data.class_names,
                                         label_key=data.label_key, device=device)

    def config_from_dict(self, data: dict[str, Any]) -> ClipTrainConfig:
        return ClipTrainConfig.from_dict(data)

    def train(self, cfg: Any) -> TrainSummary:
        return train_clip(cfg)

    def evaluate(self, cell: CellConfig, cell_dir: Path, data: DataSources, export: Export, *,
                 device: str) -> list[Row]:
        from inheritlab.corruptors.suites import open_suite
        from inheritlab.infra.rundir import CellDir

        suites = cell.eval.suites
        opened = open_suite(suites.root, suites.tasks, suites.split) if suites and "suites" in cell.eval_tasks else []
        read_log = CellDir(cell_dir).eval / f"read-step{export.step}.json"
        read_log.parent.mkdir(parents=True, exist_ok=True)
        return clip_tasks.evaluate_clip(export_weights(export), cell.model, data.world, tasks=cell.eval_tasks,
                                        seed=cell.seed, checkpoint_step=export.step,
                                        samples_seen=export.samples_seen, device=device, label_key=data.label_key,
                                        bad_sample_ceiling=cell.data.bad_sample_ceiling, suites=opened,
                                        suite_split=suites.split if suites else "test", read_log=str(read_log),
                                        few_shot_k=cell.eval.few_shot_k, few_shot_draws=cell.eval.few_shot_draws)
