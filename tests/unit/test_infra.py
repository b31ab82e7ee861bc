"""infra: stable hashing, the seed tree, atomic writes and the run-dir contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inheritlab.infra.atomic import atomic_dir, atomic_open, atomic_write_json, read_json
from inheritlab.infra.hashing import canonical_json, config_id, stable_hex, stable_int, stable_uniform_fn
from inheritlab.infra.rundir import RunDir
from inheritlab.infra.seeds import derive_seed


def test_stable_hash_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; ours must not be.
    here = stable_hex(7, "label_noise", "sample-000123")
    code = "from inheritlab.infra.hashing import stable_hex; print(stable_hex(7, 'label_noise', 'sample-000123'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert here == there


def test_hash_parts_are_unambiguous() -> None:
    assert stable_hex("ab", "c") != stable_hex("a", "bc")
    assert stable_hex(1) != stable_hex("1")
    assert stable_hex(1) != stable_hex(1.0)


def test_uniform_is_uniform_and_nested() -> None:
    u = stable_uniform_fn(0, "c")
    us = [u(f"k{i}") for i in range(20000)]
    assert us[7] == (stable_int(0, "c", "k7") % 2**53) / 2**53  # the definition, with the prefix hashed once
    assert all(0.0 <= u < 1.0 for u in us)
    mean = sum(us) / len(us)
    assert abs(mean - 0.5) < 0.01
    low = {i for i, u in enumerate(us) if u < 0.1}
    high = {i for i, u in enumerate(us) if u < 0.2}
    assert low < high  # the 10 % set is inside the 20 % set
    assert abs(len(high) / len(us) - 0.2) < 0.01


def test_seed_tree_branches_are_independent() -> None:
    a = derive_seed(0, "cell", "x", "train")
    assert a == derive_seed(0, "cell", "x", "train")
    assert a != derive_seed(0, "cell", "x", "eval")
    assert a != derive_seed(1, "cell", "x", "train")
    assert 0 <= a < 2**63


def test_config_id_ignores_key_order_and_sees_values() -> None:
    a = {"x": 1, "y": {"b": 2.0, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2.0}, "x": 1}
    assert canonical_json(a) == canonical_json(b)
    assert config_id(a, 1) == config_id(b, 1)
    assert config_id(a, 1) != config_id(a, 2)
    assert config_id(a, 1) != config_id({**a, "x": 2}, 1)
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as fh:
            fh.write(b'{"v": 2, "torn')
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_dir_appears_whole(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "step_10"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "part").write_text("x")
            raise RuntimeError("crash")
    assert not target.exists()
    with atomic_dir(target) as d:
        (d / "model.pt").write_text("weights")
    assert (target / "model.pt").read_text() == "weights"
    with atomic_dir(target) as d:  # replacing an existing checkpoint dir
        (d / "model.pt").write_text("weights2")
    assert (target / "model.pt").read_text() == "weights2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["step_10"]


def test_read_json_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(p)


def test_run_dir_completion_is_the_marker_only(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path)
    c = run.cell("abc")
    c.results.parent.mkdir(parents=True)
    c.results.write_bytes(b"x")
    assert not c.is_complete() and run.completed_cells() == []
    c.mark_complete({"rows": 1})
    assert c.is_complete() and [x.root.name for x in run.completed_cells()] == ["abc"]
