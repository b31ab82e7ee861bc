"""Fits are the same numbers for any row order and any BLAS/OpenMP thread count.

A least-squares step or a bootstrap reduction that summed in a thread-dependent order would move
a fitted exponent in its last bits between a laptop and a cluster node; a fit that depended on
row order would change with the order cells finished in. Each fit below runs in a fresh process
per thread count (the thread pools are sized when numpy loads), on the rows as given and on a
permutation of them; every parameter, interval bound, held-out score and bootstrap draw must be
equal to the last bit across all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import hashlib, json
import numpy as np
from threadpoolctl import threadpool_info
from inheritlab.analysis.fits_bnsl import fit_bnsl
from inheritlab.analysis.fits_chinchilla import fit_chinchilla
from inheritlab.analysis.fits_power import fit_joint_power_law, fit_power_law
from inheritlab.analysis.synthetic import bnsl, noisy, power_law

def record(r):
    return {"params": {k: float(v).hex() for k, v in sorted(r.params.items())},
            "ci": {k: [float(a).hex(), float(b).hex()] for k, (a, b) in sorted(r.ci.items())},
            "loss": float(r.loss).hex(), "holdout": json.dumps(r.holdout, sort_keys=True, default=repr),
            "boot": hashlib.sha256(np.ascontiguousarray(r.boot_theta).tobytes()).hexdigest()}

rng = np.random.default_rng(0)
x = np.repeat(np.geomspace(1e4, 1e9, 8), 3)
n = np.repeat(np.geomspace(1e6, 1e9, 5), 5)
d = np.tile(np.geomspace(1e8, 1e11, 5), 5)
g = np.repeat([0, 1, 2], 8)
xg = np.tile(np.geomspace(1e5, 1e9, 8), 3)
data = {
    "power_law": (lambda idx: fit_power_law(x[idx], y_pl[idx], n_boot=60, seed=3), len(x)),
    "bnsl": (lambda idx: fit_bnsl(x[idx], y_bn[idx], n_boot=20, seed=3), len(x)),
    "chinchilla_huber": (lambda idx: fit_chinchilla(n[idx], d[idx], y_ch[idx], loss="huber", n_boot=20, seed=3), len(n)),
    "joint_power_law": (lambda idx: fit_joint_power_law(xg[idx], g[idx], y_jp[idx], n_boot=30, seed=3), len(xg)),
}
y_pl = noisy(power_law(x, 10.0, 0.3, 0.2), 0.03, rng)
y_bn = noisy(bnsl(x, 0.1, 3.0, 0.05, [(0.3, 1e6, 0.5)]), 0.02, rng)
y_ch = noisy(1.7 + 400 / n**0.34 + 410 / d**0.28, 0.01, rng)
y_jp = noisy(np.array([10.0, 15.0, 20.0])[g] * xg ** -0.3 + np.array([0.05, 0.15, 0.25])[g], 0.01, rng)
out = {}
for name, (fit, size) in data.items():
    out[name] = record(fit(np.arange(size)))
    out[name + "/shuffled"] = record(fit(np.random.default_rng(9).permutation(size)))
out["threads"] = sorted({p["num_threads"] for p in threadpool_info()})
print(json.dumps(out))
"""


def _run(threads: int) -> dict:
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                        "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fits_are_identical_for_any_row_order_and_thread_count() -> None:
    runs = {t: _run(t) for t in (1, 2, 4)}
    # The thread pools really were sized as asked (else the comparison proves nothing); OpenBLAS
    # caps a request at the machine's cores, so 4 may run as 2 on a small machine.
    sizes = {t: r["threads"] for t, r in runs.items()}
    assert sizes[1] == [1] and sizes[2] == [2] and max(sizes[4]) >= 2, sizes
    ref = runs[1]
    for name in ("power_law", "bnsl", "chinchilla_huber", "joint_power_law"):
        assert ref[name + "/shuffled"] == ref[name], f"{name}: row order changed the fit"
        for t in (2, 4):
            assert runs[t][name] == ref[name], f"{name}: {t} threads differ from 1"
            assert runs[t][name + "/shuffled"] == ref[name], f"{name}: {t} threads, shuffled rows"
