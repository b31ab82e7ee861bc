"""Downstream fine-tuning of the CLIP image tower (full and LoRA) on a tiny built-in world, CPU."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from inheritlab.corruptors.shards import ReadStats, iter_samples, write_shards
from inheritlab.corruptors.world import ImageWorldConfig, WorldInfo, write_image_world
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.clip_eval import class_embeddings
from inheritlab.trainers.clip_finetune import (
    FinetuneConfig,
    adaptable_classifier,
    evaluate_finetune,
    finetune_image_tower,
    load_split_images,
    seeded_subset,
)
from inheritlab.trainers.clip_models import BuiltClip, build_clip
from inheritlab.trainers.clip_tasks import ClipEvalContext, _adapted_rows, zeroshot

CPU = torch.device("cpu")
# Small enough for a fraction of a second per fine-tune on one core; lr high enough that one
# step visibly moves any weight it touches.
QUICK = dict(epochs=2, batch_size=32, train_size=128, lr=1e-3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldInfo:
    cfg = ImageWorldConfig(seed=1, num_classes=4, train_size=384, test_id_size=64, test_ood_size=64,
                           samples_per_shard=128)
    return write_image_world(cfg, tmp_path_factory.mktemp("ft") / "world")


@pytest.fixture(scope="module")
def built() -> BuiltClip:
    b = build_clip("clip-tiny", seed=0)
    b.model.eval()
    return b


@pytest.fixture(scope="module")
def data(world: WorldInfo, built: BuiltClip) -> dict[str, Any]:
    train = load_split_images(built.transform, world.splits["train"])
    tests = {"id": load_split_images(built.transform, world.splits["test_id"]),
             "ood": load_split_images(built.transform, world.splits["test_ood"])}
    head = class_embeddings(built.model, built.tokenizer, list(world.class_names), list(world.prompt_templates), CPU)
    return {"train": train, "tests": tests, "head": head, "C": world.num_classes}


def _run(built: BuiltClip, data: dict[str, Any], seed: int = 0, train_size: int = 128, **kw: Any):  # type: ignore[no-untyped-def]
    cfg = FinetuneConfig(**{**QUICK, "train_size": train_size, **kw})
    images, labels = seeded_subset(*data["train"], cfg.train_size, seed)
    return finetune_image_tower(built, images, labels, data["tests"], data["head"], data["C"], seed=seed,
                                config=cfg, device=CPU)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_callers_model_and_rng_are_left_alone(built: BuiltClip, data: dict[str, Any], method: str) -> None:
    before = {k: v.clone() for k, v in built.model.state_dict().items()}
    modules = [type(m).__name__ for m in built.model.modules()]
    rng = torch.get_rng_state()
    r = _run(built, data, method=method)
    assert r.epoch_loss[0] != r.epoch_loss[-1]                    # the copy did train
    after = built.model.state_dict()
    assert after.keys() == before.keys()                          # no adapters injected into it
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{method} fine-tuning changed the caller's weights: {changed[:5]}"
    assert [type(m).__name__ for m in built.model.modules()] == modules
    assert all(p.requires_grad for p in built.model.parameters())  # nothing frozen in place
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_one_seed_one_result(built: BuiltClip, data: dict[str, Any], method: str) -> None:
    a = dataclasses.asdict(_run(built, data, seed=3, method=method))
    torch.rand(17)  # the caller's global RNG moved on: adapter init and dropout must not follow it
    assert a == dataclasses.asdict(_run(built, data, seed=3, method=method))
    assert a["epoch_loss"] != dataclasses.asdict(_run(built, data, seed=4, method=method))["epoch_loss"]


def _quadrant_world(n: int, seed: int, num_classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable images: class c lights up quadrant c over Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    for c in range(num_classes):
        row, col = divmod(c, 2)
        images[labels == c, :, 16 * row : 16 * row + 16, 16 * col : 16 * col + 16] += 1.5
    return images, labels


def test_full_finetune_learns_a_separable_world_from_random_weights(built: BuiltClip) -> None:
    # A randomly initialised tower and head: the start is at chance, so what it reaches it learned.
    # (The built-in world's shapes take a random tiny tower hundreds of steps; quadrants do not.)
    tests = {"id": _quadrant_world(64, 1), "ood": _quadrant_world(64, 2)}
    head = torch.nn.functional.normalize(torch.randn(4, 64, generator=torch.Generator().manual_seed(5)), dim=-1)
    r = finetune_image_tower(built, *_quadrant_world(256, 0), tests, head, 4, seed=0, device=CPU,
                             config=FinetuneConfig(epochs=6, batch_size=32, lr=1e-3))
    assert r.start_scores["id"]["acc1"] <= 0.25 + 0.1
    assert r.scores["id"]["acc1"] >= 0.5 and r.scores["ood"]["acc1"] >= 0.5, r.scores
    assert r.epoch_loss[-1] < r.epoch_loss[0] / 2
    assert set(r.spectrum) == {"id", "ood"} and 0 < r.spectrum["id"]["sv_entropy_norm"] <= 1
    assert set(r.scores["ood"]) == {"acc1", "mean_per_class_recall"}   # acc5 only with >= 5 classes


def test_lora_trains_only_the_adapters_and_the_head(built: BuiltClip, data: dict[str, Any]) -> None:
    cfg = FinetuneConfig(method="lora")
    net = adaptable_classifier(built, data["head"], cfg)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n or n.startswith("head.") for n in trainable), trainable
    # rank r on (in + out) features of each adapted weight: in_proj and out_proj of each attention,
    # the MLP's c_fc and c_proj; 2 blocks of width 64; plus the C × d head and its bias.
    r, w, C = cfg.lora_rank, 64, data["C"]
    per_block = r * (w + 3 * w) + r * (w + w) + r * (w + 4 * w) + r * (4 * w + w)
    expected = 2 * per_block + C * w + C
    result = _run(built, data, method="lora", lora_rank=cfg.lora_rank)
    assert result.trainable_params == expected == sum(p.numel() for n, p in net.named_parameters() if n in trainable)
    assert result.trainable_params < 0.1 * result.tower_params
    full = _run(built, data, method="full")
    assert full.trainable_params == full.tower_params + C * w + C


def test_the_head_starts_as_the_zero_shot_classifier(world: WorldInfo, built: BuiltClip) -> None:
    ctx = ClipEvalContext(built=built, world=world, seed=0, device=CPU, checkpoint_step=7, samples_seen=9,
                          probe_train_size=64)
    r = evaluate_finetune(ctx, FinetuneConfig(**{**QUICK, "train_size": 64}))
    zs = {(row["split"], row["metric"]): row["value"] for row in zeroshot(ctx)}
    for split in ("id", "ood"):
        assert r.start_scores[split]["acc1"] == pytest.approx(zs[(split, "acc1")], abs=1 / 64)
    # The train subset is the linear probe's (same pool, same seed path).
    assert r.train_samples == 64 and torch.equal(ctx.probe_train().labels,
                                                 seeded_subset(*load_split_images(built.transform,
                                                               world.splits["train"], limit=256), 64, 0)[1])
    assert ctx.read["finetune/train"].samples == 256 and ctx.read["finetune/id"].samples == 64
    rows = _adapted_rows(ctx, "finetune_full", r.scores, r.spectrum)
    assert {(row["split"], row["metric"]) for row in rows} >= {("id", "acc1"), ("ood", "mean_per_class_recall"),
                                                               ("id", "sv_entropy")}
    assert all(row["checkpoint_step"] == 7 and row["task"] == "finetune_full" for row in rows)


def test_bad_samples_are_skipped_and_counted(world: WorldInfo, built: BuiltClip, tmp_path: Any) -> None:
    samples = list(iter_samples(world.splits["test_id"], decode=False))
    samples[5] = {**samples[5], "image": b"\x89PNG not really"}
    shards = [str(p) for p in write_shards(samples, tmp_path / "bad", samples_per_shard=64)]
    stats = ReadStats()
    images, labels = load_split_images(built.transform, shards, bad_sample_ceiling=2, stats=stats)
    assert images.shape == (63, 3, 32, 32) and len(labels) == 63
    assert stats.skipped == {"undecodable_image": 1}
    with pytest.raises(Exception, match="not really|undecodable|bad shard"):
        load_split_images(built.transform, shards, bad_sample_ceiling=0)


@pytest.mark.parametrize("kw, field", [
    (dict(lora_rank=0), "lora_rank"),
    (dict(lr=0.0), "lr"),
    (dict(lr=-1e-4), "lr"),
    (dict(method="adapter"), "method"),
    (dict(epochs=0), "epochs"),
    (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(warmup=1.0), "warmup"),
    (dict(target_modules=("out_proj",)), "target_modules"),
])
def test_a_bad_config_names_its_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=rf"finetune\.{field}\b"):
        FinetuneConfig(**kw)


def test_bad_inputs_are_named(built: BuiltClip, data: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=r"finetune\.target_modules: 'q_proj' names no module.*c_fc"):
        _run(built, data, method="lora", target_modules=("q_proj",))
    images, labels = data["train"]
    unlabelled = labels.clone()
    unlabelled[0] = -1
    with pytest.raises(SpecError, match="split 'train' has labels from -1"):
        finetune_image_tower(built, images, unlabelled, data["tests"], data["head"], data["C"], seed=0,
                             config=FinetuneConfig(**QUICK))
    with pytest.raises(SpecError, match="class_head_init has shape"):
        finetune_image_tower(built, images, labels, data["tests"], data["head"][:2], data["C"], seed=0,
                             config=FinetuneConfig(**QUICK))
