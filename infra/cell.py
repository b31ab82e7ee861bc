"""A cell of a study: one typed, frozen config. The cell *is* its config.

The grid of a study spec expands into :class:`CellConfig` objects; everything downstream — the
data condition, the trainer configs (``from_cell``), the evaluation, the results row — is built
from one of them, never copied field by field. Its id is the hash of its canonical dump plus
:data:`CODE_EPOCH`, so a re-launch finds finished cells by id and a changed config can never
reuse stale results.

How a cell runs (worker count, GPU use, checkpoint cadence, loader workers, retries) is kept
beside it in :class:`ExecutionConfig`, out of the id: a study started on a laptop keeps its
finished cells on a cluster.

This module sits in the bottom layer (pydantic only) because flows, trainers and the CLI all
read cells; which modalities, rungs and tasks exist is checked by the layers that know them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from inheritlab.infra.hashing import config_id
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Bump when a code change makes old cell results incomparable with new ones (the ids change).
# 2: the typed cell (its canonical dump differs from the epoch-1 dict).
# 3: LM perplexity on whole documents (rolling windows, no end-of-text target); zero-shot acc5
#    and mean per-class recall; bias_type names the grid axis.
CODE_EPOCH = 3


# Sizes a spec may ask for: far beyond any study (a thousand times DataComp xlarge's 12.8 B
# samples seen; a global batch of 4 M), but a typo such as 1e30 is refused, not overflowed.
MAX_SAMPLES = 10**13
MAX_BATCH = 2**22
MAX_SEED = 2**32 - 1           # seeds feed 32-bit RNG seeding (infra.seeds)


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (anywhere in a union or container)."""
    if annotation is bool:
        return True
    return any(_takes_bool(a) for a in get_args(annotation))


class Frozen(BaseModel):
    """Base of every config model: unknown keys are refused, instances are immutable, and a
    boolean is never taken for a number (pydantic would read ``levels: [true]`` as 1.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items) and info.field_name is not None:
            if not _takes_bool(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"got {value!r}: a boolean where a number or a name is expected (YAML reads "
                                 "yes/no/on/off/true/false as booleans: quote the value)")
        return value


# ----------------------------------------------------------------------------------- data


class WorldSpec(Frozen):
    """The built-in procedural image–caption world (generated at data-prep time).

    ``image_size`` and ``image_format`` left out (or ``null``) are resolved when the study spec
    loads: the largest input size of the grid's CLIP rungs, and PNG up to 64 px, JPEG above
    (see ``flows/spec.py``). Their declared defaults are what a CPU-rung study resolves to —
    the 32-px PNG world, as it was before these settings existed — so a cell id, which leaves
    defaults out, is unchanged for such studies; only a world that differs from it enters the id.
    """

    num_classes: Annotated[int, Field(ge=2, le=64)] = 10
    image_size: Annotated[int, Field(ge=16, le=512)] | None = 32
    image_format: Literal["png", "jpeg"] | None = "png"
    train_size: Annotated[int, Field(ge=64)] = 4000
    test_id_size: Annotated[int, Field(ge=16)] = 500
    test_ood_size: Annotated[int, Field(ge=16)] = 500
    samples_per_shard: Annotated[int, Field(ge=16)] = 500
    imbalance: Annotated[float, Field(ge=0.0, le=4.0)] = 0.0


class TextWorldSpec(Frozen):
    """The built-in synthetic-biography world for LM studies (tokenizer trained at data prep)."""

    num_individuals: Annotated[int, Field(ge=10)] = 500
    num_heldout_individuals: Annotated[int, Field(ge=1)] = 100
    train_docs: Annotated[int, Field(ge=100)] = 4000
    zipf: Annotated[float, Field(ge=0.0, le=4.0)] = 1.0
    test_docs: Annotated[int, Field(ge=10)] = 200
    qa_individuals: Annotated[int, Field(ge=10)] = 100
    docs_per_shard: Annotated[int, Field(ge=10)] = 1000
    vocab_size: Annotated[int, Field(ge=256)] = 1024


class ShardsSpec(Frozen):
    """A user's own shards: a directory or brace pattern of ``.tar`` shards per split.

    CLIP: image–caption shards (img2dataset layout or ours). LM: text shards, one document per
    sample (``<key>.txt``, optional ``<key>.json`` meta); ``test_id`` is clean held-out text
    (perplexity split ``id``), ``test_ood`` another held-out set (split ``ood``).

    ``tokenizer`` and ``vocab_size`` apply to LM studies only: ``train`` (the default) trains a
    byte-level BPE of ``vocab_size`` on the train split at data prep, once per study; otherwise
    a ``tokenizer.json``, a directory holding one, or the name of a tokenizer already in the
    local Hugging Face cache (nothing is downloaded).
    """

    train: str
    test_id: str
    test_ood: str | None = None
    tokenizer: Annotated[str, Field(min_length=1)] = "train"
    vocab_size: Annotated[int, Field(ge=300, le=1 << 17)] = 8192
    # CLIP: where labels and class names come from (docs/data.md). A sample's label is its
    # .cls member, else this key of its .json; class names and templates are read beside the
    # train split unless these name the files.
    label_key: Annotated[str, Field(min_length=1)] | None = None
    classnames: str | None = None
    templates: str | None = None

    def given(self) -> dict[str, str]:
        """The splits the user named (``train``, ``test_id`` and ``test_ood`` when set)."""
        out = {"train": self.train, "test_id": self.test_id}
        if self.test_ood:
            out["test_ood"] = self.test_ood
        return out


class DataConfig(Frozen):
    """Where the data comes from: a built-in world (``world`` for CLIP, ``text_world`` for LM)
    generated at data prep, or the user's ``shards`` (image–caption or text, by modality).

    In a cell only the parts its modality reads are set away from their defaults, so an LM
    cell's id never depends on the image world's settings (and vice versa).
    """

    source: Literal["builtin", "shards"] = "builtin"
    world: WorldSpec = WorldSpec()
    text_world: TextWorldSpec = TextWorldSpec()
    shards: ShardsSpec | None = None
    # A skipped bad sample is counted; past this fraction of the stream the run fails.
    bad_sample_ceiling: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01

    @model_validator(mode="after")
    def _shards_when_needed(self) -> "DataConfig":
        if self.source == "shards" and self.shards is None:
            raise ValueError("data.source is 'shards' but data.shards (train/test_id/...) is missing")
        return self


# ----------------------------------------------------------------------------------- the cell


class BiasConfig(Frozen):
    """The bias a cell is conditioned with: a corruptor type, its level and parameters.

    The clean control is ``type: none`` at level 0, shared by every bias axis of a study.
    ``axis`` names the grid axis when two axes share a type (``dedup[method=minhash]``): it is
    the cell's label and its results' ``bias_type``, so the axes are never pooled. ``None``
    (the usual case) is the type itself, and keeps the cell ids of single-typed grids.
    """

    type: str
    level: Annotated[float, Field(ge=0.0, le=1.0)]
    params: dict[str, Any] = Field(default_factory=dict)
    axis: str | None = None

    @property
    def is_clean(self) -> bool:
        return self.type == "none"

    @property
    def label(self) -> str:
        """The axis this bias belongs to, as results and labels name it."""
        return "none" if self.is_clean else (self.axis or self.type)

    def corruptor(self) -> dict[str, Any]:
        """The corruptor spec the data layer reads (``{"type", "level", **params}``)."""
        return {"type": self.type, "level": self.level, **self.params}


CLEAN = BiasConfig(type="none", level=0.0)


class RecipeConfig(Frozen):
    """Training settings that change results (in the id); ``None`` takes the rung's recipe."""

    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] | None = None
    lr: Annotated[float, Field(gt=0)] | None = None
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    # "auto": stage 0 when a model's whole training state fits in a quarter of one device (the
    # fused multi-tensor optimizer step), else 2 — trainers/engine.py resolve_zero_stage.
    zero_stage: Annotated[int, Field(ge=0, le=3)] | Literal["auto"] = "auto"
    # CLIP training augmentation: the rung's ("auto": random resized crop on GPU rungs, none on
    # the CPU rungs), or forced off / on.
    augment: Literal["auto", "none", "rrc"] = "auto"
    # Checkpoints evaluated downstream: the final one, or every committed checkpoint.
    eval_checkpoints: Literal["final", "all"] = "final"


class SuitesConfig(Frozen):
    """Evaluation sets on disk in the CLIP_benchmark / DataComp WebDataset layout
    (``corruptors/suites.py``): ``root/<task>/<split>/{0..n-1}.tar`` with ``nshards.txt``,
    ``classnames.txt``, the templates file and, for retrieval, ``dataset_type.txt``."""

    root: Annotated[str, Field(min_length=1)]
    tasks: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    split: Annotated[str, Field(min_length=1)] = "test"

    @model_validator(mode="after")
    def _unique(self) -> "SuitesConfig":
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} repeat a name")
        return self


# The CLIP adaptations (eval.adaptations), in the order a study's report lists them.
CLIP_ADAPTATIONS = ("zeroshot", "linear_probe", "few_shot", "finetune", "lora", "nmtune")


class EvalConfig(Frozen):
    """Downstream evaluation of every chosen checkpoint.

    ``tasks`` are names registered for the modality (``None`` in a spec: the modality's
    defaults that the data supports). ``lm_adaptation`` (LM studies, task ``qa``): ``prompting``
    the model as it is (rows ``qa``) and/or ``finetune`` — a copy fine-tuned on the text
    world's ``qa_train`` split (rows ``qa_finetune``); ``finetune_steps``/``finetune_lr``
    override that fine-tune's defaults. ``suites`` (CLIP): evaluation sets on disk, scored by
    the task ``suites`` (added to the defaults when set).

    ``adaptations`` (CLIP studies): how the frozen checkpoint meets the downstream task, each a
    task of its own run on the ID and OOD splits (``trainers/clip_tasks.py``): ``zeroshot``,
    ``linear_probe``, ``few_shot`` (``few_shot_k`` samples per class, ``few_shot_draws`` seeded
    draws each; rows ``few_shot_k<k>``, one per draw with its ``draw_seed``), ``finetune`` (the
    whole image tower), ``lora`` (low-rank adapters) and ``nmtune`` (black-box: an MLP over the
    frozen features, with the MLP-only baseline ``mlp_tune`` beside it). Setting it also runs
    ``diagnostics``, the spectrum before adaptation.
    """

    tasks: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    suites: SuitesConfig | None = None
    lm_adaptation: Annotated[tuple[Literal["prompting", "finetune"], ...], Field(min_length=1)] = ("prompting",)
    finetune_steps: Annotated[int, Field(ge=1, le=100_000)] | None = None
    finetune_lr: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    adaptations: Annotated[tuple[Literal[CLIP_ADAPTATIONS], ...], Field(min_length=1)] | None = None
    few_shot_k: Annotated[tuple[Annotated[int, Field(ge=1, le=10_000)], ...], Field(min_length=1)] = (1, 2, 4, 8, 16)
    few_shot_draws: Annotated[int, Field(ge=1, le=1000)] = 3

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        if self.adaptations is not None and len(set(self.adaptations)) != len(self.adaptations):
            raise ValueError(f"adaptations {list(self.adaptations)} repeat a value")
        if len(set(self.few_shot_k)) != len(self.few_shot_k):
            raise ValueError(f"few_shot_k {list(self.few_shot_k)} repeats a value")
        # Compared with the defaults, not the fields set: a dumped config sets every field.
        shot = [k for k in ("few_shot_k", "few_shot_draws")
                if getattr(self, k) != type(self).model_fields[k].default]
        if shot and "few_shot" not in (self.adaptations or ()) and "few_shot" not in (self.tasks or ()):
            raise ValueError(f"{shot}: only used by the few_shot adaptation (add it to eval.adaptations)")
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} repeat a name")
        if len(set(self.lm_adaptation)) != len(self.lm_adaptation):
            raise ValueError(f"lm_adaptation {list(self.lm_adaptation)} repeats a value")
        knobs = [k for k in ("finetune_lr", "finetune_steps") if getattr(self, k) is not None]
        if knobs and "finetune" not in self.lm_adaptation:
            raise ValueError(f"{knobs}: only used when lm_adaptation includes 'finetune' (got {list(self.lm_adaptation)})")
        return self


class CellConfig(Frozen):
    """One grid cell: everything that decides its results, and nothing else.

    ``samples_seen`` is always samples (CLIP pairs, LM packed sequences) seen in training;
    ``unique_samples`` the size of the unique pool drawn from (``None``: the whole pool of a
    user's shards, counted at the data-condition stage); ``pool`` the number of unique
    training samples of a built-in world (``None`` for a user's shards).
    """

    study: str
    modality: str
    study_seed: int
    seed: int
    bias: BiasConfig
    model: str
    samples_seen: Annotated[int, Field(ge=1)]
    unique: Literal["fixed", "scaled"] = "fixed"
    unique_samples: int | None = None
    pool: int | None = None
    data: DataConfig
    train: RecipeConfig = RecipeConfig()
    eval: EvalConfig

    def canonical(self) -> dict[str, Any]:
        """The dump the id hashes. Settings at their defaults are left out, so adding a new
        setting (with a default) never changes the ids of cells that do not use it."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @property
    def cell_id(self) -> str:
        return config_id(self.canonical(), CODE_EPOCH)

    @property
    def label(self) -> str:
        """A short human name for dashboards: ``label_noise=0.2/clip-tiny/n=4096/s0``."""
        bias = "clean" if self.bias.is_clean else f"{self.bias.label}={self.bias.level:g}"
        return f"{bias}/{self.model}/n={self.samples_seen}/s{self.seed}"

    @property
    def eval_tasks(self) -> tuple[str, ...]:
        if self.eval.tasks is None:
            raise ValueError(f"cell {self.label}: eval.tasks is unresolved (expand the study's grid first)")
        return self.eval.tasks

    def corruptors(self) -> list[dict[str, Any]]:
        """The cell's corruptor chain: the unique-pool selector, then the bias under study."""
        specs: list[dict[str, Any]] = []
        if self.unique_samples is not None and self.pool and self.unique_samples < self.pool:
            specs.append({"type": "subsample", "level": self.unique_samples / self.pool})
        if not self.bias.is_clean:
            specs.append(self.bias.corruptor())
        return specs


Auto = Literal["auto"]


class ExecutionConfig(Frozen):
    """How a cell runs — not part of its id (a study moves from a laptop to a cluster).

    ``auto`` settings are resolved against the cluster when the study starts (see
    ``flows/scheduler.py``): one GPU per cell, or several when the grid has fewer cells than
    the cluster has GPUs; the CPUs of a GPU node shared out per GPU; loader workers from those.
    """

    workers: Annotated[int, Field(ge=1, le=1024)] | Auto = "auto"
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] | Auto = "auto"
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    ckpt_every: Annotated[int, Field(ge=1)] = 50
    loader_workers: Annotated[int, Field(ge=0, le=256)] | Auto = "auto"
    # Workers are restarted this many times after a crash; training resumes from its last checkpoint.
    max_failures: Annotated[int, Field(ge=0, le=10)] = 1


@dataclass(frozen=True)
class Cell:
    """A cell's config and how it runs, as the flow passes them around."""

    config: CellConfig
    execution: ExecutionConfig = ExecutionConfig()

    @property
    def cell_id(self) -> str:
        return self.config.cell_id

    @property
    def label(self) -> str:
        return self.config.label
