"""The record stage: every row carries the cell's grid coordinates, its pool, params and FLOPs."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from inheritlab.flows.grid import expand_grid
from inheritlab.flows.spec import parse_spec
from inheritlab.flows.stages import stage_record
from inheritlab.infra.rundir import RunDir
from inheritlab.trainers.checkpoint import Export, TrainSummary


def test_a_user_pool_is_what_the_condition_stage_read(tmp_path: Path) -> None:
    spec = parse_spec({
        "name": "own", "data": {"source": "shards", "shards": {"train": str(tmp_path / "t"), "test_id": str(tmp_path / "v")}},
        "grid": {"bias": [{"type": "caption_noise", "levels": [0.3], "params": {"mode": "random"}}],
                 "model": ["clip-tiny"], "data_scale": {"values": [512]}},
        "eval": {"tasks": ["retrieval"]},
    })
    (cell,) = expand_grid(spec)
    assert cell.config.unique_samples is None  # a user's pool is unknown until the data is read
    summary = TrainSummary(rung="clip-tiny", steps=2, total_steps=2, samples_seen=512, global_batch=256, world_size=1,
                           precision="fp32", zero_stage=2, params=1234, flops_per_sample=5e6, train_seconds=1.0,
                           samples_per_s=512.0, final_loss=3.0,
                           exports=(Export(step=2, samples_seen=512, path=str(tmp_path / "e")),))
    rows = [{"checkpoint_step": 2, "samples_seen": 512, "task": "retrieval_i2t", "split": "id", "metric": "recall@1",
             "value": 0.25}]
    counters = {"source": {"samples": 300, "skipped": {}}, "corruptors": {}, "samples_out": 300}
    cdir = RunDir.at(tmp_path / "run").cell(cell.cell_id)
    df = stage_record(cell, cdir, rows, summary, counters, {"pretrain": 1.0})
    assert df.row(0, named=True) == pl.read_parquet(cdir.results).row(0, named=True)
    row = df.row(0, named=True)
    assert row["unique_samples"] == 300  # was -1: the record read a counter nothing wrote
    assert row["params"] == 1234 and row["flops"] == 5e6 * 512
    assert (row["bias_type"], row["bias_level"], row["data_scale"]) == ("caption_noise", 0.3, 512.0)
    assert cdir.is_complete()
