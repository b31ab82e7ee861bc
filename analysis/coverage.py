"""Do the fits' intervals mean what they say? Coverage on synthetic replicates.

A 95 % interval should contain the true parameter in about 95 % of repeated experiments. Here
each case is a study design (the scales and seeds per scale), a form with known parameters and
a known noise (multiplicative, log-normal, as scaling-law residuals are); each replicate draws
fresh noise, fits the form with its bootstrap, and records which true parameters its intervals
contain. :func:`coverage` returns the share per parameter, plus how many resamples each fit
kept. ``tests/unit/test_fit_coverage.py`` requires 90–99 % for every parameter of every case;
``benchmarks/bench_fits.py --suite coverage`` writes the figures.

Use it to check a design before running it: a parameter whose coverage falls short on
replicates of *your* scales and seeds is one your study will not pin down honestly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from inheritlab.analysis.fits import Form, fit_form
from inheritlab.analysis.fits_bnsl import bnsl_form
from inheritlab.analysis.fits_chinchilla import CHINCHILLA, CHINCHILLA_HUBER
from inheritlab.analysis.fits_power import POWER_LAW, POWER_LAW_NO_FLOOR
from inheritlab.analysis.synthetic import bnsl, power_law


@dataclass(frozen=True)
class CoverageCase:
    """A design, a form, its true parameters (original units) and the noise (log-sd)."""

    name: str
    form: Form
    X: np.ndarray  # (n,) scales or (n, d) inputs, one row per run (seeds repeat a scale)
    truth: dict[str, float]
    mean: Callable[[np.ndarray], np.ndarray]  # the noise-free curve at X
    sigma: float


def _chinchilla_mean(t: dict[str, float]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda X: t["E0"] + t["A"] * X[:, 0] ** -t["alpha"] + t["B"] * X[:, 1] ** -t["beta"]


def _cases() -> dict[str, CoverageCase]:
    x8 = np.repeat(np.geomspace(1e4, 1e9, 8), 2)  # 8 scales × 2 seeds
    x16 = np.repeat(np.geomspace(1e4, 1e10, 16), 2)  # 16 scales × 2 seeds
    nd = np.column_stack([np.repeat(np.geomspace(1e6, 1e9, 5), 5), np.tile(np.geomspace(1e8, 1e11, 5), 5)])  # 5 N × 5 D
    pl0 = {"a": 20.0, "b": 0.3}
    pl = {"a": 20.0, "b": 0.3, "c": 0.1}
    bn = {"a": 0.05, "b": 3.0, "c0": 0.05, "c1": 0.4, "d1": 1e7, "f1": 1.0}
    ch = {"E0": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}  # Hoffmann et al.'s magnitudes
    return {
        "power_law": CoverageCase("power_law", POWER_LAW_NO_FLOOR, x8, pl0, lambda x: power_law(x, pl0["a"], pl0["b"]), 0.05),
        "saturating_power_law": CoverageCase("saturating_power_law", POWER_LAW, x8, pl,
                                             lambda x: power_law(x, pl["a"], pl["b"], pl["c"]), 0.02),
        "bnsl_1_break": CoverageCase("bnsl_1_break", bnsl_form(1), x16, bn,
                                     lambda x: bnsl(x, bn["a"], bn["b"], bn["c0"], [(bn["c1"], bn["d1"], bn["f1"])]), 0.02),
        "joint_law": CoverageCase("joint_law", CHINCHILLA, nd, ch, _chinchilla_mean(ch), 0.02),
        "joint_law_huber": CoverageCase("joint_law_huber", CHINCHILLA_HUBER, nd, ch, _chinchilla_mean(ch), 0.02),
    }


CASES = _cases()
# Replicates per case in the test and the benchmark: more where a fit is cheap, so the binomial
# noise of the figure (±1.1 points at 400, ±2.2 at 100) is small against the 90–99 % band.
REPLICATES = {"power_law": 400, "saturating_power_law": 400, "bnsl_1_break": 120, "joint_law": 200, "joint_law_huber": 100}


def coverage(case: CoverageCase, *, replicates: int = 100, n_boot: int = 100, seed: int = 0) -> dict[str, Any]:
    """Share of ``replicates`` whose 95 % interval contains each true parameter, and more.

    Returns ``coverage`` (parameter → share), ``kept_min``/``kept_mean`` (resamples kept of
    ``n_boot``), ``no_interval`` (fits that reported none), ``widened`` (intervals widened to
    contain their estimate), ``estimate_inside`` (always 1.0: checked, not assumed), seconds.
    """
    rng = np.random.default_rng([seed, replicates, n_boot])
    mean = case.mean(case.X)
    hits = {k: 0 for k in case.truth}
    kept, no_interval, widened, inside = [], 0, 0, 0
    t0 = time.perf_counter()
    for r in range(replicates):
        y = mean * np.exp(rng.normal(0.0, case.sigma, len(mean)))
        fit = fit_form(case.form, case.X, y, n_boot=n_boot, seed=seed * 1_000_003 + r, holdout=False)
        kept.append(fit.boot.kept)
        widened += len(fit.boot.widened)
        if not fit.ci:
            no_interval += 1
            continue
        inside += all(lo <= fit.params[k] <= hi for k, (lo, hi) in fit.ci.items())
        for k, v in case.truth.items():
            lo, hi = fit.ci[k]
            hits[k] += int(lo <= v <= hi)
    return {
        "case": case.name, "form": case.form.name, "objective": "huber" if case.form.huber_delta else "squares",
        "bootstrap": case.form.bootstrap, "replicates": replicates, "n_boot": n_boot, "sigma": case.sigma,
        "design": {"rows": int(len(case.X)), "distinct_inputs": int(len(np.unique(np.asarray(case.X).reshape(len(case.X), -1), axis=0)))},
        "truth": dict(case.truth),
        "coverage": {k: v / replicates for k, v in hits.items()},
        "kept_min": int(min(kept)), "kept_mean": float(np.mean(kept)), "no_interval": no_interval, "widened": widened,
        "estimate_inside": inside / max(replicates - no_interval, 1),
        "seconds": time.perf_counter() - t0,
    }
