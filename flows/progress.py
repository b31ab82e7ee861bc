"""What the operator sees while a study runs: one line per event, through one logger.

The flow reports events here — the study starts, a cell starts a stage, a cell finishes or
fails — and each becomes one plain line on the logger ``inheritlab.progress``. Whether those
lines reach a terminal is the caller's choice (``inheritlab run`` gives that logger the terminal;
everything else goes to ``RUN_DIR/logs/study.log``, see :mod:`inheritlab.flows.console`); without
a handler they are ordinary log records, so the flow and its tests need nothing set up.

A :class:`Board` keeps the state of every cell of this launch (queued, running, done, failed; its
stage and wall time) for the periodic study line and for the end-of-run summary.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class CellState:
    label: str
    state: str = "queued"           # queued | running | done | failed | elsewhere
    stage: str = ""                 # the stage running, or the one that failed
    started: float | None = None    # time.monotonic() when the cell started
    wall_s: float | None = None     # when it ended
    error: str = ""


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
        return {s: states.count(s) for s in ("queued", "running", "done", "failed", "elsewhere")}

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
        return (f"study {self.study}: {done}/{todo} done, {n['running']} running, {n['queued']} queued, "
                f"{n['failed']} failed; {tail}")


_board = Board()
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
    return _board


# --------------------------------------------------------------------------------------- events


def study_started(name: str, cells: int, complete: int, todo: list[str]) -> None:
    """The launch starts: ``cells`` in the grid, ``complete`` of them done before, ``todo`` labels."""
    b = _board
    with b._lock:
        b.study, b.total, b.earlier, b.started = name, cells, complete, time.monotonic()
        b.cells = {label: CellState(label) for label in todo}
    where = f"; logs: {b.log_file}" if b.log_file else ""
    LOGGER.info("study %s: %d cells, %d already complete, %d to run%s", name, cells, complete, len(todo), where)


def stage_started(label: str, stage: str, previous: tuple[str, float] | None = None) -> None:
    """A cell starts ``stage``; ``previous`` is the stage it finished and how long that took."""
    with _board._lock:
        c = _board.cells.setdefault(label, CellState(label))
        if c.state != "running":
            c.state, c.started = "running", time.monotonic()
        c.stage = stage
    after = f"  ({previous[0]} took {_clock(previous[1])})" if previous else ""
    LOGGER.info("%s  %s …%s", label, stage, after)


def cell_finished(label: str, last: tuple[str, float] | None = None) -> None:
    """A cell completed (its ``_COMPLETE.json`` is written)."""
    with _board._lock:
        c = _board.cells.setdefault(label, CellState(label))
        c.state, c.stage = "done", ""
        c.wall_s = time.monotonic() - c.started if c.started else None
    after = f"  ({last[0]} took {_clock(last[1])})" if last else ""
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
    """Logs the study line every ``every_s`` seconds while cells are queued or running."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inheritlab-progress", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            n = _board.counts()
            if n["queued"] or n["running"]:
                LOGGER.info("%s", _board.line())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def as_dict(b: Board | None = None) -> dict[str, Any]:
    """The board as plain data (for the summary and tests)."""
    b = b or _board
    with b._lock:
        return {label: {"state": c.state, "stage": c.stage, "wall_s": c.wall_s, "error": c.error}
                for label, c in b.cells.items()}
