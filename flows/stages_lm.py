"""The LM variants of a cell's stages: the text world, token-level training, LM evaluation.

Same shape as :mod:`inheritlab.flows.stages` (the data-condition and record stages are shared), so a study spec with ``modality: lm`` runs through the same flow, run directory and
results table as CLIP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inheritlab.flows.grid import Cell
from inheritlab.flows.spec import ShardsSpec
from inheritlab.flows.stages import DataSources, cell_corruptors, launch_options
from inheritlab.infra.rundir import CellDir, RunDir


TEXT_TOKENIZER_DIR = "text_tokenizer"
# Bump when how a study tokenizer is built changes: older ones then sit under another id.
TEXT_TOKENIZER_EPOCH = 1


def prepare_text_data(data_config: dict[str, Any], study_seed: int, run: RunDir) -> DataSources:
    """The built-in text world (generated once per study), or the user's text shards.

    User shards: every split is listed and the held-out ones read through once, so a missing
    directory, a directory without ``.tar`` or a sample without ``.txt`` fails here, naming the
    path or shard and member, not after training. The tokenizer is trained on the train split
    (``tokenizer: train``) or copied from the named one, once per study, into
    ``RUN_DIR/text_tokenizer/<id>/`` (id: hash of the choice and its inputs), so every cell
    and export reads the same file and a re-launch reuses it. ``test_ood`` is evaluated as
    split ``ood``.
    """
    if data_config["source"] == "builtin":
        from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world

        cfg = TextWorldConfig(seed=study_seed, **data_config["text_world"])
        return DataSources(world=write_text_world(cfg, run.root / "text_world"))

    from inheritlab.corruptors.shards import iter_samples, list_shards
    from inheritlab.corruptors.text_world import TextWorldInfo
    from inheritlab.infra.errors import ShardError

    # Validated with the study spec; this fills in the defaults a cell config leaves out.
    spec = ShardsSpec.model_construct(**data_config["shards"])
    given = {"train": spec.train, "test_id": spec.test_id, "test_ood": spec.test_ood}
    splits = {name: [str(Path(s).expanduser().resolve()) for s in list_shards(path)]
              for name, path in given.items() if path}
    docs = {}
    for name in ("test_id", "test_ood"):
        if name in splits:  # evaluation reads these strictly: fail now, not after training
            docs[name] = sum(1 for _ in iter_samples(splits[name], kind="text"))
            if not docs[name]:
                raise ShardError(str(given[name]), None, f"data.shards.{name}: the split holds no documents")
    tokenizer = _study_tokenizer(spec, splits["train"], run.root / TEXT_TOKENIZER_DIR)
    return DataSources(world=TextWorldInfo(
        root=Path(spec.train).expanduser().resolve().parent,
        splits=splits,
        tokenizer=tokenizer,
        config={"source": "shards", "shards": given, "tokenizer": spec.tokenizer, "docs": docs},
    ))


def _study_tokenizer(spec: ShardsSpec, train_shards: list[str], root: Path) -> Path:
    """The study's ``tokenizer.json``: trained on the train split or copied in; built once, atomically."""
    import hashlib

    from inheritlab.corruptors.shards import ReadStats, iter_samples
    from inheritlab.corruptors.tokenizer import load_tokenizer, resolve_tokenizer_path, train_tokenizer
    from inheritlab.infra.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
    from inheritlab.infra.errors import ShardError
    from inheritlab.infra.hashing import config_id

    if spec.tokenizer == "train":
        source: dict[str, Any] = {"tokenizer": "train", "vocab_size": spec.vocab_size, "train": spec.train}
    else:
        path = resolve_tokenizer_path(spec.tokenizer)
        data = path.read_bytes()
        source = {"tokenizer": spec.tokenizer, "path": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    target = root / config_id(source, TEXT_TOKENIZER_EPOCH)
    if (target / "tokenizer.json").is_file():
        return target / "tokenizer.json"
    with atomic_dir(target) as tmp:
        if spec.tokenizer == "train":
            stats = ReadStats()
            # Bad samples are skipped here; the data-condition stage holds them to the ceiling.
            texts = (s["text"] for s in iter_samples(train_shards, kind="text", bad_sample_ceiling=1.0, stats=stats))
            train_tokenizer(texts, vocab_size=spec.vocab_size, out_path=tmp / "tokenizer.json")
            if not stats.samples:
                raise ShardError(spec.train, None, "data.shards.train: no readable text document to train the "
                                 f"tokenizer on (each sample needs a <key>.txt member); problems: {stats.problems[:3]}")
            source["train_docs"] = stats.samples
        else:
            atomic_write_bytes(tmp / "tokenizer.json", data)
            load_tokenizer(tmp / "tokenizer.json")  # a foreign tokenizer must at least have an end-of-text token
        atomic_write_json(tmp / "source.json", source)
    return target / "tokenizer.json"


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
    """Every export × LM task as Ray tasks; memorisation and contamination read the cell's manifest.

    QA is scored after each adaptation in ``eval.lm_adaptation`` (prompting; fine-tuning on the
    world's ``qa_train`` split, its item order from the cell's seed).
    """
    import ray

    from inheritlab.corruptors.duplication import leaked_keys
    from inheritlab.infra.seeds import derive_seed
    from inheritlab.trainers.lm_evaluate import duplicated_keys, evaluate_lm

    ev = cell.config["eval"]
    # Cells whose config predates the adaptation keys (or leaves them at their defaults) prompt only.
    finetune = {k: ev[k] for k in ("finetune_steps", "finetune_lr") if ev.get(k) is not None}
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
            adaptations=tuple(ev.get("lm_adaptation") or ("prompting",)),
            finetune_seed=derive_seed(cell.config["study_seed"], "lm", cell.config["seed"], "finetune-qa"),
            **finetune,
        )
        for e in chosen
    ]
    return [row for rows in ray.get(futures) for row in rows]
