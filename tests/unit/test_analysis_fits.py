"""Power-law fits: parameter recovery from noisy curves, determinism, degradation."""

from __future__ import annotations

import numpy as np
import pytest

from inheritlab.analysis.fits import InsufficientData, compare_forms, fit_form, refit_resamples
from inheritlab.analysis.fits_power import POWER_LAW, fit_best_power_law, fit_joint_power_law, fit_power_law
from inheritlab.analysis.synthetic import noisy, power_law


@pytest.mark.parametrize("a,b,c", [(50.0, 0.3, 0.1), (5.86, 0.111, 0.0), (400.0, 0.6, 0.3)])
def test_power_law_recovers_parameters(a: float, b: float, c: float) -> None:
    rng = np.random.default_rng(7)
    x = np.geomspace(1e5, 1e10, 14)
    y = noisy(power_law(x, a, b, c), 0.01, rng)
    r = fit_power_law(x, y, n_boot=100)
    # Tolerances for 1 % noise over 5 decades: exponent within 10 % (absolute 0.02),
    # floor within 0.02 absolute, and the 95 % interval covers the true exponent.
    assert abs(r.params["b"] - b) <= max(0.1 * b, 0.02)
    assert abs(r.params["c"] - c) <= 0.02
    lo, hi = r.ci["b"]
    assert lo <= b <= hi
    assert r.holdout is not None and r.holdout["rel_err"] < 0.05


def test_power_law_without_floor_is_a_loglog_line() -> None:
    x = np.geomspace(1e3, 1e9, 7)
    r = fit_power_law(x, power_law(x, 3.0, 0.25), irreducible=False, n_boot=20)
    assert r.params["a"] == pytest.approx(3.0, rel=1e-4)
    assert r.params["b"] == pytest.approx(0.25, rel=1e-4)


def test_fit_identical_under_row_shuffling() -> None:
    rng = np.random.default_rng(0)
    x = np.repeat(np.geomspace(1e4, 1e8, 6), 3)
    y = noisy(power_law(x, 10.0, 0.3, 0.2), 0.03, rng)
    ref = fit_power_law(x, y, n_boot=50, seed=11)
    perm = rng.permutation(len(x))
    again = fit_power_law(x[perm], y[perm], n_boot=50, seed=11)
    assert again.params == ref.params
    assert again.ci == ref.ci
    assert np.array_equal(again.boot_theta, ref.boot_theta)
    assert again.holdout == ref.holdout


def test_bootstrap_is_seeded() -> None:
    x = np.geomspace(1e4, 1e8, 8)
    y = noisy(power_law(x, 10.0, 0.3, 0.2), 0.03, np.random.default_rng(1))
    assert fit_power_law(x, y, n_boot=30, seed=1).ci == fit_power_law(x, y, n_boot=30, seed=1).ci
    assert fit_power_law(x, y, n_boot=30, seed=1).ci != fit_power_law(x, y, n_boot=30, seed=2).ci


def test_degrades_with_few_scales() -> None:
    x = np.array([1e4, 1e5])
    y = power_law(x, 10.0, 0.3, 0.0)
    r = fit_best_power_law(x, y, n_boot=10)
    assert r is not None and r.form.name == "power_law_no_floor"
    assert "only 2 scales" in r.note and r.holdout is None
    assert r.ci == {} and "no intervals" in r.note  # an exact fit has nothing to resample
    # three points: the default (wild) bootstrap keeps every point, so every resample
    x3 = np.array([1e4, 1e5, 1e6])
    y3 = power_law(x3, 10.0, 0.3) * np.array([1.01, 0.99, 1.0])
    r3 = fit_best_power_law(x3, y3, n_boot=200)
    assert len(r3.boot_theta) == 200 == r3.boot.kept == r3.boot.requested and r3.ci["b"][0] < r3.ci["b"][1]
    # ... a pairs bootstrap drops resamples that drew one scale (1 in 9): counted, and under
    # 90 % of those requested, no interval at all
    p3 = fit_best_power_law(x3, y3, n_boot=200, bootstrap="pairs")
    assert p3.boot.requested == 200 and 150 < p3.boot.kept < 190 and p3.ci == {}
    assert "at least 90%" in p3.note and p3.to_dict()["bootstrap"]["n_kept"] == p3.boot.kept
    assert fit_best_power_law(np.array([1e4, 1e4]), np.array([0.3, 0.31])) is None
    with pytest.raises(InsufficientData):
        fit_power_law(x, y)


def test_joint_fit_shares_exponent() -> None:
    rng = np.random.default_rng(3)
    x = np.tile(np.geomspace(1e5, 1e9, 8), 3)
    g = np.repeat([0, 1, 2], 8)
    y = noisy(np.array([10.0, 15.0, 20.0])[g] * x ** -0.3 + np.array([0.05, 0.15, 0.25])[g], 0.01, rng)
    r = fit_joint_power_law(x, g, y, n_boot=50)
    assert abs(r.params["b"] - 0.3) < 0.03
    assert [round(r.params[f"c_{k}"], 2) for k in range(3)] == pytest.approx([0.05, 0.15, 0.25], abs=0.02)


def test_compare_forms_prefers_true_form_on_heldout() -> None:
    x = np.geomspace(1e4, 1e9, 12)
    y = noisy(power_law(x, 5.0, 0.4, 0.2), 0.005, np.random.default_rng(4))
    ranked = compare_forms([fit_power_law(x, y, irreducible=False, n_boot=0), fit_power_law(x, y, n_boot=0)])
    assert ranked[0]["form"] == "power_law"


def test_batched_bootstrap_matches_one_scipy_fit_per_resample() -> None:
    # The batched Levenberg–Marquardt must land where one bounded least_squares per resample does.
    x = np.geomspace(1e4, 1e9, 12)
    y = noisy(power_law(x, 5.0, 0.4, 0.2), 0.01, np.random.default_rng(0))
    best = fit_form(POWER_LAW, x, y, n_boot=0, holdout=False)
    Xn = x[:, None] / best.x_ref
    W = np.random.default_rng(1).multinomial(len(y), np.full(len(y), 1 / len(y)), size=20).astype(float)
    batched = POWER_LAW.to_units(refit_resamples(POWER_LAW, Xn, y, W, best.theta), best.x_ref)
    one_by_one = POWER_LAW.to_units(refit_resamples(POWER_LAW, Xn, y, W, best.theta, batched=False), best.x_ref)
    assert batched.shape == one_by_one.shape == (20, 3)
    assert np.allclose(batched, one_by_one, rtol=1e-2, atol=0)
