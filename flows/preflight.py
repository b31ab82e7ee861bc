"""The check of a study's data before any training: run by ``inheritlab validate`` and at the
start of every ``run``.

The spec's own checks (fields, rungs, tasks) need no files; this one opens the data: the
modality reads every split's shards' first samples, the class metadata and the evaluation
suites, and checks them against the tasks and biases the study asks for. It takes seconds,
and every problem found is reported at once, each naming the field and what to supply.
"""

from __future__ import annotations

import time
from typing import Any

from inheritlab.flows.spec import StudySpec
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.modality import get_modality


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
