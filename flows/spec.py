"""The study spec: a YAML grid validated into typed, frozen models.

A spec declares the grid (bias type × level × model rung × data scale × seed), where the data
comes from, how each cell trains and is evaluated, and how the study runs. Every error names
the field path, the bad value and what is allowed; unknown keys are rejected, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inheritlab.corruptors.chain import validate_corruptor
from inheritlab.infra.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldSpec(_Strict):
    """The built-in procedural image–caption world (generated at data-prep time)."""

    num_classes: Annotated[int, Field(ge=2, le=64)] = 10
    image_size: Annotated[int, Field(ge=16, le=256)] = 32
    train_size: Annotated[int, Field(ge=64)] = 4000
    test_id_size: Annotated[int, Field(ge=16)] = 500
    test_ood_size: Annotated[int, Field(ge=16)] = 500
    samples_per_shard: Annotated[int, Field(ge=16)] = 500
    imbalance: Annotated[float, Field(ge=0.0, le=4.0)] = 0.0


class TextWorldSpec(_Strict):
    """The built-in synthetic-biography world for LM studies (tokenizer trained at data prep)."""

    num_individuals: Annotated[int, Field(ge=10)] = 500
    num_heldout_individuals: Annotated[int, Field(ge=1)] = 100
    train_docs: Annotated[int, Field(ge=100)] = 4000
    zipf: Annotated[float, Field(ge=0.0, le=4.0)] = 1.0
    test_docs: Annotated[int, Field(ge=10)] = 200
    qa_individuals: Annotated[int, Field(ge=10)] = 100
    docs_per_shard: Annotated[int, Field(ge=10)] = 1000
    vocab_size: Annotated[int, Field(ge=256)] = 1024


class ShardsSpec(_Strict):
    """A user's own shards (img2dataset layout or ours): a directory or brace pattern per split."""

    train: str
    test_id: str
    test_ood: str | None = None


class DataSpec(_Strict):
    source: Literal["builtin", "shards"] = "builtin"
    world: WorldSpec = WorldSpec()
    text_world: TextWorldSpec = TextWorldSpec()
    shards: ShardsSpec | None = None
    # A skipped bad sample is counted; past this fraction of the stream the run fails.
    bad_sample_ceiling: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01

    @model_validator(mode="after")
    def _shards_when_needed(self) -> "DataSpec":
        if self.source == "shards" and self.shards is None:
            raise ValueError("data.source is 'shards' but data.shards (train/test_id/...) is missing")
        return self


class BiasAxis(_Strict):
    """One bias type and the levels it is studied at (level 0 is the clean control)."""

    type: str
    levels: Annotated[list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("levels")
    @classmethod
    def _sorted_unique(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"levels {v} repeat a value")
        return sorted(v)


class DataScaleAxis(_Strict):
    """The data-scale axis. ``values`` are always *samples seen* in training.

    ``unique`` says what happens to the unique pool as the axis grows:
    ``fixed`` — every cell draws from the whole training pool (repeats appear once samples seen
    exceed the pool; the repeat count is logged); ``scaled`` — the pool is the first ``value``
    samples of a nested ordering, so each cell sees its pool about once.
    """

    values: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]
    unique: Literal["fixed", "scaled"] = "fixed"

    @field_validator("values")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"values {v} repeat a value")
        return sorted(v)


class GridSpec(_Strict):
    bias: Annotated[list[BiasAxis], Field(min_length=1)]
    model: Annotated[list[str], Field(min_length=1)]
    data_scale: DataScaleAxis
    seeds: Annotated[list[int], Field(min_length=1)] = [0]


class TrainSpec(_Strict):
    """Per-study training overrides; the rest is the rung's fixed recipe."""

    batch_size: Annotated[int, Field(ge=1)] | None = None
    lr: Annotated[float, Field(gt=0)] | None = None
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    ckpt_every: Annotated[int, Field(ge=1)] = 50
    # Checkpoints evaluated downstream: the final one, or every committed checkpoint.
    eval_checkpoints: Literal["final", "all"] = "final"
    workers: Annotated[int, Field(ge=1)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    zero_stage: Annotated[int, Field(ge=0, le=3)] = 2
    loader_workers: Annotated[int, Field(ge=0)] = 0


CLIP_TASKS = ("zeroshot", "linear_probe", "retrieval", "diagnostics")
LM_TASKS = ("perplexity", "qa", "qa_by_frequency", "memorization", "contamination")


class EvalSpec(_Strict):
    # None: the modality's defaults (zeroshot, linear_probe, retrieval | perplexity, qa, memorization).
    tasks: Annotated[list[Literal[CLIP_TASKS + LM_TASKS]], Field(min_length=1)] | None = None  # type: ignore[valid-type]


class AnalysisSpec(_Strict):
    metric: str = "acc1"
    task: str = "zeroshot"
    split: str = "id"
    x: Literal["data_scale", "flops", "samples_seen", "params"] = "data_scale"


class ExecutionSpec(_Strict):
    # Prefect retries a failed cell this many times (crashes, not bad configs or bad data).
    cell_retries: Annotated[int, Field(ge=0, le=10)] = 1
    # Ray retries tasks whose worker died; training restarts from the last checkpoint.
    max_failures: Annotated[int, Field(ge=0, le=10)] = 1
    max_concurrent_cells: Annotated[int, Field(ge=1)] = 1


class StudySpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)]
    modality: Literal["clip", "lm"] = "clip"
    seed: int = 0
    data: DataSpec = DataSpec()
    grid: GridSpec
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    execution: ExecutionSpec = ExecutionSpec()

    @property
    def eval_tasks(self) -> list[str]:
        if self.eval.tasks is not None:
            return list(self.eval.tasks)
        return ["zeroshot", "linear_probe", "retrieval"] if self.modality == "clip" else ["perplexity", "qa", "memorization"]

    @model_validator(mode="after")
    def _check_modality(self) -> "StudySpec":
        allowed = CLIP_TASKS if self.modality == "clip" else LM_TASKS
        bad = [t for t in self.eval_tasks if t not in allowed]
        if bad:
            raise ValueError(f"eval.tasks: {bad} are not {self.modality} tasks; allowed: {list(allowed)}")
        if self.modality == "lm" and self.data.source != "builtin":
            raise ValueError("data.source: LM studies run on the built-in text world ('builtin') for now")
        prefix = "clip-" if self.modality == "clip" else "lm-"
        if self.modality == "lm" or any(m.startswith("lm-") for m in self.grid.model):
            wrong = [m for m in self.grid.model if m.startswith("lm-") != (prefix == "lm-")]
            if wrong:
                raise ValueError(f"grid.model: {wrong} are not {self.modality} rungs")
        return self

    @model_validator(mode="after")
    def _check_corruptors(self) -> "StudySpec":
        # The data layer owns each corruptor's parameters; ask it now so a bad bias fails at
        # load time, not an hour into the study.
        for i, axis in enumerate(self.grid.bias):
            for level in axis.levels:
                validate_corruptor(
                    {"type": axis.type, "level": level, **axis.params}, where=f"grid.bias[{i}]"
                )
        return self


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid study spec {source}:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the spec)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {path}: {msg} (got {shown})" if err["type"] != "missing" else f"  - {path}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> StudySpec:
    """Validate a loaded YAML/dict into a :class:`StudySpec`; errors name the field path."""
    if not isinstance(data, dict):
        raise SpecError(f"invalid study spec {source}: expected a mapping at the top, got {type(data).__name__}")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(exc, source)) from None
    except SpecError as exc:
        raise SpecError(f"invalid study spec {source}: {exc}") from None


def builtin_specs() -> list[str]:
    """Names of the example studies shipped with the package."""
    root = resources.files("inheritlab.flows").joinpath("studies")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_spec_path(name_or_path: str) -> Path | None:
    """A path to an existing file, or the shipped study of that name (``demo``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if stem in builtin_specs():
        return Path(str(resources.files("inheritlab.flows").joinpath("studies", f"{stem}.yaml")))
    return None


def load_spec(name_or_path: str) -> StudySpec:
    """Load a spec from a YAML file, or a shipped example by name."""
    path = resolve_spec_path(name_or_path)
    if path is None:
        raise SpecError(
            f"no study spec at {name_or_path!r}: not a file, and not one of the shipped studies "
            f"{builtin_specs()}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid study spec {path}: not valid YAML ({exc})") from None
    return parse_spec(data, source=str(path))
