"""Deleting the Prefect database between launches changes nothing about which cells train.

A cell is done when its ``_COMPLETE.json`` exists; Prefect only records and shows runs. So a
study killed after its first cell, relaunched on a fresh Prefect home (the old database
deleted), must train only the other cell; a third launch on yet another fresh database trains
nothing. Each cell finishes exactly once over the three launches (its ``launches.jsonl``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SPEC = {
    "name": "nodb",
    "data": {"world": {"num_classes": 4, "train_size": 128, "test_id_size": 32, "test_ood_size": 32,
                       "samples_per_shard": 64}},
    "grid": {"bias": [{"type": "label_noise", "levels": [0.0, 0.3], "params": {"mode": "symmetric"}}],
             "model": ["clip-tiny"], "data_scale": {"values": [640]}, "seeds": [0]},
    "train": {"batch_size": 32, "ckpt_every": 5},
    "eval": {"tasks": ["retrieval"]},
    "execution": {"max_concurrent_cells": 1},
}


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()] if path.is_file() else []


def _launch(spec: Path, run_dir: Path, home: Path, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "inheritlab.flows.cli", "run", str(spec), "--run-dir", str(run_dir),
                             "--json"], stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    try:
        stdout, _ = proc.communicate(timeout=800)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    return json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])[0]


def test_relaunches_on_a_deleted_prefect_database_train_each_cell_once(tmp_path: Path) -> None:
    spec = tmp_path / "nodb.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run_dir, home = tmp_path / "run", tmp_path / "prefect-home"

    # 1. Killed outright once the first cell is complete (the second is then training or queued).
    first = _launch(spec, run_dir, home, tmp_path / "1.log")
    deadline = time.monotonic() + 600
    try:
        while not list(run_dir.glob("cells/*/_COMPLETE.json")):
            assert first.poll() is None, (tmp_path / "1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no cell completed in time"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done_first = [p.parent for p in run_dir.glob("cells/*/_COMPLETE.json")]
    assert (home / "prefect.db").is_file()  # the database the launch recorded its runs in

    # 2. The database deleted: the relaunch trains what is not complete, and only that.
    shutil.rmtree(home)
    second = _finish(_launch(spec, run_dir, home, tmp_path / "2.log"), tmp_path / "2.log")
    assert second["cells"] == 2 and second["ran"] == 2 - len(done_first)

    # 3. Deleted again: nothing left to train.
    shutil.rmtree(home)
    third = _finish(_launch(spec, run_dir, home, tmp_path / "3.log"), tmp_path / "3.log")
    assert third["ran"] == 0

    cells = sorted(run_dir.glob("cells/*/launches.jsonl"))
    assert len(cells) == 2 and len(list(run_dir.glob("cells/*/_COMPLETE.json"))) == 2
    for log in cells:
        events = _events(log)
        assert events.count("finished") == 1, (log.parent.name, events)
    for cdir in done_first:  # the cell complete before the kill was never started again
        assert _events(cdir / "launches.jsonl") == ["started", "finished"]
