"""One micro study end to end through Prefect + Ray + DeepSpeed, then a relaunch that trains nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest

from inheritlab.flows.grid import expand_grid
from inheritlab.flows.spec import parse_spec
from inheritlab.flows.study_flow import run_study
from inheritlab.infra.rundir import RunDir

MICRO = {
    "name": "micro",
    "data": {"world": {"train_size": 512, "test_id_size": 128, "test_ood_size": 128, "samples_per_shard": 128}},
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.0, 0.5], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        "data_scale": {"values": [256, 512]},
        "seeds": [0],
    },
    "train": {"batch_size": 64, "ckpt_every": 2},
    "eval": {"tasks": ["zeroshot", "linear_probe", "retrieval"]},
}


@pytest.mark.slow
def test_micro_study_end_to_end(tmp_path: Path) -> None:
    spec = parse_spec(MICRO)
    run_dir = tmp_path / "run"
    out = run_study(spec, run_dir)
    run = RunDir.at(run_dir)
    cells = expand_grid(spec)
    assert out["ran"] == len(cells) == 4
    assert all(run.cell(c.cell_id).is_complete() for c in cells)

    table = pl.read_parquet(run.results / "results.parquet")
    assert set(table["bias_level"].unique().to_list()) == {0.0, 0.5}
    assert set(table["data_scale"].unique().to_list()) == {256.0, 512.0}
    assert {"zeroshot", "linear_probe"} <= set(table["task"].unique().to_list())
    assert {"id", "ood"} <= set(table["split"].unique().to_list())
    assert table["value"].is_finite().all()
    assert (table["params"] > 0).all() and (table["flops"] > 0).all()
    launches = json.loads((run.results / "study_timings.json").read_text())["launches"]
    assert launches[0]["ran"] == 4 and launches[0]["timings_s"]["total"] > 0
    assert any(p.suffix == ".png" for p in run.results.rglob("*"))
    # label noise is accounted: the noisy cells' manifests record flipped keys
    noisy = next(c for c in cells if c.config.bias.level == 0.5)
    manifest = pl.read_parquet(run.cell(noisy.cell_id).manifest)
    assert manifest.height > 0

    # A relaunch finds every cell complete and trains nothing.
    t0 = time.perf_counter()
    again = run_study(spec, run_dir)
    assert again["ran"] == 0
    assert time.perf_counter() - t0 < 60
