"""LM and CLIP pre-training on two ranks of one node through torchrun (no Ray), against one rank.

The data slots make a global batch the same rows whatever the number of ranks, so one and two
ranks at the same global batch must train the same curve, and a run stopped on two ranks
resumes on one at the same sample of every slot. On two GPUs (NCCL, bf16) the curves agree to
bf16 noise; the CPU cases (gloo, fp32) run everywhere and agree to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# trainer, device, relative tolerance between the curves
KINDS = ("lm", "clip")
CASES = [pytest.param(kind, "cpu", 1e-4, id=f"{kind}-cpu-gloo-fp32") for kind in KINDS] + [
    pytest.param(kind, "cuda", 0.05, id=f"{kind}-cuda-nccl-bf16", marks=pytest.mark.multigpu) for kind in KINDS]
MODULES = {"lm": "inheritlab.trainers.lm_pretrain", "clip": "inheritlab.trainers.clip_pretrain"}


def _torchrun(tmp_path: Path, kind: str, name: str, cfg: dict[str, Any], ranks: int) -> dict[str, Any] | None:
    """The run's summary; ``None`` for a run stopped before its end (it writes none)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", MODULES[kind], "--config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = Path(cfg["cell_dir"]) / "ckpt" / "train_summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def _base(kind: str, device: str, root: Path) -> dict[str, Any]:
    """24 steps, a commit every 8, at a global batch both rank counts divide."""
    if kind == "lm":
        from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world

        text = write_text_world(TextWorldConfig(seed=0, num_individuals=100, num_heldout_individuals=20,
                                                train_docs=600, test_docs=40, vocab_size=512), root)
        return {"rung": "lm-mini", "train_shards": [str(s) for s in text.splits["train"]],
                "tokenizer": str(text.tokenizer), "steps": 24, "batch_size": 16, "seq_len": 128, "log_every": 1,
                "ckpt_every": 8, "device": device, "loader_workers": 1}
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

    images = write_image_world(ImageWorldConfig(seed=0, train_size=512, test_id_size=64, test_ood_size=64,
                                                samples_per_shard=128), root)
    return {"rung": "clip-tiny", "train_shards": [str(s) for s in images.splits["train"]], "samples_seen": 24 * 64,
            "batch_size": 64, "log_every": 1, "ckpt_every": 8, "device": device, "loader_workers": 1,
            "num_classes": images.num_classes, "unique_samples": 512}


@pytest.mark.parametrize(("kind", "device", "tol"), CASES)
def test_two_ranks_train_the_one_rank_curve_and_resume_on_one(tmp_path: Path, kind: str, device: str,
                                                              tol: float) -> None:
    base = _base(kind, device, tmp_path / "world")
    one = _torchrun(tmp_path, kind, "one", {**base, "cell_dir": str(tmp_path / "one")}, ranks=1)
    two = _torchrun(tmp_path, kind, "two", {**base, "cell_dir": str(tmp_path / "two")}, ranks=2)
    assert one is not None and two is not None
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["precision"] == ("bf16" if device == "cuda" else "fp32")
    assert [s for s, _ in one["loss_curve"]] == [s for s, _ in two["loss_curve"]] == list(range(1, 25))
    for (s, a), (_, b) in zip(one["loss_curve"], two["loss_curve"]):
        assert abs(a - b) <= tol * abs(a), (s, a, b)
    # Stopped on two ranks after step 12 (last commit at 8), resumed on one: the same curve again.
    cut = {**base, "cell_dir": str(tmp_path / "cut"), "stop_after_steps": 12}
    assert _torchrun(tmp_path, kind, "cut", cut, ranks=2) is None
    resumed = _torchrun(tmp_path, kind, "resume", {**base, "cell_dir": str(tmp_path / "cut")}, ranks=1)
    assert resumed is not None and resumed["resumed_from"] == 8 and resumed["steps"] == 24
    for (s, a), (_, b) in zip(one["loss_curve"], resumed["loss_curve"]):
        assert abs(a - b) <= tol * abs(a), (s, a, b)
