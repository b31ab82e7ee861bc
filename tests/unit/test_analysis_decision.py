"""Decision accuracy (DataDecide): do the smaller scales order the bias levels as the largest does?"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from inheritlab.analysis.decision import _pair_agreement, decision_accuracy


def _rows(effect: dict[float, list[float]], scales: list[float], seeds: int, noise: float = 0.0, seed: int = 0) -> pl.DataFrame:
    """Accuracy 0.8 − effect[level][scale index] (+ noise) for each level, scale and seed."""
    rng = np.random.default_rng(seed)
    out = []
    for lvl, eff in effect.items():
        for si, sc in enumerate(scales):
            for s in range(seeds):
                out.append({"bias_type": "label_noise", "bias_level": lvl, "data_scale": sc, "seed": s,
                            "value": 0.8 - eff[si] + float(rng.normal(0, noise))})
    return pl.DataFrame(out)


SCALES = [1e4, 1e5, 1e6, 1e7]


def test_consistent_ranking_scores_one_and_a_reversal_zero() -> None:
    # More bias, lower accuracy, at every scale: every smaller scale decides as the largest does.
    same = decision_accuracy(_rows({0.0: [0, 0, 0, 0], 0.2: [0.1] * 4, 0.4: [0.2] * 4}, SCALES, 1), x="data_scale")
    assert same["decision_accuracy"].to_list() == [1.0, 1.0, 1.0]
    assert same["scale"].to_list() == SCALES[:-1] and set(same["target_scale"]) == {1e7}
    assert set(same["n_pairs"]) == {3} and set(same["n_levels"]) == {3}
    # "Harmless at small scale, ruinous at large": at 1e4 the biased levels even look better.
    # At 1e5 the two biased levels are still in the wrong order (one pair of three).
    flip = decision_accuracy(_rows({0.0: [0.1, 0, 0, 0], 0.2: [0.05, 0.1, 0.1, 0.1], 0.4: [0.0, 0.05, 0.2, 0.2]},
                                   SCALES, 1), x="data_scale")
    assert flip["decision_accuracy"].to_list() == [0.0, pytest.approx(2 / 3), 1.0]


def test_ties_count_half_at_small_scales_and_are_left_out_at_the_target() -> None:
    target = np.array([0.5, 0.4, 0.4])  # levels 1 and 2 tied at the target: one pair of three left out
    assert _pair_agreement(np.array([0.6, 0.3, 0.2]), target) == 1.0
    assert _pair_agreement(np.array([0.6, 0.6, 0.2]), target) == 0.75  # (½ + 1) / 2
    assert np.isnan(_pair_agreement(np.array([0.1, 0.2]), np.array([0.3, 0.3])))


def test_interval_from_a_bootstrap_over_seeds_with_provenance() -> None:
    rows = _rows({0.0: [0, 0, 0, 0], 0.2: [0.01, 0.02, 0.05, 0.1], 0.4: [0.02, 0.04, 0.1, 0.2]}, SCALES, 3, noise=0.01)
    a = decision_accuracy(rows, x="data_scale", n_boot=300, seed=7)
    b = decision_accuracy(rows.sample(fraction=1.0, shuffle=True, seed=1), x="data_scale", n_boot=300, seed=7)
    assert a.equals(b)  # seeded, and independent of row order
    for row in a.iter_rows(named=True):
        assert row["lo"] <= row["decision_accuracy"] <= row["hi"]  # an interval contains its estimate
        assert row["n_boot_requested"] == row["n_boot_kept"] == 300 and row["boot_seed"] == 7
        assert row["seeds_min"] == row["seeds_max"] == 3 and row["level"] == 0.95
    # small effects drowned by seed noise at 1e4 leave a wide interval; clear ones at 1e6 a narrow one
    widths = (a["hi"] - a["lo"]).to_list()
    assert widths[0] > widths[-1]


def test_one_seed_gives_no_interval_and_says_why() -> None:
    rows = _rows({0.0: [0, 0, 0, 0], 0.3: [0.1] * 4}, SCALES, 1)
    t = decision_accuracy(rows, x="data_scale")
    assert t["lo"].is_nan().all() and t["n_boot_kept"].to_list() == [0, 0, 0]
    assert "one seed per point" in t["note"][0]


def test_only_scales_every_level_reached_are_compared() -> None:
    rows = _rows({0.0: [0, 0, 0, 0], 0.2: [0.1] * 4}, SCALES, 1)
    rows = rows.filter(~((pl.col("bias_level") == 0.2) & (pl.col("data_scale") == 1e7)))  # a missing cell
    t = decision_accuracy(rows, x="data_scale")
    assert set(t["target_scale"]) == {1e6} and t.height == 2
    assert decision_accuracy(rows.filter(pl.col("bias_level") == 0.0), x="data_scale").is_empty()  # one level
