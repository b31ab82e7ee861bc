"""Compute-frontier fits, and the published OpenCLIP grid as a reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inheritlab.analysis.fits_frontier import fit_frontier, frontier_points

OPENCLIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "openclip-scaling-laws"


def test_frontier_takes_best_per_log_bin() -> None:
    x = np.array([1.0, 2.0, 10.0, 20.0, 100.0])
    y = np.array([0.9, 0.8, 0.85, 0.6, 0.5])
    idx = frontier_points(x, y, n_bins=2)  # bins [0, 1) and [1, 2] in log10
    assert [float(x[i]) for i in idx] == [2.0, 100.0]


def test_frontier_recovers_envelope_exponent() -> None:
    rng = np.random.default_rng(0)
    c = np.geomspace(1e9, 1e13, 60)
    env = 6.0 * c**-0.12
    y = env * (1 + np.abs(rng.normal(0, 0.15, len(c))))  # runs sit above the envelope
    y[::6] = env[::6]  # some runs reach it
    f = fit_frontier(c, y, n_bins=5, n_boot=200)
    assert f.alpha == pytest.approx(-0.12, abs=0.01)
    lo, hi = f.ci["alpha"]
    assert lo <= f.alpha <= hi
    p = rng.permutation(len(c))
    g = fit_frontier(c[p], y[p], n_bins=5, n_boot=200)
    assert (g.beta, g.alpha, g.ci) == (f.beta, f.alpha, f.ci)


@pytest.mark.skipif(not (OPENCLIP / "zeroshot_results.csv").is_file(), reason="OpenCLIP grid not present")
def test_openclip_imagenet_frontier_reproduces_published_exponent() -> None:
    from inheritlab.analysis.published import openclip_frontier

    df, f = openclip_frontier(OPENCLIP, dataset="imagenet1k", n_boot=200)
    assert df.height == 29
    assert f.alpha == pytest.approx(-0.111, abs=0.002)
    assert f.beta == pytest.approx(5.86, rel=0.03)
    assert f.holdout is not None and f.holdout["rel_err"] < 0.05
