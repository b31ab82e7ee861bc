"""CLIP pre-training of one cell on DeepSpeed: resumable, deterministic, open_clip-exportable.

The loop is the algorithm: move a batch of ``uint8`` images and tokenised captions to the
device, augment and normalise there, encode, contrastive loss (the fused kernel on GPU),
backward, step. Around it, :class:`~inheritlab.trainers.checkpoint.CheckpointManager` commits
checkpoints with the loader's position in every data slot, resumes from the last committed one
(the same sample sequence, nothing re-decoded) and exports weights where open_clip can load them.

Run alone, under torchrun, or under the ``deepspeed`` launcher::

    python -m inheritlab.trainers.clip_pretrain --config cfg.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.cell import Cell
from inheritlab.infra.errors import SpecError, StopRequested
from inheritlab.infra.seeds import derive_seed32
from inheritlab.trainers.checkpoint import CheckpointManager, Export, TrainSummary
from inheritlab.trainers.data_check import StreamChecker, slot_ceiling
from inheritlab.trainers.engine import PARAM_LAYOUT
from inheritlab.trainers.loop import CellControl, LossLog, StepClock, process_age_s
from inheritlab.trainers.train_config import SWITCHES, BaseTrainConfig

if TYPE_CHECKING:
    from inheritlab.trainers.clip_models import BuiltClip, ClipRung

WEIGHTS = "open_clip_model.pt"
LOCAL_DIR_WEIGHTS = "open_clip_pytorch_model.bin"


@dataclass(frozen=True, kw_only=True)
class ClipTrainConfig(BaseTrainConfig):
    """One cell's CLIP pre-training. ``unique_samples`` is informational (the pool the
    corruptor chain's subsample step draws); repeats are logged in the summary."""

    train_shards: tuple[str, ...]
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    unique_samples: int | None = None
    loader_workers: int = 0
    shuffle_buffer: int = 256
    label_key: str | None = None           # labels from this .json key when samples have no .cls
    augment: str = "auto"                  # "auto": the rung's (rrc on GPU rungs); "none"; "rrc"
    image_decode: str = "auto"             # "auto": on the GPU (nvJPEG) when training on one; "loader"; "device"
    worker_decode_share: float | None = None  # decoding on the device: the share the loader decodes all the same
                                              # (None: image_feed.WORKER_DECODE_SHARE)
    cuda_graphs: str = "auto"              # "auto": wherever the compiled step can be graphed (engine.cuda_graphs_for)

    def __post_init__(self) -> None:
        super().__post_init__()
        from inheritlab.trainers.clip_images import AUGMENTS
        from inheritlab.trainers.image_feed import check_decode

        if self.augment not in ("auto", *AUGMENTS):
            raise SpecError(f"augment: got {self.augment!r}; expected one of {['auto', *AUGMENTS]}")
        check_decode(self.image_decode)
        if self.worker_decode_share is not None and not 0.0 <= self.worker_decode_share <= 1.0:
            raise SpecError(f"worker_decode_share: got {self.worker_decode_share!r}; expected a share in [0, 1]")
        if self.cuda_graphs not in SWITCHES:
            raise SpecError(f"cuda_graphs: got {self.cuda_graphs!r}; allowed {', '.join(SWITCHES)}")
        if not self.train_shards:
            raise SpecError("train_shards: empty; expected at least one training shard")
        if self.samples_seen is None:
            raise SpecError("ClipTrainConfig.samples_seen: missing; the budget of a CLIP run is samples seen")

    @classmethod
    def from_cell(cls, cell: Cell, cell_dir: str | Path, *, train_shards: list[str], class_names: tuple[str, ...],
                  label_key: str | None, device: str) -> "ClipTrainConfig":
        """The trainer config of a CLIP cell on the study's training shards."""
        return cls(**cls.cell_settings(cell, cell_dir, device=device), train_shards=tuple(train_shards),
                   num_classes=len(class_names) or None, class_names=tuple(class_names),
                   unique_samples=cell.config.unique_samples, loader_workers=int(cell.execution.loader_workers),
                   label_key=label_key, augment=cell.config.train.augment)


@dataclass(frozen=True)
class _Plan:
    """The run's shape, from the config, the rung's recipe and the number of ranks."""

    rung: "ClipRung"
    global_batch: int
    per_rank: int
    slots: int          # data slots (trainers.slots): fixed by the global batch, not by the ranks
    total_steps: int
    lr: float
    warmup: int
    precision: str
    augment: str        # resolved: "none" or "rrc"
    transfer_size: int  # side of the loader's uint8 images (trainers/clip_images.transfer_size)
    device_decode: bool  # JPEGs decoded on the training device (trainers/image_feed)
    worker_share: float  # ... of which the loader workers decode this share all the same


def _plan(cfg: ClipTrainConfig, world: int, use_gpu: bool) -> _Plan:
    from inheritlab.trainers.clip_images import transfer_size
    from inheritlab.trainers.clip_models import get_rung
    from inheritlab.trainers.image_feed import WORKER_DECODE_SHARE, resolve_decode
    from inheritlab.trainers.slots import data_slots, rank_slots

    rung = get_rung(cfg.rung)
    global_batch = cfg.batch_size or rung.batch_size
    slots = data_slots(global_batch)
    rank_slots(0, world, slots)  # the ranks must divide the slots (an error naming the choices)
    total = math.ceil(int(cfg.samples_seen or 0) / global_batch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else rung.warmup_steps
    return _Plan(rung=rung, global_batch=global_batch, per_rank=global_batch // world, slots=slots, total_steps=total,
                 lr=cfg.lr if cfg.lr is not None else rung.lr, warmup=min(warmup, max(0, total - 1)),
                 precision=cfg.precision_for(use_gpu), augment=rung.augment if cfg.augment == "auto" else cfg.augment,
                 transfer_size=transfer_size(cfg.train_shards, rung.image_size),
                 device_decode=resolve_decode(cfg.image_decode, use_gpu=use_gpu),
                 worker_share=WORKER_DECODE_SHARE if cfg.worker_decode_share is None else cfg.worker_decode_share)


def _build(cfg: ClipTrainConfig, plan: _Plan, world: int, use_gpu: bool) -> tuple["BuiltClip", Any]:
    """The open_clip model (seeded from the seed tree) inside a DeepSpeed engine."""
    from inheritlab.trainers.clip_models import build_clip, compile_towers, count_params
    from inheritlab.trainers.engine import (EngineConfig, build_engine, device_memory, resolve_zero_stage,
                                            seed_everything)

    seed_everything(derive_seed32(cfg.study_seed, "clip-init", cfg.rung, cfg.seed))
    built = build_clip(plan.rung)
    stage = resolve_zero_stage(cfg.zero_stage, params=count_params(built.model), world=world,
                               device_bytes=device_memory(use_gpu), use_gpu=use_gpu)
    # Under ZeRO 1–3 the towers are compiled inside the engine's forward; at stage 0 the whole
    # forward is, outside it (engine.step_forward).
    if cfg.compiles(use_gpu, plan.rung.device, stage, plan.total_steps) and stage != 0:
        compile_towers(built.model)
    r = plan.rung
    ecfg = EngineConfig(
        micro_batch_per_rank=plan.per_rank, world_size=world, zero_stage=stage, precision=plan.precision,
        lr=plan.lr, weight_decay=r.weight_decay, betas=(r.beta1, r.beta2), eps=r.eps, grad_clip=r.grad_clip,
        warmup_steps=plan.warmup, total_steps=plan.total_steps, use_gpu=use_gpu,
    )
    engine, _, _ = build_engine(built.model, ecfg)
    return built, engine


def _batches(cfg: ClipTrainConfig, plan: _Plan, built: "BuiltClip", *, rank: int, world: int, use_gpu: bool,
             step: int, loader_state: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """This rank's batches from step ``step`` on: its block of data slots, read by up to
    ``loader_workers`` worker processes (never more than it has slots), each slot from its
    position in ``loader_state`` (or, without one, replayed from the start)."""
    from inheritlab.trainers.clip_data import ClipBatchStream, StreamSpec, positions_from_state, rank_batches
    from inheritlab.trainers.slots import rank_slots

    mine = rank_slots(rank, world, plan.slots)
    spec = StreamSpec(
        shards=tuple(cfg.train_shards), corruptors=tuple(cfg.corruptors), study_seed=cfg.study_seed,
        seed=cfg.seed, plan_dir=cfg.plan_dir, num_classes=cfg.num_classes, class_names=tuple(cfg.class_names),
        slots=tuple(mine), num_slots=plan.slots, chunk=plan.global_batch // plan.slots,
        shuffle_buffer=cfg.shuffle_buffer, bad_sample_ceiling=slot_ceiling(cfg.bad_sample_ceiling), label_key=cfg.label_key,
        image_size=plan.rung.image_size, transfer_size=plan.transfer_size, device_decode=plan.device_decode,
        worker_decode_share=plan.worker_share,
    )
    workers = min(cfg.loader_workers, len(mine))
    positions = positions_from_state(loader_state, mine, where=f"{cfg.cell_dir}/ckpt") if loader_state else None
    stream = ClipBatchStream(spec, tokenizer=built.tokenizer, positions=positions,
                             skip_batches=0 if positions else step)
    # uint8 batches are small: a few in flight per worker keep the step fed without much memory.
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=use_gpu,
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    return rank_batches(iter(loader), max(1, workers))


def export_open_clip(ckpt: CheckpointManager, engine: Any, built: "BuiltClip", *, step: int,
                     samples_seen: int) -> Export:
    """Export the weights where open_clip loads them; every rank calls it (ZeRO-3 gathers).

    Loadable as ``open_clip.create_model(rung.open_clip_name, pretrained=<dir>/open_clip_model.pt)``
    or ``open_clip.create_model("local-dir:<dir>")``.
    """
    from inheritlab.trainers.engine import full_state_dict

    state = full_state_dict(engine.module)
    rung = built.rung
    return ckpt.export(step=step, samples_seen=samples_seen, write=lambda tmp: write_open_clip_files(tmp, state, built),
                       meta={"rung": rung.name, "open_clip_name": rung.open_clip_name, "weights": WEIGHTS})


def write_open_clip_files(directory: Path, state: dict[str, Any], built: "BuiltClip") -> None:
    """The files of a CLIP export: the weights under the name ``pretrained=`` takes and the one
    open_clip's ``local-dir:`` loader looks for, and ``open_clip_config.json`` (architecture and
    the evaluation preprocessing, so ``local-dir:`` needs nothing of ours)."""
    from inheritlab.trainers.clip_images import MEAN, STD

    rung = built.rung
    torch.save(state, directory / WEIGHTS)
    os.link(directory / WEIGHTS, directory / LOCAL_DIR_WEIGHTS)  # a hard link costs no space
    atomic_write_json(directory / "open_clip_config.json", {
        "model_cfg": built.model_cfg,
        "preprocess_cfg": {"size": rung.image_size, "mean": list(MEAN), "std": list(STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    })


def export_weights(export: Export) -> str:
    """The weights file of a CLIP export (what ``open_clip.create_model(pretrained=...)`` takes)."""
    return str(Path(export.path) / WEIGHTS)


def train_clip(cfg: ClipTrainConfig) -> TrainSummary:
    """Train (or finish training) one cell; returns its summary (the same on every rank)."""
    from inheritlab.kernels import clip_contrastive_loss
    from inheritlab.trainers.engine import cuda_graphs_for, graph_skips, init_distributed, optimizer_step, step_forward
    from inheritlab.trainers.image_feed import DeviceFeed
    from inheritlab.trainers.slots import rank_slots

    entered = process_age_s()  # the start-up split begins here (CellControl.mark)
    use_gpu = cfg.use_gpu
    rank, world, _ = init_distributed(use_gpu=use_gpu)
    plan = _plan(cfg, world, use_gpu)
    ckpt = CheckpointManager(Path(cfg.cell_dir) / "ckpt", keep=cfg.keep_checkpoints, world_size=world,
                             shape={"global_batch": plan.global_batch, "data_slots": plan.slots,
                                    "param_layout": PARAM_LAYOUT})
    done = ckpt.finished(plan.total_steps)
    if done is not None:
        return done
    control = CellControl(cfg.cell_dir, rank=rank, world=world, total_steps=plan.total_steps, per_step=plan.global_batch,
                          poll_steps=1 if world == 1 else cfg.log_every)
    control.mark("start", at=entered)
    built, engine = _build(cfg, plan, world, use_gpu)
    control.mark("engine")
    stage = int(engine.zero_optimization_stage())
    ckpt.shape["zero_stage"] = stage  # a resume must keep the stage
    compiled = cfg.compiles(use_gpu, plan.rung.device, stage, plan.total_steps)
    graphs = cuda_graphs_for(cfg.cuda_graphs, compiled=compiled, engine=engine)
    forward = step_forward(engine, compile_model=compiled, cuda_graphs=graphs)
    skips_before = graph_skips()
    resumed = ckpt.resume(engine)
    step = int(resumed["step"]) if resumed else 0
    losses = LossLog(cfg.log_every, resumed["loss_curve"] if resumed else (),
                     resumed.get("loss_window") if resumed else None, rank=rank)
    loader_state = resumed.get("loader") if resumed else None
    batches = _batches(cfg, plan, built, rank=rank, world=world, use_gpu=use_gpu, step=step, loader_state=loader_state)
    mine = rank_slots(rank, world, plan.slots)
    checker = StreamChecker(plan_dir=cfg.plan_dir, slots=plan.slots, ceiling=cfg.bad_sample_ceiling)
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    commits, exports = cfg.commit_at(plan.total_steps), cfg.export_at(plan.total_steps)
    last_step = cfg.last_step(plan.total_steps, step)
    clock = StepClock(sync=use_gpu, warm_steps=min(5, max(0, (last_step - step) // 4)))
    first_step, epoch = step, 0
    # The feed decodes ahead of the loop in threads of its own, never past the last step this
    # process trains; leaving the block early (a stop, an error) stops it.
    with DeviceFeed(batches, device, count=last_step - step) as feed:
        while step < last_step:
            batch, uint8_images = feed.take()
            control.mark("first_batch")
            epoch = batch["epoch"]
            for report in batch["pass_reports"]:
                checker.collect(report)
            if cfg.trace_data:
                _trace(cfg, rank, step + 1, batch["keys"])
            images = _step_images(cfg, plan, uint8_images, step=step, slots=mine)
            texts = batch["texts"].to(device, non_blocking=True)
            # open_clip returns L2-normalised features and exp(logit_scale).
            image_features, text_features, scale = forward(images, texts)
            loss = clip_contrastive_loss(image_features, text_features, scale, impl=cfg.loss_impl, gather=world > 1)
            engine.backward(loss)
            optimizer_step(engine)
            step += 1
            losses.add(step, loss, last=step == last_step)
            clock.tick()
            control.stepped(step, losses)
            stop = step < last_step and control.stop_requested(step)
            if step in commits or step in exports or stop:
                with clock.paused():
                    _save(ckpt, engine, built, losses, batch["positions"], step=step,
                          samples_seen=step * plan.global_batch, export=step in exports,
                          commit=step in commits or stop)
            if stop:
                raise StopRequested(f"training stopped on request after step {step} of {plan.total_steps}; "
                                    f"checkpoint committed, a rerun resumes from it")
    # How the step ran, so a results row says it: a graph Inductor could not record runs without.
    how = {"compiled": compiled, "cuda_graphs": graphs, "graph_skips": graph_skips() - skips_before,
           "device_decode": plan.device_decode, "worker_decode_share": plan.worker_share if plan.device_decode else None,
           "feed": feed.timings()}
    return _finish(cfg, plan, ckpt, built, step=step, trained=step - first_step, epoch=epoch, world=world,
                   losses=losses, clock=clock, resumed_from=first_step if resumed else None, checker=checker, how=how)


def _step_images(cfg: ClipTrainConfig, plan: _Plan, uint8_images: torch.Tensor, *, step: int,
                 slots: list[int]) -> torch.Tensor:
    """The step's model input from the batch's ``uint8`` images on the device: augmented (crops
    drawn per (step, slot) from the seed tree: the same on any number of ranks), resized,
    normalised, in the run's precision."""
    from inheritlab.trainers.clip_images import crop_boxes, device_images

    boxes = (crop_boxes(cfg.study_seed, cfg.seed, step, slots, plan.global_batch // plan.slots, plan.transfer_size)
             if plan.augment == "rrc" else None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision, torch.float32)
    return device_images(uint8_images, size=plan.rung.image_size, dtype=dtype, boxes=boxes)


def _save(ckpt: CheckpointManager, engine: Any, built: "BuiltClip", losses: LossLog, positions: Any, *, step: int,
          samples_seen: int, export: bool, commit: bool) -> None:
    """Export the weights and/or commit a checkpoint after ``step``; every rank calls it (both
    are collectives). The checkpoint holds the loss curve, its open window and every data slot's
    position, so a resume continues the same curve and sample sequence."""
    from inheritlab.trainers.slots import gather_slot_states

    if export:
        export_open_clip(ckpt, engine, built, step=step, samples_seen=samples_seen)
    if commit:
        ckpt.commit(engine, step=step, samples_seen=samples_seen,
                    state={"loss_curve": losses.curve, "loss_window": losses.window_state(),
                           "loader": gather_slot_states(positions)})


def _trace(cfg: ClipTrainConfig, rank: int, step: int, keys: list[str]) -> None:
    """Append the sample keys this rank trains on at ``step`` (``trace_data``: tests, debugging)."""
    path = Path(cfg.cell_dir) / "data" / f"trace-rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, "keys": keys}) + "\n")


def _finish(cfg: ClipTrainConfig, plan: _Plan, ckpt: CheckpointManager, built: "BuiltClip", *, step: int,
            trained: int, epoch: int, world: int, losses: LossLog, clock: StepClock, resumed_from: int | None,
            checker: StreamChecker, how: dict[str, Any]) -> TrainSummary:
    """Check the data stream, write the summary of a finished run, return it."""
    from inheritlab.trainers.clip_models import count_params, flops_per_sample

    train_time, steady_time = clock.stop()
    rate = clock.rates(plan.global_batch)
    summary = TrainSummary(
        rung=plan.rung.name, steps=step, total_steps=plan.total_steps, samples_seen=step * plan.global_batch,
        global_batch=plan.global_batch, world_size=world, precision=plan.precision, zero_stage=int(ckpt.shape["zero_stage"]),
        params=count_params(built.model), flops_per_sample=flops_per_sample(plan.rung), train_seconds=train_time,
        samples_per_s=rate[0], samples_per_s_steady=rate[1], final_loss=losses.final, loss_curve=losses.curve,
        epochs=epoch + 1 if trained else None,
        repeats=(step * plan.global_batch / cfg.unique_samples) if cfg.unique_samples else None,
        exports=tuple(ckpt.exports()), resumed_from=resumed_from, data_check=checker.finish(),
        extra={"checkpoints": ckpt.checkpoints(), "step": how},
    )
    ckpt.finish(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train one CLIP cell with DeepSpeed.")
    parser.add_argument("--config", required=True, help="JSON file with ClipTrainConfig fields")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args(argv)
    cfg = ClipTrainConfig.from_dict(read_json(args.config), where=args.config)
    summary = train_clip(cfg)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        print(json.dumps({k: v for k, v in summary.to_dict().items() if k != "loss_curve"}, default=str))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
