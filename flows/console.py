"""The terminal of ``inheritlab run``: our progress lines, a summary at the end, errors in one
paragraph — and everything the libraries say in ``RUN_DIR/logs/``, not on the terminal.

Third-party output is kept off the terminal where it starts, by settings made before the
libraries start (``--verbose`` leaves them as they are):

- this process's logging — Prefect's flow and task lines, Ray's driver side, Python warnings,
  ours at DEBUG — goes to ``RUN_DIR/logs/study.log``;
- Prefect's temporary server (a subprocess) logs to ``RUN_DIR/logs/prefect-server.log``: Prefect
  reads its logging config from ``PREFECT_LOGGING_CONFIG_PATH``, here a copy of the one it would
  use whose stream handlers write that file; ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` stops its
  telemetry service (offline it fails every few minutes, and its SQLite writes lock the database);
- Ray keeps its workers' stdout and stderr (training, evaluation: DeepSpeed, open_clip, Ray
  Train) in its session log directory (``ray.init(log_to_driver=False)``), named in study.log;
- the driver-side loggers that bring their own terminal handler (``ray``, DeepSpeed's) are
  pointed at study.log.

The only terminal handler left is the one on ``inheritlab.progress`` (:mod:`.progress`).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inheritlab.flows import progress

STUDY_LOG = "study.log"
SERVER_LOG = "prefect-server.log"
FILE_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"

# Loggers that log every HTTP request at INFO (each Prefect API call): warnings only in the file.
_CHATTY = ("httpx", "httpcore")


class RunLogHandler(logging.FileHandler):
    """Appends to a log file under the run directory, made (with its folder) on the first
    record: a run that logs nothing leaves nothing behind. Also named in the logging config
    handed to Prefect's server process."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = "utf-8", delay: bool = True) -> None:
        super().__init__(filename, mode=mode, encoding=encoding, delay=delay)

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class RunLogFormatter(logging.Formatter):
    """The file's format; a record of a Prefect flow or task run names the run."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if run:
            kind = "task run" if getattr(record, "task_run_name", None) else "flow run"
            head, sep, tail = line.partition(" - ")
            line = f"{head} - {kind} {run!r}{sep}{tail}" if sep else line
        return line


class TerminalHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record comes."""

    def __init__(self, to_stderr: bool = False) -> None:
        super().__init__()
        self.to_stderr = to_stderr

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:  # StreamHandler.__init__ sets it
        pass


class _ToFile(logging.Filter):
    """On a logger with its own terminal handler (DeepSpeed's): hand each record to the file
    handler instead, and stop it there."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.handler.level:
            self.handler.handle(record)
        return False


def _writes_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)) \
        or type(handler).__name__ == "PrefectConsoleHandler"


def prefect_logging_config(log_file: Path, dest: Path) -> Path | None:
    """Write to ``dest`` the logging config Prefect would use, each stream handler (console,
    debug) replaced by one appending to ``log_file``; ``None`` if it cannot be read."""
    import yaml

    src = os.environ.get("PREFECT_LOGGING_CONFIG_PATH") or os.environ.get("PREFECT_LOGGING_SETTINGS_PATH")
    if not (src and Path(src).is_file()):
        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            return None
        src = str(Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml")
    try:
        config = yaml.safe_load(Path(src).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    streams = set()
    for name, handler in (config.get("handlers") or {}).items():
        if str(handler.get("stream", "")).startswith("ext://sys.std"):
            replaced: dict[str, Any] = {"class": f"{__name__}.RunLogHandler", "filename": str(log_file),
                                        "level": handler.get("level", 0)}
            if handler.get("formatter"):
                replaced["formatter"] = handler["formatter"]
            config["handlers"][name] = replaced
            streams.add(name)
    # A logger that only wrote to a stream (uvicorn, fastapi, prefect._internal) sends its records
    # up to the root instead: the server's root is that file; ours (here) is study.log.
    for logger in (config.get("loggers") or {}).values():
        handlers = logger.get("handlers")
        if handlers and set(handlers) <= streams:
            del logger["handlers"]
            logger["propagate"] = True
    dest.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dest


@dataclass
class Session:
    """What a run set up: the log files, and how to put everything back."""

    run_dir: Path
    verbose: bool
    log_file: Path
    server_log: Path | None = None
    _undo: list[Any] = field(default_factory=list)
    _live: Any = None

    def end_display(self) -> None:
        """Stop the live display (before the summary is printed); idempotent."""
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def worker_logs(self) -> str | None:
        from inheritlab.infra.raycluster import session_log_dir

        return session_log_dir() if "ray" in sys.modules else None


def _set_env(name: str, value: str, undo: list[Any], *, override: bool = True) -> None:
    before = os.environ.get(name)
    if before is not None and not override:
        return
    os.environ[name] = value
    undo.append(lambda: os.environ.__setitem__(name, before) if before is not None else os.environ.pop(name, None))


def _set_level(logger: logging.Logger, level: int, undo: list[Any]) -> None:
    before = logger.level
    logger.setLevel(level)
    undo.append(lambda: logger.setLevel(before))


@contextmanager
def session(run_dir: Path, *, verbose: bool = False, progress_to_stderr: bool = False, restore: bool = True,
            tick_s: float | None = None) -> Iterator[Session]:
    """Set up logging for one ``inheritlab run``; with ``restore`` (in-process callers, tests)
    everything is put back on exit, otherwise it stays for the rest of the process — the
    libraries' shutdown at exit logs too, and that belongs in the file."""
    s = Session(run_dir=Path(run_dir), verbose=verbose, log_file=Path(run_dir) / "logs" / STUDY_LOG)
    tmp: str | None = None
    file_handler = RunLogHandler(str(s.log_file))
    file_handler.setFormatter(RunLogFormatter(FILE_FORMAT))
    try:
        if verbose:
            # Prefect sets up its terminal logging when its API is first imported (not on `import
            # prefect`): first, as without inheritlab's file beside it.
            from prefect import flow  # noqa: F401
        else:
            tmp = tempfile.mkdtemp(prefix="inheritlab-logging-")
            _libraries_to_file(s, file_handler, Path(tmp))
        _ours_to_terminal_and_file(s, file_handler, to_stderr=progress_to_stderr)
        # Nothing is logged before the flow starts: a run stopped before it leaves no file behind.
        progress.reset(log_file=str(s.log_file))
        ticker = _start_progress(s, to_stderr=progress_to_stderr, tick_s=tick_s)
        try:
            yield s
        finally:
            ticker.stop()
            s.end_display()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if restore:
            for step in reversed(s._undo):
                step()
            file_handler.close()
        else:
            file_handler.flush()


def _libraries_to_file(s: Session, file_handler: logging.Handler, tmp: Path) -> None:
    """What Prefect (its server too), Ray, DeepSpeed and Python's warnings say goes to the log
    files, not the terminal (each change recorded in ``s._undo``)."""
    undo = s._undo
    _set_env("PREFECT_SERVER_ANALYTICS_ENABLED", "false", undo, override=False)
    s.server_log = s.log_file.parent / SERVER_LOG
    config = prefect_logging_config(s.server_log, tmp / "prefect-logging.yml")
    if config is not None:
        _set_env("PREFECT_LOGGING_CONFIG_PATH", str(config), undo)
        if "PREFECT_LOGGING_SETTINGS_PATH" in os.environ:  # the older name, if a user set it
            _set_env("PREFECT_LOGGING_SETTINGS_PATH", str(config), undo)
    # The root logger's terminal handlers (Prefect's, if it was imported already) give way
    # to the file; with a handler of ours there, Prefect's set-up leaves the root alone.
    root = logging.getLogger()
    saved = list(root.handlers)
    for h in [h for h in root.handlers if _writes_to_terminal(h)]:
        root.removeHandler(h)
    # Put back exactly as found (order included): another handler may come and go meanwhile.
    undo.append(lambda: setattr(root, "handlers", [h for h in saved] + [h for h in root.handlers
                                                                      if h not in saved]))
    _set_level(root, logging.INFO, undo)
    import ray  # noqa: F401 - its import gives the "ray" logger a terminal handler: moved here

    ray_logger = logging.getLogger("ray")
    for h in [h for h in ray_logger.handlers if not isinstance(h, logging.FileHandler)]:
        ray_logger.removeHandler(h)
        undo.append(lambda h=h: ray_logger.addHandler(h))
    before = ray_logger.propagate
    ray_logger.propagate = True
    undo.append(lambda: setattr(ray_logger, "propagate", before))
    reroute = _ToFile(file_handler)
    ds = logging.getLogger("DeepSpeed")  # its own stdout handler, made when it is imported
    ds.addFilter(reroute)
    undo.append(lambda: ds.removeFilter(reroute))
    logging.captureWarnings(True)
    undo.append(lambda: logging.captureWarnings(False))
    progress.set_workers_to_terminal(False)
    undo.append(lambda: progress.set_workers_to_terminal(True))


def _ours_to_terminal_and_file(s: Session, file_handler: logging.Handler, *, to_stderr: bool) -> None:
    """Everything into the run's log file; our progress lines to the terminal as well."""
    undo = s._undo
    root = logging.getLogger()
    root.addHandler(file_handler)
    undo.append(lambda: root.removeHandler(file_handler))
    for name in _CHATTY:
        _set_level(logging.getLogger(name), logging.WARNING, undo)
    _set_level(logging.getLogger("inheritlab"), logging.DEBUG, undo)
    terminal = TerminalHandler(to_stderr=to_stderr)
    terminal.setFormatter(logging.Formatter("%(asctime)s  %(message)s", datefmt="%H:%M:%S"))
    plog = progress.LOGGER
    _set_level(plog, logging.INFO, undo)
    plog.addHandler(terminal)
    plog.addHandler(file_handler)
    before_prop = plog.propagate
    plog.propagate = False  # the file has it once, the terminal once (not again through Prefect's)
    undo.append(lambda: (plog.removeHandler(terminal), plog.removeHandler(file_handler),
                         setattr(plog, "propagate", before_prop)))


def _start_progress(s: Session, *, to_stderr: bool, tick_s: float | None) -> progress.Ticker:
    """The live display (an interactive terminal) and the ticker. With the display the cell
    lines are on screen all the time and the ticker only feeds the dashboard (every 30 s);
    without one (CI, a pipe) it prints them every minute, which keeps a 10-minute study's
    output to a screenful."""
    live = live_display(verbose=s.verbose, to_stderr=to_stderr)
    every = tick_s if tick_s is not None else float(os.environ.get("INHERITLAB_PROGRESS_EVERY_S",
                                                                   "30" if live is not None else "60"))
    ticker = progress.Ticker(every, lines=live is None, dashboard_every_s=min(every, 30.0)).start()
    if live is not None:
        live.start()
        s._live = live
    return ticker


def live_display(*, verbose: bool, to_stderr: bool) -> Any:
    """A live study display for an interactive terminal: the study line, then one line per
    running cell (stage; in training step/total, loss, samples/s), redrawn every second, with
    the progress lines scrolling above it. ``None`` where output is not a terminal (CI, a pipe,
    a file: plain periodic lines instead), with ``--verbose`` (library output would tear it) or
    with ``--json``, or where ``INHERITLAB_PLAIN=1``."""
    stream = sys.stderr if to_stderr else sys.stdout
    if verbose or to_stderr or os.environ.get("INHERITLAB_PLAIN") == "1" or not stream.isatty():
        return None
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    def render() -> Any:
        b = progress.board()
        if not b.study:
            return Text("")
        return Group(Text(b.line(), style="bold"), *(Text(line) for line in b.cell_lines()))

    return Live(get_renderable=render, console=Console(file=stream), refresh_per_second=1, transient=True,
                redirect_stdout=True, redirect_stderr=False)


# ------------------------------------------------------------------------------------ summary


def _headline(run_dir: Path, metric: str, task: str, split: str) -> dict[str, float]:
    """The headline value of every completed cell (its last evaluated checkpoint), by cell id."""
    try:
        import polars as pl
        from inheritlab.analysis.results import load_results

        df = load_results(str(run_dir))
        df = df.filter((pl.col("metric") == metric) & (pl.col("task") == task) & (pl.col("split") == split))
        if df.is_empty():
            return {}
        last = df.sort("checkpoint_step").group_by("cell_id", maintain_order=True).last()
        return {r["cell_id"]: float(r["value"]) for r in last.iter_rows(named=True) if r["value"] is not None}
    except Exception as exc:  # noqa: BLE001 - the summary never fails a run that finished
        logging.getLogger("inheritlab.flows").debug("no headline values for the summary: %s", exc)
        return {}


def _format_value(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4g} ± {sd:.2g}"


def _cell_rows(spec: Any, run_dir: Path) -> list[dict[str, Any]]:
    """One row per cell of the grid: status and wall time (this launch, or its record)."""
    from inheritlab.flows.grid import expand_grid
    from inheritlab.infra.atomic import read_json
    from inheritlab.infra.rundir import RunDir

    run = RunDir.at(run_dir)
    board = progress.as_dict()
    rows = []
    for cell in expand_grid(spec):
        cdir = run.cell(cell.cell_id)
        seen = board.get(cell.label)
        wall = seen["wall_s"] if seen else None
        if seen is None and not cdir.is_complete():
            # Not this process's launch (``inheritlab status``, or another launch): the directory says.
            status = disk_status(cdir, stale_s=spec.execution.lease_stale_s)
        elif seen and seen["state"] == "failed":
            status = f"failed ({seen['stage']})" if seen["stage"] else "failed"
        elif cdir.is_complete():
            status = {"done": "done", "elsewhere": "done elsewhere"}.get(seen["state"] if seen else "",
                                                                         "done before" if board else "done")
            if wall is None:
                try:
                    wall = float(sum(read_json(cdir.complete).get("timings_s", {}).values()))
                except Exception:  # noqa: BLE001
                    wall = None
        elif seen and seen["state"] == "cancelled":
            status = f"stopped in {seen['stage']}: {seen['stopped_at']}" if seen["stopped_at"] else "stopped"
        elif seen and seen["state"] == "running":
            status = "not finished"
        else:
            status = "not run"
        rows.append({"cell_id": cell.cell_id, "label": cell.label, "group": cell.label.rsplit("/s", 1)[0],
                     "seed": cell.config.seed, "status": status, "wall_s": wall})
    return rows


def disk_status(cdir: Any, *, stale_s: float) -> str:
    """What a cell directory says about an unfinished cell: running (with its training
    progress), failed (stage and cause), stopped at a checkpoint, conditioned, or not started."""
    import time as _time

    from inheritlab.infra.atomic import read_json
    from inheritlab.infra.lease import LEASE, holder_gone
    from inheritlab.trainers.checkpoint import committed_step

    lease = cdir.root / LEASE
    running = False
    if lease.is_file():
        try:
            held = read_json(lease)
            running = not holder_gone(held) and _time.time() - lease.stat().st_mtime < stale_s
        except Exception:  # noqa: BLE001 - being rewritten: count it as held
            running = True
    train = progress.read_training(cdir.root)
    step = committed_step(cdir.ckpt)
    if running:
        fresh = train and _time.time() - float(train.get("updated", 0)) < max(60.0, stale_s)
        return "running" + (f": pretrain {progress.training_text(train)}" if fresh else "")
    if cdir.failure.is_file():
        try:
            f = read_json(cdir.failure)
            return f"failed in {f.get('stage', '?')}: {progress.first_lines(f.get('error', ''), 1, 80)}"
        except Exception:  # noqa: BLE001
            return "failed"
    if step is not None:
        total = f"/{train['total_steps']}" if train and train.get("total_steps") else ""
        return f"stopped at checkpoint step {step}{total} (a rerun resumes)"
    if cdir.counters.is_file():
        return "data conditioned, not trained"
    return "not started"


def render_summary(spec: Any, run_dir: Path, *, took_s: float | None = None,
                   report: dict[str, Any] | None = None, log: Session | None = None) -> str:
    """The end-of-run summary: a table of cells (seeds of one grid point on one row, the
    headline metric as mean ± sd over them), then where the results, plots and logs are."""
    a = spec.analysis
    rows = _cell_rows(spec, Path(run_dir))
    values = _headline(Path(run_dir), a.metric, a.task, a.split)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    several = any(len(g) > 1 for g in groups.values())
    metric = f"{a.task}/{a.split} {a.metric}" + (" (mean ± sd over seeds)" if several else "")
    table = [("cell" if not several else "cell (seeds)", "status", "wall", metric)]
    for name, members in groups.items():
        statuses = [m["status"] for m in members]
        status = statuses[0] if len(set(statuses)) == 1 else ", ".join(
            f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        walls = [m["wall_s"] for m in members if m["wall_s"] is not None]
        wall = progress._clock(sum(walls) / len(walls)) if walls else "—"
        seeds = ",".join(f"s{m['seed']}" for m in members)
        label = f"{name} ({seeds})" if several else members[0]["label"]
        table.append((label, status, wall, _format_value([values[m["cell_id"]] for m in members if m["cell_id"] in values])))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    done = sum(r["status"].startswith("done") for r in rows)
    head = f"study {spec.name}: {done} of {len(rows)} cells complete" + (f" in {progress._clock(took_s)}" if took_s else "")
    lines = ["", head]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines += _verdict(Path(run_dir), a.task, a.split, a.metric)
    run_root = Path(run_dir)
    paths = [Path(str(p)) for p in (report or {}).values()]
    summary_md = (report or {}).get("summary_md")
    lines.append(f"results: {run_root / 'results'}" + (f" (summary: {Path(str(summary_md)).name})" if summary_md else ""))
    plots = sorted({p for p in paths if p.suffix in (".png", ".pdf")})
    if plots:
        shown = ", ".join(p.name for p in plots[:3]) + (f", … ({len(plots)} in all)" if len(plots) > 3 else "")
        lines.append(f"plots:   {shown}")
    if log is not None:
        extra = []
        if log.server_log is not None and log.server_log.is_file():
            extra.append(f"Prefect server: {log.server_log.name}")
        workers = log.worker_logs()
        if workers and not log.verbose:
            extra.append(f"Ray workers: {workers}")
        lines.append(f"logs:    {log.log_file}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "\n".join(lines)


def _verdict(run_dir: Path, task: str, split: str, metric: str) -> list[str]:
    """The inheritance verdict: Δ vs clean at the largest scale per bias level (± s.e., seeds),
    and the critical level — from the Δ table the analysis wrote (none before it ran)."""
    path = run_dir / "results" / f"delta_{task}_{split}_{metric}.csv"
    if not path.is_file():
        return []
    try:
        import polars as pl
        from inheritlab.analysis.inheritance import critical_level

        delta = pl.read_csv(path)
        parts, crit = [], []
        for (bias,), grp in delta.group_by(["bias_type"], maintain_order=True):
            top = grp.get_column("data_scale").max()
            for r in grp.filter((pl.col("data_scale") == top) & (pl.col("bias_level") > 0)).sort("bias_level").iter_rows(named=True):
                se = f" ± {r['delta_se']:.3f}" if r.get("delta_se") is not None else ""
                parts.append(f"{bias} {r['bias_level']:g}: {r['delta']:+.3f}{se} (n={top:,.0f}, {r['n_seeds']} seed(s))")
        for r in critical_level(delta, x="data_scale").iter_rows(named=True):
            crit.append(f"{r['bias_type']} {r['critical_level']:g}" if r["critical_level"] is not None
                        else f"{r['bias_type']}: none (no level beyond 2 s.e. and {r['tol']:g})")
    except Exception as exc:  # noqa: BLE001 - the summary never fails a run that finished
        logging.getLogger("inheritlab.flows").debug("no verdict for the summary: %s", exc)
        return []
    out = []
    if parts:
        out.append(f"verdict: Δ {task}/{split} {metric} vs clean at the largest scale: " + "; ".join(parts))
    if crit:
        out.append("critical level: " + "; ".join(crit))
    return out


def cells_started() -> bool:
    """Whether a cell of this launch got going (else a summary table would say nothing)."""
    return any(c["state"] != "queued" for c in progress.as_dict().values())


def render_failure(exc: BaseException, log: Session | None) -> str:
    """Errors in one paragraph: what failed (cell, stage), the first lines of the cause, and
    where the full story is."""
    failed = {label: c for label, c in progress.as_dict().items() if c["state"] == "failed"}
    if failed:
        parts = [f"{len(failed)} cell(s) failed:"]
        for label, c in failed.items():
            where = f" in {c['stage']}" if c["stage"] else ""
            wall = f" after {progress._clock(c['wall_s'])}" if c["wall_s"] is not None else ""
            parts.append(f"  {label}{where}{wall}: {progress.first_lines(c['error'], 3)}")
    else:
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, _app_errors()):
            text = f"{type(exc).__name__}: {text}"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        parts = lines[:15] + ([f"  … ({len(lines) - 15} more lines in the log)"] if len(lines) > 15 else [])
    if log is not None:
        parts.append(f"full traceback and the libraries' output: {log.log_file}")
    return "\n".join(parts)


def _app_errors() -> tuple[type[BaseException], ...]:
    from inheritlab.infra.errors import InheritlabError

    return (InheritlabError,)
