"""LM pre-training on DeepSpeed: packed sequences from text shards through the corruptor chain.

One rank's data is its block of data slots (:mod:`inheritlab.trainers.slots`), each a stream of
corrupted, tokenised documents packed into ``seq_len + 1``-token windows
(:mod:`inheritlab.trainers.lm_data`), read by loader worker processes. Every step's batch is
cut into ``accum`` micro-batches here.

Checkpoints, resume and exports go through :class:`~inheritlab.trainers.checkpoint.CheckpointManager`:
a commit saves, next to the engine, every slot's loader state after the step; resume loads the
last committed checkpoint and continues each slot from its state, so the data position is exact
and nothing already trained is tokenised again (a checkpoint without loader state is resumed by
replaying the stream up to its step). Exports (``ckpt/export/step_<N>/``: ``model.safetensors`` +
``lm_config.json``) are what :mod:`inheritlab.trainers.lm_tasks` and
:mod:`inheritlab.trainers.hf_export` read.

``python -m inheritlab.trainers.lm_pretrain --config cfg.json`` runs it alone or under torchrun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from inheritlab.corruptors.tokenizer import TextTokenizer, load_tokenizer
from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.cell import Cell
from inheritlab.infra.errors import CheckpointError, SpecError, StopRequested
from inheritlab.infra.seeds import derive_seed32
from inheritlab.trainers.checkpoint import CheckpointManager, Export, TrainSummary
from inheritlab.trainers.data_check import StreamChecker
from inheritlab.trainers.engine import PARAM_LAYOUT
from inheritlab.trainers.lm_data import StreamState, lm_batches, states_from_checkpoint, text_stream_spec
from inheritlab.trainers.lm_data import packed_sequences  # noqa: F401  (one slot's windows, importable from here too)
from inheritlab.trainers.lm_models import LlamaLM, LMConfig, LMRung, get_rung
from inheritlab.trainers.loop import CellControl, LossLog, StepClock, process_age_s
from inheritlab.trainers.slots import gather_slot_states, rank_slots
from inheritlab.trainers.train_config import BaseTrainConfig

if TYPE_CHECKING:
    from inheritlab.trainers.engine import EngineConfig

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "lm_config.json"


@dataclass(frozen=True, kw_only=True)
class LMTrainConfig(BaseTrainConfig):
    """Everything one LM training run needs; JSON-serialisable (``to_dict``/``from_dict``).

    The budget is ``tokens`` (tokens seen), ``samples_seen`` (packed sequences seen; what a
    study's data-scale axis counts) — both rounded up to whole steps — or ``steps``.
    ``batch_size`` is sequences per optimizer step over all ranks; ``micro_batch_size`` per
    rank per forward (the rest is gradient accumulation). ``None`` takes the rung's recipe.
    ``loader_workers``: processes per rank that tokenise and pack (0: the training process).
    """

    train_shards: tuple[str, ...] | str
    tokenizer: str
    tokens: int | None = None
    steps: int | None = None
    micro_batch_size: int | None = None
    seq_len: int | None = None
    loader_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if sum(x is not None for x in (self.tokens, self.samples_seen, self.steps)) != 1:
            raise SpecError("LMTrainConfig: give exactly one of tokens (tokens seen), samples_seen (sequences seen) "
                            "or steps")
        get_rung(self.rung)

    @classmethod
    def from_cell(cls, cell: Cell, cell_dir: str | Path, *, train_shards: list[str], tokenizer: str,
                  device: str) -> "LMTrainConfig":
        """The trainer config of an LM cell: its data-scale axis counts packed sequences."""
        return cls(**cls.cell_settings(cell, cell_dir, device=device), train_shards=tuple(train_shards),
                   tokenizer=tokenizer, loader_workers=int(cell.execution.loader_workers))


# ----------------------------------------------------------------------------------- data


def _batches(cfg: LMTrainConfig, plan: "RunPlan", *, rank: int, world: int, use_gpu: bool, step: int,
             loader_state: dict[str, Any] | None) -> tuple[Iterator[dict[str, Any]], dict[int, dict[str, Any]]]:
    """This rank's batches from step ``step`` on (its block of data slots, each from its state in
    ``loader_state``, or without one replayed from the start), and its slots' states before them."""
    mine = rank_slots(rank, world, plan.slots)
    spec = text_stream_spec(cfg, seq_len=plan.seq_len, num_slots=plan.slots, slots=tuple(mine),
                            chunk=plan.batch // plan.slots)
    states = (states_from_checkpoint(loader_state, mine, seq_len=plan.seq_len, where=f"{cfg.cell_dir}/ckpt")
              if loader_state else None)
    batches = lm_batches(spec, loader_workers=cfg.loader_workers, pin_memory=use_gpu, states=states,
                         skip_steps=0 if states else step)
    before = {v: (states[v] if states else StreamState(slot=v)).to_dict() for v in mine}
    return batches, before


# ----------------------------------------------------------------------------------- engine glue


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Round the embedding rows up to a multiple of 64: tensor-core friendly, same on every device."""
    return ((n + multiple - 1) // multiple) * multiple


# ----------------------------------------------------------------------------------- exports


def export_lm(ckpt: CheckpointManager, model: LlamaLM, *, step: int, samples_seen: int, tokens_seen: int,
              rung: str, tokenizer: str) -> Export:
    """Export the full model (``model.safetensors`` + ``lm_config.json``); every rank calls it
    (ZeRO-3 gathers). Tied heads are stored once (as ``embed_tokens.weight``)."""
    from inheritlab.trainers.engine import full_state_dict
    from safetensors.torch import save_file

    state = full_state_dict(model)
    rec = {"step": step, "tokens_seen": tokens_seen, "samples_seen": samples_seen, "rung": rung, "tokenizer": tokenizer}

    def write(tmp: Path) -> None:
        assert state is not None  # the manager calls this on rank 0 only
        if model.cfg.tie_embeddings:
            state.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        atomic_write_json(tmp / MODEL_CONFIG, {"model": asdict(model.cfg), **rec})

    return ckpt.export(step=step, samples_seen=samples_seen, write=write, meta=rec)


def load_exported(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[LlamaLM, dict[str, Any]]:
    """A model from an export directory, and its ``lm_config.json`` record."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / WEIGHTS).is_file() or not (p / MODEL_CONFIG).is_file():
        raise CheckpointError(f"{p}: not an LM export (expected {WEIGHTS} and {MODEL_CONFIG})")
    rec = read_json(p / MODEL_CONFIG)
    model = LlamaLM(LMConfig(**rec["model"]))
    state = load_file(str(p / WEIGHTS))
    if model.cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{p}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), rec


# ----------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RunPlan:
    """The run's shape: sequence length, batch over ranks and accumulation, steps, schedule."""

    rung: LMRung
    seq_len: int
    batch: int
    micro: int
    accum: int
    slots: int          # data slots (trainers.slots): fixed by the global batch, not by the ranks
    steps: int
    lr: float
    warmup: int

    @property
    def shape(self) -> dict[str, int]:
        """What a resume must match for the data stream to continue at the right sample (not
        the ranks, loader workers or micro-batch: step k's sequences are the same for any of them)."""
        return {"global_batch": self.batch, "data_slots": self.slots, "seq_len": self.seq_len}


def plan_run(cfg: LMTrainConfig, world_size: int) -> RunPlan:
    """The run's shape on ``world_size`` ranks: the rung's recipe where the config says ``None``."""
    from inheritlab.trainers.slots import data_slots, rank_slots

    rung = get_rung(cfg.rung)
    seq = cfg.seq_len or rung.recipe.seq_len
    batch = cfg.batch_size or rung.recipe.batch_size
    slots = data_slots(batch)
    rank_slots(0, world_size, slots)  # the ranks must divide the slots (an error naming the choices)
    micro = cfg.micro_batch_size or max(1, batch // world_size)
    if batch % (micro * world_size):
        raise SpecError(
            f"LMTrainConfig.batch_size={batch} is not a multiple of micro_batch_size={micro} x world_size={world_size}"
        )
    if cfg.steps is not None:
        steps = cfg.steps
    elif cfg.samples_seen is not None:
        steps = math.ceil(int(cfg.samples_seen) / batch)
    else:
        steps = math.ceil(int(cfg.tokens or 0) / (batch * seq))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(rung.recipe.warmup_steps, max(1, steps // 10))
    return RunPlan(rung=rung, seq_len=seq, batch=batch, micro=micro, accum=batch // (micro * world_size), slots=slots,
                   steps=steps,
                 lr=cfg.lr or rung.recipe.lr, warmup=warmup)


def engine_config(cfg: LMTrainConfig, plan: RunPlan, *, world: int, use_gpu: bool) -> "EngineConfig":
    """DeepSpeed settings of the run: the rung's optimizer recipe, its LR floor included."""
    from inheritlab.trainers.engine import EngineConfig

    r = plan.rung.recipe
    return EngineConfig(
        micro_batch_per_rank=plan.micro, world_size=world, grad_accum=plan.accum, zero_stage=cfg.zero_stage,
        precision=cfg.precision_for(use_gpu), lr=float(plan.lr), weight_decay=r.weight_decay,
        betas=(r.beta1, r.beta2), eps=1e-8, grad_clip=r.grad_clip, warmup_steps=plan.warmup,
        total_steps=plan.steps, min_lr_ratio=r.min_lr_ratio, use_gpu=use_gpu,
    )


def _build(cfg: LMTrainConfig, plan: RunPlan, tok: TextTokenizer, world: int, use_gpu: bool) -> tuple[LlamaLM, Any]:
    """The model (seeded from the seed tree) inside a DeepSpeed engine."""
    import dataclasses

    from inheritlab.trainers.engine import build_engine, device_memory, resolve_zero_stage, seed_everything
    from inheritlab.trainers.lm_models import build_lm, compile_blocks

    seed_everything(derive_seed32(cfg.study_seed, "lm", cfg.seed, "init"))
    model = build_lm(plan.rung, vocab_size=pad_vocab(tok.vocab_size), max_seq_len=plan.seq_len)
    model.lm_head.impl = cfg.loss_impl
    ecfg = engine_config(cfg, plan, world=world, use_gpu=use_gpu)
    stage = resolve_zero_stage(ecfg.zero_stage, params=sum(p.numel() for p in model.parameters()), world=world,
                               device_bytes=device_memory(use_gpu), use_gpu=use_gpu, grad_accum=ecfg.grad_accum)
    if cfg.compiles(use_gpu, plan.rung.device, stage, plan.steps) and stage != 0:  # stage 0: eager (no whole-forward path yet)
        compile_blocks(model)
    engine, _, _ = build_engine(model, dataclasses.replace(ecfg, zero_stage=stage))
    return model, engine


def train_lm(cfg: LMTrainConfig) -> TrainSummary:
    """Train (or resume) one LM run; returns its summary (the same on every rank)."""
    from inheritlab.trainers.engine import init_distributed, optimizer_step

    entered = process_age_s()  # the start-up split begins here (CellControl.mark)
    use_gpu = cfg.use_gpu
    rank, world, local_rank = init_distributed(use_gpu=use_gpu)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    plan = plan_run(cfg, world)
    ckpt = CheckpointManager(Path(cfg.cell_dir) / "ckpt", keep=cfg.keep_checkpoints, world_size=world,
                             shape={**plan.shape, "param_layout": PARAM_LAYOUT})
    done = ckpt.finished(plan.steps)
    if done is not None:
        return done
    control = CellControl(cfg.cell_dir, rank=rank, world=world, total_steps=plan.steps, per_step=plan.batch,
                          poll_steps=1 if world == 1 else cfg.log_every)
    control.mark("start", at=entered)
    tok = load_tokenizer(cfg.tokenizer)
    model, engine = _build(cfg, plan, tok, world, use_gpu)
    control.mark("engine")
    ckpt.shape["zero_stage"] = int(engine.zero_optimization_stage())  # a resume must keep the stage
    resumed = ckpt.resume(engine)
    step = int(resumed["step"]) if resumed else 0
    losses = LossLog(cfg.log_every, resumed.get("loss_curve", ()) if resumed else (),
                     resumed.get("loss_window") if resumed else None, rank=rank)
    loader_state = resumed.get("loader") if resumed else None
    batches, states = _batches(cfg, plan, rank=rank, world=world, use_gpu=use_gpu, step=step, loader_state=loader_state)
    commits, exports = cfg.commit_at(plan.steps), cfg.export_at(plan.steps)
    last_step = cfg.last_step(plan.steps, step)
    clock = StepClock(sync=use_gpu, warm_steps=min(5, max(0, (last_step - step) // 4)))
    first_step = step
    engine.train()
    while step < last_step:
        batch = next(batches)
        control.mark("first_batch")
        tokens = batch["tokens"]
        loss_sum = torch.zeros((), device=device)
        for i in range(0, len(tokens), plan.micro):
            micro = tokens[i : i + plan.micro].to(device, non_blocking=True)
            loss = engine(micro[:, :-1], micro[:, 1:])
            engine.backward(loss)
            optimizer_step(engine)
            loss_sum += loss.detach().float()
        states = batch["states"]  # this rank's slots after the step just trained
        step += 1
        losses.add(step, loss_sum / plan.accum, last=step == last_step)
        clock.tick()
        control.stepped(step, losses)
        stop = step < last_step and control.stop_requested(step)
        if step in commits or step in exports or stop:
            with clock.paused():
                seen = step * plan.batch
                if step in exports:
                    export_lm(ckpt, model, step=step, samples_seen=seen, tokens_seen=seen * plan.seq_len,
                              rung=cfg.rung, tokenizer=str(tok.path))
                if step in commits or stop:
                    ckpt.commit(engine, step=step, samples_seen=seen,
                                state={"loss_curve": losses.curve, "loss_window": losses.window_state(), "loader": gather_slot_states(states)})
        if stop:
            raise StopRequested(f"training stopped on request after step {step} of {plan.steps}; "
                                f"checkpoint committed, a rerun resumes from it")
    checker = StreamChecker(plan_dir=cfg.plan_dir, slots=plan.slots, ceiling=cfg.bad_sample_ceiling)
    for st in states.values():
        checker.collect(st["first_pass"])
    return _finish(cfg, plan, ckpt, model, step=step, trained=step - first_step, world=world, losses=losses,
                   clock=clock, resumed_from=first_step if resumed else None, checker=checker, states=states)


def _finish(cfg: LMTrainConfig, plan: RunPlan, ckpt: CheckpointManager, model: LlamaLM, *, step: int, trained: int,
            world: int, losses: LossLog, clock: StepClock, resumed_from: int | None, checker: StreamChecker,
            states: dict[int, dict[str, Any]]) -> TrainSummary:
    """Check the data stream, write the summary of a finished run, return it."""
    from inheritlab.trainers.lm_models import count_params, flops_per_token

    train_time, _ = clock.stop()
    rate, steady = clock.rates(plan.batch)
    summary = TrainSummary(
        rung=cfg.rung, steps=step, total_steps=plan.steps, samples_seen=step * plan.batch, global_batch=plan.batch,
        world_size=world, precision=cfg.precision_for(cfg.use_gpu), zero_stage=int(ckpt.shape["zero_stage"]),
        params=count_params(model.cfg)["total"], flops_per_sample=flops_per_token(model.cfg) * plan.seq_len,
        train_seconds=train_time, samples_per_s=rate, samples_per_s_steady=steady, final_loss=losses.final,
        loss_curve=losses.curve, epochs=max(st["epoch"] for st in states.values()) + 1 if trained else None,
        exports=tuple(ckpt.exports()),
        resumed_from=resumed_from, data_check=checker.finish(),
        extra={"tokens_seen": step * plan.batch * plan.seq_len, "seq_len": plan.seq_len,
               "tokens_per_s": rate * plan.seq_len if rate else None, "micro_batch": plan.micro,
               "grad_accum": plan.accum, "data_slots": plan.slots, "docs_read_rank0": sum(st["docs"] for st in states.values())},
    )
    ckpt.finish(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train one LM cell (works alone or under torchrun).")
    parser.add_argument("--config", required=True, help="JSON file holding an LMTrainConfig")
    args = parser.parse_args(argv)
    cfg = LMTrainConfig.from_dict(json.loads(Path(args.config).read_text()), where=args.config)
    summary = train_lm(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"steps": summary.steps, "samples_seen": summary.samples_seen,
                          "final_loss": summary.final_loss, "samples_per_s": summary.samples_per_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
