"""The evaluation-task registry: each downstream task is one small function, registered by name.

A task takes its modality's evaluation context (the loaded checkpoint, the data, the cell's
settings) and returns tidy rows ``{checkpoint_step, samples_seen, task, split, metric,
value}``. Adding a task is one decorated function in the modality's task module
(``trainers/clip_tasks.py``, ``trainers/lm_tasks.py``)::

    @eval_task("clip", needs=("class_names",))
    def zeroshot(ctx: ClipEvalContext) -> list[Row]:
        ...

``needs`` names what the data must offer (class names, QA splits ...); a study spec that asks
for a task its data cannot serve is refused when it loads, saying how to supply it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inheritlab.infra.errors import SpecError

Row = dict[str, Any]


@dataclass(frozen=True)
class EvalTask:
    """A registered task: its function, modality and what it needs from the data."""

    name: str
    modality: str
    fn: Callable[[Any], list[Row]]
    needs: frozenset[str]
    doc: str


_REGISTRY: dict[str, dict[str, EvalTask]] = {}


def eval_task(modality: str, *, name: str | None = None,
              needs: Iterable[str] = ()) -> Callable[[Callable[[Any], list[Row]]], Callable[[Any], list[Row]]]:
    """Decorator: register ``fn`` as task ``name`` (default: the function's name) of ``modality``."""

    def register(fn: Callable[[Any], list[Row]]) -> Callable[[Any], list[Row]]:
        task = name or fn.__name__
        tasks = _REGISTRY.setdefault(modality, {})
        if task in tasks:
            raise ValueError(f"evaluation task {task!r} of {modality!r} is registered twice")
        doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0]
        tasks[task] = EvalTask(name=task, modality=modality, fn=fn, needs=frozenset(needs), doc=doc)
        return fn

    return register


def registered_tasks(modality: str) -> dict[str, EvalTask]:
    """The tasks registered for ``modality`` (its task module must have been imported)."""
    return dict(_REGISTRY.get(modality, {}))


def run_tasks(modality: str, names: Sequence[str], ctx: Any) -> list[Row]:
    """Run the named tasks of ``modality`` on one context, in the order given."""
    tasks = registered_tasks(modality)
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise SpecError(f"eval.tasks: {unknown} are not {modality} tasks; registered: {sorted(tasks)}")
    rows: list[Row] = []
    for n in names:
        rows.extend(tasks[n].fn(ctx))
    return rows


def measure(step: int | None, samples_seen: int | None, task: str, split: str, metric: str, value: float) -> Row:
    """One tidy measurement row (the flow adds the cell's grid coordinates)."""
    return {"checkpoint_step": int(step or 0), "samples_seen": int(samples_seen or 0), "task": task, "split": split,
            "metric": metric, "value": float(value)}


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size`` (evaluation batches)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
