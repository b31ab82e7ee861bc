"""Kill a CLIP training process after its first committed checkpoint; the relaunch resumes there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos


def _launch(cfg_path: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.Popen([sys.executable, "-m", "inheritlab.trainers.clip_pretrain", "--config", str(cfg_path)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_killed_run_resumes_from_last_commit(tmp_path: Path) -> None:
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

    world = write_image_world(ImageWorldConfig(seed=2, num_classes=4, train_size=256, test_id_size=32,
                                               test_ood_size=32, samples_per_shard=64), tmp_path / "world")
    cell = tmp_path / "cell"
    cfg = {"rung": "clip-tiny", "train_shards": world.splits["train"], "cell_dir": str(cell),
           "samples_seen": 12 * 32, "batch_size": 32, "ckpt_every": 3, "log_every": 1, "keep_checkpoints": 1}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    pointer = cell / "ckpt" / "latest.json"

    proc = _launch(cfg_path, tmp_path / "first.log")
    deadline = time.monotonic() + 600
    while not pointer.exists():
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint was committed in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the loader workers die with it
    proc.wait()
    committed = json.loads(pointer.read_text())["step"]
    assert 3 <= committed < 12
    assert not (cell / "ckpt" / "train_summary.json").exists()

    proc = _launch(cfg_path, tmp_path / "second.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    summary = json.loads((cell / "ckpt" / "train_summary.json").read_text())
    assert summary["resumed_from"] == committed and summary["steps"] == 12
    assert summary["samples_seen"] == 12 * 32
    assert [s for s, _ in summary["loss_curve"]] == list(range(1, 13))
    assert json.loads(pointer.read_text())["step"] == 12
    assert sorted(p.name for p in (cell / "ckpt").glob("step_*")) == ["step_12"]  # keep_checkpoints=1
