"""Evaluation suites on disk in the CLIP_benchmark / DataComp WebDataset layout.

A suite is a root directory of tasks, each laid out as CLIP_benchmark's ``wds/`` datasets and
DataComp's evaluation download are::

    <root>/<task>/<split>/0.tar ... <n-1>.tar     samples: <key>.webp|.png|.jpg + <key>.cls
    <root>/<task>/<split>/nshards.txt             n
    <root>/<task>/classnames.txt                  classification: one class name per line
    <root>/<task>/zeroshot_classification_templates.txt   prompts with {c} for the class name
    <root>/<task>/dataset_type.txt                optional: "retrieval" (samples carry .txt
                                                  captions, one per line) or "classification"

:func:`open_suite` checks every task named (cheap: files and directories only) and says, for a
task that is missing something, what was expected where — at ``validate`` time, not after
pre-training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inheritlab.corruptors.classes import class_info
from inheritlab.infra.errors import SpecError, did_you_mean

TASK_KINDS = ("classification", "retrieval")


@dataclass(frozen=True)
class SuiteTask:
    """One evaluation task of a suite: its shards and, for classification, its classes."""

    name: str
    root: Path
    kind: str                    # classification | retrieval
    shards: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


def _task(root: Path, name: str, split: str) -> SuiteTask:
    d = root / name
    if not d.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise SpecError(f"eval.suites.tasks: {name!r} — expected a directory {d}{did_you_mean(name, known)}; the "
                        f"suite root holds {known[:20] or 'nothing'}")
    nshards = d / split / "nshards.txt"
    if not nshards.is_file():
        raise SpecError(f"eval.suites.tasks: {name!r} — expected {nshards} (the number of shards of split {split!r}, "
                        f"as CLIP_benchmark's wds layout has it)")
    try:
        n = int(nshards.read_text().strip())
    except ValueError:
        raise SpecError(f"{nshards}: expected an integer number of shards, got {nshards.read_text()[:40]!r}") from None
    shards = [str(d / split / f"{i}.tar") for i in range(n)]
    missing = [s for s in shards if not os.path.isfile(s)]
    if n < 1 or missing:
        raise SpecError(f"eval.suites.tasks: {name!r} — {nshards} says {n} shard(s); missing {missing[:3] or 'all'}")
    kind_file = d / "dataset_type.txt"
    kind = kind_file.read_text().strip().lower() if kind_file.is_file() else "classification"
    if kind not in TASK_KINDS:
        raise SpecError(f"{kind_file}: dataset type {kind!r} is not supported; supported: {list(TASK_KINDS)}")
    if kind == "retrieval":
        return SuiteTask(name=name, root=d, kind=kind, shards=tuple(shards))
    info = class_info(d)
    if info is None:
        raise SpecError(f"eval.suites.tasks: {name!r} is a classification task — expected {d / 'classnames.txt'} "
                        f"(one class name per line, in label order) and {d / 'zeroshot_classification_templates.txt'}")
    return SuiteTask(name=name, root=d, kind=kind, shards=tuple(shards), class_names=info.names,
                     templates=info.templates)


def open_suite(root: str | os.PathLike[str], tasks: tuple[str, ...] | list[str], split: str = "test") -> list[SuiteTask]:
    """The named tasks of the suite at ``root``, checked; an error names every problem found."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise SpecError(f"eval.suites.root: {r} is not a directory (expected one sub-directory per task)")
    out, problems = [], []
    for name in tasks:
        try:
            out.append(_task(r, name, split))
        except SpecError as exc:
            problems.append(str(exc))
    if problems:
        raise SpecError("; ".join(problems))
    return out
