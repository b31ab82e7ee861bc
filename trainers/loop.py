"""Pieces every training loop shares: the logged loss curve, the step clock, and the cell's
progress file and stop request (:class:`CellControl`).

Kept apart from the loops so that the CLIP and LM loops read like their algorithms and log,
time and resume their curves the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from inheritlab.infra.atomic import atomic_write_json
from inheritlab.infra.rundir import CellDir


class LossLog:
    """The loss curve: the mean loss of each window of ``every`` steps (and of the last step),
    averaged over ranks. Resumed with the curve a checkpoint stored, so a relaunch continues it.

    The window's losses stay on the device until it closes: an ordinary step never waits for
    the device to read its loss.
    """

    def __init__(self, every: int, curve: Iterable[Iterable[float]] = (), window: Iterable[Any] | None = None,
                 *, rank: int = 0) -> None:
        self.every = every
        self.curve: list[list[float]] = [[int(s), float(v)] for s, v in curve]
        self._window: list[torch.Tensor] = []
        if window:
            # The open window of each rank at the checkpoint (:meth:`window_state`): a resume
            # closes it as the uninterrupted run would have. On another number of ranks a rank
            # takes the window of the rank it now is, modulo the old count (the window's mean
            # then differs by the other ranks' share of the loss, as the data slots do).
            windows = list(window)
            self._window = [torch.tensor(float(v)) for v in windows[rank % len(windows)]]

    def add(self, step: int, loss: torch.Tensor, *, last: bool = False) -> None:
        self._window.append(loss.detach())
        if step % self.every == 0 or last:
            from inheritlab.trainers.engine import mean_across_ranks

            self.curve.append([step, mean_across_ranks(torch.stack(self._window).float().mean())])
            self._window = []

    def window_state(self) -> list[list[float]]:
        """Every rank's open window (losses since the last logged point), for a checkpoint; a
        collective (every rank calls it, at a commit)."""
        from inheritlab.trainers.engine import all_gather

        return all_gather([float(x) for x in self._window])

    @property
    def final(self) -> float | None:
        return self.curve[-1][1] if self.curve else None


class StepClock:
    """Training wall time with checkpoint and export pauses left out, and its *steady* part:
    from the end of ``warm_steps`` steps of this process on (kernel compilation, autotuning and
    loader start-up left out). Each reading synchronises the device once; ticks do not."""

    def __init__(self, *, sync: bool, warm_steps: int) -> None:
        self._sync = sync
        self.warm_steps = warm_steps
        self.trained = 0
        self._t0 = self._now()
        self._steady0: float | None = self._t0 if warm_steps == 0 else None
        self._paused = 0.0
        self._paused_steady = 0.0
        self._times: tuple[float, float] | None = None

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def tick(self) -> None:
        """One optimizer step done."""
        self.trained += 1
        if self.trained == self.warm_steps:
            self._steady0 = self._now()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = self._now()
        try:
            yield
        finally:
            dt = self._now() - t
            self._paused += dt
            if self._steady0 is not None:
                self._paused_steady += dt

    def stop(self) -> tuple[float, float]:
        """(train seconds, steady seconds); steady is 0 when warm-up never ended."""
        end = self._now()
        steady = end - self._steady0 - self._paused_steady if self._steady0 is not None else 0.0
        self._times = (end - self._t0 - self._paused, steady)
        return self._times

    def rates(self, per_step: int) -> tuple[float | None, float | None]:
        """(overall, steady) items per second for ``per_step`` items a step; after :meth:`stop`."""
        total, steady = self._times if self._times is not None else self.stop()
        overall = self.trained * per_step / total if total > 0 else None
        steady_rate = (self.trained - self.warm_steps) * per_step / steady if steady > 0 else None
        return overall, steady_rate


def _ticks(seconds: float | None) -> float | None:
    """A :func:`process_age_s` reading to its resolution (clock ticks of 10 ms)."""
    return round(seconds, 2) if seconds is not None else None


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; ``None`` elsewhere): a worker's
    start-up — imports, process group, engine, model, loader — up to the moment it is asked."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            # Field 22 is the start time in clock ticks after boot; the name (field 2) may hold
            # spaces, so fields are counted after its closing parenthesis.
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class CellControl:
    """The running trainer's side of the cell directory's two control files.

    - ``progress.json``: step, total, the last logged loss and the recent samples/s, written by
      rank 0 after the first step and then at most every ``every_s`` seconds (atomically: the
      driver's progress display and ``inheritlab status`` read it while it changes); also how
      long the process took to reach its first step, and (``startup``) each phase before it, in
      seconds since the process started: the trainers :meth:`mark` ``start`` (the training
      function entered: imports and anything the process did before), ``engine`` (process group,
      model and engine built), ``first_batch`` (the loader's first batch in hand), and the file
      adds ``first_step`` (compilation, kernel tuning and the step itself). A cell's fixed cost
      is then split where it is paid, cold caches against warm; in a process that did other work
      first (a reused worker) the phases after ``start`` still hold.
    - ``stop.request``: written by the driver when the operator stops the study. Every rank
      looks for it every ``poll_steps`` steps (every step on one rank: a stat costs microseconds
      next to a step); with several ranks the answers are combined (one max all-reduce of a
      scalar), so all ranks stop after the same step — the checkpoint they then commit together
      is a collective. The trainers poll several ranks at the loss log's steps, where the step
      already waits for the device to read the logged loss: the check adds no wait of its own.
    """

    def __init__(self, cell_dir: str | Path, *, rank: int, world: int, total_steps: int, per_step: int,
                 every_s: float | None = None, poll_steps: int | None = None) -> None:
        cdir = CellDir(Path(cell_dir))
        self._progress, self._stop = cdir.progress, cdir.stop_request
        self.rank, self.world, self.total, self.per_step = rank, world, total_steps, per_step
        # Every 5 s unless INHERITLAB_PROGRESS_FILE_EVERY_S says otherwise (tests watch closer).
        self.every_s = every_s if every_s is not None else float(os.environ.get("INHERITLAB_PROGRESS_FILE_EVERY_S", "5"))
        self.poll_steps = poll_steps or (1 if world == 1 else 10)
        self._last: tuple[float, int] | None = None   # (time, step) of the last write
        self._first_step_s: float | None = None
        self._startup: dict[str, float | None] = {}

    def mark(self, phase: str, at: float | None = None) -> None:
        """Record when start-up phase ``phase`` ended (its first time only; rank 0): now, or at
        ``at`` (a :func:`process_age_s` reading taken earlier)."""
        if self.rank == 0 and phase not in self._startup:
            self._startup[phase] = _ticks(at if at is not None else process_age_s())

    def stepped(self, step: int, losses: LossLog) -> None:
        """After each optimizer step: write the progress file when it is due (rank 0)."""
        if self.rank != 0:
            return
        now = time.time()
        if self._first_step_s is None:
            self._first_step_s = self._startup["first_step"] = _ticks(process_age_s())
        elif self._last is not None and now - self._last[0] < self.every_s and step < self.total:
            return
        rate = None
        if self._last is not None and step > self._last[1] and now > self._last[0]:
            rate = (step - self._last[1]) * self.per_step / (now - self._last[0])
        loss = losses.curve[-1] if losses.curve else None
        atomic_write_json(self._progress, {
            "step": step, "total_steps": self.total, "samples_per_s": rate,
            "loss": loss[1] if loss else None, "loss_step": loss[0] if loss else None,
            "first_step_after_s": self._first_step_s, "startup": self._startup, "updated": now, "pid": os.getpid(),
        })
        self._last = (now, step)

    def stop_requested(self, step: int) -> bool:
        """Whether the operator asked this cell to stop (checked every ``poll_steps`` steps)."""
        if step % self.poll_steps:
            return False
        asked = self._stop.exists()
        if self.world > 1:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if asked else 0.0],
                                device="cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item() > 0)
        return asked
