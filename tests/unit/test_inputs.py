"""Shard integrity: the input shards a cell's data condition was planned on are fingerprinted,
and a shard changed underneath the study is an error naming it before training reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from inheritlab.infra import inputs
from inheritlab.infra.inputs import InputChangedError, check_inputs, record_inputs


def _shards(tmp_path: Path, n: int = 3, size: int = 4096) -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"{i:05d}.tar"
        p.write_bytes(bytes((i * 7 + j) % 251 for j in range(size)))
        out.append(str(p))
    return out


def test_unchanged_shards_pass_and_each_kind_of_change_is_named(tmp_path: Path) -> None:
    shards = _shards(tmp_path)
    rec = tmp_path / "cell" / "data" / "inputs.json"
    files = record_inputs(shards, rec)["files"]
    assert set(files) == set(shards) and all(f["how"] == "full" and f["size"] == 4096 for f in files.values())
    assert check_inputs(shards, rec) == 3

    data = bytearray(Path(shards[1]).read_bytes())
    data[2000] ^= 1  # one bit, same size
    Path(shards[1]).write_bytes(bytes(data))
    with pytest.raises(InputChangedError, match=rf"input shard {shards[1]} changed .*SHA-256 \(full\).*deleting"):
        check_inputs(shards, rec)
    Path(shards[1]).write_bytes(bytes(data[:1000]))  # truncated by a failed copy
    with pytest.raises(InputChangedError, match=rf"{shards[1]} changed .*size 4096 → 1000 bytes"):
        check_inputs(shards, rec)
    Path(shards[1]).unlink()
    with pytest.raises(InputChangedError, match=rf"{shards[1]} is gone"):
        check_inputs(shards, rec)
    with pytest.raises(InputChangedError, match="was not among the shards"):
        check_inputs([*shards[:1], str(tmp_path / "new.tar")], rec)


def test_large_shards_are_checked_by_size_and_their_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "FULL_HASH_BYTES", 1024)
    monkeypatch.setattr(inputs, "_EDGE", 256)
    shards = _shards(tmp_path, n=1, size=4096)
    rec = tmp_path / "inputs.json"
    assert record_inputs(shards, rec)["files"][shards[0]]["how"] == "edges"
    data = bytearray(Path(shards[0]).read_bytes())
    data[4000] ^= 1  # in the last edge
    Path(shards[0]).write_bytes(bytes(data))
    with pytest.raises(InputChangedError, match=r"SHA-256 \(edges\)"):
        check_inputs(shards, rec)


def test_a_run_directory_without_a_record_gets_one(tmp_path: Path) -> None:
    shards = _shards(tmp_path, n=2)
    rec = tmp_path / "inputs.json"
    assert check_inputs(shards, rec) == 0 and rec.is_file()
    assert check_inputs(shards, rec) == 2
    assert record_inputs(["s3://bucket/x.tar"], tmp_path / "r.json")["files"] == {"s3://bucket/x.tar": {"how": "not checked (remote)"}}


def test_the_pretrain_stage_refuses_a_shard_changed_after_conditioning(tmp_path: Path) -> None:
    """Through the stages: condition (in this process), change a shard, pre-train → the error,
    before any worker starts."""
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.flows.grid import expand_grid
    from inheritlab.flows.spec import parse_spec
    from inheritlab.flows.stages import stage_condition, stage_pretrain
    from inheritlab.infra.rundir import RunDir
    from inheritlab.trainers.modality import DataSources

    world = write_image_world(ImageWorldConfig(seed=0, train_size=256, test_id_size=32, test_ood_size=32,
                                               samples_per_shard=64), tmp_path / "world")
    spec = parse_spec({"name": "integrity", "grid": {"bias": [{"type": "label_noise", "levels": [0.2]}],
                                                     "model": ["clip-tiny"], "data_scale": {"values": [128]}}})
    (cell,) = expand_grid(spec)
    data = DataSources(kind="image", splits={k: list(v) for k, v in world.splits.items()},
                       class_names=tuple(world.class_names), world=world)
    cdir = RunDir.at(tmp_path / "run").cell(cell.cell_id)
    stage_condition(cell, cdir, data)
    assert cdir.inputs.is_file()
    victim = data.train[2]
    Path(victim).write_bytes(Path(victim).read_bytes()[:-512])
    with pytest.raises(InputChangedError, match=f"input shard {victim} changed"):
        stage_pretrain(cell, cdir, data, placement=None, use_gpu=False)  # type: ignore[arg-type]
