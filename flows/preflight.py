"""The checks of a study before any training: run by ``inheritlab validate`` and at the start
of every ``run``.

The spec's own checks (fields, rungs, tasks) need no files. Before anything starts — no
Prefect flow, no Ray — :func:`check_paths` sees that every path the spec names exists and
:func:`check_run_dir` that the run directory can be written (milliseconds); each refuses in one
paragraph naming the field, the value and what to do. Then :func:`check_data` opens the data:
the modality reads every split's shards' first samples, the class metadata and the evaluation
suites, and checks them against the tasks and biases the study asks for. It takes seconds,
and every problem found is reported at once, each naming the field and what to supply.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inheritlab.flows.spec import StudySpec
from inheritlab.infra.cell import DataConfig, EvalConfig
from inheritlab.infra.errors import InheritlabError, ShardError, SpecError, did_you_mean
from inheritlab.trainers.modality import get_modality

SHARDS_HOW = "a directory of .tar shards, one .tar file, or a brace pattern such as train/{000000..000099}.tar"


@dataclass(frozen=True)
class MissingPath:
    """A path the spec names that is not there: the field, its value (and the path it means),
    what is wrong and what to do."""

    field: str
    value: str
    path: Path
    problem: str
    fix: str

    def __str__(self) -> str:
        shown = repr(self.value) + ("" if str(self.path) == self.value else f" ({self.path})")
        near = ""
        if not any(c in self.value for c in "{*?[") and self.path.parent.is_dir():
            near = did_you_mean(self.path.name, [q.name for q in self.path.parent.iterdir()])
        return f"{self.field}: {shown} {self.problem}{near}; {self.fix}"


def _path(value: str) -> Path:
    return Path(value).expanduser().absolute()


def missing_paths(data: DataConfig, ev: EvalConfig) -> list[MissingPath]:
    """Every data path a spec names that does not exist (files and directories only: nothing
    is opened). Shards are listed as the reader lists them, so a pattern matching no file or a
    directory without shards is missing too."""
    from inheritlab.corruptors.shards import list_shards

    out: list[MissingPath] = []
    shards = data.shards
    if shards is not None:
        for split, value in shards.given().items():
            try:
                list_shards(value)
            except ShardError as exc:
                leave = ", or leave it out to run without an OOD split" if split == "test_ood" else ""
                out.append(MissingPath(f"data.shards.{split}", value, _path(value), f"— {exc.problem}",
                                       f"point it at {SHARDS_HOW}{leave}"))
        for key, what in (("classnames", "class names, one per line in label order"),
                          ("templates", "prompt templates, one per line with {c} for the class name")):
            value = getattr(shards, key)
            if value and not _path(value).is_file():
                out.append(MissingPath(f"data.shards.{key}", value, _path(value), "— no such file",
                                       f"point it at a text file of {what}, or leave it out to read the one "
                                       "beside the train split"))
    suites = ev.suites
    if suites is not None:
        root = _path(suites.root)
        if not root.is_dir():
            out.append(MissingPath("eval.suites.root", suites.root, root, "— no such directory",
                                   "point it at the directory holding one sub-directory per task (the "
                                   "CLIP_benchmark layout: <root>/<task>/<split>/0.tar ...)"))
            return out
        for i, task in enumerate(suites.tasks):
            d = root / task
            if not d.is_dir():
                held = sorted(q.name for q in root.iterdir() if q.is_dir())
                out.append(MissingPath(f"eval.suites.tasks[{i}]", task, d, "— the suite has no such task directory",
                                       f"name a sub-directory of {root}: {', '.join(held) or 'it has none'}"))
            elif not (d / suites.split).is_dir():
                held = sorted(q.name for q in d.iterdir() if q.is_dir())
                out.append(MissingPath("eval.suites.split", suites.split, d / suites.split,
                                       f"— task {task!r} has no such split", f"name one of its splits: "
                                       f"{', '.join(held) or 'it has none'}"))
    return out


def describe_missing(missing: list[MissingPath]) -> str:
    """One paragraph: the first missing path in full, the others by field."""
    more = ""
    if len(missing) > 1:
        more = (f". {len(missing) - 1} more path(s) the spec names are missing too: "
                + ", ".join(dict.fromkeys(m.field for m in missing[1:])))
    return f"{missing[0]}{more}"


def check_paths(spec: StudySpec) -> None:
    """Refuse, in one paragraph, a spec naming a path that does not exist."""
    missing = missing_paths(spec.data, spec.eval)
    if missing:
        raise SpecError(f"study {spec.name!r}: {describe_missing(missing)}")


def check_run_dir(run_dir: str | os.PathLike[str], *, create: bool = True) -> Path:
    """The run directory, resolved, after checking that a file can be written there (in it, or
    in the deepest existing directory above it), and created if ``create``."""
    root = Path(run_dir).expanduser().resolve()
    fix = "pass --run-dir a directory you can write to"
    base = next(p for p in (root, *root.parents) if p.exists())
    if not base.is_dir():
        raise InheritlabError(f"run directory {root}: {base} is a file, not a directory; {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".inheritlab-write-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
        if create:
            root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        read_only = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        what = "is read-only" if read_only else f"cannot be written ({exc.strerror})"
        if base == root:
            raise InheritlabError(f"run directory {root} {what}: the study could save nothing there; {fix}, or make "
                                  "it writable") from None
        raise InheritlabError(f"run directory {root} cannot be created: {base} above it {what}; {fix}, or make "
                              f"{base} writable") from None
    return root


def check_before_start(spec: StudySpec, run_dir: str | os.PathLike[str]) -> Path:
    """What a run checks before any flow or cluster starts: the paths, then the run directory
    (created). Returns the run directory, resolved."""
    check_paths(spec)
    return check_run_dir(run_dir)


def bias_specs(spec: StudySpec) -> list[dict[str, Any]]:
    """One corruptor spec per bias axis, at its highest level (what the data must support)."""
    return [{"type": a.type, "level": max(a.levels), **a.params} for a in spec.grid.bias if max(a.levels) > 0]


def left_out(spec: StudySpec) -> dict[str, str]:
    """The modality's default tasks this study does not run, and what each would need."""
    return get_modality(spec.modality).left_out(spec.data, spec.eval, spec.grid.bias_types)


def check_data(spec: StudySpec) -> float:
    """Raise :class:`SpecError` listing every problem the data has for ``spec``; the seconds taken."""
    t0 = time.perf_counter()
    errors = get_modality(spec.modality).preflight(spec.data, spec.eval, spec.eval_tasks, bias_specs(spec),
                                                   study_seed=spec.seed)
    if errors:
        raise SpecError(f"study {spec.name!r}: the data cannot serve it ({len(errors)} problem(s)):\n  - "
                        + "\n  - ".join(errors))
    return time.perf_counter() - t0
