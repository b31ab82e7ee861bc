"""Modalities: what a cell of each kind needs from its data, its trainer and its evaluation.

The flow runs every cell through the same stages — condition, pre-train, evaluate, record —
and never asks which modality a cell holds: it asks the cell's :class:`Modality`, registered
by name (``clip``, ``lm``). A modality says which rungs and tasks exist and what its data
offers (so a spec is checked when it loads), prepares a study's data once, builds the trainer
config from a cell, trains on one rank (the Ray launcher and ``python -m`` both call it) and
evaluates one export. Adding a modality is one module that subclasses :class:`Modality`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from inheritlab.infra.cell import Cell, CellConfig, DataConfig, EvalConfig
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.checkpoint import Export, TrainSummary
from inheritlab.trainers.eval_tasks import EvalTask, Row, registered_tasks
from inheritlab.trainers.train_config import BaseTrainConfig


@dataclass(frozen=True, kw_only=True)
class DataSources:
    """A study's data as a cell's stages need it, prepared once per study.

    ``kind`` is the sample kind the shard reader expects (``image``, ``text``); ``world`` the
    modality's own description of the data (``WorldInfo``, ``TextWorldInfo``), which its
    evaluation reads.
    """

    kind: str
    splits: dict[str, list[str]]
    class_names: tuple[str, ...] = ()
    label_key: str | None = None     # the .json key labels come from when samples have no .cls
    world: Any = field(default=None, compare=False)

    @property
    def train(self) -> list[str]:
        return list(self.splits["train"])


class Modality(ABC):
    """One kind of cell (CLIP, LM): the pieces each stage of the flow asks for."""

    name: ClassVar[str]
    #: Tasks run when a spec names none (those the data cannot serve are left out).
    default_tasks: ClassVar[tuple[str, ...]]

    # -- what a spec may ask for --------------------------------------------------------------

    @abstractmethod
    def rungs(self) -> list[str]:
        """Names of the model rungs of this modality."""

    @abstractmethod
    def global_batch(self, cell: CellConfig) -> int:
        """The cell's global batch (its recipe's, or the spec's override)."""

    @abstractmethod
    def flops_per_sample(self, cell: CellConfig) -> float:
        """Training FLOPs of one sample of the cell's rung (forward and backward), for estimates."""

    @abstractmethod
    def pool_size(self, data: DataConfig) -> int | None:
        """Unique training samples of a built-in world (``None`` for a user's shards)."""

    @abstractmethod
    def cell_data(self, data: DataConfig) -> DataConfig:
        """The data settings a cell records: only what this modality reads (the rest at defaults)."""

    @abstractmethod
    def missing(self, data: DataConfig) -> dict[str, str]:
        """What the data cannot offer that some task needs: capability → how to supply it."""

    def lacking(self, data: DataConfig, bias_types: frozenset[str] = frozenset()) -> dict[str, str]:
        """What the data and the grid cannot offer that some task needs: capability → how to
        supply it. The grid offers ``duplicates`` (a ``duplicate`` axis: memorisation compares
        duplicated with unique documents) and ``leaks`` (a ``contamination`` axis)."""
        out = dict(self.missing(data))
        if "duplicate" not in bias_types:
            out["duplicates"] = "duplicated training data: a grid.bias axis of type 'duplicate' with a level above 0"
        if "contamination" not in bias_types:
            out["leaks"] = "leaked test items: a grid.bias axis of type 'contamination' with a level above 0"
        return out

    def check_settings(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str]) -> list[str]:
        """Errors in modality-specific settings (each naming the field); none by default."""
        return []

    def tasks(self) -> dict[str, EvalTask]:
        return registered_tasks(self.name)

    def implied_tasks(self, ev: EvalConfig) -> tuple[str, ...]:
        """Tasks the eval settings ask for by being set (CLIP's ``suites``); none by default."""
        return ()

    def resolve_tasks(self, data: DataConfig, ev: EvalConfig, bias_types: frozenset[str] = frozenset()
                      ) -> tuple[str, ...]:
        """The tasks a cell runs: those the spec names, or the defaults the data and grid
        support, plus those its eval settings imply."""
        implied = self.implied_tasks(ev)
        if ev.tasks is not None:
            return ev.tasks + tuple(t for t in implied if t not in ev.tasks)
        lacking = self.lacking(data, bias_types)
        defaults = tuple(t for t in self.default_tasks if not self.tasks()[t].needs & set(lacking))
        return defaults + tuple(t for t in implied if t not in defaults)

    def left_out(self, data: DataConfig, ev: EvalConfig, bias_types: frozenset[str] = frozenset()) -> dict[str, str]:
        """Default tasks not run because the data or grid cannot serve them: task → what it
        needs and how to supply it (said at ``validate`` and at the start of a study)."""
        if ev.tasks is not None:
            return {}
        lacking = self.lacking(data, bias_types)
        return {t: "; ".join(lacking[n] for n in sorted(self.tasks()[t].needs & set(lacking)))
                for t in self.default_tasks if self.tasks()[t].needs & set(lacking)}

    def check(self, data: DataConfig, ev: EvalConfig, models: Sequence[str],
              bias_types: frozenset[str] = frozenset()) -> list[str]:
        """Every error a spec of this modality has (rungs, tasks, what the tasks need)."""
        errors = []
        unknown = [m for m in models if m not in self.rungs()]
        if unknown:
            errors.append(f"grid.model: {unknown} are not {self.name} rungs; known: {self.rungs()}")
        registered = self.tasks()
        tasks = self.resolve_tasks(data, ev, bias_types)
        bad = [t for t in tasks if t not in registered]
        if bad:
            errors.append(f"eval.tasks: {bad} are not {self.name} tasks; allowed: {sorted(registered)}")
        lacking = self.lacking(data, bias_types)
        for t in tasks:
            for need in sorted(registered[t].needs if t in registered else ()):
                if need in lacking:
                    errors.append(f"eval.tasks: {t!r} needs {lacking[need]}")
        return errors + self.check_settings(data, ev, tasks)

    def preflight(self, data: DataConfig, ev: EvalConfig, tasks: Sequence[str], biases: Sequence[dict[str, Any]], *,
                  study_seed: int) -> list[str]:
        """Errors found by opening the data before any training: every split listed, the first
        sample of each shard read, labels and class names checked for ``tasks`` and the bias
        specs (``{"type", "level", **params}``). Cheap (seconds); none by default."""
        return []

    # -- the stages of a cell -----------------------------------------------------------------

    @abstractmethod
    def prepare_data(self, data: DataConfig, study_seed: int, root: Path) -> DataSources:
        """Generate the built-in world or open the user's shards, once per study (idempotent);
        ``root`` is the study's run directory."""

    @abstractmethod
    def train_config(self, cell: Cell, cell_dir: Path, data: DataSources, *, device: str) -> BaseTrainConfig:
        """The trainer config of ``cell`` (built from it, never copied field by field)."""

    @abstractmethod
    def config_from_dict(self, data: dict[str, Any]) -> BaseTrainConfig:
        """A trainer config back from its ``to_dict`` (how it reaches a Ray worker)."""

    @abstractmethod
    def train(self, cfg: Any) -> TrainSummary:
        """Train on this rank (torch.distributed is up or is brought up); the same summary on every rank."""

    @abstractmethod
    def evaluate(self, cell: CellConfig, cell_dir: Path, data: DataSources, export: Export, *,
                 device: str) -> list[Row]:
        """Every task of the cell on one export: tidy rows."""


_MODALITIES: dict[str, Modality] = {}
# The modules that define the built-in modalities (imported on first use: they bring in torch).
_BUILTIN = ("inheritlab.trainers.clip_cell", "inheritlab.trainers.lm_cell")


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a modality available to study specs under ``cls.name``."""
    if cls.name in _MODALITIES:
        raise ValueError(f"modality {cls.name!r} is registered twice")
    _MODALITIES[cls.name] = cls()
    return cls


def modality_names() -> list[str]:
    for module in _BUILTIN:
        importlib.import_module(module)
    return sorted(_MODALITIES)


def get_modality(name: str) -> Modality:
    """The modality called ``name``; an unknown name is a spec error listing the known ones."""
    known = modality_names()
    if name not in _MODALITIES:
        raise SpecError(f"modality {name!r} is not known; known: {known}")
    return _MODALITIES[name]
