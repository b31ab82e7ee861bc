"""Grid expansion: a study spec becomes a list of cells, each identified by its config.

A cell is its config: the id is the hash of the canonical cell config plus a code epoch, so a
re-launch finds finished cells by id and a changed config can never reuse stale results.
Knobs that only say *how* a cell runs (worker count, GPU use, checkpoint cadence) stay out of
the id: moving a study from a laptop to a cluster keeps its finished cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inheritlab.flows.spec import StudySpec
from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import config_id

# Bump when a code change makes old cell results incomparable with new ones.
CODE_EPOCH = 1

CLEAN = {"type": "none", "level": 0.0}


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One grid cell: its id, canonical config, and execution-only settings."""

    cell_id: str
    config: dict[str, Any]
    execution: dict[str, Any] = field(default_factory=dict)

    @property
    def bias_type(self) -> str:
        return str(self.config["bias"]["type"])

    @property
    def bias_level(self) -> float:
        return float(self.config["bias"]["level"])

    @property
    def label(self) -> str:
        """A short human name for dashboards: ``label_noise=0.2/clip-tiny/n=4096/s0``."""
        c = self.config
        bias = "clean" if self.bias_type == "none" else f"{self.bias_type}={self.bias_level:g}"
        return f"{bias}/{c['model']}/n={c['samples_seen']}/s{c['seed']}"


def _pool_size(spec: StudySpec) -> int | None:
    """Unique training samples (documents for LM) of the built-in world; None for user shards."""
    if spec.data.source != "builtin":
        return None
    return spec.data.text_world.train_docs if spec.modality == "lm" else spec.data.world.train_size


def _unique_samples(spec: StudySpec, samples_seen: int) -> int | None:
    """Size of the unique pool a cell draws from (None: the whole user pool, counted later)."""
    pool = _pool_size(spec)
    if spec.grid.data_scale.unique == "fixed":
        return pool
    if pool is None:
        raise SpecError(
            "grid.data_scale.unique: 'scaled' needs a known pool size; with data.source 'shards' "
            "use 'fixed'"
        )
    return min(pool, samples_seen)


def _data_config(spec: StudySpec) -> dict[str, Any]:
    d = spec.data
    if d.source == "builtin" and spec.modality == "lm":
        return {"source": "builtin", "text_world": d.text_world.model_dump(), "pool": _pool_size(spec)}
    if d.source == "builtin":
        return {"source": "builtin", "world": d.world.model_dump(), "pool": _pool_size(spec)}
    assert d.shards is not None
    return {"source": "shards", "shards": d.shards.model_dump()}


def expand_grid(spec: StudySpec) -> list[Cell]:
    """All cells of the study, clean controls shared across bias types, in a stable order."""
    train = spec.train
    recipe = {
        "batch_size": train.batch_size,
        "lr": train.lr,
        "warmup_steps": train.warmup_steps,
        "zero_stage": train.zero_stage,
        "eval_checkpoints": train.eval_checkpoints,
    }
    execution = {
        "workers": train.workers,
        "cpus_per_worker": train.cpus_per_worker,
        "use_gpu": train.use_gpu,
        "ckpt_every": train.ckpt_every,
        "loader_workers": train.loader_workers,
        "max_failures": spec.execution.max_failures,
    }
    cells: dict[str, Cell] = {}
    for axis in spec.grid.bias:
        for level in axis.levels:
            bias = dict(CLEAN) if level == 0 else {"type": axis.type, "level": float(level), **axis.params}
            for model in spec.grid.model:
                for samples_seen in spec.grid.data_scale.values:
                    for seed in spec.grid.seeds:
                        config = {
                            "study": spec.name,
                            "modality": spec.modality,
                            "study_seed": spec.seed,
                            "seed": seed,
                            "bias": bias,
                            "model": model,
                            "samples_seen": samples_seen,
                            "unique": spec.grid.data_scale.unique,
                            "unique_samples": _unique_samples(spec, samples_seen),
                            "data": _data_config(spec),
                            "bad_sample_ceiling": spec.data.bad_sample_ceiling,
                            "train": recipe,
                            # Settings left at their defaults are omitted, so adding one
                            # never changes the ids of cells that do not use it.
                            "eval": {"tasks": spec.eval_tasks,
                                     **spec.eval.model_dump(exclude_defaults=True, exclude={"tasks"})},
                        }
                        cid = config_id(config, CODE_EPOCH)
                        cells.setdefault(cid, Cell(cell_id=cid, config=config, execution=execution))
    return list(cells.values())
