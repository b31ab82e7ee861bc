"""What the operator sees while a study runs: one line per event, through one logger.

The flow reports events here — the study starts, a cell starts a stage, a cell finishes or
fails — and each becomes one plain line on the logger ``inheritlab.progress``. Whether those
lines reach a terminal is the caller's choice (``inheritlab run`` gives that logger the terminal;
everything else goes to ``RUN_DIR/logs/study.log``, see :mod:`inheritlab.flows.console`); without
a handler they are ordinary log records, so the flow and its tests need nothing set up.

A :class:`Board` keeps the state of every cell of this launch (queued, running, done, failed,
cancelled; its stage and wall time) for the periodic study line, the live display and the
end-of-run summary. A training cell's step, loss and samples/s come from the ``progress.json``
its trainer keeps in the cell directory (:class:`inheritlab.trainers.loop.CellControl`); the
:class:`Ticker` reads them and passes them on, to the terminal and to the cell's sub-run in the
dashboard (a log line and a progress artifact, every ``dashboard_every_s``).

A stop request (the first Ctrl-C or SIGTERM, :func:`request_stop`) is kept here too: the flow
admits no more cells and asks the running ones to stop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inheritlab.infra.rundir import CellDir

LOGGER = logging.getLogger("inheritlab.progress")


def _clock(seconds: float) -> str:
    """``41.2 s``, ``3m05s``, ``2h04m``: a wall time as a person reads it."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def first_lines(text: str, n: int = 3, width: int = 200) -> str:
    """The first ``n`` non-empty lines of ``text`` (each cut at ``width``), joined by `` / ``."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    shown = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in lines[:n]]
    more = f" (+{len(lines) - n} more lines)" if len(lines) > n else ""
    return " / ".join(shown) + more


def read_training(cell_dir: str | Path | None) -> dict[str, Any] | None:
    """A cell's ``progress.json`` (step, total_steps, loss, samples_per_s, updated), or ``None``
    where there is none or it cannot be read (it is replaced atomically, so a reader sees a
    whole file or the previous one)."""
    if cell_dir is None:
        return None
    try:
        return json.loads(CellDir(Path(cell_dir)).progress.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def training_text(p: dict[str, Any] | None) -> str:
    """``step 120/384 (31%), loss 3.21, 1,520 samples/s`` from a progress record."""
    if not p or not p.get("total_steps"):
        return ""
    parts = [f"step {p['step']}/{p['total_steps']} ({100 * p['step'] / p['total_steps']:.0f}%)"]
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.3f}")
    if p.get("samples_per_s"):
        parts.append(f"{p['samples_per_s']:,.0f} samples/s")
    return ", ".join(parts)


@dataclass
class CellState:
    label: str
    state: str = "queued"           # queued | running | done | failed | elsewhere | cancelled
    stage: str = ""                 # the stage running, or the one that failed or was stopped in
    started: float | None = None    # time.monotonic() when the cell started
    wall_s: float | None = None     # when it ended
    error: str = ""
    cell_dir: str | None = None     # where its trainer writes progress.json
    dashboard: Any = None           # the cell sub-run's Prefect logger (progress lines reach its logs)
    artifact: Any = None            # the id of its progress artifact in the dashboard
    posted: float = 0.0             # the last progress record passed to the dashboard (its "updated")
    stopped_at: str = ""            # where a stopped cell stopped (its last checkpoint), for the summary


@dataclass
class Board:
    """The cells of this launch and what each is doing; every method is thread-safe."""

    study: str = ""
    total: int = 0                  # cells in the grid
    earlier: int = 0                # complete before this launch
    log_file: str | None = None     # where the third-party output went (for the start line)
    cells: dict[str, CellState] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def counts(self) -> dict[str, int]:
        with self._lock:
            states = [c.state for c in self.cells.values()]
        return {s: states.count(s) for s in ("queued", "running", "done", "failed", "elsewhere", "cancelled")}

    def eta_s(self) -> float | None:
        """Seconds left, from the mean wall time of the cells finished in this launch: the
        queued cells' share of the concurrency seen so far, plus what the running ones have left."""
        now = time.monotonic()
        with self._lock:
            finished = [c.wall_s for c in self.cells.values() if c.state == "done" and c.wall_s is not None]
            running = [now - c.started for c in self.cells.values() if c.state == "running" and c.started]
            queued = sum(c.state == "queued" for c in self.cells.values())
        if not finished:
            return None
        mean = sum(finished) / len(finished)
        slots = max(1, len(running))
        return (queued * mean + sum(max(0.0, mean - r) for r in running)) / slots

    def line(self) -> str:
        """The periodic study line."""
        n = self.counts()
        todo = sum(n.values())
        done = n["done"] + n["elsewhere"]
        eta = self.eta_s()
        tail = f"ETA ~{_clock(eta)}" if eta is not None else "ETA after the first cell finishes"
        if n["running"] == 0 and n["queued"] == 0:
            tail = f"took {_clock(time.monotonic() - self.started)}"
        stopped = f", {n['cancelled']} stopped" if n["cancelled"] else ""
        return (f"study {self.study}: {done}/{todo} done, {n['running']} running, {n['queued']} queued, "
                f"{n['failed']} failed{stopped}; {tail}")

    def running(self) -> list[tuple[str, str, dict[str, Any] | None, float | None]]:
        """(label, stage, training progress, seconds running) of each running cell."""
        now = time.monotonic()
        with self._lock:
            cells = [(c.label, c.stage, c.cell_dir, now - c.started if c.started else None)
                     for c in self.cells.values() if c.state == "running"]
        return [(label, stage, read_training(d) if stage == "pretrain" else None, age) for label, stage, d, age in cells]

    def cell_lines(self) -> list[str]:
        """One line per running cell: its coordinates, stage, and in training step/total, loss, samples/s."""
        out = []
        for label, stage, train, age in self.running():
            detail = training_text(train)
            out.append(f"  {label}  {stage}" + (f"  {detail}" if detail else "")
                       + (f"  [{_clock(age)}]" if age is not None else ""))
        return out


_board = Board()
_stop = threading.Event()
# Whether Ray forwards its workers' stdout/stderr to this process (``ray.init(log_to_driver=)``):
# yes by default, as Ray does; ``inheritlab run`` turns it off unless ``--verbose``.
_workers_to_terminal = True


def workers_to_terminal() -> bool:
    return _workers_to_terminal


def set_workers_to_terminal(on: bool) -> None:
    global _workers_to_terminal
    _workers_to_terminal = on


def board() -> Board:
    """The board of the launch running in this process."""
    return _board


def reset(log_file: str | None = None) -> Board:
    """A fresh board (a new launch); ``log_file`` is named in the start line."""
    global _board
    _board = Board(log_file=log_file)
    _stop.clear()
    return _board


def request_stop() -> None:
    """The operator asked to stop: admit no more cells, ask the running ones to stop."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def ask_running_cells_to_stop() -> int:
    """Write ``stop.request`` into the directory of every running cell (its trainer commits a
    checkpoint and stops at its next look); returns how many were asked."""
    with _board._lock:
        dirs = [c.cell_dir for c in _board.cells.values() if c.state == "running" and c.cell_dir]
    asked = 0
    for d in dirs:
        try:
            CellDir(Path(d)).stop_request.write_text(f"{time.time()}\n", encoding="utf-8")
            asked += 1
        except OSError as exc:  # the cell then stops at its next stage boundary instead
            logging.getLogger("inheritlab.flows").warning("could not ask the cell in %s to stop: %s", d, exc)
    return asked


# --------------------------------------------------------------------------------------- events


def study_started(name: str, cells: int, complete: int, todo: list[str]) -> None:
    """The launch starts: ``cells`` in the grid, ``complete`` of them done before, ``todo`` labels."""
    b = _board
    with b._lock:
        b.study, b.total, b.earlier, b.started = name, cells, complete, time.monotonic()
        b.cells = {label: CellState(label) for label in todo}
    where = f"; logs: {b.log_file}" if b.log_file else ""
    LOGGER.info("study %s: %d cells, %d already complete, %d to run%s", name, cells, complete, len(todo), where)


def stage_started(label: str, stage: str, previous: tuple[str, float] | None = None, *,
                  cell_dir: str | Path | None = None, dashboard: Any = None, note: str = "") -> None:
    """A cell starts ``stage``; ``previous`` is the stage it finished and how long that took;
    ``cell_dir`` and ``dashboard`` (the sub-run's logger) let the ticker follow its training;
    ``note`` is said with it (e.g. that training resumes from a checkpoint)."""
    with _board._lock:
        c = _board.cells.setdefault(label, CellState(label))
        if c.state != "running":
            c.state, c.started = "running", time.monotonic()
        c.stage = stage
        if cell_dir is not None:
            c.cell_dir = str(cell_dir)
        if dashboard is not None:
            c.dashboard = dashboard
    after = f"  ({previous[0]} took {_clock(previous[1])})" if previous else ""
    # Stage changes go to the log file only (the live display and the periodic lines show the
    # stage; a cell's done line says how long each took); a note — a resume — is shown.
    LOGGER.log(logging.INFO if note else logging.DEBUG, "%s  %s …%s%s", label, stage, f"  {note}" if note else "", after)


def set_artifact(label: str, artifact_id: Any) -> None:
    """The cell's progress artifact in the dashboard (updated by the ticker)."""
    with _board._lock:
        _board.cells.setdefault(label, CellState(label)).artifact = artifact_id


def cell_stopped(label: str, stage: str, where: str) -> None:
    """A cell stopped on the operator's request in ``stage``; ``where`` says what is kept."""
    with _board._lock:
        c = _board.cells.setdefault(label, CellState(label))
        c.state, c.stage, c.stopped_at = "cancelled", stage, where
        c.wall_s = time.monotonic() - c.started if c.started else None
    LOGGER.warning("%s  stopped in %s: %s", label, stage, where)


def cells_not_started() -> list[str]:
    """Labels of the cells still queued (left out when a stop is requested)."""
    with _board._lock:
        return [c.label for c in _board.cells.values() if c.state == "queued"]


def cell_finished(label: str, stages: dict[str, float] | None = None) -> None:
    """A cell completed (its ``_COMPLETE.json`` is written); ``stages``: seconds per stage."""
    with _board._lock:
        c = _board.cells.setdefault(label, CellState(label))
        c.state, c.stage = "done", ""
        c.wall_s = time.monotonic() - c.started if c.started else None
    # The stages that took a second or more: where the cell's time went.
    shown = [f"{name} {_clock(t)}" for name, t in (stages or {}).items() if t >= 1.0]
    after = f"  ({', '.join(shown)})" if shown else ""
    n = _board.counts()
    LOGGER.info("%s  done in %s%s  [%d/%d done]", label, _clock(c.wall_s or 0.0), after,
                n["done"] + n["elsewhere"], sum(n.values()))


def cell_failed(label: str, stage: str, error: BaseException | str) -> None:
    """A cell failed in ``stage``; the line carries the first lines of the cause."""
    text = error if isinstance(error, str) else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    with _board._lock:
        c = _board.cells.setdefault(label, CellState(label))
        if c.state == "failed":  # reported already (a stage, then its cell's flow)
            return
        c.state, c.stage, c.error = "failed", stage, text
        c.wall_s = time.monotonic() - c.started if c.started else None
    LOGGER.error("%s  FAILED in %s after %s: %s", label, stage or "?", _clock(c.wall_s or 0.0), first_lines(text, 2))


def cell_elsewhere(label: str) -> None:
    """Another launch of the study finished this cell."""
    with _board._lock:
        _board.cells.setdefault(label, CellState(label)).state = "elsewhere"
    LOGGER.info("%s  finished by another launch", label)


class Ticker:
    """Every ``every_s`` seconds while cells are queued or running: the study line and one line
    per running cell on the progress logger (``lines=False`` where a live display shows them
    instead); and, every ``dashboard_every_s``, each training cell's progress to its sub-run in
    the dashboard."""

    def __init__(self, every_s: float = 30.0, *, lines: bool = True, dashboard_every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.lines = lines
        self.dashboard_every_s = dashboard_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inheritlab-progress", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _run(self) -> None:
        tick = min(self.every_s, self.dashboard_every_s)
        next_line = next_post = time.monotonic()
        next_line += self.every_s
        next_post += self.dashboard_every_s
        while not self._stop.wait(tick):
            now = time.monotonic()
            n = _board.counts()
            if not (n["queued"] or n["running"]):
                continue
            if self.lines and now >= next_line:
                LOGGER.info("%s", _board.line())
                for line in _board.cell_lines():
                    LOGGER.info("%s", line)
                next_line = now + self.every_s
            if now >= next_post:
                post_to_dashboard()
                next_post = now + self.dashboard_every_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def post_to_dashboard(b: Board | None = None, only: str | None = None) -> int:
    """Pass each training cell's new progress to its sub-run in the dashboard: a log line and
    its progress artifact (percent done, with step, loss and samples/s as its description).
    Returns how many cells were posted (``only``: just that cell, e.g. when its training ends).
    The dashboard is a view: a failed post is logged and training goes on."""
    b = b or _board
    with b._lock:
        cells = [c for c in b.cells.values()
                 if c.state == "running" and c.stage == "pretrain" and (only is None or c.label == only)]
    posted = 0
    for c in cells:
        p = read_training(c.cell_dir)
        if not p or p.get("updated", 0) <= c.posted:
            continue
        c.posted = p.get("updated", 0)
        text = training_text(p)
        try:
            if c.dashboard is not None:
                c.dashboard.info("pretrain %s", text)
            if c.artifact is not None:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(c.artifact, progress=100.0 * p["step"] / max(1, p["total_steps"]),
                                         description=f"pretrain {c.label}: {text}")
            posted += 1
        except Exception as exc:  # noqa: BLE001 - a dashboard hiccup must not stop a study
            logging.getLogger("inheritlab.flows").warning("progress of %s not posted to the dashboard: %s", c.label, exc)
    return posted


def as_dict(b: Board | None = None) -> dict[str, Any]:
    """The board as plain data (for the summary and tests)."""
    b = b or _board
    with b._lock:
        return {label: {"state": c.state, "stage": c.stage, "wall_s": c.wall_s, "error": c.error,
                        "stopped_at": c.stopped_at}
                for label, c in b.cells.items()}
