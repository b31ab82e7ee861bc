"""What every trainer config shares, and how it is built from a cell.

The CLIP and LM trainers take their own frozen configs (``ClipTrainConfig``,
``LMTrainConfig``); both extend :class:`BaseTrainConfig`, so a setting has one name in both
(``samples_seen``, ``device``, ``export_steps`` ...) and one check. ``from_cell`` builds a
trainer config from a typed cell — the only place where cell settings become trainer settings.
Configs are JSON-serialisable (``to_dict``/``from_dict``) so a cell can also be trained
without Ray: ``python -m inheritlab.trainers.clip_pretrain --config cfg.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from inheritlab.infra.cell import Cell
from inheritlab.infra.errors import SpecError
from inheritlab.infra.rundir import CellDir

C = TypeVar("C", bound="BaseTrainConfig")

DEVICES = ("auto", "cpu", "cuda")
# ``compile: auto`` leaves runs shorter than this eager: their compile would not be repaid.
COMPILE_MIN_STEPS = 1000
PRECISIONS = ("auto", "bf16", "fp32")
SWITCHES = ("auto", "yes", "no")


@dataclass(frozen=True, kw_only=True)
class BaseTrainConfig:
    """Settings of any pre-training run. ``None`` takes the rung's recipe.

    ``samples_seen`` is the budget in samples (CLIP pairs, LM packed sequences), rounded up to
    whole steps; ``batch_size`` is global (all ranks). Checkpoints are committed every
    ``ckpt_every`` steps and at the end; weights are exported at ``export_steps``, at every
    commit with ``export_every_ckpt``, and always at the last step.
    """

    rung: str
    cell_dir: str
    corruptors: tuple[dict[str, Any], ...] = ()
    study_seed: int = 0
    seed: int = 0
    plan_dir: str | None = None            # the cell's data-condition output (plans, counters)
    samples_seen: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    zero_stage: int | str = "auto"        # auto: trainers.engine.resolve_zero_stage
    precision: str = "auto"                # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"                   # auto: CUDA when available
    compile: str = "auto"                  # torch.compile: auto = the GPU rungs on a GPU
    loss_impl: str = "auto"                # auto: fused Triton on GPU (CLIP: from 4096² logits), else the reference
    ckpt_every: int = 50
    export_every_ckpt: bool = False
    export_steps: tuple[int, ...] = ()
    keep_checkpoints: int = 2              # committed DeepSpeed checkpoints kept on disk
    bad_sample_ceiling: float | int = 0
    log_every: int = 10
    stop_after_steps: int | None = None    # end this process early (tests, benchmarks); not a budget
    trace_data: bool = False               # write the sample keys of every step (data/trace-rank<r>.jsonl)

    def __post_init__(self) -> None:
        from inheritlab.kernels import IMPLS

        where = type(self).__name__
        for name, allowed in (("device", DEVICES), ("precision", PRECISIONS), ("compile", SWITCHES),
                              ("loss_impl", IMPLS)):
            if getattr(self, name) not in allowed:
                raise SpecError(f"{where}.{name}: got {getattr(self, name)!r}; allowed {', '.join(allowed)}")
        if self.zero_stage not in (0, 1, 2, 3, "auto"):
            raise SpecError(f"{where}.zero_stage: got {self.zero_stage!r}; allowed 0, 1, 2, 3, auto")
        for name in ("ckpt_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise SpecError(f"{where}.{name}: got {getattr(self, name)}; expected >= 1")
        if self.samples_seen is not None and self.samples_seen < 1:
            raise SpecError(f"{where}.samples_seen: got {self.samples_seen}; expected >= 1")

    @property
    def use_gpu(self) -> bool:
        import torch

        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())

    def precision_for(self, use_gpu: bool) -> str:
        return ("bf16" if use_gpu else "fp32") if self.precision == "auto" else self.precision

    def compiles(self, use_gpu: bool, rung_device: str, zero_stage: int | None = None,
                 total_steps: int | None = None) -> bool:
        """Whether to compile. ``auto``: a GPU rung on a GPU, at any ZeRO stage (under 1–3 the
        towers inside the engine; at stage 0 the whole forward, called outside DeepSpeed's
        forward hooks: trainers.engine.step_forward), for runs of at least
        :data:`COMPILE_MIN_STEPS` steps. Short CPU-rung runs lose more to compiling than they
        gain. Measured on an H200 (2026-12-02, ViT-B/32, batch 512, stage 0): 90 ms a step
        compiled against 132 ms eager, so a cold compile of about a minute is repaid after
        some 1,500 steps, a warm one (the node's compile cache) after a few hundred; a real
        cell trains tens of thousands."""
        if self.compile != "auto":
            return self.compile == "yes"
        return use_gpu and rung_device == "gpu" and (total_steps is None or total_steps >= COMPILE_MIN_STEPS)

    def export_at(self, total_steps: int) -> set[int]:
        """The steps whose weights are exported (the last one always)."""
        commits = set(range(self.ckpt_every, total_steps + 1, self.ckpt_every)) if self.export_every_ckpt else set()
        return {s for s in self.export_steps if s <= total_steps} | commits | {total_steps}

    def last_step(self, total_steps: int, start: int) -> int:
        """Where this process stops: the end, or ``stop_after_steps`` steps after ``start``."""
        return total_steps if self.stop_after_steps is None else min(total_steps, start + self.stop_after_steps)

    def commit_at(self, total_steps: int) -> set[int]:
        return set(range(self.ckpt_every, total_steps + 1, self.ckpt_every)) | {total_steps}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
        """From JSON: lists become tuples; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(names)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**fixed)
        except TypeError as exc:
            raise SpecError(f"{where}: {exc}") from None

    @staticmethod
    def cell_settings(cell: Cell, cell_dir: str | Path, *, device: str) -> dict[str, Any]:
        """The settings every trainer takes from a cell (``from_cell`` adds its own)."""
        c, ex = cell.config, cell.execution
        cdir = CellDir(Path(cell_dir))
        return dict(
            rung=c.model, cell_dir=str(cdir.root), corruptors=tuple(c.corruptors()), study_seed=c.study_seed,
            seed=c.seed, plan_dir=str(cdir.data), samples_seen=c.samples_seen, batch_size=c.train.batch_size,
            lr=c.train.lr, warmup_steps=c.train.warmup_steps, zero_stage=c.train.zero_stage, device=device,
            ckpt_every=ex.ckpt_every, export_every_ckpt=c.train.eval_checkpoints == "all",
            bad_sample_ceiling=c.data.bad_sample_ceiling,
        )
