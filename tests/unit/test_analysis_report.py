"""The report: files written, graceful degradation on small studies, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inheritlab.analysis.report import build_report, curves
from inheritlab.analysis.results import load_results
from inheritlab.analysis.synthetic import write_synthetic_run


def test_full_report(tmp_path: Path) -> None:
    scales = tuple(float(v) for v in np.geomspace(1e4, 1e8, 9))
    run = write_synthetic_run(tmp_path / "run", seeds=(0, 1), scales=scales, sigma=0.01)
    df = load_results(str(run.root))
    paths = build_report(df, run.results, formats=("png", "pdf", "csv", "md", "latex"))
    assert next(iter(paths)) == "summary_md"  # the flow publishes the first markdown file
    for key in ("table", "table_csv", "fits_json", "fits_csv", "fits_latex", "curves_png", "curves_pdf",
                "delta_png", "id_ood_png", "delta_csv", "id_ood_gap_csv", "multiplier_csv", "decision_csv"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert pl.read_parquet(paths["table"]).height == df.height  # as stored: each cell once
    fits = json.loads(paths["fits_json"].read_text())
    by_level = {c["bias_level"]: c["fit"] for c in fits["curves"]}
    assert set(by_level) == {0.0, 0.2, 0.4}
    # ground truth: error floor 0.1 + 0.5·level
    for lvl, fit in by_level.items():
        assert fit["params"]["c"] == pytest.approx(0.1 + 0.5 * lvl, abs=0.03)
        assert fit["ci95"]["c"][0] <= 0.1 + 0.5 * lvl <= fit["ci95"]["c"][1]
    assert fits["critical_level"][0]["critical_level"] == 0.2
    # every interval with its provenance: resamples requested and kept, seed, seeds per point
    for c in fits["curves"]:
        b = c["fit"]["bootstrap"]
        assert b["n_requested"] == b["n_kept"] == 200 and isinstance(b["seed"], int) and b["seeds_per_point"] == [2, 2]
    # the levels keep their order at every smaller scale (bias only raises the floor here)
    dec = fits["decision_accuracy"]
    assert len(dec) == 8 and all(d["decision_accuracy"] == 1.0 and d["lo"] <= 1.0 <= d["hi"] for d in dec)
    assert {d["n_boot_requested"] for d in dec} == {1000} and {d["seeds_min"] for d in dec} == {2}
    summary = paths["summary_md"].read_text()
    assert "Δ acc1 vs clean" in summary and "ID − OOD gap" in summary and "Decision accuracy" in summary
    assert "\\begin{tabular}" in paths["fits_latex"].read_text()


def test_two_scales_single_seed_single_level(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", levels=(0.0,), scales=(1e4, 1e5))
    paths = build_report(load_results(str(run.root)), run.results)
    summary = paths["summary_md"].read_text()
    # two points fix a two-parameter law exactly: no fit, points only, and the summary says why
    assert "power_law_no_floor" not in summary and "only 2 scales: no fit" in summary
    assert "one seed per point" in summary and "single (clean) level" in summary
    assert paths["curves_png"].is_file() and "delta_png" not in paths


def test_one_scale_and_missing_metric(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", levels=(0.0, 0.3), scales=(1e4,))
    df = load_results(str(run.root))
    paths = build_report(df, run.results)
    assert "one scale: no fit" in paths["summary_md"].read_text()
    paths = build_report(df, tmp_path / "other", metric="recall@5")
    assert "no completed rows" in paths["summary_md"].read_text()


def test_report_independent_of_row_order(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    df = load_results(str(run.root))
    a = build_report(df, tmp_path / "a", formats=("csv",))
    b = build_report(df.sample(fraction=1.0, shuffle=True, seed=5), tmp_path / "b", formats=("csv",))
    assert a["fits_json"].read_text() == b["fits_json"].read_text()
    assert a["fits_csv"].read_text() == b["fits_csv"].read_text()


def test_curves_command_formats(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", levels=(0.0, 0.2), scales=(1e4, 1e5, 1e6, 1e7))
    for fmt, ext in (("csv", ".csv"), ("latex", ".tex"), ("png", ".png")):
        out = curves(str(run.root), metric="acc1", task="zeroshot", split="ood", x="data_scale", fmt=fmt, out=tmp_path / fmt)
        assert any(p.suffix == ext for p in out)
    with pytest.raises(ValueError, match="format"):
        curves(str(run.root), fmt="svg")
    with pytest.raises(FileNotFoundError):
        (tmp_path / "emptyrun" / "cells").mkdir(parents=True)
        curves(str(tmp_path / "emptyrun"))


def test_several_bias_types_and_models_share_the_clean_control(tmp_path: Path) -> None:
    from inheritlab.analysis.synthetic import write_cell
    from inheritlab.infra.rundir import RunDir

    run = RunDir.at(tmp_path / "run")
    rng = np.random.default_rng(0)
    for btype, lvl in (("none", 0.0), ("label_noise", 0.3), ("caption_noise", 0.3)):
        for model, k in (("tiny", 1.0), ("small", 0.8)):
            for sc in (1e4, 1e5, 1e6):
                cid = f"{btype}-{model}-{int(sc)}"
                err = k * 2.0 * sc**-0.2 + 0.1 + 0.3 * lvl + rng.normal(0, 0.002)
                write_cell(run, [{
                    "study": "s", "cell_id": cid, "modality": "clip", "bias_type": btype, "bias_level": lvl,
                    "model": model, "data_scale": sc, "unique_samples": int(sc), "seed": 0, "params": 10,
                    "checkpoint_step": 3, "samples_seen": int(sc), "flops": 60 * sc, "task": "zeroshot",
                    "split": "id", "metric": "acc1", "value": 1 - err,
                }])
    paths = build_report(load_results(str(run.root)), run.results, formats=("png", "csv", "md"))
    fits = json.loads(paths["fits_json"].read_text())
    labels = sorted(c["label"] for c in fits["curves"])
    # 2 bias types × (clean + biased) × 2 models: the clean control serves both bias types
    assert len(labels) == 8 and "caption_noise, level 0, model=small" in labels
    delta = pl.read_csv(paths["delta_csv"]).filter(pl.col("bias_level") > 0)
    assert delta.height == 2 * 2 * 3 and (delta["delta"] < -0.05).all()
    assert paths["delta_png"].is_file()
    # On the FLOPs axis models are pooled; each (bias type, level) gets a compute-frontier fit.
    flops = build_report(load_results(str(run.root)), tmp_path / "flops", x="flops", formats=("md",))
    fj = json.loads(flops["fits_json"].read_text())
    assert len(fj["frontier"]) == 4 and all(f["fit"]["params"]["alpha"] < 0 for f in fj["frontier"])
    assert "Compute frontier" in flops["summary_md"].read_text()


def test_report_declares_a_break_only_where_there_is_one(tmp_path: Path) -> None:
    from inheritlab.analysis.synthetic import bnsl, noisy, power_law, write_cell
    from inheritlab.infra.rundir import RunDir

    run = RunDir.at(tmp_path / "run")
    rng = np.random.default_rng(5)
    scales = np.geomspace(1e4, 1e9, 12)
    curves_ = {
        0.0: power_law(scales, 3.0, 0.25, 0.1),
        # biased: barely improves until ~1e6, then fast (log-log slope 0.05 → 0.35) — a shape
        # no power law, floor or not, can follow
        0.3: bnsl(scales, 0.05, 1.0, 0.05, [(0.3, 1e6, 0.2)]),
    }
    for lvl, err in curves_.items():
        for sc, e in zip(scales, noisy(err, 0.005, rng)):
            write_cell(run, [{
                "study": "s", "cell_id": f"{lvl}-{sc:.0f}", "modality": "clip",
                "bias_type": "none" if lvl == 0 else "label_noise", "bias_level": lvl, "model": "tiny",
                "data_scale": float(sc), "unique_samples": int(sc), "seed": 0, "params": 10, "checkpoint_step": 1,
                "samples_seen": int(sc), "flops": 60.0 * sc, "task": "zeroshot", "split": "id", "metric": "acc1",
                "value": float(1 - e),
            }])
    paths = build_report(load_results(str(run.root)), run.results, formats=("md",))
    fits = {c["bias_level"]: c for c in json.loads(paths["fits_json"].read_text())["curves"]}
    assert fits[0.0]["fit"]["form"] == "power_law" and fits[0.0]["breaks"] == []
    assert fits[0.3]["fit"]["form"] == "bnsl_1"
    # the number of breaks was chosen, and every candidate's held-out score kept
    sel = fits[0.3]["break_selection"]
    assert [c["n_breaks"] for c in sel] == [0, 1, 2, 3] and [c["chosen"] for c in sel] == [False, True, False, False]
    assert sel[1]["holdout_rmsle"] < 0.9 * sel[0]["holdout_rmsle"] and "skipped" in sel[3]
    (brk,) = fits[0.3]["breaks"]
    assert 1e6 / 2 < brk["d"] < 1e6 * 2 and brk["slope_change"] == pytest.approx(0.3, abs=0.05)
    assert "Critical scale" in paths["summary_md"].read_text() and "Number of breaks" in paths["summary_md"].read_text()


def test_model_by_data_grid_gets_a_two_variable_fit() -> None:
    """A study over model sizes and data scales: the report fits E(N, D) per level and says so."""
    from inheritlab.analysis.render import render_json, render_markdown
    from inheritlab.analysis.report_data import compute_report
    from inheritlab.infra.schema import RESULT_COLUMNS

    rng = np.random.default_rng(0)
    rows = []
    for n in np.geomspace(1e6, 1e9, 4):
        for d in np.geomspace(1e8, 1e11, 4):
            err = (0.2 + 300 / n**0.34 + 400 / d**0.28) * float(np.exp(rng.normal(0, 0.01)))
            rows.append({"study": "s", "cell_id": f"{n:g}-{d:g}", "modality": "clip", "bias_type": "none",
                         "bias_level": 0.0, "model": f"m{n:g}", "data_scale": float(d), "unique_samples": 10,
                         "seed": 0, "params": int(n), "checkpoint_step": 1, "samples_seen": int(d),
                         "flops": 6 * n * d, "task": "zeroshot", "split": "id", "metric": "loss", "value": err})
    df = pl.DataFrame(rows).select(list(RESULT_COLUMNS))
    report = compute_report(df, metric="loss", task="zeroshot", split="id", x="data_scale")
    (two,) = report.two_variable
    assert two.fit.params["alpha"] == pytest.approx(0.34, abs=0.05)
    assert two.fit.params["beta"] == pytest.approx(0.28, abs=0.05)
    # beside least squares, the Huber fit Besiroglu et al. recommend, with its own intervals
    assert two.huber is not None and two.huber.form.name == "chinchilla_huber"
    assert two.huber.params["alpha"] == pytest.approx(0.34, abs=0.05) and two.huber.boot.method == "pairs"
    md = render_markdown(report)
    assert "Two-variable fits" in md and "(chinchilla_huber): alpha" in md
    assert render_json(report)["two_variable"][0]["huber"]["objective"] == "huber"
    assert render_json(report)["two_variable"][0]["fit"]["params"]["alpha"] == pytest.approx(two.fit.params["alpha"])
    # One model size: not a model × data grid, no two-variable fit.
    assert compute_report(df.filter(pl.col("params") == df["params"].min()), metric="loss").two_variable == ()
