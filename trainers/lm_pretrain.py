"""LM pre-training on DeepSpeed: packed sequences from text shards through the corruptor chain.

One rank's data: its shards (or, with fewer shards than ranks, every world_size-th document),
through the cell's corruptor chain (the same decisions as the data-condition stage, since they
depend on keys only), tokenised, packed end to end with an end-of-text token between documents
and cut into ``seq_len + 1`` token windows. The stream repeats over epochs (shard order
reshuffled per epoch from the seed tree) until the token budget is spent; repeats are logged.

Checkpoints are DeepSpeed checkpoints under ``ckpt/step_<N>/`` committed by an atomic
``ckpt/latest.json``; resume loads the last committed one and skips the micro-batches already
consumed, so the data position is exact. At requested steps (and the end) the weights are
exported to ``ckpt/export_step_<N>/`` (``model.safetensors`` + ``lm_config.json``), which
:mod:`inheritlab.trainers.lm_evaluate` and :mod:`inheritlab.trainers.hf_export` read.

``python -m inheritlab.trainers.lm_pretrain --config cfg.json`` runs it alone or under torchrun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from inheritlab.corruptors.chain import build_chain
from inheritlab.corruptors.shards import ReadStats, iter_samples, list_shards, split_shards
from inheritlab.corruptors.tokenizer import TextTokenizer, load_tokenizer
from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import CheckpointError, SpecError
from inheritlab.infra.hashing import stable_rng
from inheritlab.infra.seeds import derive_seed32
from inheritlab.kernels import IMPLS
from inheritlab.trainers.engine import (
    PARAM_LAYOUT,
    EngineConfig,
    build_engine,
    init_distributed,
    seed_everything,
)
from inheritlab.trainers.lm_models import (
    LlamaLM,
    LMConfig,
    build_lm,
    compile_blocks,
    count_params,
    flops_per_token,
    get_rung,
)

LATEST = "latest.json"
WEIGHTS = "model.safetensors"
MODEL_CONFIG = "lm_config.json"


@dataclass(frozen=True, kw_only=True)
class LMTrainConfig:
    """Everything one LM training run needs; JSON-serialisable (``to_dict``/``from_dict``).

    The budget is ``tokens`` (tokens seen), ``samples`` (packed sequences seen; what a study's
    data-scale axis counts) — both rounded up to whole steps — or ``steps``.
    ``batch_size`` is sequences per optimizer step over all ranks; ``micro_batch_size`` per
    rank per forward (the rest is gradient accumulation). ``None`` takes the rung's recipe.
    """

    rung: str
    train_shards: list[str] | str
    tokenizer: str
    cell_dir: str
    corruptors: list[dict[str, Any]] = field(default_factory=list)
    study_seed: int = 0
    plan_dir: str | None = None
    seed: int = 0
    tokens: int | None = None
    samples: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    export_steps: list[int] = field(default_factory=list)
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda
    # Decoder blocks under torch.compile: "auto" does it for the GPU rungs on a GPU (1.7x tokens/s
    # for lm-125m on an H100, see benchmarks/results/lm_train.md); not for the CPU rungs, whose
    # runs are short enough that compiling costs more than it saves (lm-mini, 150 steps on an
    # H100: 48 s compiled vs 15 s eager).
    compile: str = "auto"  # auto | yes | no
    # The LM head's loss: "auto" takes the fused Triton kernel on a GPU and the PyTorch reference on the
    # CPU; "reference" forces the reference (the with/without comparison), "triton" fails if it cannot run.
    loss_impl: str = "auto"  # auto | triton | reference
    bad_sample_ceiling: float | int = 0
    log_every: int = 10
    stop_after_steps: int | None = None  # end this process early (tests of resume); not a budget

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.tokens, self.samples, self.steps)) != 1:
            raise SpecError("LMTrainConfig: give exactly one of tokens (tokens seen), samples (sequences seen) or steps")
        if self.zero_stage not in (0, 1, 2, 3):
            raise SpecError(f"LMTrainConfig.zero_stage: got {self.zero_stage}; allowed 0, 1, 2, 3")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise SpecError(f"LMTrainConfig.precision: got {self.precision!r}; allowed auto, bf16, fp32")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SpecError(f"LMTrainConfig.device: got {self.device!r}; allowed auto, cpu, cuda")
        if self.compile not in ("auto", "yes", "no"):
            raise SpecError(f"LMTrainConfig.compile: got {self.compile!r}; allowed auto, yes, no")
        if self.loss_impl not in IMPLS:
            raise SpecError(f"LMTrainConfig.loss_impl: got {self.loss_impl!r}; allowed {', '.join(IMPLS)}")
        get_rung(self.rung)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LMTrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"LMTrainConfig: unknown field(s) {unknown}; allowed: {sorted(names)}")
        return cls(**data)


# ----------------------------------------------------------------------------------- data


@dataclass
class StreamState:
    """What the data stream has done so far on this rank (logged, and checked on resume)."""

    docs: int = 0
    epochs: int = 0
    sequences: int = 0
    read: ReadStats = field(default_factory=ReadStats)


def packed_sequences(cfg: LMTrainConfig, tok: TextTokenizer, seq_len: int, *, rank: int, world_size: int,
                     state: StreamState) -> Iterator[list[int]]:
    """Endless ``seq_len + 1``-token windows of this rank's corrupted, tokenised text stream.

    Consecutive windows overlap by one token, so every token is a target exactly once.
    """
    shards = list_shards(cfg.train_shards) if isinstance(cfg.train_shards, str) else [str(s) for s in cfg.train_shards]
    by_shard = len(shards) >= world_size
    mine = split_shards(shards, rank=rank, world_size=world_size) if by_shard else sorted(shards)
    chain = build_chain(cfg.corruptors, study_seed=cfg.study_seed, num_classes=None, class_names=None,
                        plan_dir=cfg.plan_dir)
    buf: list[int] = []
    while True:
        rng = stable_rng("lm-stream", cfg.study_seed, cfg.seed, rank, state.epochs)
        order = [mine[i] for i in rng.permutation(len(mine))]
        stream = iter_samples(order, kind="text", bad_sample_ceiling=cfg.bad_sample_ceiling, stats=state.read)
        if not by_shard:
            stream = (s for i, s in enumerate(stream) if i % world_size == rank)
        docs_before = state.docs
        for sample in chain.apply(stream):
            buf.extend(tok.encode(sample["text"]))
            buf.append(tok.eos_id)
            state.docs += 1
            while len(buf) >= seq_len + 1:
                state.sequences += 1
                yield buf[: seq_len + 1]
                del buf[:seq_len]
        state.epochs += 1
        if state.docs == docs_before:
            raise SpecError(f"rank {rank}: the training stream is empty after the corruptor chain (shards {mine[:3]}...)")


def micro_batches(seqs: Iterator[list[int]], micro_batch: int) -> Iterator[torch.Tensor]:
    """[micro_batch, seq_len + 1] int64 tensors from the window stream."""
    while True:
        yield torch.tensor([next(seqs) for _ in range(micro_batch)], dtype=torch.long)


# ----------------------------------------------------------------------------------- engine glue


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Round the embedding rows up to a multiple of 64: tensor-core friendly, same on every device."""
    return ((n + multiple - 1) // multiple) * multiple


def _gathered(params: list[torch.nn.Parameter]) -> Any:
    """Full parameters under ZeRO-3 (a collective: every rank enters), a no-op otherwise."""
    import contextlib

    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def _mean_across_ranks(x: torch.Tensor) -> float:
    import torch.distributed as dist

    y = x.detach().float().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(y)
        y /= dist.get_world_size()
    return float(y)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ----------------------------------------------------------------------------------- checkpoints


def read_latest(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """The last committed checkpoint's record, or ``None`` when nothing was committed."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    rec = read_json(path)
    if not (Path(ckpt_dir) / rec["tag"]).is_dir():
        raise CheckpointError(f"{path} points at {rec['tag']}, which does not exist")
    return rec


def export_weights(model: LlamaLM, out_dir: str | Path, *, extra: dict[str, Any] | None = None,
                   write: bool = True) -> Path:
    """Write the full model (``model.safetensors`` + ``lm_config.json``) atomically.

    Under ZeRO-3 every rank must call this (parameters are gathered collectively); only
    ranks with ``write`` write. Tied heads are stored once (as ``embed_tokens.weight``).
    """
    from safetensors.torch import save_file

    params = list(model.parameters())
    gathered = _gathered(params)
    out = Path(out_dir)
    with gathered:
        if write:
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
            if model.cfg.tie_embeddings:
                state.pop("lm_head.weight", None)
            with atomic_dir(out) as tmp:
                save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
                atomic_write_json(tmp / MODEL_CONFIG, {"model": asdict(model.cfg), **(extra or {})})
    return out


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


def _prune(ckpt_dir: Path, keep: int, current: str) -> None:
    tags = sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for p in tags[:-keep] if keep > 0 else []:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------- training


def _plan(cfg: LMTrainConfig, world_size: int) -> dict[str, int | float]:
    rung = get_rung(cfg.rung)
    seq = cfg.seq_len or rung.recipe.seq_len
    batch = cfg.batch_size or rung.recipe.batch_size
    micro = cfg.micro_batch_size or max(1, batch // world_size)
    if batch % (micro * world_size):
        raise SpecError(
            f"LMTrainConfig.batch_size={batch} is not a multiple of micro_batch_size={micro} x world_size={world_size}"
        )
    if cfg.steps is not None:
        steps = cfg.steps
    elif cfg.samples is not None:
        steps = math.ceil(int(cfg.samples) / batch)
    else:
        steps = math.ceil(int(cfg.tokens) / (batch * seq))
    return {"seq_len": seq, "batch": batch, "micro": micro, "accum": batch // (micro * world_size), "steps": steps,
            "lr": cfg.lr or rung.recipe.lr, "warmup": cfg.warmup_steps if cfg.warmup_steps is not None
            else min(rung.recipe.warmup_steps, max(1, steps // 10))}


def train_lm(cfg: LMTrainConfig) -> dict[str, Any]:
    """Train (or resume) one LM run; returns a summary (steps, tokens, loss curve, exports...)."""
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    rank, world, local_rank = init_distributed(use_gpu=use_gpu)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    rung = get_rung(cfg.rung)
    plan = _plan(cfg, world)
    seq, micro, accum, total_steps = int(plan["seq_len"]), int(plan["micro"]), int(plan["accum"]), int(plan["steps"])
    tok = load_tokenizer(cfg.tokenizer)
    seed_everything(derive_seed32(cfg.study_seed, "lm", cfg.seed, "init"))
    model = build_lm(rung, vocab_size=pad_vocab(tok.vocab_size), max_seq_len=seq)
    model.lm_head.impl = cfg.loss_impl
    if cfg.compile == "yes" or (cfg.compile == "auto" and use_gpu and rung.device == "gpu"):
        compile_blocks(model)
    mcfg = model.cfg
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_gpu)
    r = rung.recipe
    ecfg = EngineConfig(
        micro_batch_per_rank=micro, world_size=world, grad_accum=accum, zero_stage=cfg.zero_stage,
        precision="bf16" if bf16 else "fp32", lr=float(plan["lr"]), weight_decay=r.weight_decay,
        betas=(r.beta1, r.beta2), eps=1e-8, grad_clip=r.grad_clip, warmup_steps=int(plan["warmup"]),
        total_steps=total_steps, use_gpu=use_gpu,
    )
    engine, _, _ = build_engine(model, ecfg)
    ckpt_dir = Path(cfg.cell_dir) / "ckpt"
    step, resumed_from = 0, None
    latest = read_latest(ckpt_dir)
    if latest is not None:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=latest["tag"])
        if client is None:
            raise CheckpointError(f"{ckpt_dir / latest['tag']}: DeepSpeed could not load it")
        # The skip below replays this rank's stream: only exact for the same ranks and batch shape.
        want = {"world_size": world, "batch": int(plan["batch"]), "micro": micro, "seq_len": seq,
                "param_layout": PARAM_LAYOUT}
        got = {k: client.get(k, want[k]) for k in want}
        got["param_layout"] = client.get("param_layout", 1)  # written before layouts were recorded
        if got != want:
            raise CheckpointError(
                f"{ckpt_dir / latest['tag']}: written with {got}, this run has {want}; resuming would not "
                "continue the data stream at the right sample (or, for param_layout, load the optimizer "
                "state into the wrong parameters)"
            )
        step, resumed_from = int(client["step"]), latest["tag"]
    state = StreamState()
    batches = micro_batches(packed_sequences(cfg, tok, seq, rank=rank, world_size=world, state=state), micro)
    for _ in range(step * accum):  # skip what the committed checkpoint already consumed: exact data position
        next(batches)
    tokens_per_step = int(plan["batch"]) * seq
    fpt = flops_per_token(mcfg)
    curve: list[list[float]] = []
    exports: list[dict[str, Any]] = []
    export_steps = set(cfg.export_steps) | {total_steps}
    t0, t_step0, steps_run, last_loss = time.perf_counter(), step, 0, float("nan")
    engine.train()
    while step < total_steps:
        loss_sum = torch.zeros((), device=device)
        for _ in range(accum):
            batch = next(batches).to(device, non_blocking=True)
            loss = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().float()
        step += 1
        steps_run += 1
        if step % cfg.log_every == 0 or step == total_steps or step == 1:
            last_loss = _mean_across_ranks(loss_sum / accum)
            curve.append([step, last_loss])
        committed = (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == total_steps
        if committed:
            tag = f"step_{step}"
            engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "tokens_seen": step * tokens_per_step, "world_size": world,
                                              "batch": int(plan["batch"]), "micro": micro, "seq_len": seq,
                                              "param_layout": PARAM_LAYOUT})
            _barrier()
            if rank == 0:
                atomic_write_json(ckpt_dir / LATEST, {"tag": tag, "step": step, "tokens_seen": step * tokens_per_step,
                                                      "samples_seen": step * int(plan["batch"])})
                _prune(ckpt_dir, cfg.keep_checkpoints, tag)
        if step in export_steps:
            path = ckpt_dir / f"export_step_{step}"
            rec = {"step": step, "tokens_seen": step * tokens_per_step, "samples_seen": step * int(plan["batch"]),
                   "rung": cfg.rung, "tokenizer": str(tok.path)}
            export_weights(model, path, extra=rec, write=rank == 0)
            exports.append({**rec, "path": str(path)})
        if cfg.stop_after_steps is not None and steps_run >= cfg.stop_after_steps and step < total_steps:
            break
    if use_gpu:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    tokens_run = (step - t_step0) * tokens_per_step
    params = count_params(mcfg)
    return {
        "rung": cfg.rung,
        "steps": step,
        "total_steps": total_steps,
        "finished": step >= total_steps,
        "resumed_from": resumed_from,
        "tokens_seen": step * tokens_per_step,
        "samples_seen": step * int(plan["batch"]),
        "docs_read_rank0": state.docs,
        "epochs_rank0": state.epochs,
        "final_loss": last_loss,
        "loss_curve": curve,
        "tokens_per_s": tokens_run / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "params": params["total"],
        "flops": fpt * step * tokens_per_step,
        "world_size": world,
        "precision": "bf16" if bf16 else "fp32",
        "zero_stage": cfg.zero_stage,
        "plan": plan,
        "exports": exports,
        "read": state.read.to_dict(),
    }


def lm_exports_on_disk(cell_dir: str | Path) -> list[dict[str, Any]]:
    """Every committed weight export of a cell (an export dir exists only when whole), by step."""
    out = []
    for d in sorted(Path(cell_dir, "ckpt").glob("export_step_*")):
        meta = read_json(d / MODEL_CONFIG) if (d / MODEL_CONFIG).is_file() else None
        if meta is not None and "step" in meta:
            out.append({k: meta[k] for k in ("step", "tokens_seen", "samples_seen", "tokenizer") if k in meta} | {"path": str(d)})
    return sorted(out, key=lambda e: e["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train one LM cell (works alone or under torchrun).")
    parser.add_argument("--config", required=True, help="JSON file holding an LMTrainConfig")
    parser.add_argument("--summary", default=None, help="write the run summary here (rank 0)")
    args = parser.parse_args(argv)
    cfg = LMTrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    summary = train_lm(cfg)
    if args.summary and int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(args.summary, summary)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("steps", "tokens_seen", "final_loss", "tokens_per_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
