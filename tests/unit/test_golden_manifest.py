"""Corruption decisions against a golden manifest checked into tests/data.

The golden files were written once by ``tests/data/make_golden_manifest.py``. Here the
data-condition stage must reproduce them, and so must the chain as a training stream runs it:
in 1, 2 and 4 real loader worker processes (torch DataLoader), each reading its own shards
(``split_shards``) in a shuffled order. A decision that depended on the worker count, the shard
order or the batch boundaries — or any change of a decision at all — fails here with the
differing rows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

_SCRIPT = Path(__file__).resolve().parents[1] / "data" / "make_golden_manifest.py"
_spec = importlib.util.spec_from_file_location("make_golden_manifest", _SCRIPT)
golden = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(golden)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("golden")
    shards = golden.write_source(root / "src")
    counters = golden.condition(shards, root / "cond")
    return shards, root / "cond", counters


def _diff(got: list[tuple[str, ...]], want: list[tuple[str, ...]]) -> str:
    extra = sorted(set(got) - set(want))[:5]
    missing = sorted(set(want) - set(got))[:5]
    return f"{len(got)} rows vs {len(want)} golden; not in golden: {extra}; missing: {missing}"


def test_the_condition_stage_reproduces_the_golden_manifest(conditioned) -> None:
    import polars as pl

    _, cond, counters = conditioned
    got = golden.manifest_rows(pl.read_parquet(cond / "manifest.parquet").to_dicts())
    want = golden.read_csv(golden.MANIFEST_CSV)
    assert got == want, _diff(got, want)
    assert golden.comparable_counters(counters) == json.loads(golden.COUNTERS_JSON.read_text())
    assert counters["balanced"]


class _ChainInWorkers(torch.utils.data.IterableDataset):
    """What a training stream does in each loader worker: its own shards, the chain built from
    the cell's plans, one pass. It yields every sample's outcome, then its manifest and counters."""

    def __init__(self, shards: list[str], plan_dir: Path, order_seed: int) -> None:
        self.shards, self.plan_dir, self.order_seed = shards, plan_dir, order_seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from inheritlab.corruptors.chain import build_chain
        from inheritlab.corruptors.shards import iter_samples, split_shards

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = split_shards(self.shards, rank=0, world_size=1, worker_id=wid, num_workers=nw)
        random.Random(self.order_seed * 100 + wid).shuffle(mine)  # and its own shuffled order
        chain = build_chain(golden.SPECS, study_seed=golden.SEED, num_classes=len(golden.NAMES),
                            class_names=golden.NAMES, plan_dir=self.plan_dir)
        for s in chain.apply(iter_samples(mine, decode=False)):
            yield {"kind": "sample", "key": s["__key__"], "label": int(s["label"]), "caption": s["caption"]}
        for row in chain.manifest().to_dicts():
            yield {"kind": "decision", **row}
        yield {"kind": "counters", "pid": os.getpid(),
               "counters": json.dumps(chain.counters(), sort_keys=True)}


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("order_seed", [0, 1])
def test_loader_workers_and_shard_order_reproduce_the_golden_manifest(conditioned, workers: int,
                                                                      order_seed: int) -> None:
    from inheritlab.corruptors.counters import counter_mismatches, sum_counters

    shards, cond, _ = conditioned
    listed = list(shards)
    random.Random(order_seed).shuffle(listed)  # the listing order must not matter either
    # Spawned, not forked: this process has used polars (its thread pool is up), and a forked
    # child that reads a plan with polars deadlocks on the pool's copied locks.
    loader = torch.utils.data.DataLoader(_ChainInWorkers(listed, cond, order_seed), batch_size=None,
                                         num_workers=workers, multiprocessing_context="spawn")
    rows = list(loader)
    parts = [r for r in rows if r["kind"] == "counters"]
    # Real worker processes, one report each.
    assert len(parts) == workers and len({p["pid"] for p in parts}) == workers
    assert all(p["pid"] != os.getpid() for p in parts)
    got = golden.manifest_rows([r for r in rows if r["kind"] == "decision"])
    want = golden.read_csv(golden.MANIFEST_CSV)
    assert got == want, _diff(got, want)
    out = golden.stream_rows([r for r in rows if r["kind"] == "sample"])
    want_out = golden.read_csv(golden.STREAM_CSV)
    assert out == want_out, _diff(out, want_out)
    # Each worker's share balances, and the shares add up to the stage's (golden) counters.
    shares = [json.loads(p["counters"]) for p in parts]
    for share in shares:
        for c in share.values():
            assert c["in"] == c["out"] + c["dropped_total"] - c["added"], c
    expected = json.loads(golden.COUNTERS_JSON.read_text())["corruptors"]
    assert counter_mismatches(expected, sum_counters(shares)) == []
