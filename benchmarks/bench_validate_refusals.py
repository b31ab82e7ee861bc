"""How long ``inheritlab validate`` takes to refuse each mistake a user makes with their own data.

Writes the own-data example (img2dataset-style shards, a CLIP_benchmark-style suite), then for
each mistake of ``tests/unit/test_own_data.py`` breaks a copy of it, runs ``inheritlab validate``
as a whole process (what a user waits for: start-up included) and records its wall time, its exit
code and the first line of its error, plus the in-process data-check time for the good spec.

    python benchmarks/bench_validate_refusals.py --out benchmarks/results/validate_refusals_cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from results_io import write_record  # noqa: E402
from test_own_data import MISTAKES, _spec  # noqa: E402


def _validate(spec: dict, where: Path) -> tuple[float, int, str]:
    path = where / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    proc = subprocess.run(["inheritlab", "validate", str(path)], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    first = next((ln.strip() for ln in lines if ln.strip().startswith(("-", "error", "  -"))), lines[-1] if lines else "")
    return seconds, proc.returncode, " ".join(lines)[:600] if proc.returncode else first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from inheritlab.corruptors.foreign import write_foreign_data

    with tempfile.TemporaryDirectory() as tmp:
        base = write_foreign_data(Path(tmp) / "base", seed=0).root
        rows = []
        for name in ["(none: the example as shipped)", *sorted(MISTAKES)]:
            work = Path(tmp) / f"case-{len(rows)}"
            shutil.copytree(base, work / "data")
            changes: dict = {}
            if name in MISTAKES:
                make, changes, _ = MISTAKES[name]
                make(work / "data")
            seconds, code, message = _validate(_spec(work / "data", **changes), work)
            rows.append({"mistake": name, "validate_s": round(seconds, 2), "exit_code": code, "message": message})
            print(f"{name:40s} {seconds:6.2f} s  exit {code}")
    import torch

    write_record(args.out, {
        "benchmark": "validate_refusals", "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "what": "wall time of the whole `inheritlab validate SPEC` process (Python start-up and imports "
                "included) on a copy of the own-data example with one mistake made",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
