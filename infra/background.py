"""A call run in a daemon thread whose result, or exception, is collected later.

For work that overlaps the caller's own (the next batch's decode beside a training step, the
next epoch's read beside a loader worker's samples). The thread is a daemon: a process that
fails or is shut down must not wait for work nobody will collect. ``concurrent.futures`` is not
used because its threads are joined at interpreter exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """``fn()`` started now in a daemon thread named ``name``; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # raised again by result(), in the collecting thread
            self._error = exc

    def result(self) -> T:
        """The call's return value, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
