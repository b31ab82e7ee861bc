"""Figures and tables fit for a paper: readable names, chance level, fits only where the data
carry them and only over the data, one colour per bias level, LaTeX floats with caption and label."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba

from inheritlab.analysis import plots
from inheritlab.analysis.render import render_latex, render_latex_delta, render_markdown, report_figures
from inheritlab.analysis.report import write_report
from inheritlab.analysis.report_data import MIN_FIT_SCALES, Report, compute_report
from inheritlab.analysis.results import load_results
from inheritlab.analysis.synthetic import write_synthetic_run

SCALES4 = (1e4, 1e5, 1e6, 1e7)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    run = write_synthetic_run(tmp_path_factory.mktemp("run4"), levels=(0.0, 0.3, 0.6), scales=SCALES4, seeds=(0, 1),
                              sigma=0.01)
    return load_results(str(run.root))


@pytest.fixture(scope="module")
def four(table: pl.DataFrame) -> Report:
    return compute_report(table, chance=0.1)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Report:
    run = write_synthetic_run(tmp_path_factory.mktemp("run2"), levels=(0.0, 0.3), scales=(1e4, 1e5), seeds=(0, 1))
    return compute_report(load_results(str(run.root)))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _lines(fig: object, gid: str) -> list:
    return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid]


def _curve_colors(fig: object) -> dict[str, tuple]:
    # legend label of each errorbar series → its colour
    return {c.get_label(): to_rgba(c.lines[0].get_color()) for c in fig.axes[0].containers}


# --- fits: never through too few points, never beyond the data unless asked ---------------------


def test_two_scales_get_points_and_a_note_but_no_curve(two: Report) -> None:
    assert MIN_FIT_SCALES == 3
    assert all(c.fit is None for c in two.curves) and len(two.curves) == 2
    assert all("only 2 scales: no fit" in c.note for c in two.curves)
    assert sum("only 2 scales: no fit" in n for n in two.notes) == 2
    assert "only 2 scales: no fit" in render_markdown(two)
    fig = report_figures(two)["curves"]
    assert not _lines(fig, "fit") and not _lines(fig, "fit-extrapolated")
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]  # no band either
    assert len(fig.axes[0].containers) == 2  # the points and their seed bars are there
    assert any("No fit drawn" in t.get_text() for t in fig.texts)
    assert two.multiplier.is_empty()  # nothing to invert without a clean fit


def test_four_scales_fits_stop_at_the_largest_scale(four: Report) -> None:
    assert all(c.fit is not None for c in four.curves)
    fits = _lines(report_figures(four)["curves"], "fit")
    assert len(fits) == len(four.curves)
    for ln in fits:
        xs = np.asarray(ln.get_xdata())
        assert xs.min() == pytest.approx(min(SCALES4)) and xs.max() == pytest.approx(max(SCALES4))
    assert not _lines(report_figures(four)["curves"], "fit-extrapolated")


def test_extrapolation_only_when_asked_and_dashed(four: Report) -> None:
    fig = report_figures(four, extrapolate_to=1e9)["curves"]
    solid, dashed = _lines(fig, "fit"), _lines(fig, "fit-extrapolated")
    assert max(np.max(ln.get_xdata()) for ln in solid) == pytest.approx(max(SCALES4))
    assert len(dashed) == len(four.curves) and all(ln.get_linestyle() == "--" for ln in dashed)
    assert all(np.min(ln.get_xdata()) == pytest.approx(max(SCALES4)) for ln in dashed)  # joined to the solid part
    assert all(np.max(ln.get_xdata()) == pytest.approx(1e9) for ln in dashed)
    assert any("extrapolated" in t.get_text() for t in fig.texts)


def test_curve_grid() -> None:
    g = plots.curve_grid([3e4, 1e4, 1e6])
    assert g[0] == 1e4 and g[-1] == 1e6 and np.all(np.diff(g) > 0)
    assert plots.curve_grid([1e4, 1e6], extrapolate_to=1e5)[-1] == 1e6  # inside the data: no change
    assert plots.curve_grid([1e4, 1e6], extrapolate_to=1e8)[-1] == 1e8
    assert plots.curve_grid([1e4, 1e6], extrapolate_to=1e2)[0] == 1e2
    with pytest.raises(ValueError, match="extrapolate_to"):
        plots.curve_grid([1e4, 1e6], extrapolate_to=-1.0)


# --- names ----------------------------------------------------------------------------------------


def test_axis_and_metric_labels_are_readable(four: Report) -> None:
    figs = report_figures(four)
    ax = figs["curves"].axes[0]
    assert ax.get_xlabel() == "Samples seen" and ax.get_ylabel() == "Zero-shot top-1 accuracy, ID"
    assert ax.get_title() == "Zero-shot top-1 accuracy, ID, vs samples seen"
    d = figs["delta"].axes[0]
    assert d.get_xlabel() == "Bias level" and d.get_ylabel() == "Δ zero-shot top-1 accuracy vs clean, ID"
    a1 = figs["id_ood"].axes[0]
    assert (a1.get_xlabel(), a1.get_ylabel()) == ("Zero-shot top-1 accuracy, ID", "Zero-shot top-1 accuracy, OOD")
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"Label noise, clean", "Label noise, level 0.3", "chance"} <= legend
    assert "data_scale" not in ax.get_xlabel() + ax.get_ylabel() + ax.get_title()


def test_label_mapping_and_fallbacks() -> None:
    assert plots.axis_label("data_scale") == "Samples seen"
    assert plots.axis_label("params") == "Parameters" and plots.axis_label("flops") == "Training FLOPs"
    assert plots.axis_label("my_axis") == "My axis"
    assert plots.metric_label("linear_probe", "ood", "acc1") == "Linear-probe top-1 accuracy, OOD"
    assert plots.metric_label("zeroshot", "id", "acc5") == "Zero-shot top-5 accuracy, ID"
    assert plots.metric_label("lora", "ood", "acc1", delta=True) == "Δ LoRA top-1 accuracy vs clean, OOD"
    assert plots.metric_label("retrieval_i2t", "id", "recall@5") == "Image→text retrieval recall@5, ID"
    assert plots.metric_label("few_shot_k4", "id", "acc1") == "4-shot top-1 accuracy, ID"
    assert plots.metric_label("my_task", "val", "f1_macro") == "My task f1 macro, val"
    assert plots.metric_label("zeroshot", None, "mean_per_class_recall") == "Zero-shot mean per-class recall"


# --- chance -----------------------------------------------------------------------------------------


def test_chance_line_when_given(four: Report, two: Report) -> None:
    assert four.chance == 0.1 and plots.chance_level("acc1", 10) == pytest.approx(0.1)
    assert plots.chance_level("acc5", 10) == pytest.approx(0.5) and plots.chance_level("loss", 10) is None
    figs = report_figures(four)
    (line,) = _lines(figs["curves"], "chance")
    assert list(line.get_ydata()) == [0.1, 0.1] and line.get_linestyle() == ":" and line.get_label() == "chance"
    assert len(_lines(figs["id_ood"], "chance")) == 2  # on both axes of the scatter
    assert not _lines(report_figures(two)["curves"], "chance")  # not given: not drawn
    assert "Chance level" in render_markdown(four) and "Chance level" not in render_markdown(two)


def test_chance_refused_or_dropped_where_it_does_not_apply(table: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="chance"):
        compute_report(table, chance=1.5)
    r = compute_report(table, metric="loss", chance=0.1)
    assert r.chance is None and any("not an accuracy" in n for n in r.notes)


# --- intervals say what they are ----------------------------------------------------------------


def test_captions_give_seeds_and_band_provenance(four: Report) -> None:
    figs = report_figures(four)
    text = "\n".join(t.get_text() for t in figs["curves"].texts)
    assert "mean ± 1 sd over 2 seeds" in text and "95 % bootstrap" in text
    for c in four.curves:
        b = c.fit.boot
        assert f"{b.kept}/{b.requested} {b.method}, seed {b.seed}" in text
    assert "standard error" in "\n".join(t.get_text() for t in figs["delta"].texts)


# --- one colour per level ---------------------------------------------------------------------------


def test_a_level_has_one_colour_in_every_figure(four: Report, table: pl.DataFrame) -> None:
    figs = report_figures(four)
    curve_col = _curve_colors(figs["curves"])
    expected = plots.level_colors(four.levels)
    for lvl, name in ((0.0, "Label noise, clean"), (0.3, "Label noise, level 0.3"), (0.6, "Label noise, level 0.6")):
        assert curve_col[name] == pytest.approx(to_rgba(expected[lvl]))
    scatter = {c.get_label(): tuple(c.get_facecolor()[0]) for c in figs["id_ood"].axes[0].collections if c.get_label()}
    assert scatter["level 0.3"] == pytest.approx(curve_col["Label noise, level 0.3"])
    # Δ: levels are the x axis; each marker is filled with its level's colour
    marks = [c for c in figs["delta"].axes[0].collections if len(c.get_offsets())]
    by_level = {float(x): tuple(fc) for c in marks for (x, _), fc in zip(c.get_offsets(), c.get_facecolors())}
    assert by_level[0.3] == pytest.approx(curve_col["Label noise, level 0.3"])
    assert by_level[0.6] == pytest.approx(curve_col["Label noise, level 0.6"])
    # A report that shows fewer levels (the top one missing on OOD) keeps the study's colours.
    part = table.filter(~((pl.col("split") == "ood") & (pl.col("bias_level") == 0.6)))
    ood = compute_report(part, split="ood")
    assert ood.levels == four.levels and {c.level for c in ood.curves} == {0.0, 0.3}
    assert _curve_colors(report_figures(ood)["curves"])["Label noise, level 0.3"] == pytest.approx(curve_col["Label noise, level 0.3"])


# --- LaTeX ----------------------------------------------------------------------------------------------


def _balanced(tex: str) -> None:
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, env
    assert not stack
    body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))
    unescaped = re.sub(r"\\[{}$%&_#]", "", body)
    assert unescaped.count("{") == unescaped.count("}")
    for ln in unescaped.splitlines():
        assert ln.count("$") % 2 == 0, ln
        text = re.sub(r"\$[^$]*\$|\\label\{[^}]*\}", "", ln)  # outside math and labels: no bare special character
        assert not re.search(r"[%_^#~]", text), ln


def test_latex_tables_have_caption_label_and_balance(four: Report, two: Report) -> None:
    fits, delta = render_latex(four), render_latex_delta(four)
    for tex, what in ((fits, "fits"), (delta, "delta")):
        _balanced(tex)
        assert r"\begin{table}" in tex and r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
        assert f"\\label{{tab:zeroshot_id_acc1-{what}}}" in tex
        (cap,) = re.findall(r"\\caption\{(.*)\}", tex)
        assert "zero-shot top-1 accuracy" in cap and "(ID)" in cap and "seed" in cap
    assert "95\\% bootstrap" in fits and "Chance level: 0.1" in fits
    assert "standard error" in delta and "2/2" in delta  # seeds biased/clean
    body = delta.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 2 * len(SCALES4)  # levels 0.3 and 0.6 at each scale, the clean level left out
    for ln in body:
        cells = ln.rstrip(" \\").split(" & ")
        row = four.delta.filter((pl.col("bias_level") == float(cells[0].split("level ")[1]))
                                & (pl.col("data_scale") == {"10k": 1e4, "100k": 1e5, "1M": 1e6, "10M": 1e7}[cells[1]]))
        assert cells[2] == f"${row['delta'][0]:+.4f}$" and cells[3] == f"{row['delta_se'][0]:.4f}"
    # too few scales: rows without a fit, still a valid float
    _balanced(render_latex(two))
    assert "& -- & -- &" in render_latex(two)


def test_both_image_formats_and_both_tables_written(four: Report, tmp_path: Path) -> None:
    paths = write_report(four, tmp_path, formats=("png", "pdf", "latex"), extrapolate_to=1e8)
    for name in ("curves", "delta", "id_ood"):
        assert paths[f"{name}_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[f"{name}_pdf"].read_bytes()[:5] == b"%PDF-"
    assert paths["fits_latex"].name == "fits_zeroshot_id_acc1.tex"
    assert paths["delta_latex"].read_text() == render_latex_delta(four)
