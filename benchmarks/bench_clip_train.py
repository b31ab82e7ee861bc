"""Throughput of one CLIP pre-training cell (DeepSpeed, the real data stream, the trainer's loss).

Launch alone or under torchrun; rank 0 appends one JSON record to ``--out``::

    torchrun --nproc-per-node 2 benchmarks/bench_clip_train.py --rung clip-tiny \
        --world /tmp/world --cell /tmp/cell --batch-size 1024 --steps 40 --out results.jsonl

The data is generated first when ``--world`` holds none: the built-in world (``--data world``)
or img2dataset-style 256-px JPEG shards with labels in ``.json`` (``--data jpeg``, the loader
benchmark's writer). ``--label-noise L`` trains through the corruptor chain; checkpoints are
committed every ``--ckpt-every`` steps. Samples/s is end to end (loader, transfer, step); the
steady figure leaves out the first steps of the run. MFU divides the model FLOPs
(``clip_models.flops_per_sample``, fwd+bwd) by the bf16 matmul rate measured in this run (and,
for reference, by the device's dense bf16 spec peak).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

_START = time.perf_counter()  # this process's start, near enough: the phase marks count from here

# Dense bf16 tensor-core peaks (TFLOP/s) of the devices we run on; SXM parts.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}


def _peak(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def make_world(root: Path, image_size: int, train_size: int, per_shard: int) -> None:
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

    if (root / "world.json").is_file():
        return
    write_image_world(ImageWorldConfig(seed=0, image_size=image_size, train_size=train_size, test_id_size=64,
                                       test_ood_size=64, samples_per_shard=per_shard), root)


def make_jpeg_shards(root: Path, train_size: int, per_shard: int) -> list[str]:
    """img2dataset's layout at 256 px (``bench_loader.write_foreign_shards``), once."""
    from bench_loader import write_foreign_shards  # beside this script

    done = root / "train.done"
    if done.is_file():
        return sorted(str(p) for p in (root / "train").glob("*.tar"))
    paths = write_foreign_shards(root / "train", "JPEG", train_size, per_shard)
    done.write_text("\n".join(paths))
    return paths


class _StepWatch:
    """Benchmark instrumentation of the trainer's own loop (its ``StepClock``): the host time of
    every optimizer step, and a torch.profiler window over steps ``a..b`` whose kernel and host-op
    tables are written to ``profile_to``. (The phases before the first step are the trainer's own
    ``startup`` record in ``progress.json``.)"""

    def __init__(self, window: tuple[int, int] | None, profile_to: str | None, cell: str) -> None:
        self._cell = Path(cell)
        self.ticks: list[float] = []
        self._window, self._to, self._prof, self._t = window, profile_to, None, 0.0

    def install(self) -> None:
        from inheritlab.trainers import loop

        orig_tick = loop.StepClock.tick
        watch = self

        def tick(clock: "loop.StepClock") -> None:
            orig_tick(clock)
            watch.ticks.append(time.perf_counter() - _START)
            if len(watch.ticks) in (1, 10):  # where a run that overruns its time limit had got to
                watch.save()
            watch._maybe_profile(len(watch.ticks))

        loop.StepClock.tick = tick

    def _maybe_profile(self, step: int) -> None:
        if self._window is None or not torch.cuda.is_available():
            return
        from bench_clip_step import write_profile  # beside this script: one report for both benchmarks
        from torch.profiler import ProfilerActivity, profile

        a, b = self._window
        if step == a:
            torch.cuda.synchronize()
            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True)
            self._prof.start()
            self._t = time.perf_counter()
        elif step == b and self._prof is not None:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self._t
            self._prof.stop()
            write_profile(self._prof, b - a, wall / (b - a), self._to or "/dev/null", f"steps {a + 1}..{b}")
            self._prof = None

    def save(self) -> None:
        self._cell.mkdir(parents=True, exist_ok=True)
        (self._cell / "timeline.json").write_text(json.dumps({"ticks_s": self.ticks[:10]}))

    def summary(self, batch: int) -> dict[str, object]:
        """Step times from the ticks (host clock: the loss log's syncs keep it within a few steps of
        the device), and the second half of the run's rate."""
        steps = sorted(b - a for a, b in zip(self.ticks, self.ticks[1:]))
        half = len(self.ticks) // 2
        out: dict[str, object] = {"first_tick_s": self.ticks[0] if self.ticks else None}
        if len(steps) >= 4:
            out |= {"step_ms_median": steps[len(steps) // 2] * 1e3, "step_ms_p90": steps[int(len(steps) * 0.9)] * 1e3,
                    "samples_per_s_at_median_step": batch / steps[len(steps) // 2],
                    "samples_per_s_second_half": batch * (len(self.ticks) - 1 - half)
                    / (self.ticks[-1] - self.ticks[half])}
        return out


def _progress(cell: str) -> dict[str, object]:
    """The cell's ``progress.json``: ``first_step_after_s`` and the ``startup`` split by phase."""
    path = Path(cell) / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rung", default="clip-tiny")
    ap.add_argument("--world", required=True)
    ap.add_argument("--cell", required=True)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=4096)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=256, help="global batch")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--zero-stage", default="auto", help="0-3 or auto (what a cell gets)")
    ap.add_argument("--data", choices=("world", "jpeg"), default="world")
    ap.add_argument("--label-noise", type=float, default=0.0, help="train through the corruptor chain")
    ap.add_argument("--ckpt-every", type=int, default=0, help="commit a checkpoint every N steps (0: at the end)")
    ap.add_argument("--loader-workers", type=int, default=4)
    ap.add_argument("--loss-impl", default="auto", help="auto = the Triton kernel on GPU (CLIP: from 4096² logits)")
    ap.add_argument("--compile", default="auto", choices=("auto", "yes", "no"))
    ap.add_argument("--cuda-graphs", default="auto", choices=("auto", "yes", "no"),
                    help="replay the compiled step as CUDA graphs (auto: wherever it can be graphed)")
    ap.add_argument("--image-decode", default="auto", choices=("auto", "loader", "device"),
                    help="where JPEGs are decoded: auto = on the GPU (nvJPEG) when training on one")
    ap.add_argument("--worker-decode-share", type=float, default=None,
                    help="decoding on the GPU: the share of images the loader workers decode anyway "
                         "(default: the trainer's, image_feed.WORKER_DECODE_SHARE)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--make-world-only", action="store_true")
    ap.add_argument("--profile-steps", default="", help="A:B: torch.profiler over steps A+1..B (tables beside --out)")
    args = ap.parse_args()

    world_root = Path(args.world)
    if args.make_world_only:
        t0 = time.perf_counter()
        if args.data == "jpeg":
            make_jpeg_shards(world_root, args.train_size, args.per_shard)
        else:
            make_world(world_root, args.image_size, args.train_size, args.per_shard)
        print(f"data {world_root}: {time.perf_counter() - t0:.1f}s")
        return

    from inheritlab.trainers.clip_pretrain import ClipTrainConfig, train_clip

    if args.data == "jpeg":
        shards, classes, label_key = make_jpeg_shards(world_root, args.train_size, args.per_shard), 10, "label"
    else:
        from inheritlab.corruptors.world import load_world_info

        if not world_root.exists():   # generated first when absent, as the JPEG shards are
            make_world(world_root, args.image_size, args.train_size, args.per_shard)
        world = load_world_info(world_root)
        shards, classes, label_key = list(world.splits["train"]), world.num_classes, None
    if Path(args.cell).exists():
        raise SystemExit(f"--cell {args.cell} exists: a benchmark trains a fresh cell")
    noise = ({"type": "label_noise", "level": args.label_noise},) if args.label_noise else ()
    stage = args.zero_stage if args.zero_stage == "auto" else int(args.zero_stage)
    cfg = ClipTrainConfig(
        rung=args.rung, train_shards=tuple(shards), cell_dir=args.cell, corruptors=noise,
        samples_seen=args.batch_size * args.steps, batch_size=args.batch_size, zero_stage=stage,
        ckpt_every=args.ckpt_every or args.steps, loader_workers=args.loader_workers, num_classes=classes,
        class_names=tuple(f"class {i}" for i in range(classes)), label_key=label_key,
        unique_samples=args.train_size, log_every=5, loss_impl=args.loss_impl, bad_sample_ceiling=0.01,
        compile=args.compile, image_decode=args.image_decode, cuda_graphs=args.cuda_graphs,
        worker_decode_share=args.worker_decode_share,
    )
    rate = None
    if torch.cuda.is_available():
        from bench_clip_step import _matmul_rate  # beside this script: the same measurement

        rate = _matmul_rate()
    window = tuple(int(x) for x in args.profile_steps.split(":")) if args.profile_steps else None
    share = "" if args.worker_decode_share is None else f"_share{args.worker_decode_share:g}"
    profile_to = (f"{Path(args.out).with_suffix('')}_profile_{args.image_decode}{share}"
                  f"_w{args.loader_workers}_graphs-{args.cuda_graphs}.txt")
    watch = _StepWatch(window, profile_to if window else None, args.cell)
    watch.install()
    t0 = time.perf_counter()
    s = train_clip(cfg)
    wall = time.perf_counter() - t0
    import torch.distributed as dist

    if dist.get_rank() == 0:
        import deepspeed
        import open_clip
        import triton

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
        peak = _peak(gpu)
        steady = s.samples_per_s_steady
        progress = _progress(args.cell)
        record = {
            "bench": "clip_train", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": gpu, "gpus": s.world_size if torch.cuda.is_available() else 0,
            "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "triton": triton.__version__,
                         "open_clip": open_clip.__version__, "python": platform.python_version()},
            "rung": args.rung, "global_batch": args.batch_size, "steps": s.steps, "zero_stage": s.zero_stage,
            "data": args.data, "label_noise": args.label_noise, "ckpt_every": cfg.ckpt_every,
            "bf16_matmul_tflops_measured": rate / 1e12 if rate else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "compile": args.compile, "image_decode": args.image_decode, "cuda_graphs": args.cuda_graphs,
            "step_mode": s.extra.get("step"),  # what ran: compiled, graphed, graphs skipped, image decode
            # Launch to first step: this process's start to its first optimizer step, and when each
            # phase before it ended (the trainer's progress.json).
            "first_step_after_s": progress.get("first_step_after_s"), "startup": progress.get("startup"),
            "precision": s.precision, "loader_workers": args.loader_workers, "loss_impl": args.loss_impl, "image_size": args.image_size,
            "params": s.params, "flops_per_sample": s.flops_per_sample,
            "samples_per_s": s.samples_per_s, "samples_per_s_steady": steady,
            "mfu_steady_measured_rate": (steady * s.flops_per_sample / (s.world_size * rate)) if (rate and steady) else None,
            "mfu_steady_spec_peak": (steady * s.flops_per_sample / (s.world_size * peak * 1e12)) if (peak and steady) else None,
            "timeline": watch.summary(args.batch_size) if s.steps else None,
            "final_loss": s.final_loss, "loss_curve": list(s.loss_curve), "wall_s": wall,
        }
        with open(args.out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "loss_curve"}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
