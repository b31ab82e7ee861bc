"""Intervals that mean what they say: nominal 95 % intervals cover the truth 90–99 % of the time.

Each case draws replicates of a study design with known parameters and log-normal noise
(:mod:`inheritlab.analysis.coverage`), fits each with its bootstrap, and counts how often each
parameter's interval holds the truth: 100 to 400 replicates per case (``coverage.REPLICATES``;
with 100, a true 95 % coverage lands in [0.90, 0.99] with probability above 0.97). The
generator is seeded, so the figures are fixed; ``benchmarks/bench_fits.py --suite coverage``
writes them. 100 resamples per fit keep the whole file near a minute on two cores.
"""

from __future__ import annotations

import pytest

from inheritlab.analysis.coverage import CASES, REPLICATES, coverage


@pytest.mark.parametrize("name", list(REPLICATES))
def test_nominal_95_percent_intervals_cover_90_to_99_percent(name: str) -> None:
    case = CASES[name]
    res = coverage(case, replicates=REPLICATES[name], n_boot=100, seed=0)
    print(name, {k: round(v, 3) for k, v in res["coverage"].items()}, f"{res['seconds']:.1f} s")
    assert res["replicates"] >= 100
    # every requested resample kept (or so nearly that no fit lost its interval) ...
    assert res["no_interval"] == 0 and res["kept_min"] >= 90
    # ... every interval contains its own point estimate ...
    assert res["estimate_inside"] == 1.0
    # ... and covers the truth as often as it claims, parameter by parameter
    for param, share in res["coverage"].items():
        assert 0.90 <= share <= 0.99, (name, param, share)
