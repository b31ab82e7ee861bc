"""Per-cell fixed cost: what a study pays per cell before and around its training steps.

Runs ``inheritlab run`` on a study of three tiny cells (clip-tiny, one training step of 32
samples each, retrieval only), one cell at a time, several times, each in a fresh run directory,
and reads the stage timings every cell records (``cells/<id>/timings.json``). With one step to
train, the pretrain stage is almost all start-up: worker processes, torch.distributed and
DeepSpeed initialisation, model build. The first cell of a run also pays for compile caches
that later cells reuse.

    python benchmarks/bench_cell_fixed_cost.py --label after --runs 3 --out benchmarks/results/cell_fixed_cost_cpu.json

It only drives the command line, so the same script measures another checkout of the code
(e.g. ``PYTHONPATH=<old checkout>``) for a before/after pair in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPEC = {
    "name": "fixed-cost",
    "data": {"world": {"num_classes": 4, "train_size": 256, "test_id_size": 32, "test_ood_size": 32,
                       "samples_per_shard": 64}},
    "grid": {"bias": [{"type": "label_noise", "levels": [0.0], "params": {"mode": "symmetric"}}],
             "model": ["clip-tiny"], "data_scale": {"values": [32]}, "seeds": [0, 1, 2]},
    "train": {"batch_size": 32, "workers": 1},
    "eval": {"tasks": ["retrieval"]},
    "execution": {"max_concurrent_cells": 1},
}


def one_run(spec_path: Path, run_dir: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "inheritlab.flows.cli", "run", str(spec_path), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"inheritlab run failed:\n{proc.stderr[-3000:]}")
    cells = []
    for cell in sorted((run_dir / "cells").iterdir()):
        done = json.loads((cell / "_COMPLETE.json").read_text())
        cells.append({"finished_at": done["finished_at"], **done["timings_s"]})
    cells.sort(key=lambda c: str(c["finished_at"]))
    return {"wall_s": round(wall, 2), "cells": cells}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True, help="e.g. before / after")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inheritlab-fixed-cost-"))
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    runs = []
    try:
        for i in range(args.runs):
            runs.append(one_run(spec_path, work / f"run{i}"))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = [r["cells"][0]["pretrain"] for r in runs]
    later = [c["pretrain"] for r in runs for c in r["cells"][1:]]
    record = {
        "bench": "cell_fixed_cost", "label": args.label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), CPU only",
        "versions": {"python": platform.python_version()},
        "setup": "3 cells of clip-tiny, 1 step of 32 samples each, one cell at a time, retrieval only",
        "pretrain_s_first_cell_median": round(statistics.median(first), 2),
        "pretrain_s_later_cells_median": round(statistics.median(later), 2),
        "evaluate_s_median": round(statistics.median(c["evaluate"] for r in runs for c in r["cells"]), 2),
        "condition_s_median": round(statistics.median(c["condition"] for r in runs for c in r["cells"]), 2),
        "study_wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
        "runs": runs,
    }
    try:
        import deepspeed
        import ray
        import torch

        record["versions"].update(torch=torch.__version__, deepspeed=deepspeed.__version__, ray=ray.__version__)
    except ImportError:
        pass
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([*history, record], indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
