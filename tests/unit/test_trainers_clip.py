"""CLIP pre-training on CPU: the data stream, a DeepSpeed (gloo) run, resume, export, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from inheritlab.corruptors.world import ImageWorldConfig, WorldInfo, write_image_world
from inheritlab.infra.atomic import read_json
from inheritlab.infra.errors import CheckpointError, SpecError
from inheritlab.trainers.clip_data import ClipBatchStream, StreamSpec, rank_batches
from inheritlab.trainers.clip_models import build_clip
from inheritlab.trainers.checkpoint import TrainSummary
from inheritlab.trainers.clip_eval import SplitFeatures, retrieval_recall, spectrum_diagnostics
from inheritlab.trainers.clip_pretrain import ClipTrainConfig, export_weights, train_clip
from inheritlab.trainers.clip_tasks import evaluate_clip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldInfo:
    cfg = ImageWorldConfig(seed=1, num_classes=4, train_size=384, test_id_size=64, test_ood_size=64,
                           samples_per_shard=96)
    return write_image_world(cfg, tmp_path_factory.mktemp("world"))


def _spec(world: WorldInfo, **kw: Any) -> StreamSpec:
    # Batch 32 → 32 data slots of 1 sample each; this rank (of one) reads all of them.
    base = dict(shards=tuple(world.splits["train"]), corruptors=(), study_seed=0, seed=0, plan_dir=None,
                num_classes=world.num_classes, class_names=tuple(world.class_names), slots=tuple(range(32)),
                num_slots=32, chunk=1, shuffle_buffer=64, image_size=32)
    return StreamSpec(**{**base, **kw})


def _take(spec: StreamSpec, n: int, skip: int = 0, workers: int = 0) -> list[dict[str, Any]]:
    built = build_clip("clip-tiny", seed=0)
    stream = ClipBatchStream(spec, tokenizer=built.tokenizer, skip_batches=skip)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    it = rank_batches(iter(loader), max(1, workers))
    return [next(it) for _ in range(n)]


def test_stream_is_deterministic_repeats_and_skips(world: WorldInfo) -> None:
    # 384 samples / 32 = 12 batches per epoch: 14 batches cross into the second epoch.
    a = _take(_spec(world), 14)
    b = _take(_spec(world), 14)
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["texts"], y["texts"]) for x, y in zip(a, b))
    assert [x["epoch"] for x in a[11:14]] == [0, 1, 1]
    # Epochs are reshuffled: the first batch of epoch 1 is not that of epoch 0.
    assert not torch.equal(a[12]["images"], a[0]["images"])
    # Skipping k batches resumes at exactly batch k.
    c = _take(_spec(world), 3, skip=11)
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(c, a[11:14]))
    # Another seed, another order.
    assert not torch.equal(_take(_spec(world, seed=1), 1)[0]["images"], a[0]["images"])
    # Loader worker processes change who reads which slots, not the batches.
    d = _take(_spec(world), 13, workers=2)
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["texts"], y["texts"]) for x, y in zip(d, a))


def test_slots_see_disjoint_samples(world: WorldInfo) -> None:
    from inheritlab.trainers.clip_data import iter_epoch_samples

    # Fewer shards (4) than slots (32): every slot strides over all shards.
    keys = [[s["__key__"] for s in iter_epoch_samples(_spec(world), v, 0)] for v in range(32)]
    assert sum(len(k) for k in keys) == len({k for ks in keys for k in ks}) == 384
    # As many shards as slots or more: each slot reads shards of its own.
    keys = [[s["__key__"] for s in iter_epoch_samples(_spec(world, num_slots=4, slots=(0, 1, 2, 3)), v, 0)]
            for v in range(4)]
    assert [len(k) for k in keys] == [96] * 4 and len({k for ks in keys for k in ks}) == 384


def _cfg(world: WorldInfo, cell: Path, **kw: Any) -> ClipTrainConfig:
    base = dict(rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(cell), samples_seen=4 * 32,
                batch_size=32, ckpt_every=2, log_every=1, num_classes=world.num_classes, unique_samples=384,
                shuffle_buffer=64)
    return ClipTrainConfig(**{**base, **kw})


def _weights(summary: TrainSummary) -> dict[str, torch.Tensor]:
    return torch.load(export_weights(summary.final_export), map_location="cpu", weights_only=True)


def test_train_commit_resume_export_evaluate(world: WorldInfo, tmp_path: Path) -> None:
    import open_clip

    # Uninterrupted: 4 steps, checkpoints committed at 2 and 4.
    full = train_clip(_cfg(world, tmp_path / "full"))
    assert full.steps == 4 and full.samples_seen == 128 and full.resumed_from is None
    assert [s for s, _ in full.loss_curve] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in full.loss_curve)
    assert read_json(tmp_path / "full" / "ckpt" / "latest.json")["tag"] == "step_4"
    # The cell's fixed cost, split by phase (seconds since the process started).
    startup = read_json(tmp_path / "full" / "progress.json")["startup"]
    assert set(startup) == {"start", "engine", "first_batch", "first_step"}
    assert 0 < startup["start"] <= startup["engine"] <= startup["first_batch"] <= startup["first_step"]
    assert full.repeats == pytest.approx(128 / 384) and full.params > 0 and full.flops_per_sample > 0

    # Interrupted after the first commit, then resumed: same step, same data, same weights.
    part = train_clip(_cfg(world, tmp_path / "part", stop_after_steps=2))
    assert part.steps == 2
    assert not (tmp_path / "part" / "ckpt" / "train_summary.json").exists()
    resumed = train_clip(_cfg(world, tmp_path / "part"))
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert [s for s, _ in resumed.loss_curve] == [1, 2, 3, 4]
    assert [v for _, v in resumed.loss_curve] == pytest.approx([v for _, v in full.loss_curve], rel=1e-4)
    w_full, w_res = _weights(full), _weights(resumed)
    assert all(torch.allclose(w_full[k], w_res[k], atol=1e-5) for k in w_full)

    # A finished cell trains nothing the second time.
    again = train_clip(_cfg(world, tmp_path / "full"))
    assert again == full == TrainSummary.from_dict(read_json(tmp_path / "full" / "ckpt" / "train_summary.json"))

    # The export loads through open_clip by rung name and by directory.
    path = export_weights(full.final_export)
    m = open_clip.create_model("clip-tiny", pretrained=path)
    assert torch.equal(m.state_dict()["logit_scale"], w_full["logit_scale"])
    open_clip.create_model(f"local-dir:{Path(path).parent}")

    rows = evaluate_clip(path, "clip-tiny", world, tasks=("zeroshot", "linear_probe", "retrieval", "diagnostics"),
                         seed=0, checkpoint_step=4, samples_seen=128, probe_train_size=128)
    got = {(r["task"], r["split"], r["metric"]) for r in rows}
    for split in ("id", "ood"):
        assert ("zeroshot", split, "acc1") in got and ("linear_probe", split, "acc1") in got
        assert ("diagnostics", split, "sv_entropy") in got and ("diagnostics", split, "sv_top_ratio") in got
    for task in ("retrieval_i2t", "retrieval_t2i"):
        assert (task, "id", "recall@1") in got and (task, "id", "recall@5") in got
    assert all(r["checkpoint_step"] == 4 and r["samples_seen"] == 128 for r in rows)
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if r["metric"] != "sv_entropy")


def test_every_adaptation_yields_rows_per_split_with_draw_seeds(world: WorldInfo, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(build_clip("clip-tiny").model.state_dict(), path)
    rows = evaluate_clip(str(path), "clip-tiny", world, tasks=("few_shot", "nmtune", "finetune", "lora"), seed=3,
                         probe_train_size=128, few_shot_k=(1, 2), few_shot_draws=2)
    got = {(r["task"], r["split"], r["metric"]) for r in rows}
    for split in ("id", "ood"):
        for task in ("few_shot_k1", "few_shot_k2", "nmtune", "mlp_tune", "finetune", "lora"):
            assert (task, split, "acc1") in got, (task, split)
        for task in ("nmtune", "mlp_tune", "finetune", "lora"):  # the adapted features' spectrum
            assert (task, split, "sv_entropy") in got and (task, split, "sv_top_ratio") in got
    shots = [r for r in rows if r["task"] == "few_shot_k2" and r["split"] == "id" and r["metric"] == "acc1"]
    assert len(shots) == 2 and len({r["draw_seed"] for r in shots}) == 2   # one row per draw, each seeded
    assert all("draw_seed" not in r for r in rows if not r["task"].startswith("few_shot"))


def test_a_dangling_pointer_is_a_checkpoint_error(world: WorldInfo, tmp_path: Path) -> None:
    from inheritlab.infra.atomic import atomic_write_json

    atomic_write_json(tmp_path / "cell" / "ckpt" / "latest.json", {"tag": "step_2", "step": 2})
    with pytest.raises(CheckpointError, match="step_2"):
        train_clip(_cfg(world, tmp_path / "cell"))
    # A checkpoint of another global batch cannot continue the same data stream: refused. (Another
    # number of ranks can: see test_resume_on_another_number_of_workers.)
    (tmp_path / "cell" / "ckpt" / "step_2").mkdir()
    atomic_write_json(tmp_path / "cell" / "ckpt" / "latest.json",
                      {"tag": "step_2", "step": 2, "world_size": 4, "global_batch": 64})
    with pytest.raises(CheckpointError, match="global_batch=64"):
        train_clip(_cfg(world, tmp_path / "cell"))
    # One written before parameter layouts were recorded: its flat optimizer state would land on
    # the wrong parameters, so it is refused rather than loaded.
    atomic_write_json(tmp_path / "cell" / "ckpt" / "latest.json", {"tag": "step_2", "step": 2, "world_size": 1})
    with pytest.raises(CheckpointError, match="parameter layout 1"):
        train_clip(_cfg(world, tmp_path / "cell"))


def test_config_errors_name_the_field(world: WorldInfo, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown key"):
        ClipTrainConfig.from_dict({"rung": "clip-tiny", "train_shards": ["x"], "cell_dir": "c", "samples_seen": 1,
                                   "batchsize": 3})
    with pytest.raises(SpecError, match="samples_seen"):
        _cfg(world, tmp_path, samples_seen=0)
    with pytest.raises(SpecError, match="clip-huge"):
        train_clip(_cfg(world, tmp_path / "bad", rung="clip-huge"))


def test_retrieval_and_spectrum_on_known_features() -> None:
    eye = torch.eye(6)
    perfect = SplitFeatures(image=eye, text=eye, labels=torch.arange(6), captions=[f"c{i}" for i in range(6)])
    rec = retrieval_recall(perfect)
    assert rec["i2t"][1] == 1.0 and rec["t2i"][1] == 1.0
    # Captions 0 and 1 are the same string: retrieving either counts as a hit.
    shuffled = SplitFeatures(image=eye, text=eye[[1, 0, 2, 3, 4, 5]], labels=torch.arange(6),
                             captions=["same", "same", "c2", "c3", "c4", "c5"])
    assert retrieval_recall(shuffled)["i2t"][1] == 1.0
    flat = spectrum_diagnostics(torch.eye(8))
    collapsed = spectrum_diagnostics(torch.ones(8, 8) + 1e-3 * torch.eye(8))
    assert flat["sv_entropy_norm"] == pytest.approx(1.0) and flat["sv_top_ratio"] == pytest.approx(1 / 8)
    assert collapsed["sv_top_ratio"] > 0.9 and collapsed["sv_entropy"] < flat["sv_entropy"]


def test_the_stream_is_checked_against_the_condition_stage(world: WorldInfo, tmp_path: Path) -> None:
    """The trainer's chain counters over one pass must equal what the data-condition stage recorded."""
    import json

    from inheritlab.corruptors.chain import condition_data
    from inheritlab.infra.errors import DataAccountingError

    specs = ({"type": "label_noise", "level": 0.3, "mode": "symmetric"},)
    data = tmp_path / "data"
    counters = condition_data(world.splits["train"], list(specs), study_seed=0, out_dir=data,
                              num_classes=world.num_classes, class_names=list(world.class_names))
    # 13 steps of 32 from a 384-sample pool: one whole pass and then some.
    kw = dict(corruptors=specs, plan_dir=str(data), class_names=tuple(world.class_names), samples_seen=13 * 32,
              ckpt_every=100)
    ok = train_clip(_cfg(world, tmp_path / "ok", **kw))
    assert ok.data_check["status"] == "matched" and ok.data_check["first_pass_read"]["samples"] == 384
    # The condition stage recorded another outcome than the stream produces: the run fails, naming it.
    counters["corruptors"]["label_noise"]["touched"] += 1
    (data / "counters.json").write_text(json.dumps(counters))
    with pytest.raises(DataAccountingError, match=r"label_noise\.touched: expected \d+, got \d+"):
        train_clip(_cfg(world, tmp_path / "bad", **kw))
    # Shorter than one pass: not checked, and the summary says so.
    short = train_clip(_cfg(world, tmp_path / "short", **{**kw, "samples_seen": 4 * 32}))
    assert short.data_check["status"].startswith("not checked: 0 of 32 data slots")


def test_images_are_decoded_after_selection_and_bad_ones_counted(tmp_path: Path) -> None:
    """The chain decides on keys and metadata; an image that does not decode is skipped and counted."""
    from inheritlab.corruptors.shards import write_shards
    from inheritlab.trainers.clip_data import iter_epoch_samples

    good = write_image_world(ImageWorldConfig(seed=3, num_classes=2, train_size=64, test_id_size=16,
                                              test_ood_size=16, samples_per_shard=64), tmp_path / "w")
    from inheritlab.corruptors.shards import iter_samples

    samples = list(iter_samples(good.splits["train"], decode=False))
    samples[5] = {**samples[5], "image": b"\x89PNG not really"}
    shard = write_shards(samples, tmp_path / "bad", samples_per_shard=64)
    spec = _spec(good, shards=tuple(str(p) for p in shard), bad_sample_ceiling=2, shuffle_buffer=8, slots=(0,),
                 num_slots=1)
    reports = []
    out = list(iter_epoch_samples(spec, 0, 0, on_pass_end=lambda c, r: reports.append(r)))
    assert len(out) == 63 and all(hasattr(s["image"], "size") for s in out)
    assert reports[0]["skipped"] == {"undecodable_image": 1} and reports[0]["samples"] == 63
