"""The LM modality: language-model cells on the built-in biography world or a user's text.

Data: the built-in text world (generated once per study under ``RUN_DIR/text_world``, with its
tokenizer) or the user's text shards with a tokenizer trained or copied once per study under
``RUN_DIR/text_tokenizer/``. Training: :func:`~inheritlab.trainers.lm_pretrain.train_lm`
(``samples_seen`` counts packed sequences). Evaluation: the tasks registered in
:mod:`inheritlab.trainers.lm_tasks`; memorisation and contamination read the cell's manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inheritlab.infra.cell import Cell, CellConfig, DataConfig, EvalConfig, WorldSpec
from inheritlab.infra.rundir import CellDir
from inheritlab.trainers import lm_tasks
from inheritlab.trainers.checkpoint import Export, TrainSummary
from inheritlab.trainers.eval_tasks import Row
from inheritlab.trainers.lm_pretrain import LMTrainConfig, train_lm
from inheritlab.trainers.modality import DataSources, Modality, register_modality

TEXT_WORLD_DIR = "text_world"
TEXT_TOKENIZER_DIR = "text_tokenizer"


@register_modality
class LMModality(Modality):
    """Causal language-model pre-training (Llama-style models on DeepSpeed)."""

    name = "lm"
    default_tasks = ("perplexity", "qa", "memorization")

    def rungs(self) -> list[str]:
        from inheritlab.trainers.lm_models import RUNGS

        return list(RUNGS)

    def global_batch(self, cell: CellConfig) -> int:
        from inheritlab.trainers.lm_models import get_rung

        return cell.train.batch_size or get_rung(cell.model).recipe.batch_size

    def flops_per_sample(self, cell: CellConfig) -> float:
        # At the rung's own vocabulary (a study's tokenizer is only known at data prep).
        from inheritlab.trainers.lm_models import flops_per_token, get_rung

        rung = get_rung(cell.model)
        return flops_per_token(rung.model) * rung.recipe.seq_len

    def pool_size(self, data: DataConfig) -> int | None:
        return data.text_world.train_docs if data.source == "builtin" else None

    def cell_data(self, data: DataConfig) -> DataConfig:
        return data.model_copy(update={"world": WorldSpec()})

    def missing(self, data: DataConfig) -> dict[str, str]:
        if data.source == "builtin":
            return {}
        return {"qa": "the built-in text world's QA splits (data.source: builtin); the user's text shards "
                      "(data.source: shards) have none"}

    def check_settings(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str]) -> list[str]:
        errors = []
        image_only = sorted(data.shards.model_fields_set & {"label_key", "classnames", "templates"}) if data.shards else []
        if image_only:
            errors.append(f"data.shards: {image_only} apply to CLIP studies (modality: clip) only")
        if ev.suites is not None:
            errors.append("eval.suites: image evaluation sets apply to CLIP studies (modality: clip) only")
        if ev.adaptations is not None:
            errors.append("eval.adaptations: the CLIP adaptations apply to CLIP studies only; an LM study names "
                          "its own in eval.lm_adaptation (prompting, finetune)")
        if "finetune" not in ev.lm_adaptation:
            return errors
        if "qa" not in tasks:
            return errors + ["eval.lm_adaptation: 'finetune' adapts the model for task 'qa'; add 'qa' to eval.tasks"]
        if data.source != "builtin":
            return errors + ["eval.lm_adaptation: 'finetune' trains on the built-in text world's qa_train split; "
                             "the user's text shards (data.source 'shards') have none"]
        return errors

    def preflight(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str], biases: Sequence[dict[str, Any]], *,
                  study_seed: int) -> list[str]:
        """The user's text shards: every split listed and each shard's first document read; the
        biases built (their parameters checked against the data)."""
        from inheritlab.corruptors.chain import build_chain
        from inheritlab.corruptors.shards import first_samples, list_shards
        from inheritlab.infra.errors import InheritlabError

        errors = []
        for spec in biases:
            try:
                build_chain([spec], study_seed=study_seed, num_classes=None, class_names=None)
            except InheritlabError as exc:
                errors.append(f"grid.bias ({spec['type']}): {exc}")
        if data.source == "shards":
            assert data.shards is not None
            for split, path in data.shards.given().items():
                try:
                    for _ in first_samples(list_shards(path), kind="text"):
                        pass
                except InheritlabError as exc:
                    errors.append(f"data.shards.{split}: {exc}")
        return errors

    def prepare_data(self, data: DataConfig, study_seed: int, root: Path) -> DataSources:
        """The built-in text world, or the user's text shards and the study's tokenizer.

        User shards: every split is listed and the held-out ones read through once, so a
        missing directory, a directory without ``.tar`` or a sample without ``.txt`` fails here,
        naming the path or shard and member, not after training.
        """
        from inheritlab.corruptors.text_world import (
            TextWorldConfig,
            TextWorldInfo,
            write_text_world,
        )

        if data.source == "builtin":
            world = write_text_world(TextWorldConfig(seed=study_seed, **data.text_world.model_dump()),
                                     root / TEXT_WORLD_DIR)
            return DataSources(kind="text", splits=dict(world.splits), world=world)
        from inheritlab.corruptors.shards import iter_samples, list_shards
        from inheritlab.corruptors.tokenizer import study_tokenizer
        from inheritlab.infra.errors import ShardError

        assert data.shards is not None
        given = data.shards.given()
        splits = {name: [str(Path(s).expanduser().resolve()) for s in list_shards(path)] for name, path in given.items()}
        docs = {}
        for name in ("test_id", "test_ood"):
            if name in splits:  # evaluation reads these strictly: fail now, not after training
                docs[name] = sum(1 for _ in iter_samples(splits[name], kind="text"))
                if not docs[name]:
                    raise ShardError(given[name], None, f"data.shards.{name}: the split holds no documents")
        tokenizer = study_tokenizer(data.shards.tokenizer, vocab_size=data.shards.vocab_size,
                                    train_shards=splits["train"], train_source=data.shards.train,
                                    root=root / TEXT_TOKENIZER_DIR)
        world = TextWorldInfo(root=Path(data.shards.train).expanduser().resolve().parent, splits=splits,
                              tokenizer=tokenizer, config={"source": "shards", "shards": given,
                                                           "tokenizer": data.shards.tokenizer, "docs": docs})
        return DataSources(kind="text", splits=splits, world=world)

    def train_config(self, cell: Cell, cell_dir: Path, data: DataSources, *, device: str) -> LMTrainConfig:
        return LMTrainConfig.from_cell(cell, cell_dir, train_shards=data.train, tokenizer=str(data.world.tokenizer),
                                       device=device)

    def config_from_dict(self, data: dict[str, Any]) -> LMTrainConfig:
        return LMTrainConfig.from_dict(data)

    def train(self, cfg: Any) -> TrainSummary:
        return train_lm(cfg)

    def evaluate(self, cell: CellConfig, cell_dir: Path, data: DataSources, export: Export, *,
                 device: str) -> list[Row]:
        """QA is scored after each adaptation in ``eval.lm_adaptation`` (the fine-tune's item
        order from the cell's seed); memorisation and contamination read the cell's manifest."""
        from inheritlab.corruptors.duplication import leaked_keys
        from inheritlab.infra.seeds import derive_seed
        from inheritlab.trainers.lm_eval import duplicated_keys

        ev = cell.eval
        finetune = {k: v for k, v in (("finetune_steps", ev.finetune_steps), ("finetune_lr", ev.finetune_lr))
                    if v is not None}
        plans = CellDir(cell_dir).data
        return lm_tasks.evaluate_lm(
            export.path, data.world, tasks=cell.eval_tasks, checkpoint_step=export.step,
            samples_seen=export.samples_seen, duplicated_keys=duplicated_keys(plans), leaked_keys=leaked_keys(plans),
            train_shards=data.train, device=device, adaptations=ev.lm_adaptation,
            finetune_seed=derive_seed(cell.study_seed, "lm", cell.seed, "finetune-qa"), **finetune,
        )
