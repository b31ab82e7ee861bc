"""The study spec: a YAML grid validated into typed, frozen models.

A spec declares the grid (bias type × level × model rung × data scale × seed), where the data
comes from, how each cell trains and is evaluated, and how the study runs. Every error names
the field path, the bad value and what is allowed; unknown keys are rejected, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from inheritlab.corruptors.chain import validate_corruptor
from inheritlab.corruptors.world import image_format_for
from inheritlab.infra.cell import MAX_SAMPLES, MAX_SEED, Auto, DataConfig, EvalConfig, Frozen, RecipeConfig, WorldSpec
from inheritlab.infra.errors import SpecError, did_you_mean
from inheritlab.trainers.modality import Modality, get_modality, modality_names
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator


def _sorted_unique(v: list[Any], what: str) -> list[Any]:
    """An axis is a set of values: a repeat is an error (it would run the same cells twice)."""
    if len(set(v)) != len(v):
        raise ValueError(f"{what} {v} repeat a value")
    return sorted(v)


class BiasAxis(Frozen):
    """One bias type and the levels it is studied at (level 0 is the clean control).

    ``name`` labels the axis in cell labels and results (``bias_type``). It is needed only
    when two axes share a type, and even then is derived from the parameters that differ
    (``dedup[method=minhash]``) unless given.
    """

    type: str
    levels: Annotated[list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(
        min_length=1, description="a level is the fraction of samples the bias touches, from 0 (the clean "
                                  "control) to 1 (every sample)")]
    params: dict[str, Any] = Field(default_factory=dict)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=,\[\]-]*$", max_length=80)] | None = None

    _levels = field_validator("levels")(lambda v: _sorted_unique(v, "levels"))


def _short(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=1 << 20).strip().replace(" ", "") if isinstance(
        v, (list, dict)) else str(v)


def axis_names(axes: list[BiasAxis]) -> list[str | None]:
    """Each axis's label: its ``name``, else ``None`` (its type) when no other axis has its
    type, else the type and the parameters that differ between the axes of that type."""
    out: list[str | None] = []
    for axis in axes:
        twins = [a for a in axes if a.type == axis.type]
        if axis.name or len(twins) == 1:
            out.append(axis.name)
            continue
        keys = sorted({k for a in twins for k in a.params if any(b.params.get(k) != a.params.get(k) for b in twins)})
        shown = ",".join(f"{k}={_short(axis.params[k])}" for k in keys if k in axis.params)
        out.append(f"{axis.type}[{shown or 'defaults'}]")
    return out


class DataScaleAxis(Frozen):
    """The data-scale axis. ``values`` are always *samples seen* in training.

    ``unique`` says what happens to the unique pool as the axis grows:
    ``fixed`` — every cell draws from the whole training pool (repeats appear once samples seen
    exceed the pool; the repeat count is logged); ``scaled`` — the pool is the first ``value``
    samples of a nested ordering, so each cell sees its pool about once.
    """

    values: Annotated[list[Annotated[int, Field(ge=1, le=MAX_SAMPLES)]], Field(min_length=1)]
    unique: Literal["fixed", "scaled"] = "fixed"

    _values = field_validator("values")(lambda v: _sorted_unique(v, "values"))


class GridSpec(Frozen):
    bias: Annotated[list[BiasAxis], Field(min_length=1)]
    model: Annotated[list[str], Field(min_length=1)]
    data_scale: DataScaleAxis
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]], Field(min_length=1)] = [0]

    @model_validator(mode="after")
    def _distinct_axes(self) -> "GridSpec":
        # Two axes with one label would share cell labels and be pooled as replicates.
        labels = [n or a.type for n, a in zip(axis_names(self.bias), self.bias)]
        for i, label in enumerate(labels):
            if labels.index(label) != i:
                j = labels.index(label)
                raise ValueError(f"bias[{j}] and bias[{i}] are both labelled {label!r}: give them different "
                                 "params, or distinct 'name's")
        return self

    @property
    def bias_types(self) -> frozenset[str]:
        """The corruptor types the grid studies (what some tasks need: duplicates, leaks)."""
        return frozenset(a.type for a in self.bias if any(lvl > 0 for lvl in a.levels))


class TrainSpec(RecipeConfig):
    """Per-study training settings: the recipe overrides (part of every cell's id), then how
    cells run (not part of the id: see ``infra.cell.ExecutionConfig``)."""

    ckpt_every: Annotated[int, Field(ge=1)] = 50
    # "auto" fills the hardware it is given (see infra.cell.ExecutionConfig); a number pins it.
    workers: Annotated[int, Field(ge=1, le=1024)] | Auto = "auto"
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] | Auto = "auto"
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    loader_workers: Annotated[int, Field(ge=0, le=256)] | Auto = "auto"


class AnalysisSpec(Frozen):
    metric: str = "acc1"
    task: str = "zeroshot"
    split: str = "id"
    x: Literal["data_scale", "flops", "samples_seen", "params"] = "data_scale"


class ExecutionSpec(Frozen):
    """How the study runs: retries, admission, the bounds on waiting, and the rates behind the
    plan's time estimates."""

    # Prefect retries a failed cell this many times (crashes, not bad configs or bad data).
    cell_retries: Annotated[int, Field(ge=0, le=10)] = 1
    # Training workers are restarted this many times after a crash (from the last checkpoint).
    max_failures: Annotated[int, Field(ge=0, le=10)] = 1
    # None: cells are admitted as the cluster's resources free up, with no other cap.
    max_concurrent_cells: Annotated[int, Field(ge=1)] | None = None
    # A cell that cannot get its resources within this long (other tenants, lost nodes) fails.
    placement_timeout_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 1800.0
    # A launch that finds a cell leased by another launch waits for it; a lease not renewed
    # for this long is taken over (its holder died).
    lease_stale_s: Annotated[float, Field(ge=10, le=86400)] = 120.0
    # Rates the plan's hour estimates assume (declared, not measured): per GPU, and per CPU worker.
    gpu_tflops: Annotated[float, Field(gt=0)] = 400.0
    cpu_gflops: Annotated[float, Field(gt=0)] = 20.0


class StudySpec(Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)]
    modality: str = "clip"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    data: DataConfig = DataConfig()
    grid: GridSpec
    train: TrainSpec = TrainSpec()
    eval: EvalConfig = EvalConfig()
    analysis: AnalysisSpec = AnalysisSpec()
    execution: ExecutionSpec = ExecutionSpec()

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, v: str) -> str:
        known = modality_names()
        if v not in known:
            raise ValueError(f"got {v!r}{did_you_mean(v, known)}; allowed: {', '.join(known)}")
        return v

    @property
    def eval_tasks(self) -> tuple[str, ...]:
        """The tasks every cell runs: the spec's, or the modality's defaults its data supports."""
        return get_modality(self.modality).resolve_tasks(self.data, self.eval, self.grid.bias_types)

    @model_validator(mode="after")
    def _check_modality(self) -> "StudySpec":
        # The modality knows its rungs, tasks and what its data offers: a spec asking for what
        # cannot run fails here, not after pre-training. A name it does not know is said first,
        # with the nearest it does.
        modality = get_modality(self.modality)
        errors = _unknown_names(modality, self.grid.model, self.eval.tasks or ())
        if not errors and (errors := modality.check(self.data, self.eval, self.grid.model, self.grid.bias_types)):
            from inheritlab.flows.preflight import describe_missing, missing_paths

            # What the data offers is read from its files: a path that is not there comes first,
            # as the likely cause of the rest.
            missing = missing_paths(self.data, self.eval)
            errors = ([describe_missing(missing)] if missing else []) + errors
        if self.modality != "clip" and self.train.augment != "auto":
            errors.append(f"train.augment: {self.train.augment!r} is image augmentation, for CLIP studies only")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @model_validator(mode="after")
    def _check_tokenizer(self) -> "StudySpec":
        shards = self.data.shards
        if shards is not None and shards.tokenizer != "train":
            from inheritlab.corruptors.tokenizer import resolve_tokenizer_path

            try:  # local files and the local cache only: cheap, and never the network
                resolve_tokenizer_path(shards.tokenizer)
            except SpecError as exc:
                raise ValueError(f"data.shards.{exc}; or 'train' to train one on the train split") from None
            if "vocab_size" in shards.model_fields_set:
                raise ValueError(f"data.shards.vocab_size: only used with tokenizer 'train'; the tokenizer "
                                 f"{shards.tokenizer!r} has its own vocabulary")
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

    @model_validator(mode="after")
    def _resolve_image_world(self) -> "StudySpec":
        # The built-in image world is drawn at the size the grid's models train at, so a GPU
        # rung is not fed upscaled 32-px images; cells then hash concrete values. A CPU-rung
        # study resolves to the declared defaults (32 px, PNG), which cell ids leave out.
        world = self.data.world
        auto = {k for k in ("image_size", "image_format")
                if k not in world.model_fields_set or getattr(world, k) is None}
        if not auto:
            return self
        size = world.image_size
        if "image_size" in auto:
            drawn = self.modality == "clip" and self.data.source == "builtin"
            rung_size = _rung_image_size(self.grid.model) if drawn else None
            size = rung_size or WorldSpec.model_fields["image_size"].default
        assert size is not None  # given, from a rung, or the declared default
        update: dict[str, Any] = {"image_size": size}
        if "image_format" in auto:
            update["image_format"] = image_format_for(size)
        resolved = world.model_copy(update=update)
        if resolved == world:
            return self
        return self.model_copy(update={"data": self.data.model_copy(update={"world": resolved})})


def _unknown_names(modality: Modality, models: list[str], tasks: tuple[str, ...]) -> list[str]:
    """An error per rung or task name the modality does not know, each with the nearest known."""
    errors = []
    for field, names, what, known in (("grid.model", models, "rung", modality.rungs()),
                                      ("eval.tasks", tasks, "task", sorted(modality.tasks()))):
        errors += [f"{field}[{i}]: {name!r} is not a {what} of modality {modality.name!r}{did_you_mean(name, known)}; "
                   f"known: {', '.join(known)}" for i, name in enumerate(names) if name not in known]
    return errors


def _rung_image_size(models: list[str]) -> int | None:
    """The largest input size among the CLIP rungs named (``None`` if none is a known rung;
    an unknown name is reported by the modality's check)."""
    from inheritlab.trainers.clip_models import RUNGS, get_rung

    sizes = [get_rung(m).image_size for m in models if m in RUNGS]
    return max(sizes) if sizes else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The spec model a field holds (itself, or inside a list or an optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _located(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str | None]:
    """The model an error's location ends in, and the last name in it: the field at fault, or
    the unknown key (then the model's fields are what was meant)."""
    model: type[BaseModel] | None = StudySpec
    holder, name = None, None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return model, str(part)
        holder, name, model = model, part, _model_in(model.model_fields[part].annotation)
    return holder, name


def _field_path(loc: tuple[Any, ...]) -> str:
    """``grid.bias[0].levels[1]``: how the error names the field (as the other checks do)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: Any) -> str:
    """One pydantic error as one line: the field path, what is wrong, the value and a hint."""
    loc = tuple(err["loc"])
    path = _field_path(loc)
    if err["type"] == "missing":
        return f"{path}: required field is missing"
    value = err.get("input")
    model, name = _located(loc)
    msg = err["msg"].removeprefix("Value error, ")
    hint = ""
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the spec)"
        hint = did_you_mean(name, model.model_fields) if model is not None else ""
    elif err["type"] == "literal_error":
        hint = did_you_mean(value, re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
    elif model is not None and name in model.model_fields and model.model_fields[name].description:
        hint = f"; {model.model_fields[name].description}"
    if err["type"] == "value_error" and isinstance(value, dict):
        # A check across fields: its message names them; the whole mapping is no help.
        return f"{path}: {msg}" if path else msg
    shown = repr(value)
    if err["type"] == "value_error" and shown in msg:  # the check's own message shows the value
        return f"{path}: {msg}{hint}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{path}: {msg} (got {shown}){hint}"


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [_describe(err) for err in exc.errors()]
    if len(lines) == 1:
        return f"invalid study spec {source}: {lines[0]}"
    return "\n".join([f"invalid study spec {source}:", *(f"  - {line}" for line in lines)])


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
        shipped = builtin_specs()
        raise SpecError(f"no study spec at {name_or_path!r}: not a file, and not one of the shipped studies"
                        f"{did_you_mean(Path(name_or_path).name.removesuffix('.yaml'), shipped)}: {', '.join(shipped)}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid study spec {path}: not valid YAML ({exc})") from None
    return parse_spec(data, source=str(path))
