"""A report is computed once and rendered many ways: every rendering shows the same fits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from inheritlab.analysis import fits, fits_bnsl, fits_chinchilla, fits_power, report_data
from inheritlab.analysis.render import render_fits_csv, render_json, render_latex, render_markdown, render_tables_csv
from inheritlab.analysis.report import FORMATS, Report, compute_report, write_report
from inheritlab.analysis.results import load_results
from inheritlab.analysis.synthetic import write_synthetic_run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    run = write_synthetic_run(tmp_path_factory.mktemp("run"), levels=(0.0, 0.3), scales=(1e4, 1e5, 1e6, 1e7, 1e8),
                              seeds=(0, 1), sigma=0.01)
    return compute_report(load_results(str(run.root)), metric="acc1", task="zeroshot", split="id", x="data_scale")


def _md_fit_rows(md: str) -> dict[str, str]:
    # The fits table: from its separator line to the first blank line, keyed by curve label.
    lines = md.splitlines()
    start = lines.index("|---|---|---|---|---|---|---|") + 1
    return {line.split(" | ")[0][2:]: line for line in lines[start : lines.index("", start)]}


def _tex_fit_rows(tex: str) -> dict[str, str]:
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    return {line.split(" & ")[0]: line for line in body}


def test_markdown_latex_and_json_show_the_same_fits(report: Report) -> None:
    md, tex, js = render_markdown(report), render_latex(report), render_json(report)
    labels = [c.label for c in report.curves]
    assert labels == ["label_noise, level 0", "label_noise, level 0.3"]
    assert [c["label"] for c in js["curves"]] == labels
    md_rows, tex_rows = _md_fit_rows(md), _tex_fit_rows(tex)
    assert list(md_rows) == labels and list(tex_rows) == [lb.replace("_", "\\_") for lb in labels]
    for c, jc in zip(report.curves, js["curves"]):
        assert c.fit is not None and jc["fit"]["form"] == c.fit.form.name
        md_row, tex_row = md_rows[c.label], tex_rows[c.label.replace("_", "\\_")]
        assert f" {c.fit.form.name} " in md_row and c.fit.form.name.replace("_", "\\_") in tex_row
        for name, value in c.fit.params.items():
            lo, hi = c.fit.ci[name]
            assert jc["fit"]["params"][name] == value and jc["fit"]["ci95"][name] == [lo, hi]
            assert f"{name} = {value:.3g} [{lo:.3g}, {hi:.3g}]" in md_row
            assert f"={value:.3g}$ [{lo:.3g}, {hi:.3g}]" in tex_row
        # every interval says where it comes from: resamples kept of those requested, method,
        # bootstrap seed and the training seeds behind each point — in all three formats
        b = c.fit.boot
        assert b.kept == b.requested == report_data.N_BOOT and b.seed is not None
        assert f"{b.kept}/{b.requested} {b.method}, seed {b.seed}; 2 seed(s)/pt" in md_row
        assert f"& 2 & {b.kept}/{b.requested} {b.method} ({b.seed})" in tex_row
        assert jc["fit"]["bootstrap"] == {**b.to_dict(), "seeds_per_point": [2, 2]} and jc["seeds_per_point"] == [2] * len(c.x)
    (joint,) = report.joint
    b = joint.fit.params["b"]
    assert js["joint"][0]["fit"]["params"]["b"] == b and f"b = {b:.3g}" in md
    assert js["notes"] == list(report.notes) and all(f"- {n}" in md for n in report.notes)


def test_rendering_never_refits(report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("a renderer refitted")

    # Every way into a fit: the report's own entry points and the engine as each form module holds it.
    for module, name in ((report_data, "fit_best_power_law"), (report_data, "select_breaks"), (report_data, "fit_joint_power_law"),
                         (report_data, "fit_frontier"), (report_data, "fit_chinchilla"), (report_data, "decision_accuracy"),
                         (report_data, "two_step_prediction"), (fits, "fit_form"), (fits_power, "fit_form"),
                         (fits_bnsl, "fit_form"), (fits_chinchilla, "fit_form")):
        monkeypatch.setattr(module, name, no_fit)

    def texts() -> list[object]:
        return [render_markdown(report), render_latex(report), json.dumps(render_json(report), sort_keys=True),
                render_fits_csv(report), render_tables_csv(report)]

    assert texts() == texts()
    a = write_report(report, tmp_path / "a", formats=FORMATS)
    b = write_report(report, tmp_path / "b", formats=FORMATS)
    assert next(iter(a)) == "summary_md" and [p.name for p in a.values()] == [p.name for p in b.values()]
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert {"fits_json", "fits_csv", "fits_latex", "curves_png", "curves_pdf", "delta_csv", "multiplier_csv"} <= set(a)


def test_report_is_frozen(report: Report) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.notes = ()  # type: ignore[misc]
    curve = report.curves[0]
    with pytest.raises(ValueError):
        curve.mean[0] = 0.0  # the points a renderer reads cannot change under it
    with pytest.raises(TypeError):
        curve.key["bias_level"] = 1.0  # type: ignore[index]
