"""The CLI's error paths: a malformed spec, a missing shard directory, a corrupt shard."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import yaml
from typer.testing import CliRunner

from inheritlab.flows.cli import app

runner = CliRunner()


def _spec(tmp_path: Path, **data: object) -> Path:
    spec = {
        "name": "errs",
        "data": data or {"world": {"train_size": 64, "test_id_size": 16, "test_ood_size": 16, "samples_per_shard": 32}},
        "grid": {
            "bias": [{"type": "label_noise", "levels": [0.0]}],
            "model": ["clip-tiny"],
            "data_scale": {"values": [64]},
        },
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_validate_lists_cells(tmp_path: Path) -> None:
    res = runner.invoke(app, ["validate", str(_spec(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "1 cells" in res.output and "clean/clip-tiny/n=64/s0" in res.output


def test_malformed_spec_is_named(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ngrid:\n  bias: [{type: label_noise, levels: [2.0]}]\n  model: [clip-tiny]\n  data_scale: {values: [10]}\n  sedes: [1]\n")
    res = runner.invoke(app, ["run", str(p), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2
    out = res.output
    assert "bad.yaml" in out and "grid.sedes: unknown key" in out and "grid.bias.0.levels.0" in out
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_shard_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "train"
    spec = _spec(tmp_path, source="shards", shards={"train": str(missing), "test_id": str(missing)})
    res = runner.invoke(app, ["run", str(spec), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert str(missing) in res.output


def test_corrupt_shard_is_named(tmp_path: Path) -> None:
    train = tmp_path / "shards" / "train"
    train.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("s0.txt", b"a photo of a circle"), ("s0.cls", b"0"), ("s0.png", b"not a png")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    (train / "shard-000000.tar").write_bytes(raw[:2600])  # truncated inside the third member
    spec = _spec(tmp_path, source="shards", shards={"train": str(train), "test_id": str(train)}, bad_sample_ceiling=0.0)
    res = runner.invoke(app, ["run", str(spec), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "shard-000000.tar" in res.output
