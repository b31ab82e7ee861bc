"""Pieces every training loop shares: the logged loss curve and the step clock.

Kept apart from the loops so that the CLIP and LM loops read like their algorithms and log,
time and resume their curves the same way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

import torch


class LossLog:
    """The loss curve: the mean loss of each window of ``every`` steps (and of the last step),
    averaged over ranks. Resumed with the curve a checkpoint stored, so a relaunch continues it.

    The window's losses stay on the device until it closes: an ordinary step never waits for
    the device to read its loss.
    """

    def __init__(self, every: int, curve: Iterable[Iterable[float]] = ()) -> None:
        self.every = every
        self.curve: list[list[float]] = [[int(s), float(v)] for s, v in curve]
        self._window: list[torch.Tensor] = []

    def add(self, step: int, loss: torch.Tensor, *, last: bool = False) -> None:
        self._window.append(loss.detach())
        if step % self.every == 0 or last:
            from inheritlab.trainers.engine import mean_across_ranks

            self.curve.append([step, mean_across_ranks(torch.stack(self._window).float().mean())])
            self._window = []

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
