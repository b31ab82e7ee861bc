"""Kill a study mid-training, launch it again: the cell resumes from its last committed checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import launch_cli  # tests/procs.py

SPEC = {
    "name": "chaos",
    "data": {"world": {"train_size": 512, "test_id_size": 64, "test_ood_size": 64, "samples_per_shard": 128}},
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.3], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        "data_scale": {"values": [3200]},
    },
    "train": {"batch_size": 32, "ckpt_every": 5},
    "eval": {"tasks": ["zeroshot"]},
}


def _latest_step(run_dir: Path) -> int:
    for p in run_dir.glob("cells/*/ckpt/latest.json"):
        try:
            return int(json.loads(p.read_text())["step"])
        except (ValueError, KeyError, OSError):
            return 0
    return 0


def _run(spec: Path, run_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return launch_cli(["run", str(spec), "--run-dir", str(run_dir)], log)


@pytest.mark.chaos
@pytest.mark.slow
def test_killed_study_resumes_from_checkpoint(tmp_path: Path) -> None:
    spec = tmp_path / "chaos.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run_dir = tmp_path / "run"

    log = tmp_path / "first-launch.log"
    proc = _run(spec, run_dir, log)
    deadline = time.monotonic() + 420
    try:
        while _latest_step(run_dir) < 10:
            assert proc.poll() is None, "the study ended before it could be killed:\n" + log.read_text()[-4000:]
            assert time.monotonic() < deadline, "no committed checkpoint appeared in time"
            time.sleep(0.5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: flow, Ray, trainer workers
        except ProcessLookupError:
            pass  # it ended on its own; the assertion above says how
        proc.wait()
    killed_at = _latest_step(run_dir)
    cells = list(run_dir.glob("cells/*"))
    assert len(cells) == 1 and not (cells[0] / "_COMPLETE.json").exists()

    again = subprocess.run(
        [sys.executable, "-m", "inheritlab.flows.cli", "run", str(spec), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    done = json.loads((cells[0] / "_COMPLETE.json").read_text())
    resumed = done["train"]["resumed_from"]
    assert resumed is not None and resumed >= killed_at >= 10
    assert done["train"]["steps"] == 100  # 3200 samples / batch 32: the schedule is unchanged
