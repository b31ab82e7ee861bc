"""A bad sample in the data-condition and materialisation stages: skipped and counted, or named.

The condition stage reads under the study's ceiling: the bad sample is skipped, counted by
reason in ``counters.json`` with its shard and member, and a ceiling it passes fails the stage.
Materialising reads the same shards and takes no ceiling: it names the shard and member and
stops, rather than writing a data set that silently lacks a sample.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from inheritlab.infra.errors import BadSampleCeilingError, ShardError

NAMES = ["circle", "square", "triangle", "cross", "ring"]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
SPECS = [{"type": "label_noise", "level": 0.2, "count": "exact"}]  # planned: the plan pass reads too


@pytest.fixture()
def shards(tmp_path: Path) -> list[str]:
    from inheritlab.corruptors.shards import write_shards

    samples = [{"__key__": f"k{i:04d}", "caption": f"a {NAMES[i % 5]}.", "label": i % 5, "meta": {}, "image": PNG,
                "image_ext": "png"} for i in range(100)]
    paths = [str(p) for p in write_shards(samples, tmp_path / "src", samples_per_shard=25)]
    # Shard 1 rewritten with sample k0042's metadata member damaged (not JSON any more).
    raw = Path(paths[1]).read_bytes()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src:
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == "k0042.json":
                data = b"{not json"
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    Path(paths[1]).write_bytes(out.getvalue())
    return paths


def test_the_condition_stage_skips_and_counts_then_materialising_names_it(shards: list[str], tmp_path: Path) -> None:
    from inheritlab.corruptors.chain import condition_data, materialize_condition

    counters = condition_data(shards, SPECS, study_seed=1, out_dir=tmp_path / "c", num_classes=5, class_names=NAMES,
                              bad_sample_ceiling=1)
    src = counters["source"]
    assert src["samples"] == 99 and src["skipped"] == {"bad_json": 1} and counters["balanced"]
    assert "shard-000001.tar" in src["problems"][0] and "k0042.json" in src["problems"][0]
    assert counters["corruptors"]["label_noise"]["touched"] == round(0.2 * 99)  # exact over what was read

    with pytest.raises(ShardError, match=re.escape("shard-000001.tar") + ".*k0042.json"):
        materialize_condition(shards, SPECS, study_seed=1, plan_dir=tmp_path / "c", out_dir=tmp_path / "m",
                              num_classes=5, class_names=NAMES, samples_per_shard=50)

    with pytest.raises(ShardError, match="k0042.json"):  # strict (the default): named at once
        condition_data(shards, SPECS, study_seed=1, out_dir=tmp_path / "strict", num_classes=5, class_names=NAMES)
    with pytest.raises(BadSampleCeilingError, match="1 of 100"):  # a fraction it passes: the stage fails
        condition_data(shards, SPECS, study_seed=1, out_dir=tmp_path / "frac", num_classes=5, class_names=NAMES,
                       bad_sample_ceiling=0.005)
