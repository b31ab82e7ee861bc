"""The results loader: completed cells only, tolerant of running cells, strict on bad files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from inheritlab.analysis.results import ResultsError, final_checkpoints, load_results, with_clean_controls
from inheritlab.analysis.synthetic import write_cell, write_synthetic_run
from inheritlab.infra.rundir import RunDir
from inheritlab.infra.schema import RESULT_COLUMNS


def _row(cell_id: str, **kw: object) -> dict:
    base = {
        "study": "s", "cell_id": cell_id, "modality": "clip", "bias_type": "label_noise", "bias_level": 0.1,
        "model": "tiny", "data_scale": 100.0, "unique_samples": 100, "seed": 0, "params": 10,
        "checkpoint_step": 1, "samples_seen": 100, "flops": 1.0, "task": "zeroshot", "split": "id",
        "metric": "acc1", "value": 0.5,
    }
    base.update(kw)
    return base


def test_loads_completed_cells_with_schema(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "run", levels=(0.0, 0.5), scales=(1e3, 1e4), seeds=(0, 1))
    df = load_results(str(tmp_path / "run"))
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert df.height == 2 * 2 * 2 * 2  # levels × scales × seeds × splits
    assert df.schema["params"] == pl.Int64 and df.schema["value"] == pl.Float64


def test_skips_incomplete_and_half_written_cells(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path / "run")
    write_cell(run, [_row("done")])
    write_cell(run, [_row("running")], complete=False)
    (run.cells_root / "empty").mkdir()  # created, nothing written yet
    torn = run.cells_root / "torn" / "eval"
    torn.mkdir(parents=True)
    (torn / "results.parquet").write_bytes(b"PAR1 not really")  # no marker: must be ignored
    df = load_results(str(run.root))
    assert df.get_column("cell_id").to_list() == ["done"]


def test_fsspec_url(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "run", levels=(0.0,), scales=(1e3,))
    assert load_results(f"file://{tmp_path / 'run'}").height == 2


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path / "run")
    cdir = Path(write_cell(run, [_row("bad")]))
    (cdir / "eval" / "results.parquet").write_bytes(b"garbage")
    with pytest.raises(ResultsError, match=r"cells/bad/eval/results\.parquet.*parquet"):
        load_results(str(run.root))


def test_missing_or_mistyped_column_is_named(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path / "run")
    cdir = Path(write_cell(run, [_row("c1")]))
    df = pl.read_parquet(cdir / "eval" / "results.parquet")
    df.drop("seed").write_parquet(cdir / "eval" / "results.parquet")
    with pytest.raises(ResultsError, match=r"c1/eval/results\.parquet.*'seed'"):
        load_results(str(run.root))
    df.with_columns(pl.col("value").cast(pl.Utf8)).write_parquet(cdir / "eval" / "results.parquet")
    with pytest.raises(ResultsError, match=r"column 'value' has type String, expected float"):
        load_results(str(run.root))


def test_completed_cell_without_table_is_an_error(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path / "run")
    cdir = Path(write_cell(run, [_row("c1")]))
    (cdir / "eval" / "results.parquet").unlink()
    with pytest.raises(ResultsError, match="marked complete"):
        load_results(str(run.root))


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_results(str(tmp_path / "nope"))


def test_order_independent(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "run", seeds=(0, 1))
    df = load_results(str(tmp_path / "run"))
    assert df.equals(df.sample(fraction=1.0, shuffle=True, seed=3).sort(list(RESULT_COLUMNS)))


def test_final_checkpoint_and_clean_controls() -> None:
    rows = [_row("a", checkpoint_step=1, value=0.1), _row("a", checkpoint_step=5, value=0.4),
            _row("z", bias_type="none", bias_level=0.0), _row("b", bias_type="dup", bias_level=0.2)]
    df = pl.DataFrame(rows)
    fin = final_checkpoints(df)
    assert fin.filter(pl.col("cell_id") == "a").get_column("value").to_list() == [0.4]
    ex = with_clean_controls(df)
    clean = ex.filter(pl.col("cell_id") == "z")
    assert sorted(clean.get_column("bias_type").to_list()) == ["dup", "label_noise"]
    assert with_clean_controls(ex).height == ex.height  # idempotent


def test_remote_filesystem_url() -> None:
    # An object store without real directories (fsspec's in-memory filesystem stands in for s3/gcs).
    import io

    import fsspec

    fs = fsspec.filesystem("memory")
    root = "/inheritlab-test-run"
    for cid, complete in (("c1", True), ("c2", False)):
        buf = io.BytesIO()
        pl.DataFrame([_row(cid)]).write_parquet(buf)
        fs.pipe(f"{root}/cells/{cid}/eval/results.parquet", buf.getvalue())
        if complete:
            fs.pipe(f"{root}/cells/{cid}/_COMPLETE.json", b"{}")
    try:
        df = load_results(f"memory://{root}")
        assert df.get_column("cell_id").to_list() == ["c1"]
    finally:
        fs.rm(root, recursive=True)
