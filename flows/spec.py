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
from pydantic import (
    BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator,
    model_serializer, model_validator,
)

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
    """A user's own shards: a directory or brace pattern of ``.tar`` shards per split.

    CLIP: image–caption shards (img2dataset layout or ours). LM: text shards, one document per
    sample (``<key>.txt``, optional ``<key>.json`` meta); ``test_id`` is clean held-out text
    (perplexity split ``id``), ``test_ood`` another held-out set (split ``ood``).

    ``tokenizer`` and ``vocab_size`` apply to LM studies only: ``train`` (the default) trains a
    byte-level BPE of ``vocab_size`` on the train split at data prep, once per study; otherwise
    a ``tokenizer.json``, a directory holding one, or the name of a tokenizer already in the
    local Hugging Face cache (nothing is downloaded). Left at their defaults they are omitted
    from the dumped config, so CLIP cells keep their ids.
    """

    train: str
    test_id: str
    test_ood: str | None = None
    tokenizer: Annotated[str, Field(min_length=1)] = "train"
    vocab_size: Annotated[int, Field(ge=300, le=1 << 17)] = 8192

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_resolves(cls, v: str) -> str:
        if v == "train":
            return v
        from inheritlab.corruptors.tokenizer import resolve_tokenizer_path

        try:  # local files and the local cache only: cheap, and never the network
            resolve_tokenizer_path(v)
        except SpecError as exc:
            raise ValueError(f"{str(exc).removeprefix('tokenizer: ')}; or 'train' to train one on the train split") from None
        return v

    @model_validator(mode="after")
    def _vocab_only_when_trained(self) -> "ShardsSpec":
        if "vocab_size" in self.model_fields_set and self.tokenizer != "train":
            raise ValueError(
                f"vocab_size: only used with tokenizer 'train'; the tokenizer {self.tokenizer!r} has its own vocabulary"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_text_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        for name in ("tokenizer", "vocab_size"):
            if name in out and out[name] == type(self).model_fields[name].default:
                del out[name]
        return out


class DataSpec(_Strict):
    """Where the data comes from: a built-in world (``world`` for CLIP, ``text_world`` for LM)
    generated at data prep, or the user's ``shards`` (image–caption or text, by modality)."""

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
# (``qa`` also writes the ``qa_by_frequency`` rows: accuracy by how often a person was in training.)
LM_TASKS = ("perplexity", "qa", "memorization", "contamination")


class EvalSpec(_Strict):
    """Downstream evaluation of every chosen checkpoint.

    ``lm_adaptation`` (LM studies, task ``qa``): how the pre-trained model meets attribute QA —
    ``prompting`` as it is (rows ``qa``) and/or ``finetune``: a copy fine-tuned on the text
    world's ``qa_train`` split, QA of other individuals than the test splits' (rows
    ``qa_finetune``). ``finetune_steps``/``finetune_lr`` override the fine-tune's defaults
    (100 steps at 1e-3, a few seconds per checkpoint for lm-tiny on a CPU).
    """

    # None: the modality's defaults (zeroshot, linear_probe, retrieval | perplexity, qa, memorization).
    tasks: Annotated[list[Literal[CLIP_TASKS + LM_TASKS]], Field(min_length=1)] | None = None  # type: ignore[valid-type]
    lm_adaptation: Annotated[list[Literal["prompting", "finetune"]], Field(min_length=1)] = ["prompting"]
    finetune_steps: Annotated[int, Field(ge=1, le=100_000)] | None = None
    finetune_lr: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    @field_validator("lm_adaptation")
    @classmethod
    def _unique_adaptations(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"lm_adaptation {v} repeats a value")
        return v

    @model_validator(mode="after")
    def _finetune_knobs_need_finetune(self) -> "EvalSpec":
        knobs = sorted({"finetune_steps", "finetune_lr"} & self.model_fields_set)
        if knobs and "finetune" not in self.lm_adaptation:
            raise ValueError(f"{knobs}: only used when lm_adaptation includes 'finetune' (got {self.lm_adaptation})")
        return self


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
        if self.modality == "clip":
            return ["zeroshot", "linear_probe", "retrieval"]
        # QA needs the built-in world's QA splits; a user's text shards have none.
        return ["perplexity", "qa", "memorization"] if self.data.source == "builtin" else ["perplexity", "memorization"]

    @model_validator(mode="after")
    def _check_modality(self) -> "StudySpec":
        allowed = CLIP_TASKS if self.modality == "clip" else LM_TASKS
        bad = [t for t in self.eval_tasks if t not in allowed]
        if bad:
            raise ValueError(f"eval.tasks: {bad} are not {self.modality} tasks; allowed: {list(allowed)}")
        if self.modality == "lm" and self.data.source == "shards":
            qa = [t for t in self.eval_tasks if t == "qa"]
            if qa:
                raise ValueError(
                    f"eval.tasks: {qa} need the built-in text world's QA splits; on the user's text shards "
                    f"(data.source 'shards') allowed: {[t for t in LM_TASKS if t != 'qa']}"
                )
        text_only = self.data.shards.model_fields_set & {"tokenizer", "vocab_size"} if self.data.shards else set()
        if self.modality == "clip" and text_only:
            raise ValueError(f"data.shards: {sorted(text_only)} apply to LM studies (modality: lm) only")
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

    @model_validator(mode="after")
    def _check_adaptation(self) -> "StudySpec":
        ev = self.eval
        if self.modality != "lm":
            set_here = sorted({"lm_adaptation", "finetune_steps", "finetune_lr"} & ev.model_fields_set)
            if set_here:
                raise ValueError(f"eval: {set_here} apply to LM studies (modality: lm) only")
            return self
        if "finetune" in ev.lm_adaptation:
            if "qa" not in self.eval_tasks:
                raise ValueError("eval.lm_adaptation: 'finetune' adapts the model for task 'qa'; add 'qa' to eval.tasks")
            if self.data.source != "builtin":
                raise ValueError("eval.lm_adaptation: 'finetune' trains on the built-in text world's qa_train split; "
                                 "the user's text shards (data.source 'shards') have none")
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
