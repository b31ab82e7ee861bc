"""SIGKILL during data conditioning or materialisation: the re-run is byte-identical.

A child process conditions a cell's data (plans, manifest, counters) and then materialises the
conditioned stream as shards; it is killed at a random moment, several times. After each kill
``counters.json`` — what the condition stage takes as "done" — exists only beside the plans and
manifest it describes, and a re-run writes every artifact byte for byte as an uninterrupted run
did. What the killed attempts leave is only ``.tmp-<artifact>.*`` temp files, which no reader
lists, and the next write of the same artifact removes them (the test at the end).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

NAMES = ["circle", "square", "triangle", "cross", "ring"]
SEED = 5
SPECS = [
    {"type": "subsample", "fraction": 0.9},
    {"type": "duplicate", "level": 0.05, "repeats": 2},
    {"type": "caption_noise", "level": 0.3, "mode": "random"},
    {"type": "label_noise", "level": 0.2, "count": "exact"},
]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)

CHILD = """
import json, sys
from pathlib import Path
from inheritlab.corruptors.chain import condition_data, materialize_condition
shards, specs, names, seed, cond, out = json.loads(sys.argv[1])
print("ready", flush=True)
condition_data(shards, specs, study_seed=seed, out_dir=cond, num_classes=len(names), class_names=names)
print("conditioned", flush=True)
materialize_condition(shards, specs, study_seed=seed, plan_dir=cond, out_dir=out, num_classes=len(names),
                      class_names=names, samples_per_shard=150)
print("materialised", flush=True)
"""


def _run(shards: list[str], cond: Path, out: Path) -> None:
    from inheritlab.corruptors.chain import condition_data, materialize_condition

    condition_data(shards, SPECS, study_seed=SEED, out_dir=cond, num_classes=5, class_names=NAMES)
    materialize_condition(shards, SPECS, study_seed=SEED, plan_dir=cond, out_dir=out, num_classes=5,
                          class_names=NAMES, samples_per_shard=150)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".tmp-")} if d.exists() else {}


def _temps(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs if d.exists() for p in d.iterdir() if p.name.startswith(".tmp-"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, float]:
    """3000 samples in 30 shards, and an uninterrupted reference run (with its duration)."""
    from inheritlab.corruptors.shards import write_shards

    root = tmp_path_factory.mktemp("cond-kill")
    samples = [{"__key__": f"k{i:05d}", "caption": f"a red {NAMES[i % 5]} number {i}.", "label": i % 5, "meta": {},
                "image": PNG, "image_ext": "png"} for i in range(3000)]
    shards = [str(p) for p in write_shards(samples, root / "src", samples_per_shard=100)]
    t0 = time.perf_counter()
    _run(shards, root / "ref" / "data", root / "ref" / "out")
    return shards, root / "ref", time.perf_counter() - t0


def test_killed_conditioning_or_materialising_reruns_byte_identical(source, tmp_path: Path) -> None:
    import json

    shards, ref, took = source
    want_cond, want_out = _files(ref / "data"), _files(ref / "out")
    assert "counters.json" in want_cond and "manifest.parquet" in want_cond and len(want_out) >= 18
    rng = random.Random(6)
    phases = []
    for r in range(6):
        work = tmp_path / f"cell{r}"  # fresh each round: what a kill leaves is that attempt's alone
        cond, out = work / "data", work / "out"
        args = json.dumps([shards, SPECS, NAMES, SEED, str(cond), str(out)])
        proc = subprocess.Popen([sys.executable, "-c", CHILD, args], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.1 * took))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reached = proc.stdout.read().split()
        proc.stdout.close()
        phases.append(reached[-1] if reached else "conditioning")
        # The condition stage is "done" once counters.json exists: then everything it names is whole.
        if (cond / "counters.json").exists():
            got = _files(cond)
            assert {k: got.get(k) for k in want_cond} == want_cond, f"round {r}: counters.json before its artifacts"
        for name, data in _files(cond).items():
            assert data == want_cond[name], f"round {r}: {name} is not what an uninterrupted run writes"
        for name, data in _files(out).items():  # a materialised shard is whole or absent
            assert data == want_out[name], f"round {r}: shard {name} is torn"
        _run(shards, cond, out)  # the re-run
        assert _files(cond) == want_cond and _files(out) == want_out, f"round {r}: the re-run differs"
        # Only temp files of the artifacts are left by the killed attempts, under names no
        # reader lists (not "*.tar", not "*.parquet", dot-prefixed).
        for name in _temps(cond, out):
            assert any(name.startswith(f".tmp-{k}.") for k in (*want_cond, *want_out)), name
    assert "conditioning" in phases  # some kills did land inside the condition stage


def test_a_rerun_after_a_kill_leaves_no_temp_files(source, tmp_path: Path) -> None:
    import json

    shards, ref, _ = source
    cond, out = tmp_path / "data", tmp_path / "out"
    # Killed deterministically: the manifest's temp file is whole and synced, its rename not done.
    code = """
import os, signal
_real = os.replace
def _replace(src, dst):
    if os.path.basename(str(src)).startswith(".tmp-manifest.parquet."):
        os.kill(os.getpid(), signal.SIGKILL)
    _real(src, dst)
os.replace = _replace
""" + CHILD
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([shards, SPECS, NAMES, SEED, str(cond), str(out)])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (cond / "counters.json").exists() and len(_temps(cond)) == 1
    _run(shards, cond, out)
    assert _files(cond) == _files(ref / "data")
    assert _temps(cond, out) == []
