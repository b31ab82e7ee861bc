"""Ray Train launch with two CPU workers (gloo, DeepSpeed ZeRO-2), and a trained model beats chance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
from inheritlab.trainers.clip_pretrain import ClipTrainConfig, export_weights

pytestmark = pytest.mark.slow


def test_two_cpu_workers_in_a_placement_group(tmp_path: Path) -> None:
    import ray

    from inheritlab.infra.raycluster import release, wait_for_resources
    from inheritlab.trainers.ray_launch import Placement, launch_training

    world = write_image_world(ImageWorldConfig(seed=0, num_classes=4, train_size=256, test_id_size=32,
                                               test_ood_size=32, samples_per_shard=64), tmp_path / "world")
    cfg = ClipTrainConfig(rung="clip-tiny", train_shards=tuple(world.splits["train"]),
                          cell_dir=str(tmp_path / "run" / "cells" / "c"), samples_seen=4 * 64, batch_size=64,
                          ckpt_every=2, export_every_ckpt=True)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    bundles = ({"CPU": 1.0}, {"CPU": 1.0})
    group = wait_for_resources(list(bundles), timeout_s=120, what="test")
    try:
        summary = launch_training("clip", cfg, Placement(group=group, bundles=bundles, wait_s=120), max_failures=0,
                                  log=tmp_path / "launches.jsonl")
    finally:
        release(group)
        if started_here:
            ray.shutdown()
    assert summary.world_size == 2 and summary.steps == 4 and summary.samples_seen == 256
    assert [e.step for e in summary.exports] == [2, 4]
    assert all(Path(export_weights(e)).is_file() for e in summary.exports)
    assert '"event": "finished"' in (tmp_path / "launches.jsonl").read_text()


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


def test_resume_on_another_number_of_workers(tmp_path: Path) -> None:
    """1 worker → 2 → 1 on one cell: the same samples at every step, the same loss curve."""
    import json

    import ray

    from inheritlab.infra.raycluster import release, wait_for_resources
    from inheritlab.trainers.ray_launch import Placement, launch_training

    world = write_image_world(ImageWorldConfig(seed=0, num_classes=4, train_size=256, test_id_size=32,
                                               test_ood_size=32, samples_per_shard=64), tmp_path / "world")
    base = dict(rung="clip-tiny", train_shards=tuple(world.splits["train"]), samples_seen=12 * 32, batch_size=32,
                ckpt_every=4, log_every=1, trace_data=True, num_classes=4, class_names=tuple(world.class_names))

    def run(cell: str, workers: int, stop: int | None = None):  # type: ignore[no-untyped-def]
        bundles = tuple({"CPU": 1.0} for _ in range(workers))
        group = wait_for_resources(list(bundles), timeout_s=120, what=cell)
        try:
            cfg = ClipTrainConfig(**base, cell_dir=str(tmp_path / "run" / "cells" / cell), stop_after_steps=stop)
            return launch_training("clip", cfg, Placement(group=group, bundles=bundles, wait_s=120), max_failures=0)
        finally:
            release(group)

    def keys_by_step(cell: str) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for trace in (tmp_path / "run" / "cells" / cell / "data").glob("trace-rank*.jsonl"):
            for line in trace.read_text().splitlines():
                rec = json.loads(line)
                out.setdefault(rec["step"], set()).update(rec["keys"])
        return out

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        full = run("full", 1)
        assert run("hop", 1, stop=4).steps == 4
        mid = run("hop", 2, stop=4)
        assert (mid.world_size, mid.resumed_from, mid.steps) == (2, 4, 8)
        hop = run("hop", 1)
    finally:
        if started_here:
            ray.shutdown()
    assert (hop.world_size, hop.resumed_from, hop.steps) == (1, 8, 12)
    # Every step trained on the same 32 samples, whoever read them; 256 samples, each once per epoch.
    want, got = keys_by_step("full"), keys_by_step("hop")
    assert sorted(got) == list(range(1, 13)) and got == want
    epoch = [k for s in range(1, 9) for k in want[s]]
    assert len(epoch) == len(set(epoch)) == 256
    # The loss curve follows the uninterrupted run (fp32 on CPU: only the reduction order differs).
    assert [s for s, _ in hop.loss_curve] == list(range(1, 13))
    assert [v for _, v in hop.loss_curve] == pytest.approx([v for _, v in full.loss_curve], rel=1e-4)
