"""The operator's terminal: ``inheritlab run`` shows our progress lines and a summary; what
Prefect, Ray and the workers print goes to ``RUN_DIR/logs/``; failures come in one paragraph."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from inheritlab.flows import console, progress

# What the libraries said on the terminal before (see the issue "The operator's view").
THIRD_PARTY = ("telemetry", "Ray Train Controller", "Setting accelerator", "No pretrained weights",
               "TrainWorker pid", "prefect.server", "database is locked", "Beginning flow run", "Finished in state")

MICRO = {
    "name": "term",
    "modality": "clip",
    "data": {"world": {"num_classes": 10, "image_size": 32, "train_size": 512, "test_id_size": 128,
                       "test_ood_size": 128, "samples_per_shard": 128}},
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.0, 0.5], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        "data_scale": {"values": [256], "unique": "fixed"},
        "seeds": [0],
    },
    "train": {"batch_size": 64, "ckpt_every": 2, "workers": 1},
    "eval": {"tasks": ["zeroshot"]},
    "analysis": {"metric": "acc1", "task": "zeroshot", "split": "id"},
}
LABELS = ("clean/clip-tiny/n=256/s0", "label_noise=0.5/clip-tiny/n=256/s0")


def _inheritlab(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("inheritlab")
    cmd = [exe] if exe else [sys.executable, "-m", "inheritlab.flows.cli"]
    # Prefect at its default level (the suite's conftest quiets it): its lines must reach the file.
    env = {**os.environ, "INHERITLAB_PROGRESS_EVERY_S": "20", "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)


@pytest.mark.slow
def test_a_run_shows_progress_and_a_summary_and_logs_the_rest(tmp_path: Path) -> None:
    spec = tmp_path / "term.yaml"
    spec.write_text(yaml.safe_dump(MICRO))
    run_dir = tmp_path / "run"

    res = _inheritlab("run", str(spec), "--run-dir", str(run_dir), timeout=400)
    shown = res.stdout + res.stderr
    (tmp_path / "terminal.txt").write_text(shown)  # kept with the test's files, to read after a failure
    assert res.returncode == 0, shown
    lines = shown.splitlines()
    assert len(lines) < 60, shown
    for marker in THIRD_PARTY:
        assert marker not in shown, f"{marker!r} reached the terminal:\n{shown}"
    log = run_dir / "logs" / "study.log"
    assert f"study term: 2 cells, 0 already complete, 2 to run; logs: {log}" in shown
    for label in LABELS:
        assert any(label in ln and " done in " in ln and "pretrain " in ln for ln in lines), shown
    # The summary: a row per cell with its status and headline value, then where things are.
    assert "study term: 2 of 2 cells complete" in shown
    header = next(ln for ln in lines if ln.strip().startswith("cell ") and "zeroshot/id acc1" in ln)
    rows = lines[lines.index(header) + 1:lines.index(header) + 3]
    assert [r.split()[0] for r in rows] == list(LABELS) and all(r.split()[1] == "done" for r in rows), shown
    assert f"results: {run_dir / 'results'}" in shown and f"logs:    {log}" in shown
    assert "{" not in res.stdout  # no JSON dict without --json

    # Everything else is in the file: Prefect's lines, Ray's driver side, where the workers' output is.
    text = log.read_text(encoding="utf-8")
    assert "Beginning flow run 'study term'" in text and "ray workers' stdout/stderr" in text
    assert "log_to_driver is off" in text

    # --json: the machine-readable dict on stdout (a relaunch: every cell is complete).
    again = _inheritlab("run", str(spec), "--run-dir", str(run_dir), "--json", timeout=240)
    (tmp_path / "json-stdout.txt").write_text(again.stdout)
    (tmp_path / "json-stderr.txt").write_text(again.stderr)
    assert again.returncode == 0, again.stdout + again.stderr
    try:
        out = json.loads(again.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON ({exc}):\n{again.stdout}") from None
    assert out["cells"] == 2 and out["ran"] == 0 and out["run_dir"] == str(run_dir.resolve())
    assert "study term: 2 cells, 2 already complete, 0 to run" in again.stderr
    for marker in THIRD_PARTY:
        assert marker not in again.stdout + again.stderr


# ----------------------------------------------------------------------------- no study needed


def test_progress_lines_and_the_eta() -> None:
    board = progress.reset(log_file="/x/logs/study.log")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = Keep()
    progress.LOGGER.addHandler(keep)
    level = progress.LOGGER.level
    progress.LOGGER.setLevel(logging.INFO)
    try:
        progress.study_started("s", 4, 1, ["a/s0", "b/s0", "c/s0"])
        progress.stage_started("a/s0", "condition")
        progress.stage_started("a/s0", "pretrain", ("condition", 1.25))
        board.cells["a/s0"].started -= 10.0
        progress.cell_finished("a/s0", {"condition": 1.25, "pretrain": 8.5, "record": 0.1})
        progress.stage_started("b/s0", "pretrain")
        progress.cell_failed("b/s0", "pretrain", RuntimeError("workers died\nsecond line\nthird\nfourth"))
        progress.cell_failed("b/s0", "", RuntimeError("reported again"))  # once only
    finally:
        progress.LOGGER.removeHandler(keep)
        progress.LOGGER.setLevel(level)
    assert records[0] == "study s: 4 cells, 1 already complete, 3 to run; logs: /x/logs/study.log"
    # Stage changes are in the log file only (DEBUG); the done line says where the time went.
    assert records[1].startswith("a/s0  done in 10.") and records[1].endswith("(condition 1.2 s, pretrain 8.5 s)  [1/3 done]")
    assert records[2].startswith("b/s0  FAILED in pretrain after ") and "RuntimeError: workers died / second line" in records[2]
    assert len(records) == 3
    assert board.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 1, "elsewhere": 0, "cancelled": 0}
    eta = board.eta_s()
    assert eta is not None and 9.0 < eta < 12.0  # one queued cell at the mean of the finished one
    assert "1/3 done, 0 running, 1 queued, 1 failed; ETA ~" in board.line()

    text = console.render_failure(RuntimeError("2 of 3 cells failed"), None)
    assert text.startswith("1 cell(s) failed:\n  b/s0 in pretrain after ")
    assert "workers died / second line / third (+1 more lines)" in text
    progress.reset()


def test_a_study_error_is_one_paragraph_naming_the_log(tmp_path: Path) -> None:
    from inheritlab.infra.errors import SpecError

    progress.reset()
    log = console.Session(run_dir=tmp_path, verbose=False, log_file=tmp_path / "logs" / "study.log")
    text = console.render_failure(SpecError("study 'x': the data cannot serve it:\n  - shard-000000.tar is truncated"), log)
    assert text.splitlines() == ["study 'x': the data cannot serve it:", "  - shard-000000.tar is truncated",
                                 f"full traceback and the libraries' output: {tmp_path / 'logs' / 'study.log'}"]
    assert console.render_failure(KeyError("k"), None) == "KeyError: 'k'"


def test_prefects_server_logs_to_a_file(tmp_path: Path) -> None:
    """The logging config handed to Prefect: its stream handlers write the run's file."""
    path = console.prefect_logging_config(tmp_path / "logs" / "prefect-server.log", tmp_path / "cfg.yml")
    assert path is not None
    config = yaml.safe_load(path.read_text())
    for handler in config["handlers"].values():
        assert "stream" not in handler
    assert config["handlers"]["console"]["class"] == "inheritlab.flows.console.RunLogHandler"
    assert config["root"]["handlers"] == ["console"]
    assert "handlers" not in config["loggers"]["uvicorn"] and config["loggers"]["uvicorn"]["propagate"] is True
    assert config["loggers"]["prefect.flow_runs"]["handlers"] == ["api"]  # the dashboard still gets the run logs


def test_a_session_keeps_the_terminal_for_progress_and_puts_everything_back(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, os.environ.get("PREFECT_LOGGING_CONFIG_PATH"), progress.workers_to_terminal())
    run_dir = tmp_path / "run"
    with console.session(run_dir, tick_s=3600) as s:
        assert not progress.workers_to_terminal()
        logging.getLogger("some.library").warning("library noise")
        logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU")
        progress.LOGGER.info("our line")
        assert os.environ["PREFECT_LOGGING_CONFIG_PATH"].endswith("prefect-logging.yml")
    out = capsys.readouterr()
    assert "our line" in out.out and "library noise" not in out.out + out.err and "Setting accelerator" not in out.out + out.err
    text = s.log_file.read_text()
    assert "library noise" in text and "our line" in text and "Setting accelerator to CPU" in text
    assert (list(root.handlers), root.level, os.environ.get("PREFECT_LOGGING_CONFIG_PATH"),
            progress.workers_to_terminal()) == before
    assert not logging.getLogger("DeepSpeed").filters


def test_a_session_that_logs_nothing_leaves_no_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with console.session(run_dir, tick_s=3600):
        pass
    assert not any(run_dir.iterdir())
