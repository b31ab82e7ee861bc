"""The pieces behind the operator's controls, without a study: the trainer's progress file and
stop request, the scheduler's stop, what ``inheritlab status`` reads from a cell directory, the
training progress passed to the terminal and the dashboard, and the records of killed launches."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from inheritlab.flows import console, launches, progress
from inheritlab.flows.scheduler import PlacementLog, run_admitted
from inheritlab.infra.rundir import CellDir
from inheritlab.trainers.loop import CellControl, LossLog, process_age_s


def test_progress_file_first_step_then_every_interval_and_the_last(tmp_path: Path) -> None:
    control = CellControl(tmp_path, rank=0, world=1, total_steps=10, per_step=32, every_s=3600)
    losses = LossLog(every=2)
    assert not (tmp_path / "progress.json").exists()
    control.mark("start", at=0.5)
    control.mark("engine")
    control.mark("first_batch")
    control.mark("engine")  # a phase ends once: the first mark stands
    control.stepped(1, losses)
    first = json.loads((tmp_path / "progress.json").read_text())
    assert first["step"] == 1 and first["total_steps"] == 10 and first["samples_per_s"] is None
    assert first["first_step_after_s"] is not None and 0 <= first["first_step_after_s"] < 3600
    # The start-up split: when each phase ended, in seconds since the process started.
    startup = first["startup"]
    assert set(startup) == {"start", "engine", "first_batch", "first_step"} and startup["start"] == 0.5
    assert startup["engine"] <= startup["first_batch"] <= startup["first_step"] == first["first_step_after_s"]
    losses.curve.append([2, 3.25])
    control.stepped(2, losses)  # not due: the file stays at step 1
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 1
    control.stepped(10, losses)  # the last step is always written
    last = json.loads((tmp_path / "progress.json").read_text())
    assert last["step"] == 10 and last["loss"] == 3.25 and last["loss_step"] == 2 and last["samples_per_s"] > 0
    # Another rank never writes.
    other = tmp_path / "r1"
    CellControl(other, rank=1, world=2, total_steps=10, per_step=32).stepped(1, losses)
    assert not (other / "progress.json").exists()


def test_stop_request_is_seen_at_the_poll_steps(tmp_path: Path) -> None:
    control = CellControl(tmp_path, rank=0, world=1, total_steps=10, per_step=1, poll_steps=4)
    assert not control.stop_requested(4)
    CellDir(tmp_path).stop_request.write_text("now")
    assert not control.stop_requested(5) and control.stop_requested(8)


def test_process_age_is_this_process_lifetime() -> None:
    age = process_age_s()
    assert age is not None and 0 < age < 24 * 3600
    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(1.2); from inheritlab.trainers.loop import "
                          "process_age_s; print(process_age_s())"], capture_output=True, text=True, check=True)
    assert 1.1 < float(out.stdout.strip()) < 30


def test_a_stop_admits_no_more_cells(tmp_path: Path) -> None:
    from inheritlab.flows.grid import expand_grid
    from inheritlab.flows.scheduler import resolve
    from inheritlab.flows.spec import StudySpec
    from inheritlab.infra.raycluster import local_machine

    spec = StudySpec.model_validate({"name": "s", "grid": {"bias": [{"type": "label_noise", "levels": [0.0, 0.2, 0.4]}],
                                                           "model": ["clip-tiny"], "data_scale": {"values": [64]}}})
    cluster = local_machine()
    cells = resolve(expand_grid(spec), cluster, use_gpu=False)
    stop = {"now": False}
    ran = []

    def one(cell):  # noqa: ANN001, ANN202
        ran.append(cell.label)
        stop["now"] = True  # the operator stops while the first cell runs
        return "ok"

    results = run_admitted(cells, cluster, one, use_gpu=False, log=PlacementLog(tmp_path / "p.jsonl"),
                           max_concurrent=1, poll_s=0.05, stop=lambda: stop["now"])
    assert len(ran) == 1
    assert sorted(r[1] for r in results) == ["not admitted", "not admitted", "ok"]


def _cell(tmp_path: Path) -> CellDir:
    c = CellDir(tmp_path / "cells" / "abc")
    c.root.mkdir(parents=True)
    return c


def test_disk_status_of_each_kind_of_unfinished_cell(tmp_path: Path) -> None:
    c = _cell(tmp_path)
    assert console.disk_status(c, stale_s=60) == "not started"
    c.data.mkdir()
    c.counters.write_text("{}")
    assert console.disk_status(c, stale_s=60) == "data conditioned, not trained"
    c.ckpt.mkdir()
    (c.ckpt / "latest.json").write_text(json.dumps({"step": 40}))
    c.progress.write_text(json.dumps({"step": 47, "total_steps": 96, "loss": 2.5, "samples_per_s": 1234.0,
                                      "updated": time.time()}))
    assert console.disk_status(c, stale_s=60) == "stopped at checkpoint step 40/96 (a rerun resumes)"
    # A lease held by a live process of this host: running, with the training progress.
    (c.root / "lease.json").write_text(json.dumps({"owner": f"{os.uname().nodename}:{os.getpid()}:x"}))
    assert console.disk_status(c, stale_s=60) == "running: pretrain step 47/96 (49%), loss 2.500, 1,234 samples/s"
    (c.root / "lease.json").unlink()
    c.failure.write_text(json.dumps({"stage": "evaluate", "error": "ShardError: bad shard x.tar\nmore"}))
    assert console.disk_status(c, stale_s=60) == "failed in evaluate: ShardError: bad shard x.tar (+1 more lines)"


def test_training_progress_reaches_the_lines_and_the_dashboard(tmp_path: Path) -> None:
    c = _cell(tmp_path)
    board = progress.reset()
    progress.study_started("s", 1, 0, ["a/s0"])
    posted: list[str] = []

    class Dash(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            posted.append(record.getMessage())

    dash = logging.getLogger("test-dashboard")
    dash.propagate = False
    dash.setLevel(logging.INFO)
    dash.addHandler(Dash())
    progress.stage_started("a/s0", "pretrain", cell_dir=c.root, dashboard=dash)
    assert progress.post_to_dashboard() == 0  # nothing trained yet
    c.progress.write_text(json.dumps({"step": 12, "total_steps": 96, "loss": 4.0, "samples_per_s": 900.0,
                                      "updated": 100.0}))
    assert board.cell_lines()[0].startswith("  a/s0  pretrain  step 12/96 (12%), loss 4.000, 900 samples/s  [")
    assert progress.post_to_dashboard() == 1 and progress.post_to_dashboard() == 0  # once per update
    assert posted == ["pretrain step 12/96 (12%), loss 4.000, 900 samples/s"]
    # A stop request reaches the running cell's directory.
    progress.request_stop()
    assert progress.stop_requested() and progress.ask_running_cells_to_stop() == 1 and c.stop_request.is_file()
    progress.cell_stopped("a/s0", "pretrain", "training stopped; checkpoint of step 12 committed")
    assert "1 stopped" in board.line() and progress.as_dict()["a/s0"]["state"] == "cancelled"
    progress.reset()
    assert not progress.stop_requested()


def test_records_of_dead_launches_are_found(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    mine = launches.LaunchRecord(tmp_path, f"{host}:{os.getpid()}:me")
    mine.add("study s", "11111111-1111-1111-1111-111111111111")
    gone = launches.LaunchRecord(tmp_path, f"{host}:{dead.pid}:old")
    gone.add("study s", "22222222-2222-2222-2222-222222222222")
    gone.add("cell a/s0", "33333333-3333-3333-3333-333333333333")
    alive = launches.LaunchRecord(tmp_path, f"{host}:{os.getppid()}:other")  # a live process: not dead
    alive.add("study s", "44444444-4444-4444-4444-444444444444")
    found = launches.dead_launches(tmp_path, me=mine.owner, stale_s=60)
    assert [f["owner"] for f in found] == [gone.owner]
    assert found[0]["runs"] == {"study s": "22222222-2222-2222-2222-222222222222",
                                "cell a/s0": "33333333-3333-3333-3333-333333333333"}
    mine.close()
    assert not mine.path.exists()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))


def test_live_display_only_on_an_interactive_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("INHERITLAB_PLAIN", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert console.live_display(verbose=False, to_stderr=False) is None  # a pipe or a file: plain lines
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    assert console.live_display(verbose=True, to_stderr=False) is None  # library output would tear it
    monkeypatch.setenv("INHERITLAB_PLAIN", "1")
    assert console.live_display(verbose=False, to_stderr=False) is None
    monkeypatch.delenv("INHERITLAB_PLAIN")
    live = console.live_display(verbose=False, to_stderr=False)
    assert live is not None
    # What it draws: the study line, then a line per running cell with its training progress.
    c = _cell(tmp_path)
    progress.reset()
    progress.study_started("s", 2, 0, ["a/s0", "b/s0"])
    progress.stage_started("a/s0", "pretrain", cell_dir=c.root)
    c.progress.write_text(json.dumps({"step": 3, "total_steps": 6, "loss": 1.5, "samples_per_s": 10.0, "updated": 1.0}))
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=200).print(live.get_renderable())
    drawn = out.getvalue().splitlines()
    assert drawn[0].startswith("study s: 0/2 done, 1 running, 1 queued, 0 failed")
    assert drawn[1].startswith("  a/s0  pretrain  step 3/6 (50%), loss 1.500, 10 samples/s")
    progress.reset()


def test_first_signal_stops_gracefully_second_exits_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import signal

    from inheritlab.flows import interrupts

    exits: list[int] = []
    monkeypatch.setattr(interrupts, "_exit_now", exits.append)
    c = _cell(tmp_path)
    progress.reset()
    progress.study_started("s", 1, 0, ["a/s0"])
    progress.stage_started("a/s0", "pretrain", cell_dir=c.root)
    interrupts.install()
    try:
        assert signal.getsignal(signal.SIGINT) is interrupts._handle
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a library takes SIGTERM (ray.init does) ...
        interrupts.reinstall()                          # ... and the launch takes it back
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
        interrupts._handle(signal.SIGINT, None)
        assert progress.stop_requested() and c.stop_request.is_file() and exits == []
        interrupts._handle(signal.SIGINT, None)
        assert exits == [128 + signal.SIGINT]
    finally:
        interrupts.uninstall()
        progress.reset()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_summary_gives_the_inheritance_verdict(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "delta_zeroshot_id_acc1.csv").write_text(
        "bias_type,bias_level,data_scale,mean,std,n_seeds,clean_mean,clean_std,clean_n,delta,delta_se\n"
        "label_noise,0.0,1000.0,0.3,0.01,2,0.3,0.01,2,0.0,0.01\n"
        "label_noise,0.2,1000.0,0.295,0.01,2,0.3,0.01,2,-0.005,0.014\n"
        "label_noise,0.5,1000.0,0.2,0.01,2,0.3,0.01,2,-0.1,0.014\n"
        "label_noise,0.5,500.0,0.2,0.01,2,0.25,0.01,2,-0.05,0.014\n")
    lines = console._verdict(tmp_path, "zeroshot", "id", "acc1")
    assert lines == ["verdict: Δ zeroshot/id acc1 vs clean at the largest scale: label_noise 0.2: -0.005 ± 0.014 "
                     "(n=1,000, 2 seed(s)); label_noise 0.5: -0.100 ± 0.014 (n=1,000, 2 seed(s))",
                     "critical level: label_noise 0.5"]
    assert console._verdict(tmp_path, "zeroshot", "ood", "acc1") == []  # no analysis of that yet
