"""CLIP pre-training on two GPUs of one node through torchrun (no Ray): NCCL, bf16 ZeRO-2, and stage 0
compiled and replayed as CUDA graphs beside DeepSpeed's gradient all-reduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multigpu


@pytest.mark.parametrize("stage,compile_", [(2, "auto"), (0, "yes")])
def test_torchrun_two_gpus(tmp_path: Path, stage: int, compile_: str) -> None:
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

    world = write_image_world(ImageWorldConfig(seed=0, train_size=1024, test_id_size=64, test_ood_size=64,
                                               samples_per_shard=128), tmp_path / "world")
    cfg = {"rung": "clip-tiny", "train_shards": world.splits["train"], "cell_dir": str(tmp_path / "cell"),
           "samples_seen": 8 * 256, "batch_size": 256, "ckpt_every": 4, "zero_stage": stage, "loss_impl": "triton",
           "log_every": 1, "compile": compile_}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "inheritlab.trainers.clip_pretrain", "--config", str(tmp_path / "cfg.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "cell" / "ckpt" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8 and summary["precision"] == "bf16"
    assert (Path(summary["exports"][-1]["path"]) / "open_clip_model.pt").is_file()
    how = summary["extra"]["step"]
    assert how["cuda_graphs"] == (stage == 0) and how["graph_skips"] == 0
    losses = [v for _, v in summary["loss_curve"]]
    assert all(v == v and abs(v) < 1e3 for v in losses) and losses[-1] < losses[0]  # finite, and it learns
