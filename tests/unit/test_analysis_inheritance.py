"""Inheritance metrics on curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from inheritlab.analysis import inheritance as inh
from inheritlab.analysis.fits_power import fit_power_law
from inheritlab.analysis.synthetic import power_law


def _points(levels: dict[float, list[float]], scales: list[float], std: float = 0.0) -> pl.DataFrame:
    rows = []
    for lvl, vals in levels.items():
        for s, v in zip(scales, vals):
            rows.append({"bias_type": "label_noise", "bias_level": lvl, "data_scale": s, "mean": v, "std": std, "n_seeds": 3})
    return pl.DataFrame(rows)


def test_delta_vs_clean_at_equal_scale() -> None:
    pts = _points({0.0: [0.5, 0.6, 0.7], 0.3: [0.45, 0.5, 0.55]}, [1e3, 1e4, 1e5], std=0.03)
    d = inh.delta_vs_clean(pts, x="data_scale")
    biased = d.filter(pl.col("bias_level") == 0.3)
    assert biased["delta"].to_list() == pytest.approx([-0.05, -0.1, -0.15])
    assert biased["delta_se"].to_list() == pytest.approx([math.sqrt(2 * 0.03**2 / 3)] * 3)
    crit = inh.critical_level(d, x="data_scale", tol=0.01)
    assert crit["critical_level"].to_list() == [0.3]
    assert inh.critical_level(d, x="data_scale", tol=0.2)["critical_level"].to_list() == [None]


def test_noise_within_two_standard_errors_is_not_a_break() -> None:
    pts = _points({0.0: [0.7], 0.1: [0.68]}, [1e5], std=0.05)
    d = inh.delta_vs_clean(pts, x="data_scale")
    assert inh.critical_level(d, x="data_scale", tol=0.01)["critical_level"].to_list() == [None]


def test_effective_data_multiplier_inverts_the_clean_fit() -> None:
    x = np.geomspace(1e3, 1e7, 9)
    clean = fit_power_law(x, power_law(x, 4.0, 0.3, 0.05), n_boot=0)
    # A biased cell at 1e6 scoring what clean training reaches at 1e5: multiplier 0.1.
    target = float(power_law(1e5, 4.0, 0.3, 0.05))
    pts = pl.DataFrame({"data_scale": [1e6, 1e6], "mean": [target, 0.01]})
    out = inh.effective_data_multiplier(pts, clean.predict, x="data_scale")
    assert out["multiplier"][0] == pytest.approx(0.1, rel=1e-3)
    assert math.isnan(out["multiplier"][1])  # below the clean floor: not reachable, not guessed


def test_id_ood_gap_per_level() -> None:
    rows = []
    for lvl, gap in ((0.0, 0.1), (0.5, 0.3)):
        for seed in (0, 1):
            for split, v in (("id", 0.8), ("ood", 0.8 - gap)):
                rows.append({"bias_type": "t", "bias_level": lvl, "data_scale": 1e4, "seed": seed, "split": split, "value": v})
    g = inh.id_ood_gap(pl.DataFrame(rows), x="data_scale")
    assert g.sort("bias_level")["gap"].to_list() == pytest.approx([0.1, 0.3])
    only_id = pl.DataFrame([r for r in rows if r["split"] == "id"])
    assert inh.id_ood_gap(only_id, x="data_scale").is_empty()
