"""Grid expansion: a study spec becomes a list of cells, each identified by its config.

A cell is its config (:class:`inheritlab.infra.cell.CellConfig`): the id is the hash of its
canonical dump plus a code epoch, so a re-launch finds finished cells by id and a changed config
can never reuse stale results. Knobs that only say *how* a cell runs (worker count, GPU use,
checkpoint cadence) go to its :class:`~inheritlab.infra.cell.ExecutionConfig`, out of the id:
moving a study from a laptop to a cluster keeps its finished cells.
"""

from __future__ import annotations

from inheritlab.flows.spec import StudySpec, axis_names
from inheritlab.infra.cell import (
    CLEAN,
    CODE_EPOCH,
    BiasConfig,
    Cell,
    CellConfig,
    ExecutionConfig,
    RecipeConfig,
)
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.modality import get_modality

__all__ = ["CODE_EPOCH", "execution_of", "expand_grid"]


def _unique_samples(spec: StudySpec, pool: int | None, samples_seen: int) -> int | None:
    """Size of the unique pool a cell draws from (None: the whole user pool, counted later)."""
    if spec.grid.data_scale.unique == "fixed":
        return pool
    if pool is None:
        raise SpecError(
            "grid.data_scale.unique: 'scaled' needs a known pool size; with data.source 'shards' use 'fixed'"
        )
    return min(pool, samples_seen)


def execution_of(spec: StudySpec) -> ExecutionConfig:
    """How every cell of the study runs (the train section's execution knobs, Ray's retries)."""
    fields = set(ExecutionConfig.model_fields) - {"max_failures"}
    return ExecutionConfig(**spec.train.model_dump(include=fields), max_failures=spec.execution.max_failures)


def expand_grid(spec: StudySpec) -> list[Cell]:
    """All cells of the study, clean controls shared across bias types, in a stable order."""
    modality = get_modality(spec.modality)
    data = modality.cell_data(spec.data)
    pool = modality.pool_size(spec.data)
    recipe = RecipeConfig(**spec.train.model_dump(include=set(RecipeConfig.model_fields)))
    evaluation = spec.eval.model_copy(update={"tasks": spec.eval_tasks})
    execution = execution_of(spec)
    cells: dict[str, Cell] = {}
    for axis, name in zip(spec.grid.bias, axis_names(spec.grid.bias)):
        for level in axis.levels:
            bias = CLEAN if level == 0 else BiasConfig(type=axis.type, level=float(level), params=axis.params,
                                                      axis=name)
            for model in spec.grid.model:
                for samples_seen in spec.grid.data_scale.values:
                    for seed in spec.grid.seeds:
                        config = CellConfig(
                            study=spec.name, modality=spec.modality, study_seed=spec.seed, seed=seed, bias=bias,
                            model=model, samples_seen=samples_seen, unique=spec.grid.data_scale.unique,
                            unique_samples=_unique_samples(spec, pool, samples_seen), pool=pool, data=data,
                            train=recipe, eval=evaluation,
                        )
                        cells.setdefault(config.cell_id, Cell(config=config, execution=execution))
    return list(cells.values())
