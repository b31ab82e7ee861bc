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
    assert "bad.yaml" in out and "grid.sedes: unknown key" in out and "grid.bias[0].levels[0]" in out
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


def test_materialize_writes_a_cells_conditioned_data(tmp_path: Path) -> None:
    from inheritlab.corruptors.shards import iter_samples
    from inheritlab.flows.grid import expand_grid
    from inheritlab.flows.spec import load_spec
    from inheritlab.flows.stages import stage_condition, write_cell_config
    from inheritlab.infra.rundir import RunDir
    from inheritlab.trainers.modality import get_modality

    spec_path = _spec(tmp_path)
    data = yaml.safe_load(spec_path.read_text())
    data["grid"]["bias"] = [{"type": "duplicate", "levels": [0.25], "params": {"repeats": 3}}]
    spec_path.write_text(yaml.safe_dump(data))
    spec = load_spec(str(spec_path))
    run = RunDir.at(tmp_path / "run")
    (cell,) = expand_grid(spec)
    sources = get_modality("clip").prepare_data(cell.config.data, spec.seed, run.root)
    res = runner.invoke(app, ["materialize", str(run.root), cell.cell_id, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and f"no cell {cell.cell_id!r}" in res.output
    write_cell_config(cell, run.cell(cell.cell_id))
    res = runner.invoke(app, ["materialize", str(run.root), cell.cell_id, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "not been conditioned" in res.output
    counters = stage_condition(cell, run.cell(cell.cell_id), sources)
    res = runner.invoke(app, ["materialize", str(run.root), cell.cell_id, "--out", str(tmp_path / "out"),
                              "--samples-per-shard", "40"])
    assert res.exit_code == 0, res.output
    written = list(iter_samples(str(tmp_path / "out"), decode=False))
    assert len(written) == counters["samples_out"] == 64 + counters["corruptors"]["duplicate"]["added"] > 64
    assert sum(s["__key__"].endswith("_dup2") for s in written) == counters["corruptors"]["duplicate"]["added"] // 2


def test_corruptor_reference_at_the_terminal() -> None:
    res = runner.invoke(app, ["corruptors"])
    assert res.exit_code == 0 and all(f"## `{t}`" in res.output for t in ("label_noise", "dedup", "contamination"))
