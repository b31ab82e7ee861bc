"""Ray Train launch with two CPU workers (gloo, DeepSpeed ZeRO-2), and a trained model beats chance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
from inheritlab.trainers.clip_pretrain import ClipTrainConfig, export_weights

pytestmark = pytest.mark.slow


def test_ray_train_two_cpu_workers(tmp_path: Path) -> None:
    import ray

    from inheritlab.trainers.ray_launch import launch_training

    world = write_image_world(ImageWorldConfig(seed=0, num_classes=4, train_size=256, test_id_size=32,
                                               test_ood_size=32, samples_per_shard=64), tmp_path / "world")
    cfg = ClipTrainConfig(rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(tmp_path / "cell"),
                          samples_seen=4 * 64, batch_size=64, ckpt_every=2, export_every_ckpt=True)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = launch_training("clip", cfg, num_workers=2, use_gpu=False, cpus_per_worker=1,
                                       storage_path=str(tmp_path / "ray"), max_failures=0)
    finally:
        if started_here:
            ray.shutdown()
    assert summary.world_size == 2 and summary.steps == 4 and summary.samples_seen == 256
    assert [e.step for e in summary.exports] == [2, 4]
    assert all(Path(export_weights(e)).is_file() for e in summary.exports)


def test_trained_tiny_model_beats_chance(tmp_path: Path) -> None:
    from inheritlab.trainers.clip_pretrain import train_clip
    from inheritlab.trainers.clip_tasks import evaluate_clip

    world = write_image_world(ImageWorldConfig(seed=0, num_classes=4, train_size=512, test_id_size=128,
                                               test_ood_size=128, samples_per_shard=128), tmp_path / "world")
    cfg = ClipTrainConfig(rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(tmp_path / "cell"),
                          samples_seen=80 * 64, batch_size=64, lr=3e-3, warmup_steps=5, ckpt_every=1000)
    summary = train_clip(cfg)
    rows = evaluate_clip(export_weights(summary.final_export), "clip-tiny", world,
                         tasks=("zeroshot", "linear_probe", "retrieval"), seed=0, probe_train_size=512)
    value = {(r["task"], r["split"], r["metric"]): r["value"] for r in rows}
    assert value[("linear_probe", "id", "acc1")] > 1 / world.num_classes + 0.05
    # Recall@5 of a random ranking, given how often each caption string repeats in the split.
    from inheritlab.corruptors.shards import iter_samples

    captions = [s["caption"] for s in iter_samples(world.splits["test_id"], decode=False)]
    n = len(captions)
    chance = sum(1 - math.comb(n - captions.count(c), 5) / math.comb(n, 5) for c in captions) / n
    assert value[("retrieval_i2t", "id", "recall@5")] > 2 * chance
    assert value[("retrieval_t2i", "id", "recall@5")] > 2 * chance
