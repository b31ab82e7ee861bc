"""Fail before starting what cannot finish: a spec naming a path that is not there, a run
directory that cannot be written, a mistyped name, a curve the results do not have — each
refused before Prefect or Ray start, in one paragraph naming the field, the value and what to
do (with the nearest known name for a near miss), with a non-zero exit and no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from inheritlab.flows.cli import app
from inheritlab.infra.errors import SpecError, did_you_mean
from typer.testing import CliRunner

runner = CliRunner()


# ----------------------------------------------------------------------------------- fixtures


def _data(root: Path) -> Path:
    """Just enough of a user's data for the path checks: class names and one (empty) shard per split."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("zero\none\n")
    for split in ("train", "test", "ood"):
        (root / split).mkdir()
        with tarfile.open(root / split / "000000.tar", "w"):
            pass
    return root


def _spec(tmp_path: Path, **changes: Any) -> Path:
    """A spec file on the data above; ``changes`` maps a dotted path to a new value (None: removed)."""
    root = _data(tmp_path / "data") if not (tmp_path / "data").exists() else tmp_path / "data"
    spec: dict[str, Any] = {
        "name": "early",
        "data": {"source": "shards", "shards": {"train": str(root / "train"), "test_id": str(root / "test"),
                                                "test_ood": str(root / "ood")}},
        "grid": {"bias": [{"type": "label_noise", "levels": [0.0, 0.3]}], "model": ["clip-tiny"],
                 "data_scale": {"values": [64]}},
        "eval": {"tasks": ["zeroshot"]},
    }
    for path, value in changes.items():
        node = spec
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is None:
            node.pop(last)
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


class _NoFlow:
    """Stands in for the study flow: a run that reaches it has started something."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def with_options(self, **_: Any) -> Any:
        return self._call

    def _call(self, *args: Any, return_state: bool = False) -> Any:
        from prefect.states import Completed

        self.calls.append(args)
        return Completed(data={"started": True}) if return_state else {"started": True}


@pytest.fixture()
def no_start(monkeypatch: pytest.MonkeyPatch) -> _NoFlow:
    """The study flow and Ray's entry point replaced: the flow records a call, Ray refuses one."""
    from inheritlab.flows import study_flow

    def no_ray(*_: Any, **__: Any) -> None:
        raise AssertionError("Ray was initialised")

    stub = _NoFlow()
    monkeypatch.setattr(study_flow, "study_flow", stub)
    monkeypatch.setattr(study_flow, "init_ray", no_ray)
    return stub


@pytest.fixture()
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be written into: mode 555, or for root the immutable flag."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        undo = [lambda: d.chmod(0o755)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True, check=False).returncode == 0:
        undo = [lambda: subprocess.run(["chattr", "-i", str(d)], check=True)]
    else:
        pytest.skip("root, and no chattr +i here: no way to make a read-only directory")
    try:
        try:
            (d / "probe").touch()
        except OSError:
            pass
        else:
            pytest.skip("the directory is still writable")
        yield d
    finally:
        undo[0]()


def _refused(res: Any) -> str:
    """The CLI's error: exit 2 (not a crash), one paragraph, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)
    out = res.output.strip()
    assert out.startswith("error: ") and "Traceback" not in out and "\n" not in out, out
    return out


# ----------------------------------------------------------------------------------- the helper


def test_did_you_mean() -> None:
    assert did_you_mean("label_nosie", ["dedup", "label_noise"]) == " (did you mean 'label_noise'?)"
    assert did_you_mean("ZEROSHOT", ["zeroshot", "linear_probe"]) == " (did you mean 'zeroshot'?)"
    assert did_you_mean("zeroshot", ["zeroshot"]) == ""  # not a miss
    assert did_you_mean("xyzzy", ["zeroshot", "linear_probe"]) == ""  # nothing near
    assert did_you_mean(1.5, ["a"]) == ""


# ----------------------------------------------------------------------------------- names in the spec


@pytest.mark.parametrize("change, needles", [
    ({"grid.bias.0.type": "label_nosie"},
     ["grid.bias[0].type: got 'label_nosie' (did you mean 'label_noise'?); allowed:"]),
    ({"grid.bias.0.levels": [0.0, 1.5]},
     ["grid.bias[0].levels[1]: Input should be less than or equal to 1 (got 1.5)", "from 0 (the clean control) to 1"]),
    ({"grid.model": ["clip-tinny"]}, [("grid.model[0]: 'clip-tinny' is not a rung of modality 'clip' (did you mean "
                                       "'clip-tiny'?); known: clip-mini, clip-tiny")]),
    ({"eval.tasks": ["zero_shot"]}, [("eval.tasks[0]: 'zero_shot' is not a task of modality 'clip' (did you mean "
                                      "'zeroshot'?)")]),
    ({"modality": "clp"}, ["modality: got 'clp' (did you mean 'clip'?)"]),
    ({"grid.sedes": [1]}, ["grid.sedes: unknown key (not part of the spec) (got [1]) (did you mean 'seeds'?)"]),
    ({"data.source": "shard"}, [("data.source: Input should be 'builtin' or 'shards' (got 'shard') (did you mean "
                                 "'shards'?)")]),
    ({"grid.bias.0.params": {"mdoe": "symmetric"}}, [("grid.bias[0].mdoe: unknown parameter for corruptor "
                                                      "'label_noise' (did you mean 'mode'?)")]),
])
def test_a_mistyped_name_gets_the_nearest(tmp_path: Path, no_start: _NoFlow, change: dict[str, Any],
                                          needles: list[str]) -> None:
    spec = _spec(tmp_path, **change)
    for command in (["validate", str(spec)], ["run", str(spec), "--run-dir", str(tmp_path / "run")]):
        out = _refused(runner.invoke(app, command))
        assert f"invalid study spec {spec}: " in out
        for needle in needles:
            assert needle in out, out
    assert not (tmp_path / "run").exists() and not no_start.calls


def test_a_mistyped_shipped_study(no_start: _NoFlow) -> None:
    out = _refused(runner.invoke(app, ["run", "demoo"]))
    assert "no study spec at 'demoo'" in out and "(did you mean 'demo'?)" in out and "label-noise" in out
    assert not no_start.calls


# ----------------------------------------------------------------------------------- paths the spec names


def test_a_missing_split_is_refused_before_anything_starts(tmp_path: Path, no_start: _NoFlow) -> None:
    import ray

    ray_before = ray.is_initialized()  # an earlier test in this process may have left one running
    spec = _spec(tmp_path, **{"data.shards.test_ood": str(tmp_path / "data" / "tset")})
    run_dir = tmp_path / "run"
    for command in (["validate", str(spec)], ["run", str(spec), "--run-dir", str(run_dir)]):
        out = _refused(runner.invoke(app, command))
        assert f"data.shards.test_ood: '{tmp_path / 'data' / 'tset'}'" in out, out
        assert "shard directory does not exist (did you mean 'test'?)" in out
        assert "point it at a directory of .tar shards" in out and "leave it out" in out
    assert not run_dir.exists() and not no_start.calls and ray.is_initialized() == ray_before


def test_run_study_checks_before_its_flow(tmp_path: Path, no_start: _NoFlow) -> None:
    from inheritlab.flows.spec import load_spec
    from inheritlab.flows.study_flow import run_study

    spec = load_spec(str(_spec(tmp_path, **{"data.shards.test_ood": "data/tset"})))
    with pytest.raises(SpecError) as err:
        run_study(spec, tmp_path / "run")
    msg = str(err.value)
    assert f"data.shards.test_ood: 'data/tset' ({Path.cwd() / 'data' / 'tset'})" in msg  # where a relative path points
    assert not (tmp_path / "run").exists() and not no_start.calls


def test_every_missing_path_is_named_in_one_paragraph(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    suite = tmp_path / "suite"
    (suite / "digits" / "test").mkdir(parents=True)
    (suite / "digits_inverted" / "test").mkdir(parents=True)
    spec = _spec(tmp_path, **{"data.shards.test_id": str(data / "val"), "data.shards.classnames": str(data / "names.txt"),
                              "eval.suites": {"root": str(suite), "tasks": ["digits", "digts", "digits_inverted"],
                                              "split": "tset"}})
    out = _refused(runner.invoke(app, ["validate", str(spec)]))
    assert f"data.shards.test_id: '{data / 'val'}'" in out
    assert ("4 more path(s) the spec names are missing too: data.shards.classnames, eval.suites.split, "
            "eval.suites.tasks[1]") in out, out


def test_a_missing_train_split_comes_before_what_it_would_have_held(tmp_path: Path) -> None:
    # Class names are read beside the train split: a mistyped one is said first, not only "no class names".
    train = tmp_path / "dat" / "train"
    out = _refused(runner.invoke(app, ["validate", str(_spec(tmp_path, **{"data.shards.train": str(train)}))]))
    assert f"invalid study spec {tmp_path / 'spec.yaml'}: data.shards.train: '{train}' — shard directory does not exist" in out
    assert out.index("shard directory does not exist") < out.index("needs class names")


def test_a_missing_suite_task(tmp_path: Path) -> None:
    from inheritlab.flows.preflight import check_paths
    from inheritlab.flows.spec import load_spec

    suite = tmp_path / "suite"
    for task in ("digits", "digits_inverted"):
        (suite / task / "test").mkdir(parents=True)
    spec = load_spec(str(_spec(tmp_path, **{"eval.suites": {"root": str(suite), "tasks": ["digits", "digts"]}})))
    with pytest.raises(SpecError) as err:
        check_paths(spec)
    msg = str(err.value)
    assert f"eval.suites.tasks[1]: 'digts' ({suite / 'digts'})" in msg and "(did you mean 'digits'?)" in msg
    assert f"name a sub-directory of {suite}: digits, digits_inverted" in msg
    spec = load_spec(str(_spec(tmp_path, **{"eval.suites": {"root": str(tmp_path / "nowhere"), "tasks": ["digits"]}})))
    with pytest.raises(SpecError, match=r"eval\.suites\.root: .*nowhere' — no such directory"):
        check_paths(spec)


# ----------------------------------------------------------------------------------- the run directory


def test_a_read_only_run_directory(tmp_path: Path, read_only: Path, no_start: _NoFlow) -> None:
    spec = _spec(tmp_path)
    for command in (["validate", str(spec), "--run-dir", str(read_only)],
                    ["run", str(spec), "--run-dir", str(read_only)]):
        out = _refused(runner.invoke(app, command))
        assert f"run directory {read_only} is read-only" in out and "pass --run-dir a directory you can write to" in out
    below = read_only / "study"
    out = _refused(runner.invoke(app, ["run", str(spec), "--run-dir", str(below)]))
    assert f"run directory {below} cannot be created: {read_only} above it is read-only" in out
    assert not any(read_only.iterdir()) and not no_start.calls


def test_a_missing_run_directory_is_made_and_nothing_else_before_the_flow(tmp_path: Path, no_start: _NoFlow) -> None:
    from inheritlab.flows.preflight import check_run_dir

    run_dir = tmp_path / "runs" / "early"
    assert check_run_dir(run_dir, create=False) == run_dir and not (tmp_path / "runs").exists()  # validate's check
    res = runner.invoke(app, ["run", str(_spec(tmp_path)), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert run_dir.is_dir() and not any(run_dir.iterdir())  # made, and left empty (the probe removed)
    assert len(no_start.calls) == 1 and no_start.calls[0][1] == str(run_dir)
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="is a file, not a directory"):
        check_run_dir(tmp_path / "file" / "run")


# ----------------------------------------------------------------------------------- curves


def test_curves_refuses_what_the_results_lack(tmp_path: Path) -> None:
    from inheritlab.analysis.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "run", levels=(0.0, 0.2), scales=(1e4, 1e5, 1e6))
    out = _refused(runner.invoke(app, ["curves", str(run.root), "--task", "zero_shot"]))
    assert "--task 'zero_shot'" in out and "(did you mean 'zeroshot'?)" in out and "the tasks there: zeroshot" in out
    out = _refused(runner.invoke(app, ["curves", str(run.root), "--split", "OOD"]))
    assert "(did you mean 'ood'?)" in out and "the splits of task 'zeroshot' there: id, ood" in out
    out = _refused(runner.invoke(app, ["curves", str(run.root), "--split", "ood", "--metric", "top1"]))
    assert "--metric 'top1'" in out and "the metrics of task 'zeroshot', split 'ood' there: acc1" in out
    assert not (run.root / "curves").exists()  # no empty plot written


# ----------------------------------------------------------------------------------- the real command


def test_the_real_command_fails_in_one_paragraph(tmp_path: Path) -> None:
    spec = _spec(tmp_path, **{"data.shards.test_ood": str(tmp_path / "data" / "tset")})
    exe = shutil.which("inheritlab")
    cmd = [exe] if exe else [sys.executable, "-m", "inheritlab.flows.cli"]
    res = subprocess.run([*cmd, "run", str(spec), "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("error: study 'early': data.shards.test_ood: ") and res.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()
