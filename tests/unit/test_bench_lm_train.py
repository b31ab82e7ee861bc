"""benchmarks/bench_lm_train.py's real-text source: the world it sizes, the random-vs-text
comparison, and a tiny CPU run through the trainer's packed loader with a worker process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the script imports results_io from beside itself

import bench_lm_train as bench


@pytest.mark.parametrize("batch,seq,batches", [(256, 2048, 11), (4, 64, 4), (48, 512, 3)])
def test_world_fills_the_run_with_whole_shards_per_slot(batch: int, seq: int, batches: int) -> None:
    from inheritlab.trainers.slots import data_slots

    docs, per = bench.world_size_for(global_batch=batch, seq_len=seq, batches=batches)
    shards = docs // per
    assert docs == shards * per and shards % data_slots(batch) == 0
    assert per <= bench.WORLD_MAX_DOCS_PER_SHARD and docs >= bench.WORLD_MIN_DOCS
    assert docs * bench.WORLD_TOKENS_PER_DOC >= batches * batch * seq


def test_comparison_ratio_and_goals() -> None:
    rows = [{"mode": "compile", "data": "random", "tokens_per_s": 100.0, "mfu": 0.45},
            {"mode": "compile", "data": "world", "tokens_per_s": 96.0, "mfu": 0.432},
            {"mode": "eager", "data": "random", "tokens_per_s": 50.0, "mfu": 0.2},
            {"mode": "eager", "data": "world", "error": "boom"}]
    out = bench._comparison(rows)
    assert set(out) == {"compile"}
    c = out["compile"]
    assert c["world_over_random"] == pytest.approx(0.96)
    assert c["world_within_5pct_of_random"] is True and c["world_mfu_at_least_40pct"] is True
    assert bench._comparison(rows, gpu=False)["compile"]["world_mfu_at_least_40pct"] is None


def test_tiny_run_on_packed_text(tmp_path: Path) -> None:
    out = tmp_path / "lm.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_lm_train.py"), "--tiny", "--data", "world", "--loader-workers", "1",
         "--world-dir", str(tmp_path / "world"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    (row,) = rec["results"]
    assert row["data"] == "world" and "error" not in row, row
    assert row["tokens_per_s"] > 0 and row["loader_workers"] == 1 and row["max_slot_epoch"] == 0
    assert rec["world_data"]["build_s"] >= 0 and rec["world_data"]["tokenizer_vocab"] <= rec["setup"]["vocab"]
    assert rec["loader_only"]["tokens_per_s"] > 0
    assert rec["heavy_imports"] == []  # neither polars nor ray on the real-text path
