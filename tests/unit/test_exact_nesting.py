"""Exact-count levels nest: round(p·N) samples at each level, the smaller set inside the larger.

Exact mode ranks the samples by their uniform and takes the first round(p·N), so a study's 10 %
cell must corrupt a subset of its 20 % cell's samples, the same way, exactly as many as asked —
here through the data-condition stage, for a per-sample corruptor (label noise) and an adding one
(duplication), with the counters of every level balanced.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

NAMES = ["circle", "square", "triangle", "cross", "ring"]
LEVELS = (0.0, 0.1, 0.25, 0.5, 1.0)
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from inheritlab.corruptors.shards import write_shards

    samples = [{"__key__": f"k{i:05d}", "caption": f"a red {NAMES[i % 5]}.", "label": i % 5, "meta": {},
                "image": PNG, "image_ext": "png"} for i in range(333)]  # odd N: round() matters
    return [str(p) for p in write_shards(samples, tmp_path_factory.mktemp("src"), samples_per_shard=50)]


@pytest.mark.parametrize("spec", [{"type": "label_noise", "count": "exact"},
                                  {"type": "duplicate", "count": "exact", "repeats": 3}])
def test_exact_levels_count_round_p_n_and_nest(shards: list[str], tmp_path: Path, spec: dict) -> None:
    from inheritlab.corruptors.chain import condition_data

    decided: dict[float, dict[str, str]] = {}
    for level in LEVELS:
        out = tmp_path / f"l{level}"
        counters = condition_data(shards, [{**spec, "level": level}], study_seed=3, out_dir=out, num_classes=5,
                                  class_names=NAMES)
        c = counters["corruptors"][spec["type"]]
        assert counters["balanced"] and c["in"] == c["out"] + c["dropped_total"] - c["added"]
        if spec["type"] == "duplicate":  # copies are added, the originals kept as they are
            assert c["added"] == (spec["repeats"] - 1) * round(level * 333) and c["out"] == 333 + c["added"]
        else:
            assert c["touched"] == round(level * 333), (level, c)
        rows = pl.read_parquet(out / "manifest.parquet").filter(pl.col("corruptor") == spec["type"])
        decided[level] = dict(zip(rows["key"], rows["detail"]))
        assert len(decided[level]) == round(level * 333)
    for lo, hi in zip(LEVELS, LEVELS[1:]):
        assert set(decided[lo]) <= set(decided[hi]), (lo, hi)
        assert all(decided[hi][k] == d for k, d in decided[lo].items()), (lo, hi)  # corrupted the same way
