"""The operator's interrupts, end to end through the command line, against Prefect's record:

1. a launch killed outright (SIGKILL of its whole session) leaves its flow runs open; the next
   launch marks them Crashed;
2. Ctrl-C (SIGINT to the process group, as a terminal sends it) mid-training: no new cell starts,
   the running cell commits a checkpoint where it is and stops, the study and the cell are
   Cancelled in the dashboard, the command says how to resume and exits 130;
3. a rerun says what it resumes from and finishes the study from the checkpoint the stop committed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import launch_cli  # tests/procs.py

NAME = "chaos-stop"
SPEC = {
    "name": NAME,
    "data": {"world": {"train_size": 512, "test_id_size": 64, "test_ood_size": 64, "samples_per_shard": 128}},
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.3], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        # Two cells, one at a time: when the first is stopped the second must not start.
        "data_scale": {"values": [9600]},
        "seeds": [0, 1],
    },
    "train": {"batch_size": 32, "ckpt_every": 50},
    "eval": {"tasks": ["zeroshot"]},
    "execution": {"max_concurrent_cells": 1},
}


def _progress(run_dir: Path) -> dict:
    for p in run_dir.glob("cells/*/progress.json"):
        try:
            return json.loads(p.read_text())
        except (ValueError, OSError):
            pass
    return {}


def _committed(run_dir: Path) -> dict[str, int]:
    out = {}
    for p in run_dir.glob("cells/*/ckpt/latest.json"):
        try:
            out[p.parts[-3]] = int(json.loads(p.read_text())["step"])
        except (ValueError, KeyError, OSError):
            pass
    return out


def _launch(spec: Path, run_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return launch_cli(["run", str(spec), "--run-dir", str(run_dir)], log,
                      env={**os.environ, "INHERITLAB_PROGRESS_EVERY_S": "2", "INHERITLAB_PROGRESS_FILE_EVERY_S": "0.3"})


def _wait_for(what: str, cond, proc: subprocess.Popen[bytes], log: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the launch ended before {what}:\n" + log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + log.read_text()[-4000:]
        time.sleep(0.3)


def _states(prefix: str) -> dict[str, list[str]]:
    """Flow run name → its state types, oldest first, from the Prefect database of this test session."""
    db = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT name, state_type FROM flow_run WHERE name LIKE ? ORDER BY created",
                           (f"{prefix}%",)).fetchall()
    out: dict[str, list[str]] = {}
    for name, state in rows:
        out.setdefault(name, []).append(state)
    return out


@pytest.mark.chaos
@pytest.mark.slow
def test_killed_launch_marked_crashed_ctrl_c_stops_gracefully_rerun_resumes(tmp_path: Path) -> None:
    spec = tmp_path / "stop.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run_dir = tmp_path / "run"

    # 1. Killed outright while the first cell trains.
    log_a = tmp_path / "a.log"
    a = _launch(spec, run_dir, log_a)
    try:
        _wait_for("training", lambda: _progress(run_dir).get("step", 0) >= 2, a, log_a)
        pid_a = _progress(run_dir)["pid"]
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()

    # 2. Relaunched, then Ctrl-C between two checkpoints.
    log_b = tmp_path / "b.log"
    b = _launch(spec, run_dir, log_b)
    t_int = None
    try:
        _wait_for("the relaunch to train past its first checkpoint",
                  lambda: _progress(run_dir).get("pid") != pid_a and _progress(run_dir).get("step", 0) >= 55, b, log_b)
        seen = _progress(run_dir)["step"]
        t_int = time.monotonic()
        os.killpg(b.pid, signal.SIGINT)
        code = b.wait(timeout=180)
    finally:
        if b.poll() is None:
            os.killpg(b.pid, signal.SIGKILL)
            b.wait()
    out_b = log_b.read_text()
    assert code == 130, out_b[-4000:]
    assert time.monotonic() - t_int < 120
    assert "marked Crashed" in out_b, out_b[-4000:]
    assert "stopping" in out_b and "Run the same command again to resume" in out_b, out_b[-4000:]
    assert "Traceback" not in out_b, out_b[-4000:]
    committed = _committed(run_dir)
    assert len(committed) == 1, f"the second cell started after the stop: {committed}"
    (cell_id, stopped_at), = committed.items()
    assert stopped_at >= seen, f"no checkpoint where training stopped ({stopped_at}, seen {seen})"
    assert f"checkpoint of step {stopped_at} committed" in out_b
    assert not list(run_dir.glob("cells/*/_COMPLETE.json"))

    states = _states(f"study {NAME}")[f"study {NAME}"]
    assert states[:2] == ["CRASHED", "CANCELLED"], states
    cells = {k: v for k, v in _states("cell ").items() if "/s0" in k or "/s1" in k}
    trained = [v for v in cells.values() if len(v) >= 2]
    assert trained and trained[0][:2] == ["CRASHED", "CANCELLED"], cells

    # 3. The rerun resumes from the stop's checkpoint and finishes.
    again = subprocess.run(
        [sys.executable, "-m", "inheritlab.flows.cli", "run", str(spec), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from the checkpoint of step {stopped_at}" in again.stdout + again.stderr
    done = json.loads((run_dir / "cells" / cell_id / "_COMPLETE.json").read_text())
    assert done["train"]["resumed_from"] == stopped_at and done["train"]["steps"] == 300
    assert len(list(run_dir.glob("cells/*/_COMPLETE.json"))) == 2
    assert _states(f"study {NAME}")[f"study {NAME}"][-1] == "COMPLETED"
