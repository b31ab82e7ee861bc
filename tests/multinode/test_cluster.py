"""The grid on a cluster of several Ray nodes (``ray.cluster_utils.Cluster`` on one machine).

A head with no resources and worker nodes, as on a real cluster. GPUs are logical (declared,
not real): the nodes say so with ``INHERITLAB_LOGICAL_GPUS=1``, and their workers train on the
CPU while the GPUs exercise placement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from inheritlab.flows.grid import expand_grid
from inheritlab.flows.scheduler import busy_profile
from inheritlab.flows.spec import parse_spec
from inheritlab.infra.atomic import read_json
from inheritlab.infra.errors import InheritlabError, SpecError
from inheritlab.infra.rundir import RunDir

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

LOGICAL = {"INHERITLAB_LOGICAL_GPUS": "1"}


def _spec(name: str, *, levels: list[float], scales: list[int], seeds: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"world": {"num_classes": 4, "train_size": 128, "test_id_size": 32, "test_ood_size": 32,
                           "samples_per_shard": 64}},
        "grid": {"bias": [{"type": "label_noise", "levels": levels, "params": {"mode": "symmetric"}}],
                 "model": ["clip-tiny"], "data_scale": {"values": scales}, "seeds": seeds},
        "train": {"batch_size": 32, "ckpt_every": 2},
        "eval": {"tasks": ["retrieval"]},
        **extra,
    }


@pytest.fixture()
def cluster():  # type: ignore[no-untyped-def]
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_grid_fills_the_gpus_of_three_nodes(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from inheritlab.flows.study_flow import run_study

    for gpus in (3, 3, 2):  # 8 logical GPUs over three nodes
        cluster.add_node(num_cpus=gpus, num_gpus=gpus, env_vars=LOGICAL)
    cluster.wait_for_nodes()
    spec = parse_spec(_spec("packed", levels=[0.0, 0.2, 0.4], scales=[32, 64], seeds=[0, 1]))
    cells = expand_grid(spec)
    assert len(cells) == 12
    out = run_study(spec, tmp_path / "run", ray_address=cluster.address)
    run = RunDir.at(tmp_path / "run")
    assert out["ran"] == 12 and all(run.cell(c.cell_id).is_complete() for c in cells)
    # While cells were waiting, at least 7 of the 8 GPUs were held (from the first full load to
    # the last admission); every cell had one GPU.
    events = _events(run.root / "placement.jsonl")
    assert all(e["gpus"] == 1 for e in events)
    profile = busy_profile(run.root / "placement.jsonl")
    last_admit = max(e["time"] for e in events if e["event"] == "admitted")
    full_at = next(t for t, held in profile if held == 8)
    window = [held for t, held in profile if full_at <= t < last_admit]
    assert window and min(window) >= 7, profile
    # The cells ran on every node.
    nodes = {n for c in cells for e in _events(run.cell(c.cell_id).root / "launches.jsonl") if e["event"] == "finished"
             for n in e["nodes"]}
    assert len(nodes) == 3
    assert pl.read_parquet(run.results / "results.parquet")["cell_id"].n_unique() == 12


def test_a_lost_node_is_survived(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from inheritlab.flows.study_flow import run_study

    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    spec = parse_spec(_spec("lost", levels=[0.0], scales=[30 * 32], seeds=[0],
                            train={"batch_size": 32, "ckpt_every": 3, "use_gpu": "no"}))
    (cell,) = expand_grid(spec)
    cdir = RunDir.at(tmp_path / "run").cell(cell.cell_id)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(out=run_study(spec, tmp_path / "run", cluster.address)))
    runner.start()
    deadline = time.monotonic() + 300
    while not (cdir.ckpt / "latest.json").is_file():
        assert runner.is_alive() and time.monotonic() < deadline, "no checkpoint was committed in time"
        time.sleep(0.2)
    started = next(e for e in _events(cdir.root / "launches.jsonl") if e["event"] == "started")
    lost = started["workers"][0]["node"]
    cluster.remove_node(next(n for n in nodes if n.node_id == lost), allow_graceful=False)
    runner.join(timeout=600)
    assert not runner.is_alive() and result["out"]["ran"] == 1
    events = _events(cdir.root / "launches.jsonl")
    assert [e["event"] for e in events] == ["started", "crashed", "started", "finished"]
    assert lost not in events[-1]["nodes"]
    done = json.loads(cdir.complete.read_text())["train"]
    assert done["steps"] == 30 and done["resumed_from"] >= 3


def test_an_application_error_fails_once_a_crash_retries(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A bad sample the trainer meets fails the cell at once; a killed worker is restarted."""
    from inheritlab.corruptors.shards import iter_samples, write_shards
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.flows.study_flow import run_study

    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    world = write_image_world(ImageWorldConfig(seed=0, num_classes=4, train_size=128, test_id_size=32,
                                               test_ood_size=32, samples_per_shard=64), tmp_path / "world")
    samples = list(iter_samples(world.splits["train"], decode=False))
    samples[3] = {**samples[3], "image": b"\x89PNG not an image"}  # read fine, fails only when decoded
    write_shards(samples, tmp_path / "bad" / "train", samples_per_shard=64)
    bad = _spec("bad", levels=[0.0], scales=[64], seeds=[0], train={"batch_size": 32, "use_gpu": "no"})
    bad["data"] = {"source": "shards", "bad_sample_ceiling": 0.0,
                   "shards": {"train": str(tmp_path / "bad" / "train"), "test_id": str(Path(world.splits["test_id"][0]).parent)}}
    spec = parse_spec(bad)
    with pytest.raises(InheritlabError, match="does not decode"):
        run_study(spec, tmp_path / "run-bad", cluster.address)
    (cell,) = expand_grid(spec)
    events = _events(RunDir.at(tmp_path / "run-bad").cell(cell.cell_id).root / "launches.jsonl")
    assert [e["event"] for e in events] == ["started", "application_error"]  # once: no Ray or Prefect retry

    good = parse_spec(_spec("crash", levels=[0.0], scales=[40 * 32], seeds=[0],
                            train={"batch_size": 32, "ckpt_every": 4, "use_gpu": "no"}))
    (cell,) = expand_grid(good)
    cdir = RunDir.at(tmp_path / "run-crash").cell(cell.cell_id)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(out=run_study(good, tmp_path / "run-crash", cluster.address)))
    runner.start()
    deadline = time.monotonic() + 300
    while not (cdir.ckpt / "latest.json").is_file():
        assert runner.is_alive() and time.monotonic() < deadline
        time.sleep(0.2)
    pid = next(e for e in _events(cdir.root / "launches.jsonl") if e["event"] == "started")["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive() and result["out"]["ran"] == 1
    assert [e["event"] for e in _events(cdir.root / "launches.jsonl")] == ["started", "crashed", "started", "finished"]
    # ... and identical: the same cell run without a kill ends with the same loss curve, the
    # same metrics and bit-identical final weights.
    run_study(good, tmp_path / "run-calm", cluster.address)
    calm = RunDir.at(tmp_path / "run-calm").cell(cell.cell_id)
    retried, straight = (read_json(c.ckpt / "train_summary.json") for c in (cdir, calm))
    assert retried["resumed_from"] is not None and straight["resumed_from"] is None
    assert retried["loss_curve"] == straight["loss_curve"]
    assert pl.read_parquet(cdir.results).get_column("value").to_list() == \
        pl.read_parquet(calm.results).get_column("value").to_list()
    import torch

    weights = [torch.load(Path(r["exports"][-1]["path"]) / r["exports"][-1]["meta"]["weights"], map_location="cpu",
                          weights_only=True) for r in (retried, straight)]
    assert sorted(weights[0]) == sorted(weights[1])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_run_directory_a_node_cannot_see_is_refused(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A node whose file system hides the run directory (its own mount namespace, an empty tmpfs
    over the run directory's parent) is named before any cell starts."""
    from inheritlab.flows.study_flow import run_study

    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    run_parent = tmp_path / "shared"
    run_parent.mkdir()
    hidden = f"mount -t tmpfs none {run_parent} && exec {Path(sys.executable).parent / 'ray'} start " \
             f"--address={cluster.address} --num-cpus=1 --block"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode()[:200]}")
    node = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", hidden],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import ray

        ray.init(address=cluster.address)
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]) < 2:
            assert time.monotonic() < deadline and node.poll() is None, "the hidden node did not join"
            time.sleep(0.5)
        spec = parse_spec(_spec("blind", levels=[0.0], scales=[32], seeds=[0], train={"use_gpu": "no"}))
        with pytest.raises(SpecError, match=r"is not visible from [0-9.]+ \(node [0-9a-f]+"):
            run_study(spec, run_parent / "run", cluster.address)
        assert not list((run_parent / "run" / "cells").glob("*/launches.jsonl"))  # nothing was started
    finally:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


def test_two_launches_at_once_train_each_cell_once(tmp_path: Path) -> None:
    spec = tmp_path / "twice.yaml"
    spec.write_text(yaml.safe_dump(_spec("twice", levels=[0.0, 0.3], scales=[64], seeds=[0])))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "inheritlab.flows.cli", "run", str(spec), "--run-dir", str(tmp_path / "run"), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) for _ in range(2)]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=800)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    run = RunDir.at(tmp_path / "run")
    cells = expand_grid(parse_spec(yaml.safe_load(spec.read_text())))
    for c in cells:  # trained exactly once, whichever launch did it
        events = _events(run.cell(c.cell_id).root / "launches.jsonl")
        assert [e["event"] for e in events] == ["started", "finished"], events
    assert sum(o["ran"] for o in outs) == 2 and sum(o["elsewhere"] for o in outs) == 2
    assert all(o["cells"] == 2 for o in outs)
    assert pl.read_parquet(run.results / "results.parquet")["cell_id"].n_unique() == 2
