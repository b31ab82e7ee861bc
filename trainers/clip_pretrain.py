"""CLIP pre-training of one cell on DeepSpeed: resumable, deterministic, open_clip-exportable.

The loop is the algorithm: encode a batch of images and captions, contrastive loss (the fused
kernel on GPU), backward, step. Around it: a checkpoint is DeepSpeed's ``save_checkpoint`` into
``ckpt/step_<N>`` followed by an atomic ``ckpt/latest.json`` pointer — a checkpoint counts only
once that pointer names it. A restart loads the pointed-to checkpoint and replays the data
stream to the same sample. At the end the weights are exported where open_clip can load them.

Run alone, under torchrun, or under the ``deepspeed`` launcher::

    python -m inheritlab.trainers.clip_pretrain --config cfg.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import CheckpointError, SpecError
from inheritlab.infra.rundir import CellDir
from inheritlab.infra.seeds import derive_seed32
from inheritlab.trainers.engine import PARAM_LAYOUT

LATEST = "latest.json"
SUMMARY = "train_summary.json"
FINAL = "final"
WEIGHTS = "open_clip_model.pt"
LOCAL_DIR_WEIGHTS = "open_clip_pytorch_model.bin"


@dataclass(frozen=True, kw_only=True)
class ClipTrainConfig:
    """One cell's pre-training. ``samples_seen`` is the total number of (possibly repeated)
    samples trained on; ``unique_samples`` is informational (the pool the corruptor chain's
    subsample step draws), repeats are logged in the summary."""

    rung: str
    train_shards: tuple[str, ...]
    cell_dir: str
    samples_seen: int
    corruptors: tuple[dict[str, Any], ...] = ()
    study_seed: int = 0
    seed: int = 0
    plan_dir: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    unique_samples: int | None = None
    batch_size: int | None = None          # global; None = the rung's recipe
    lr: float | None = None
    warmup_steps: int | None = None
    zero_stage: int = 2
    precision: str | None = None           # None = bf16 on GPU, fp32 on CPU
    use_gpu: bool | None = None            # None = whenever CUDA is available
    ckpt_every: int = 50
    eval_every_ckpt: bool = False          # export every committed checkpoint for evaluation
    eval_steps: tuple[int, ...] = ()       # further steps to export for evaluation
    keep_checkpoints: int = 2              # committed DeepSpeed checkpoints kept on disk
    loader_workers: int = 0
    shuffle_buffer: int = 256
    bad_sample_ceiling: float | int = 0
    loss_impl: str = "auto"
    # Towers under torch.compile: "auto" for the GPU rungs on a GPU (see
    # benchmarks/results/clip_step_h100.md), never for the CPU rungs (short runs: compiling costs
    # more than it saves).
    compile: str = "auto"                  # auto | yes | no
    log_every: int = 10
    stop_after_steps: int | None = None    # end early (benchmarks) without changing the schedule

    def __post_init__(self) -> None:
        if not self.train_shards:
            raise SpecError("train_shards: empty; expected at least one training shard")
        if self.samples_seen < 1:
            raise SpecError(f"samples_seen: got {self.samples_seen}; expected >= 1")
        if self.ckpt_every < 1:
            raise SpecError(f"ckpt_every: got {self.ckpt_every}; expected >= 1")
        if self.keep_checkpoints < 1:
            raise SpecError(f"keep_checkpoints: got {self.keep_checkpoints}; expected >= 1")
        if self.compile not in ("auto", "yes", "no"):
            raise SpecError(f"compile: got {self.compile!r}; allowed auto, yes, no")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "ClipTrainConfig":
        """From JSON: lists become tuples; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**fixed)
        except TypeError as exc:
            raise SpecError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- checkpoints


def read_latest(ckpt_dir: Path) -> dict[str, Any] | None:
    """The committed-checkpoint pointer, or None when nothing was committed yet."""
    p = ckpt_dir / LATEST
    if not p.is_file():
        return None
    ptr = read_json(p)
    if not (ckpt_dir / ptr["tag"]).is_dir():
        raise CheckpointError(f"{p} names checkpoint {ptr['tag']!r}, but {ckpt_dir / ptr['tag']} does not exist")
    return ptr


def _prune(ckpt_dir: Path, keep: int) -> None:
    tags = sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _full_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """fp32 CPU copy of the whole model on rank 0 (None elsewhere); every rank must call it."""
    import deepspeed
    import torch.distributed as dist

    module = engine.module
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()} if dist.get_rank() == 0 else None
        return state
    if dist.get_rank() != 0:
        return None
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def export_open_clip(engine: Any, dest: Path, *, rung: Any, model_cfg: dict[str, Any], step: int,
                     samples_seen: int) -> dict[str, Any]:
    """Write ``dest/open_clip_model.pt`` + ``open_clip_config.json`` (+ ``export.json``) atomically.

    Loadable as ``open_clip.create_model(rung.open_clip_name, pretrained=dest/open_clip_model.pt)``
    or ``open_clip.create_model("local-dir:" + dest)``.
    """
    import torch.distributed as dist

    state = _full_state_dict(engine)
    info = {"path": str(dest / WEIGHTS), "step": step, "samples_seen": samples_seen, "rung": rung.name,
            "open_clip_name": rung.open_clip_name}
    if dist.get_rank() == 0:
        with atomic_dir(dest) as tmp:
            torch.save(state, tmp / WEIGHTS)
            # open_clip's ``local-dir:`` loader looks for this name; a hard link costs no space.
            os.link(tmp / WEIGHTS, tmp / LOCAL_DIR_WEIGHTS)
            mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
            atomic_write_json(tmp / "open_clip_config.json", {
                "model_cfg": model_cfg,
                "preprocess_cfg": {"size": rung.image_size, "mean": list(mean), "std": list(std),
                                   "interpolation": "bicubic", "resize_mode": "shortest"},
            })
            atomic_write_json(tmp / "export.json", info)
    dist.barrier()
    return info


# ----------------------------------------------------------------------------------- training


def _resolve(cfg: ClipTrainConfig, world: int, use_gpu: bool) -> dict[str, Any]:
    from inheritlab.trainers.clip_models import get_rung

    rung = get_rung(cfg.rung)
    global_batch = cfg.batch_size or rung.batch_size
    if global_batch % world:
        raise SpecError(f"batch_size {global_batch} is not divisible by the {world} training ranks")
    total = math.ceil(cfg.samples_seen / global_batch)
    return {
        "rung": rung, "global_batch": global_batch, "per_rank": global_batch // world, "total_steps": total,
        "lr": cfg.lr if cfg.lr is not None else rung.lr,
        "warmup": min(cfg.warmup_steps if cfg.warmup_steps is not None else rung.warmup_steps, max(0, total - 1)),
        "precision": cfg.precision or ("bf16" if use_gpu else "fp32"),
    }


def _done_summary(cdir: CellDir, total_steps: int) -> dict[str, Any] | None:
    p = cdir.ckpt / SUMMARY
    if p.is_file():
        s = read_json(p)
        if s.get("steps") == total_steps and Path(s["final_export"]["path"]).is_file():
            return s
    return None


def train_clip(cfg: ClipTrainConfig) -> dict[str, Any]:
    """Train (or finish training) one cell; returns the summary (same on every rank).

    Summary keys: steps, total_steps, samples_seen, samples_per_s, final_loss, loss_curve
    [(step, loss)], params, flops_per_sample, epochs, repeats, checkpoints, exports
    [{path, step, samples_seen}], final_export, resumed_from, world_size, precision.
    """
    import torch.distributed as dist

    from inheritlab.kernels import clip_contrastive_loss
    from inheritlab.trainers.clip_data import ClipBatchStream, StreamSpec
    from inheritlab.trainers.clip_models import build_clip, compile_towers, count_params, flops_per_sample
    from inheritlab.trainers.engine import EngineConfig, build_engine, init_distributed, seed_everything

    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    rank, world, local_rank = init_distributed(use_gpu=use_gpu)
    r = _resolve(cfg, world, use_gpu)
    rung = r["rung"]
    cdir = CellDir(Path(cfg.cell_dir))
    ckpt = cdir.ckpt
    done = _done_summary(cdir, r["total_steps"])
    if done is not None:
        return done

    seed_everything(derive_seed32(cfg.study_seed, "clip-init", cfg.rung, cfg.seed))
    built = build_clip(rung)
    params = count_params(built.model)
    if cfg.compile == "yes" or (cfg.compile == "auto" and use_gpu and rung.device == "gpu"):
        compile_towers(built.model)
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    ecfg = EngineConfig(
        micro_batch_per_rank=r["per_rank"], world_size=world, zero_stage=cfg.zero_stage, precision=r["precision"],
        lr=r["lr"], weight_decay=rung.weight_decay, betas=(rung.beta1, rung.beta2), eps=rung.eps,
        grad_clip=rung.grad_clip, warmup_steps=r["warmup"], total_steps=r["total_steps"], use_gpu=use_gpu,
    )
    engine, _, _ = build_engine(built.model, ecfg)

    step, loss_curve, exports, resumed_from = 0, [], [], None
    ptr = read_latest(ckpt)
    if ptr is not None:
        # A ZeRO checkpoint is sharded per rank, and the data stream is split per rank: both
        # only line up again with the same number of ranks and the same global batch.
        for key, want in (("world_size", world), ("global_batch", r["global_batch"])):
            if key in ptr and ptr[key] != want:
                raise CheckpointError(
                    f"{ckpt / LATEST}: checkpoint {ptr['tag']} was written with {key}={ptr[key]}, "
                    f"this run has {key}={want}; resume with the same value or start a new cell"
                )
        if ptr.get("param_layout", 1) != PARAM_LAYOUT:
            raise CheckpointError(
                f"{ckpt / LATEST}: checkpoint {ptr['tag']} has parameter layout {ptr.get('param_layout', 1)}, this "
                f"code uses {PARAM_LAYOUT}; its optimizer state would load into the wrong parameters: start a new cell"
            )
        path, client = engine.load_checkpoint(str(ckpt), tag=ptr["tag"], load_module_strict=True)
        if path is None:
            raise CheckpointError(f"{ckpt / ptr['tag']}: DeepSpeed could not load this committed checkpoint")
        step, loss_curve, exports = client["step"], client["loss_curve"], client["exports"]
        resumed_from = step

    spec = StreamSpec(
        shards=tuple(cfg.train_shards), corruptors=tuple(cfg.corruptors), study_seed=cfg.study_seed,
        seed=cfg.seed, plan_dir=cfg.plan_dir, num_classes=cfg.num_classes, class_names=tuple(cfg.class_names),
        rank=rank, world_size=world, batch_size=r["per_rank"], shuffle_buffer=cfg.shuffle_buffer,
        bad_sample_ceiling=cfg.bad_sample_ceiling,
    )
    stream = ClipBatchStream(spec, transform=built.transform, tokenizer=built.tokenizer, skip_batches=step)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.loader_workers,
                                         pin_memory=use_gpu, persistent_workers=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r["precision"], torch.float32)
    ckpt_steps = {s for s in range(cfg.ckpt_every, r["total_steps"] + 1, cfg.ckpt_every)} | {r["total_steps"]}
    export_steps = set(cfg.eval_steps) | (ckpt_steps if cfg.eval_every_ckpt else set())
    last_step = min(r["total_steps"], cfg.stop_after_steps or r["total_steps"])

    # Steady-state throughput leaves out the first steps of this process (kernel compilation,
    # autotuning, loader start-up); checkpoint and export time is left out of both timers.
    warm_steps = min(5, max(0, (last_step - step) // 4))
    trained, epoch, window = 0, 0, []
    # The clocks are read (one device synchronisation each) only at the end of warm-up, around
    # checkpoints and at the end: an ordinary step never waits for the device.
    clock = _StepClock(sync=use_gpu)
    if warm_steps == 0:
        clock.start_steady()
    it = iter(loader)
    while step < last_step:
        batch = next(it)
        epoch = batch["epoch"]
        images = batch["images"].to(device, dtype=dtype, non_blocking=True)
        texts = batch["texts"].to(device, non_blocking=True)
        # open_clip returns L2-normalised features and exp(logit_scale).
        image_features, text_features, scale = engine(images, texts)
        loss = clip_contrastive_loss(image_features, text_features, scale, impl=cfg.loss_impl, gather=world > 1)
        engine.backward(loss)
        engine.step()
        step += 1
        trained += 1
        window.append(loss.detach())
        if step % cfg.log_every == 0 or step == last_step:
            mean = torch.stack(window).float().mean()
            if world > 1:
                dist.all_reduce(mean)
                mean /= world
            loss_curve.append([step, float(mean)])
            window = []
        if trained == warm_steps:
            clock.start_steady()
        if step in ckpt_steps or step in export_steps:
            with clock.paused():
                if step in export_steps:
                    exports.append(export_open_clip(engine, ckpt / "export" / f"step_{step}", rung=rung,
                                                    model_cfg=built.model_cfg, step=step,
                                                    samples_seen=step * r["global_batch"]))
                if step in ckpt_steps:
                    _commit(engine, ckpt, step, r["global_batch"], loss_curve, exports, cfg.keep_checkpoints)

    train_time, steady_time = clock.stop()
    final = export_open_clip(engine, ckpt / FINAL, rung=rung, model_cfg=built.model_cfg, step=step,
                             samples_seen=step * r["global_batch"])
    if not any(e["step"] == step for e in exports):
        exports.append(final)
    pool = cfg.unique_samples
    summary = {
        "rung": rung.name, "steps": step, "total_steps": r["total_steps"],
        "samples_seen": step * r["global_batch"], "global_batch": r["global_batch"], "world_size": world,
        "precision": r["precision"], "zero_stage": cfg.zero_stage,
        "samples_per_s": (trained * r["global_batch"] / train_time) if train_time > 0 else None,
        "samples_per_s_steady": ((trained - warm_steps) * r["global_batch"] / steady_time) if steady_time > 0 else None,
        "train_seconds": train_time, "final_loss": loss_curve[-1][1] if loss_curve else None,
        "loss_curve": loss_curve, "params": params, "flops_per_sample": flops_per_sample(rung),
        "epochs": epoch + 1 if trained else None,
        "repeats": (step * r["global_batch"] / pool) if pool else None,
        "checkpoints": sorted(p.name for p in ckpt.glob("step_*") if p.is_dir()),
        "exports": exports, "final_export": final, "resumed_from": resumed_from,
    }
    if rank == 0 and step == r["total_steps"]:
        atomic_write_json(ckpt / SUMMARY, summary)
    dist.barrier()
    return summary


class _StepClock:
    """Training wall time (checkpoint and export pauses left out), and the steady part of it
    from ``start_steady`` on. Each reading synchronises the device once."""

    def __init__(self, *, sync: bool) -> None:
        self._sync = sync
        self._t0 = self._now()
        self._steady0: float | None = None
        self._paused = 0.0
        self._paused_steady = 0.0

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start_steady(self) -> None:
        self._steady0 = self._now()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = self._now()
        try:
            yield
        finally:
            dt = self._now() - t
            self._paused += dt
            if self._steady0 is not None:
                self._paused_steady += dt

    def stop(self) -> tuple[float, float]:
        """(train seconds, steady seconds); steady is 0 when ``start_steady`` never ran."""
        end = self._now()
        steady = end - self._steady0 - self._paused_steady if self._steady0 is not None else 0.0
        return end - self._t0 - self._paused, steady


def _commit(engine: Any, ckpt: Path, step: int, global_batch: int, loss_curve: list, exports: list,
            keep: int) -> None:
    """Save on every rank, then (rank 0) move the pointer; older checkpoints are pruned."""
    import torch.distributed as dist

    tag = f"step_{step}"
    state = {"step": step, "samples_seen": step * global_batch, "loss_curve": loss_curve, "exports": exports}
    engine.save_checkpoint(str(ckpt), tag=tag, client_state=state, save_latest=False)
    dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_json(ckpt / LATEST, {"tag": tag, "step": step, "samples_seen": step * global_batch,
                                          "world_size": dist.get_world_size(), "global_batch": global_batch,
                                          "param_layout": PARAM_LAYOUT, "committed_at": time.time()})
        _prune(ckpt, keep)
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train one CLIP cell with DeepSpeed.")
    parser.add_argument("--config", required=True, help="JSON file with ClipTrainConfig fields")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args(argv)
    cfg = ClipTrainConfig.from_dict(read_json(args.config), where=args.config)
    summary = train_clip(cfg)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}, default=str))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
