"""Benchmark: fit 1,000 broken-scaling-law curves (1 break) with 100 bootstrap resamples each.

Each curve is a BNSL with random parameters (break inside the observed range), 20 scales over
five decades, 2 % log-normal noise. Per curve the full recipe runs: brute grid, bounded
refinement of the best grid points, 100 bootstrap refits (batched), held-out refit. Curves
are spread over a process pool (one worker per core). A small sample is also fitted with the
naive bootstrap (one bounded ``least_squares`` per resample) to show what batching buys.

    python benchmarks/bench_fits.py [--curves 1000] [--boot 100] [--workers N]

Writes ``benchmarks/results/fits.json`` and ``fits.md`` (device, versions, date, numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

# One BLAS thread per worker (set before numpy loads): the pool already uses every core.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

N_POINTS = 20


def _curve(i: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    from inheritlab.analysis.synthetic import bnsl, noisy

    rng = np.random.default_rng([2024, i])
    x = np.geomspace(1e4, 1e9, N_POINTS)
    truth = {
        "a": float(rng.uniform(0.02, 0.2)),
        "b": float(rng.uniform(1.0, 5.0)),
        "c0": float(rng.uniform(0.02, 0.2)),
        "c1": float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.5)),
        "d1": float(10 ** rng.uniform(5.5, 7.5)),
        "f1": float(10 ** rng.uniform(-1, -0.3)),
    }
    y = noisy(bnsl(x, truth["a"], truth["b"], truth["c0"], [(truth["c1"], truth["d1"], truth["f1"])]), 0.02, rng)
    return x, y, truth


def _fit_one(args: tuple[int, int]) -> dict[str, float]:
    from inheritlab.analysis.fits_bnsl import fit_bnsl

    i, n_boot = args
    x, y, truth = _curve(i)
    t0, c0 = time.perf_counter(), time.process_time()
    r = fit_bnsl(x, y, n_breaks=1, n_boot=n_boot, seed=i)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    lo, hi = r.ci.get("d1", (np.nan, np.nan))
    return {
        "seconds": dt,
        "cpu_seconds": cpu,
        "log10_d1_err": abs(np.log10(r.params["d1"]) - np.log10(truth["d1"])),
        "c1_err": abs(r.params["c1"] - truth["c1"]),
        "d1_covered": float(lo <= truth["d1"] <= hi),
        "rmsle_fit": float(np.sqrt(r.loss)),
        "holdout_rmsle": float((r.holdout or {}).get("rmsle", np.nan)),
    }


def _time_bootstrap(i: int, n_boot: int, *, batched: bool) -> float:
    """Seconds to refit n_boot resamples of curve i from its best fit, batched or one by one.

    The unbatched path is one bounded scipy ``least_squares`` per resample — what a
    straightforward bootstrap does, and what the batched Levenberg–Marquardt replaces.
    """
    from inheritlab.analysis.fits import fit_form, refit_resamples
    from inheritlab.analysis.fits_bnsl import bnsl_form

    form = bnsl_form(1)
    x, y, _ = _curve(i)
    best = fit_form(form, x, y, n_boot=0, holdout=False)
    Xn = x[:, None] / best.x_ref
    rng = np.random.default_rng(i)
    W = rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=n_boot).astype(float)
    t0 = time.perf_counter()
    refit_resamples(form, Xn, y, W, best.theta, batched=batched)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", type=int, default=1000)
    ap.add_argument("--boot", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--naive-sample", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as ex:
        rows = list(ex.map(_fit_one, [(i, args.boot) for i in range(args.curves)], chunksize=8))
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    naive = [_time_bootstrap(i, args.boot, batched=False) for i in range(args.naive_sample)]
    batched = [_time_bootstrap(i, args.boot, batched=True) for i in range(args.naive_sample)]

    import polars
    import scipy

    secs = np.array([r["seconds"] for r in rows])
    cpu = np.array([r["cpu_seconds"] for r in rows])
    res = {
        "benchmark": "bnsl_1break_bootstrap",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "workers": args.workers, "loadavg_before": load_before, "loadavg_after": load_after,
                   "note": "shared machine: other jobs were running; see loadavg"},
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "polars": polars.__version__},
        "setup": {"curves": args.curves, "points_per_curve": N_POINTS, "bootstrap": args.boot, "noise": "2% log-normal",
                  "recipe": "grid + top-4 bounded refinement + batched bootstrap + held-out refit"},
        "wall_seconds": round(wall, 2),
        "curves_per_second": round(args.curves / wall, 2),
        # CPU seconds spent in the fits, and what the wall time would be with the cores to
        # ourselves (the machine is shared; wall time above includes waiting for other jobs).
        "cpu_seconds_total": round(float(cpu.sum()), 2),
        "uncontended_wall_estimate_seconds": round(float(cpu.sum()) / args.workers, 2),
        "per_curve_seconds": {"mean": float(secs.mean()), "p50": float(np.median(secs)), "p95": float(np.quantile(secs, 0.95))},
        "bootstrap_100_seconds_per_curve": {"batched": float(np.mean(batched)), "naive_scipy_loop": float(np.mean(naive)),
                                             "speedup": float(np.mean(naive) / np.mean(batched)), "sample": args.naive_sample},
        "quality": {
            "median_abs_log10_d1_err": float(np.median([r["log10_d1_err"] for r in rows])),
            "median_abs_c1_err": float(np.median([r["c1_err"] for r in rows])),
            "d1_ci95_coverage": float(np.mean([r["d1_covered"] for r in rows])),
            "median_holdout_rmsle": float(np.nanmedian([r["holdout_rmsle"] for r in rows])),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fits.json").write_text(json.dumps(res, indent=2) + "\n")
    q, b = res["quality"], res["bootstrap_100_seconds_per_curve"]
    md = [
        "# Scaling-fit benchmark",
        "",
        f"{res['date_utc']} · {res['device']['cores']} cores ({res['device']['cpu']}), {args.workers} worker processes · "
        f"Python {res['versions']['python']}, numpy {np.__version__}, scipy {scipy.__version__} · "
        f"load average before/after {load_before[0]:.2f}/{load_after[0]:.2f} (shared machine)",
        "",
        f"**{args.curves} curves, BNSL with 1 break, {args.boot} bootstrap resamples each: "
        f"{wall:.1f} s wall** ({args.curves / wall:.1f} curves/s; per curve mean {secs.mean():.3f} s, "
        f"p95 {np.quantile(secs, 0.95):.3f} s in one worker). Each fit also does the held-out refit.",
        "",
        f"CPU time in the fits: {cpu.sum():.1f} s in all, {cpu.mean():.3f} s per curve — "
        f"{cpu.sum() / args.workers:.1f} s of wall time on {args.workers} uncontended cores. The wall time above "
        "was measured on a machine shared with other jobs (load average above), so it is the larger number.",
        "",
        f"Bootstrap of {args.boot} resamples per curve (mean over {args.naive_sample} curves, one process): "
        f"batched LM {b['batched']:.3f} s vs a loop of scipy `least_squares` {b['naive_scipy_loop']:.3f} s "
        f"({b['speedup']:.1f}× faster).",
        "",
        f"Recovery over the {args.curves} synthetic curves ({N_POINTS} points, 2 % noise): median |log10 d1 error| "
        f"{q['median_abs_log10_d1_err']:.3f}, median |c1 error| {q['median_abs_c1_err']:.3f}, "
        f"95 % bootstrap interval of d1 covers the truth in {100 * q['d1_ci95_coverage']:.0f} % of curves, "
        f"median held-out RMSLE {q['median_holdout_rmsle']:.4f}.",
        "",
    ]
    (args.out / "fits.md").write_text("\n".join(md))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
