"""Broken neural scaling laws and the two-variable form: recovery of known parameters."""

from __future__ import annotations

import numpy as np
import pytest

from inheritlab.analysis.fits import compare_forms
from inheritlab.analysis.fits_power import fit_power_law
from inheritlab.analysis.fits_bnsl import break_scales, bnsl_form, fit_bnsl
from inheritlab.analysis.fits_chinchilla import fit_chinchilla, optimal_allocation
from inheritlab.analysis.synthetic import bnsl, noisy


def test_bnsl_form_matches_reference_formula() -> None:
    x = np.geomspace(1e2, 1e9, 20)
    th = np.array([0.05, 2.0, 0.1, 0.4, 1e5, 0.3, -0.2, 1e7, 0.5])
    form = bnsl_form(2)
    got = form.fn(x[:, None], th)
    assert np.allclose(got, bnsl(x, 0.05, 2.0, 0.1, [(0.4, 1e5, 0.3), (-0.2, 1e7, 0.5)]), rtol=1e-12)
    # very sharp breaks and huge x/d do not overflow
    assert np.all(np.isfinite(form.fn(np.array([[1e30]]), np.array([0.0, 1.0, 0.1, 1.0, 1.0, 1e-3]))))


@pytest.mark.parametrize("seed", [0, 1])
def test_bnsl_one_break_recovers_parameters(seed: int) -> None:
    x = np.geomspace(1e4, 1e10, 30)
    y = noisy(bnsl(x, 0.05, 5.0, 0.1, [(0.4, 1e7, 0.3)]), 0.01, np.random.default_rng(seed))
    r = fit_bnsl(x, y, n_breaks=1, n_boot=100)
    # Tolerances for 1 % noise: break location within a factor 1.5, slopes within 0.05,
    # floor within 0.02; the 95 % interval of the break covers the truth.
    assert 1e7 / 1.5 < r.params["d1"] < 1e7 * 1.5
    assert abs(r.params["c0"] - 0.1) < 0.05 and abs(r.params["c1"] - 0.4) < 0.05
    assert abs(r.params["a"] - 0.05) < 0.02
    lo, hi = r.ci["d1"]
    assert lo <= 1e7 <= hi
    assert break_scales(r)[0]["d"] == r.params["d1"]
    # a straight power law cannot extrapolate past the break; the BNSL can
    ranked = compare_forms([fit_power_law(x, y, n_boot=0), r])
    assert ranked[0]["form"] == "bnsl_1"


def test_bnsl_two_breaks_recovers_break_locations() -> None:
    x = np.geomspace(1e3, 1e11, 48)
    y = noisy(bnsl(x, 0.05, 2.0, 0.02, [(0.25, 1e5, 0.2), (-0.2, 1e8, 0.2)]), 0.01, np.random.default_rng(1))
    r = fit_bnsl(x, y, n_breaks=2, n_boot=20)
    # Breaks within a factor 2, slope changes within 0.05 (the floor a is not identified this
    # far below the data and is not checked).
    assert 1e5 / 2 < r.params["d1"] < 1e5 * 2 and 1e8 / 2 < r.params["d2"] < 1e8 * 2
    assert abs(r.params["c1"] - 0.25) < 0.05 and abs(r.params["c2"] + 0.2) < 0.05


def test_bnsl_identical_under_row_shuffling() -> None:
    rng = np.random.default_rng(2)
    x = np.repeat(np.geomspace(1e4, 1e9, 12), 2)
    y = noisy(bnsl(x, 0.1, 3.0, 0.05, [(0.3, 1e6, 0.5)]), 0.02, rng)
    a = fit_bnsl(x, y, n_boot=30, seed=4)
    p = rng.permutation(len(x))
    b = fit_bnsl(x[p], y[p], n_boot=30, seed=4)
    assert a.params == b.params and a.ci == b.ci and a.holdout == b.holdout


def test_chinchilla_recovers_exponents() -> None:
    rng = np.random.default_rng(0)
    n = np.repeat(np.geomspace(1e6, 1e9, 6), 6)
    d = np.tile(np.geomspace(1e8, 1e11, 6), 6)
    y = noisy(1.7 + 400 / n**0.34 + 410 / d**0.28, 0.01, rng)
    r = fit_chinchilla(n, d, y, n_boot=50)
    assert abs(r.params["alpha"] - 0.34) < 0.03 and abs(r.params["beta"] - 0.28) < 0.03
    assert abs(r.params["E0"] - 1.7) < 0.1
    n_opt, d_opt = optimal_allocation(r, 1e21)
    assert n_opt * d_opt * 6 == pytest.approx(1e21, rel=1e-9)


@pytest.mark.parametrize("n", [1, 2])
def test_bnsl_analytic_jacobian_matches_differences(n: int) -> None:
    form = bnsl_form(n)
    X = np.geomspace(0.01, 100, 15)[:, None]
    th = np.array([0.05, 2.0, 0.1] + [0.4, 0.3, 0.05, -0.2, 5.0, 0.5][: 3 * n])
    J = form.jac(X, th)
    for k in range(len(th)):
        h = 1e-7 * max(1.0, abs(th[k]))
        up, dn = th.copy(), th.copy()
        up[k] += h
        dn[k] -= h
        num = (form.fn(X, up) - form.fn(X, dn)) / (2 * h)
        assert np.max(np.abs(J[:, k] - num)) <= 1e-6 * (np.max(np.abs(num)) + 1e-12), form.params[k]
