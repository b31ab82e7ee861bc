"""Error types shared by every layer.

Each names *what* was wrong and *where* (a file, a field path, a shard and member), so a
researcher can fix the input without reading a traceback. Application errors are not retried:
the orchestration layer fails them once, clearly (see DESIGN.md, "one retry layer per failure
kind").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` naming the choice closest to a mistyped ``value``, or ``""``
    when none is close (or ``value`` is one of them): what every "unknown name" error appends."""
    if not isinstance(value, str):
        return ""
    names = [str(c) for c in choices]
    if value in names:
        return ""
    close = difflib.get_close_matches(value, names, n=1)
    if not close:  # a difference in case only, or a typo in another case
        lower = {n.lower(): n for n in names}
        close = [lower[m] for m in difflib.get_close_matches(value.lower(), list(lower), n=1)]
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)"


class InheritlabError(Exception):
    """Base class: an application error (bad config, bad data) — never retried."""


class SpecError(InheritlabError):
    """A study spec or cell config is invalid. The message names the field path and value."""


class ShardError(InheritlabError):
    """A data shard is missing, truncated or holds a bad sample. Names the shard and member."""

    def __init__(self, shard: str, member: str | None, problem: str) -> None:
        self.shard = shard
        self.member = member
        self.problem = problem
        where = f"{shard}" + (f" member {member!r}" if member else "")
        super().__init__(f"bad shard {where}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str | None, str]]:
        # Rebuilt from its parts: the error crosses process boundaries (Ray tasks, workers).
        return (type(self), (self.shard, self.member, self.problem))


class BadSampleCeilingError(InheritlabError):
    """Too many samples were skipped as bad; the configured ceiling fails the run."""


class CheckpointError(InheritlabError):
    """A checkpoint is missing, torn or does not match the model it is loaded into."""


class StopRequested(InheritlabError):
    """A cell stopped because the operator asked (Ctrl-C, SIGTERM): its work so far is kept (a
    trainer commits a checkpoint first) and a rerun resumes it. Not a failure, never retried."""


class StudyStopped(InheritlabError):
    """The study was stopped by the operator before every cell finished; a rerun resumes it."""


class DataAccountingError(InheritlabError):
    """A trainer's data stream does not match what the cell's data-condition stage accounted."""


class ResourceError(InheritlabError):
    """A cell asks for more than the cluster has, or could not get it within the stated bound."""


class WorkerCrash(Exception):
    """Training workers died (a killed process, a lost node) more often than the retry budget
    allows. Not an application error: the orchestration layer may retry the cell."""
