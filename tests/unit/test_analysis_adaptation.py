"""The adaptation comparisons: the table, what a mitigation wins back (with its interval), the
spectrum before/after, and few-shot draws averaged into one value per cell when loaded."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from inheritlab.analysis.adaptation import adaptation_table, recovered_fraction, spectrum_table, write_adaptation_report
from inheritlab.analysis.results import load_results
from inheritlab.infra.schema import DRAW_COLUMN, RESULT_COLUMNS

# Probe accuracy by level (clean 0.6, noisy 0.4); NMTune wins back half the gap at 0.6.
PROBE = {0.0: 0.60, 0.6: 0.40}
NMTUNE = {0.0: 0.62, 0.6: 0.50}


def _row(level: float, seed: int, task: str, value: float, metric: str = "acc1", split: str = "ood",
         scale: float = 1000.0) -> dict:
    return {"study": "s", "cell_id": f"c{level}-{seed}-{scale}", "modality": "clip", "bias_type": "label_noise",
            "bias_level": level, "model": "clip-tiny", "data_scale": scale, "unique_samples": 100, "seed": seed,
            "params": 10, "checkpoint_step": 5, "samples_seen": int(scale), "flops": 1.0, "task": task,
            "split": split, "metric": metric, "value": value}


def _table(noise: float = 0.01) -> pl.DataFrame:
    rows = []
    for level in PROBE:
        for seed in range(4):
            jitter = noise * (seed - 1.5)
            rows += [_row(level, seed, "linear_probe", PROBE[level] + jitter),
                     _row(level, seed, "nmtune", NMTUNE[level] + jitter),
                     _row(level, seed, "diagnostics", 2.0 - level, metric="sv_entropy"),
                     _row(level, seed, "nmtune", 2.5 - level, metric="sv_entropy"),
                     _row(level, seed, "diagnostics", 0.1 + level / 10, metric="sv_top_ratio")]
    return pl.DataFrame(rows).select(list(RESULT_COLUMNS))


def test_recovered_fraction_is_gain_over_gap_with_an_interval_around_it() -> None:
    m = recovered_fraction(_table(), seed=1)
    assert m.height == 1
    r = m.row(0, named=True)
    assert r["level"] == 0.6 and r["n_seeds"] == 4
    assert r["gap"] == pytest.approx(0.2) and r["gain"] == pytest.approx(0.1)
    assert r["fraction"] == pytest.approx(0.5)
    assert r["fraction_lo"] <= 0.5 <= r["fraction_hi"] and r["fraction_hi"] - r["fraction_lo"] < 0.2
    # More seed noise, a wider interval (the resampling sees it).
    wide = recovered_fraction(_table(noise=0.08), seed=1).row(0, named=True)
    assert wide["fraction_hi"] - wide["fraction_lo"] > r["fraction_hi"] - r["fraction_lo"]


def test_without_the_base_adaptation_there_is_no_fraction() -> None:
    df = _table().filter(pl.col("task") != "linear_probe")
    assert recovered_fraction(df).is_empty()


def test_tables_hold_each_adaptation_and_the_spectrum_before_and_after(tmp_path: Path) -> None:
    df = _table()
    t = adaptation_table(df)
    assert set(t.get_column("task").to_list()) == {"linear_probe", "nmtune"}
    assert t.get_column("n_seeds").to_list() == [4] * t.height
    s = spectrum_table(df)
    ent = s.filter((pl.col("metric") == "sv_entropy") & (pl.col("bias_level") == 0.6))
    assert dict(zip(ent["features"], ent["mean"])) == pytest.approx({"frozen": 1.4, "nmtune": 1.9})
    paths, md = write_adaptation_report(df, tmp_path, ("png", "csv"))
    assert {"adaptations_csv", "mitigation_csv", "spectrum_csv", "spectrum_png"} <= set(paths)
    assert paths["spectrum_png"].stat().st_size > 10_000
    assert "## Adaptations" in md and "fraction 0.50" in md


def test_a_study_without_adaptations_gets_no_section(tmp_path: Path) -> None:
    df = _table().filter(pl.col("task") == "diagnostics")
    assert write_adaptation_report(df, tmp_path, ("png", "csv")) == ({}, "")


def test_few_shot_draws_count_once_per_cell_when_loaded(tmp_path: Path) -> None:
    cell = tmp_path / "cells" / "c1"
    (cell / "eval").mkdir(parents=True)
    rows = [{**_row(0.0, 0, "few_shot_k4", v), DRAW_COLUMN: s} for v, s in ((0.5, 11), (0.7, 12), (0.6, 13))]
    rows.append({**_row(0.0, 0, "linear_probe", 0.8), DRAW_COLUMN: None})
    pl.DataFrame(rows).write_parquet(cell / "eval" / "results.parquet")
    (cell / "_COMPLETE.json").write_text(json.dumps({"cell_id": "c1"}))
    df = load_results(str(tmp_path))
    assert list(df.columns) == list(RESULT_COLUMNS)
    shot = df.filter(pl.col("task") == "few_shot_k4")
    assert shot.height == 1 and shot.item(0, "value") == pytest.approx(0.6)
    draws = load_results(str(tmp_path), draws=True)
    assert sorted(draws.filter(pl.col("task") == "few_shot_k4").get_column(DRAW_COLUMN).to_list()) == [11, 12, 13]
    assert draws.filter(pl.col("task") == "linear_probe").get_column(DRAW_COLUMN).to_list() == [None]
