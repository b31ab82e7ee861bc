"""The shapes every trainer shares: one summary type, one export layout, the task registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inheritlab.infra.errors import CheckpointError
from inheritlab.trainers.checkpoint import CheckpointManager, Export, TrainSummary
from inheritlab.trainers.eval_tasks import eval_task, registered_tasks

SUMMARY = dict(rung="clip-tiny", steps=4, total_steps=4, samples_seen=128, global_batch=32, world_size=1,
               precision="fp32", zero_stage=2, params=1000, flops_per_sample=1e6, train_seconds=1.0,
               samples_per_s=128.0, final_loss=2.0, loss_curve=[[2, 3.0], [4, 2.0]])


def test_summary_refuses_missing_params_and_flops() -> None:
    # A results row without parameters or FLOPs would plot at x = 0: refused where it is made.
    for bad in ({"params": 0}, {"flops_per_sample": 0.0}):
        with pytest.raises(CheckpointError, match="must be positive"):
            TrainSummary(**{**SUMMARY, **bad})
    with pytest.raises(CheckpointError, match="params"):
        TrainSummary.from_dict({k: v for k, v in SUMMARY.items() if k != "params"})
    s = TrainSummary(**SUMMARY)
    assert s.flops == 1e6 * 128 and s.finished
    assert TrainSummary.from_dict(s.to_dict()) == s  # one form, whatever built it


def test_exports_live_in_one_layout(tmp_path: Path) -> None:
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=1, shape={"world_size": 1})
    for step in (4, 2):
        ckpt.export(step=step, samples_seen=32 * step, write=lambda d: (d / "w.bin").write_bytes(b"x"),
                    meta={"rung": "clip-tiny"})
    found = ckpt.exports()
    assert [e.step for e in found] == [2, 4]
    assert all(Path(e.path) == tmp_path / "ckpt" / "export" / f"step_{e.step}" for e in found)
    assert found[0] == Export(step=2, samples_seen=64, path=str(tmp_path / "ckpt" / "export" / "step_2"),
                              meta={"rung": "clip-tiny"})
    # The finished-run shortcut needs the summary and its final export.
    assert ckpt.finished(4) is None
    ckpt.finish(TrainSummary(**{**SUMMARY, "exports": tuple(found)}))
    assert ckpt.finished(4).final_export == found[-1] and ckpt.finished(8) is None


def test_adding_a_task_is_one_function(tmp_path: Path) -> None:
    """A new CLIP task registered by name: the spec accepts it and the evaluation runs it."""
    import copy

    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.flows.spec import parse_spec
    from inheritlab.trainers.clip_models import build_clip
    from inheritlab.trainers.clip_tasks import ClipEvalContext, evaluate_clip

    @eval_task("clip")
    def mean_feature_norm(ctx: ClipEvalContext) -> list[dict]:
        """The mean norm of the (normalised) image features, per split."""
        return [ctx.row("mean_feature_norm", split, "norm", float(f.image.norm(dim=1).mean()))
                for split, f in ctx.features().items()]

    assert "mean_feature_norm" in registered_tasks("clip")
    spec = {"name": "t", "grid": {"bias": [{"type": "label_noise", "levels": [0.0]}], "model": ["clip-tiny"],
                                  "data_scale": {"values": [64]}}, "eval": {"tasks": ["mean_feature_norm"]}}
    assert parse_spec(copy.deepcopy(spec)).eval_tasks == ("mean_feature_norm",)
    world = write_image_world(ImageWorldConfig(seed=0, num_classes=2, train_size=64, test_id_size=16,
                                               test_ood_size=16), tmp_path / "world")
    weights = tmp_path / "w.pt"
    torch.save(build_clip("clip-tiny", seed=0).model.state_dict(), weights)
    rows = evaluate_clip(str(weights), "clip-tiny", world, tasks=["mean_feature_norm"])
    assert {(r["task"], r["split"]) for r in rows} == {("mean_feature_norm", "id"), ("mean_feature_norm", "ood")}
    assert all(r["value"] == pytest.approx(1.0, abs=1e-4) for r in rows)
