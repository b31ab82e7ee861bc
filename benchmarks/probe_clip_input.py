"""What limits the CLIP trainer's input pipeline: the loader alone, per stage, and the device step.

    python benchmarks/probe_clip_input.py --out $OUT/clip_input.json [--world /tmp/probe-world]
    python benchmarks/probe_clip_input.py --quick --out /tmp/clip_input_quick.json    (CPU smoke)

On img2dataset-style 256-px JPEG shards written by ``bench_clip_train.make_jpeg_shards`` (one
process; its time is recorded), at the ``datacomp-small`` rung (224 px, augment ``rrc``) and a
global batch of 512:

1. ``device``: what ``train_clip`` does to a loader batch on the device, per batch: the random
   resized crop boxes (``clip_images.crop_boxes``, CPU), the host-to-device copy of the ``uint8``
   ``[B, L, L, 3]`` batch from pageable and from pinned memory (and how long the host is blocked
   by each while the GPU is still busy with earlier work), and ``clip_images.device_images``.
2. ``loader``: the input pipeline alone, built exactly as ``train_clip`` builds it (the trainer's
   own ``_plan`` and ``_batches``: ``StreamSpec`` → ``ClipBatchStream`` → ``DataLoader`` (pinned on
   CUDA, prefetch 4) → ``rank_batches``), for loader workers x label noise: the first-batch
   latency, samples/s over the batches after one warm-up batch, per-batch waits (epoch
   boundaries marked), and per worker what each part took to make inside the worker
   (``busy``: wall time between the worker resuming and yielding, ``cpu``: its process time).
   The only additions are that timing, by a subclass of ``ClipBatchStream`` and a pass-through
   of the parts on their way into ``rank_batches``.
3. ``stages``: one sample's stages in the main process on ``--stage-samples`` samples: tar read
   (``iter_samples``, undecoded), the corruptor chain, JPEG decode (``decode_sample_image`` at the
   loader's size), ``to_uint8`` (at the loader's size, and at 224 px for comparison), the
   tokenizer, the collate stack; and per batch the main process's join (``torch.cat`` of the
   workers' parts) and a pin of a whole batch.

Writes one JSON record to ``--out`` and prints a short table. Each section records its error
instead of ending the run. ``--budget-s`` skips the loader configurations still to run once
the run has taken that long (the skipped ones are listed).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from inheritlab.trainers import clip_data
from inheritlab.trainers.clip_data import ClipBatchStream
from torch.utils.data import get_worker_info

RUNG = "datacomp-small"
CLASSES = 10
T0 = time.perf_counter()


def _since_start() -> float:
    return time.perf_counter() - T0


def _noise_chain(level: float) -> tuple[dict[str, Any], ...]:
    # As bench_clip_train passes it to the trainer.
    return ({"type": "label_noise", "level": level},) if level else ()


def _stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# ----------------------------------------------------------------------------------- world


def make_world(root: Path, train_size: int, per_shard: int) -> tuple[list[str], float]:
    from bench_clip_train import make_jpeg_shards  # beside this script

    t0 = time.perf_counter()
    shards = make_jpeg_shards(root, train_size, per_shard)
    return shards, time.perf_counter() - t0


def _config(shards: list[str], *, workers: int, noise: float, batch: int, train_size: int, cell: str,
            decode: str = "loader") -> Any:
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig

    # The fields bench_clip_train sets; the budget is never reached (the probe stops first).
    return ClipTrainConfig(
        rung=RUNG, train_shards=tuple(shards), cell_dir=cell, corruptors=_noise_chain(noise),
        samples_seen=batch * 10_000, batch_size=batch, loader_workers=workers, num_classes=CLASSES,
        class_names=tuple(f"class {i}" for i in range(CLASSES)), label_key="label", unique_samples=train_size,
        bad_sample_ceiling=0.01, image_decode=decode,
    )


# ----------------------------------------------------------------------------------- device


def _busy_gpu(ms: float) -> None:
    """Queue about ``ms`` of matmuls on the current stream (returns at once)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        a @ a
    end.record()
    end.synchronize()
    per = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(int(ms / per) + 1):
        a @ a


def probe_device(batch: int, loader_size: int, image_size: int, use_gpu: bool, repeats: int) -> dict[str, Any]:
    from inheritlab.trainers.clip_images import crop_boxes, device_images
    from inheritlab.trainers.slots import data_slots

    slots = data_slots(batch)
    chunk = batch // slots
    device = torch.device("cuda") if use_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if use_gpu else torch.float32
    host = torch.randint(0, 256, (batch, loader_size, loader_size, 3), dtype=torch.uint8)
    out: dict[str, Any] = {"batch": batch, "input": f"uint8 [{batch}, {loader_size}, {loader_size}, 3] (the loader's layout)",
                           "output": f"{str(dtype).replace('torch.', '')} [{batch}, 3, {image_size}, {image_size}]",
                           "on": str(device), "batch_mb": host.numel() / 1e6}

    t0 = time.perf_counter()
    for step in range(repeats):
        boxes = crop_boxes(0, 0, step, list(range(slots)), chunk, loader_size)
    out["crop_boxes_ms"] = (time.perf_counter() - t0) / repeats * 1e3

    def sync() -> None:
        if use_gpu:
            torch.cuda.synchronize()

    if use_gpu:
        pinned = host.pin_memory()
        for name, src in (("pageable", host), ("pinned", pinned)):
            src.to(device, non_blocking=True)
            sync()
            t0 = time.perf_counter()
            for _ in range(repeats):
                src.to(device, non_blocking=True)
            sync()
            out[f"h2d_{name}_ms"] = (time.perf_counter() - t0) / repeats * 1e3
            out[f"h2d_{name}_gb_s"] = host.numel() / (out[f"h2d_{name}_ms"] * 1e-3) / 1e9
            # As in the training loop: the copy is issued while the GPU still runs earlier work.
            _busy_gpu(150.0)
            t0 = time.perf_counter()
            src.to(device, non_blocking=True)
            out[f"h2d_{name}_host_blocked_ms_gpu_busy_150ms"] = (time.perf_counter() - t0) * 1e3
            sync()
        del pinned
    x = host.to(device)
    for _ in range(2):
        device_images(x, size=image_size, dtype=dtype, boxes=boxes)
    sync()
    t0 = time.perf_counter()
    for step in range(repeats):
        device_images(x, size=image_size, dtype=dtype, boxes=boxes)
    sync()
    out["device_images_rrc_ms"] = (time.perf_counter() - t0) / repeats * 1e3
    t0 = time.perf_counter()
    for _ in range(repeats):
        device_images(x, size=image_size, dtype=dtype, boxes=None)
    sync()
    out["device_images_resize_only_ms"] = (time.perf_counter() - t0) / repeats * 1e3
    out["device_images_samples_per_s"] = batch / (out["device_images_rrc_ms"] * 1e-3)
    del x
    if use_gpu:
        torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------- loader


class _TimedStream(ClipBatchStream):
    """The trainer's stream, each part stamped with what it took to make in its worker."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        parts = super().__iter__()
        index = 0
        while True:
            w0, c0 = time.perf_counter(), time.process_time()
            part = next(parts)
            part["probe"] = {"worker": wid, "index": index, "rows": len(part["images"]),
                             "busy_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                             "epoch": int(part["epoch"]), "pid": os.getpid()}
            index += 1
            yield part


@contextmanager
def _instrumented(sink: dict[str, Any]) -> Iterator[None]:
    """``_batches`` builds the real pipeline with the timed stream and hands its parts here on
    their way into the real ``rank_batches``."""
    orig_stream, orig_join = clip_data.ClipBatchStream, clip_data.rank_batches

    def record(parts: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for part in parts:
            probe = dict(part.get("probe", {}))
            probe["arrived"] = time.perf_counter()
            sink["parts"].append(probe)
            yield part

    def join(parts: Iterator[dict[str, Any]], num_parts: int) -> Iterator[dict[str, Any]]:
        sink["loader_iter"] = parts
        return orig_join(record(parts), num_parts)

    clip_data.ClipBatchStream, clip_data.rank_batches = _TimedStream, join
    try:
        yield
    finally:
        clip_data.ClipBatchStream, clip_data.rank_batches = orig_stream, orig_join


def probe_loader(shards: list[str], *, workers: int, noise: float, batch: int, train_size: int, batches: int,
                 seconds: float, tokenizer: Any, cell: str, decode: str = "loader") -> dict[str, Any]:
    from inheritlab.trainers.clip_pretrain import _batches, _plan

    cfg = _config(shards, workers=workers, noise=noise, batch=batch, train_size=train_size, cell=cell, decode=decode)
    use_gpu = cfg.use_gpu
    plan = _plan(cfg, 1, use_gpu)
    sink: dict[str, Any] = {"parts": []}
    waits: list[float] = []
    epochs: list[int] = []
    got = 0
    with _instrumented(sink):
        t0 = time.perf_counter()
        stream = _batches(cfg, plan, SimpleNamespace(tokenizer=tokenizer), rank=0, world=1, use_gpu=use_gpu, step=0,
                          loader_state=None)
        try:
            first = next(stream)
            first_latency = time.perf_counter() - t0
            start = time.perf_counter()
            while len(waits) < batches and time.perf_counter() - start < seconds:
                w = time.perf_counter()
                b = next(stream)
                waits.append(time.perf_counter() - w)
                got += len(b["images"])
                epochs.append(int(b["epoch"]))
            elapsed = time.perf_counter() - start
            last = b if waits else first
            images = last["images"]
            encoded = not isinstance(images, torch.Tensor)  # device decoding: JPEG bytes per row
            pinned = None if encoded else bool(images.is_pinned())
            shape = [len(images), "encoded"] if encoded else list(images.shape)
        finally:
            stream.close()
            it = sink.pop("loader_iter", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            del stream, it
            gc.collect()
    n_workers = max(1, min(workers, plan.slots))
    rate = got / elapsed if elapsed > 0 else None
    per_worker: list[dict[str, Any]] = []
    parts = sink["parts"]
    for wid in sorted({p["worker"] for p in parts}):
        mine = [p for p in parts if p["worker"] == wid]
        later = [p for p in mine if p["index"] > 0]
        first_epoch = [p for p in later if p["epoch"] == 0]
        rows = sum(p["rows"] for p in later)
        busy = sum(p["busy_s"] for p in later)
        cpu = sum(p["cpu_s"] for p in later)
        per_worker.append({
            "worker": wid, "slots": len(clip_data.worker_slots(list(range(plan.slots)), wid, n_workers)),
            "rows_per_part": mine[0]["rows"], "parts": len(mine),
            "first_part_busy_s": mine[0]["busy_s"],
            "busy_samples_per_s": rows / busy if busy else None,          # what one worker makes when it works
            "busy_samples_per_s_epoch0": (sum(p["rows"] for p in first_epoch) / sum(p["busy_s"] for p in first_epoch)
                                          if first_epoch else None),
            "cpu_samples_per_s": rows / cpu if cpu else None,             # the same per CPU second
            "cpu_over_busy": cpu / busy if busy else None,                # < 1: waiting (I/O, a shared core)
            "max_part_busy_s": max((p["busy_s"] for p in later), default=None),
            # the part that begins a new epoch also reads every shard again (the slots' shared read)
            "epoch_start_part_busy_s": [q["busy_s"] for p, q in itertools.pairwise(later) if q["epoch"] != p["epoch"]],
        })
    boundaries = [i for i in range(1, len(epochs)) if epochs[i] != epochs[i - 1]]
    return {
        "workers": workers, "workers_used": n_workers, "label_noise": noise, "batch": batch, "slots": plan.slots,
        "chunk": batch // plan.slots, "loader_size": plan.transfer_size, "image_size": plan.rung.image_size,
        "pin_memory": use_gpu, "batch_images_pinned": pinned, "batch_shape": shape,
        "first_batch_latency_s": first_latency, "timed_batches": len(waits), "timed_samples": got,
        "timed_s": elapsed, "samples_per_s": rate, "samples_per_s_per_worker": rate / n_workers if rate else None,
        "wait_ms": {k: v * 1e3 for k, v in (_stats(waits) or {}).items()},
        "waits_ms": [round(w * 1e3, 2) for w in waits], "epochs": epochs, "epoch_boundary_batches": boundaries,
        "samples_per_s_without_epoch_boundaries": (
            (got - batch * len(boundaries)) / (elapsed - sum(waits[i] for i in boundaries))
            if boundaries and elapsed > sum(waits[i] for i in boundaries) else rate),
        "per_worker": per_worker,
    }


# ----------------------------------------------------------------------------------- stages


def probe_stages(shards: list[str], n: int, loader_size: int, image_size: int, tokenizer: Any, noise: float,
                 workers_for_join: int, batch: int, use_gpu: bool, train_size: int) -> dict[str, Any]:
    from inheritlab.corruptors.shards import (
        ReadStats,
        decode_sample_image,
        iter_samples,
    )
    from inheritlab.trainers.clip_images import to_uint8

    out: dict[str, Any] = {"samples": n}
    us = lambda t, k: t / k * 1e6

    # tar read, undecoded: the first n samples, and a whole shard (the rate a shared epoch read runs at)
    t0 = time.perf_counter()
    raw = list(itertools.islice(iter_samples(shards[:1], decode=False, bad_sample_ceiling=0.01, label_key="label"), n))
    out["tar_read_us"] = us(time.perf_counter() - t0, len(raw))
    t0 = time.perf_counter()
    whole = sum(1 for _ in iter_samples(shards[:1], decode=False, bad_sample_ceiling=0.01, label_key="label"))
    out["tar_read_whole_shard_samples_per_s"] = whole / (time.perf_counter() - t0)
    out["image_bytes_mean"] = float(np.mean([len(s["image"]) for s in raw]))
    # With fewer shards than data slots every worker reads every shard at each epoch start
    # (trainers.slots.SharedEpochs): about this long, per worker, at this rate.
    out["shared_epoch_read_s"] = {str(n_): n_ / out["tar_read_whole_shard_samples_per_s"]
                                  for n_ in sorted({train_size, 32768})}

    # the corruptor chain (its first import is what a worker pays once)
    t0 = time.perf_counter()
    from inheritlab.corruptors.chain import build_chain

    out["chain_import_s"] = time.perf_counter() - t0
    names = [f"class {i}" for i in range(CLASSES)]
    t0 = time.perf_counter()
    chain = build_chain(list(_noise_chain(noise)), study_seed=0, num_classes=CLASSES, class_names=names)
    out["chain_build_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    kept = list(chain.apply(iter(raw)))
    out["chain_us"] = us(time.perf_counter() - t0, len(raw))
    out["chain"] = list(_noise_chain(noise))
    out["chain_kept"] = len(kept)

    stats = ReadStats()
    t0 = time.perf_counter()
    decoded = [decode_sample_image(s, stats=stats, bad_sample_ceiling=0.01, min_size=loader_size) for s in kept]
    out["jpeg_decode_us"] = us(time.perf_counter() - t0, len(kept))
    images = [d["image"] for d in decoded if d is not None]
    out["decoded_size"] = list(images[0].size)
    t0 = time.perf_counter()
    arrays = [to_uint8(im, loader_size) for im in images]
    out["to_uint8_loader_size_us"] = us(time.perf_counter() - t0, len(images))
    t0 = time.perf_counter()
    for im in images:
        to_uint8(im, image_size)
    out["to_uint8_resize_to_image_size_us"] = us(time.perf_counter() - t0, len(images))
    captions = [d["caption"] for d in decoded if d is not None]
    tokenizer(captions[:4])
    t0 = time.perf_counter()
    tokenizer(captions)
    out["tokenize_us"] = us(time.perf_counter() - t0, len(captions))
    t0 = time.perf_counter()
    torch.from_numpy(np.stack(arrays))
    out["collate_stack_us"] = us(time.perf_counter() - t0, len(arrays))
    steps = ("tar_read_us", "chain_us", "jpeg_decode_us", "to_uint8_loader_size_us", "tokenize_us", "collate_stack_us")
    total = sum(out[k] for k in steps)
    out["sum_us"] = total
    out["predicted_samples_per_s_per_worker"] = 1e6 / total
    out["share"] = {k: out[k] / total for k in steps}

    # the main process, per batch: rank_batches joins the workers' parts (torch.cat); the pin thread pins each
    sizes = [len(p) for p in np.array_split(np.arange(batch), max(1, workers_for_join))]
    one = torch.from_numpy(np.stack(arrays[:1]))
    parts = [one.expand(k, *one.shape[1:]).contiguous() for k in sizes]
    if use_gpu:
        parts = [p.pin_memory() for p in parts]
    torch.cat(parts)
    t0 = time.perf_counter()
    joined = torch.cat(parts)
    out["join_cat_ms_per_batch"] = (time.perf_counter() - t0) * 1e3
    out["join_parts"] = len(parts)
    out["joined_is_pinned"] = bool(joined.is_pinned())
    if use_gpu:
        t0 = time.perf_counter()
        joined.pin_memory()
        out["pin_ms_per_batch"] = (time.perf_counter() - t0) * 1e3
    out["batch_mb"] = joined.numel() / 1e6
    return out


# ----------------------------------------------------------------------------------- report


def _versions() -> dict[str, str]:
    import PIL
    from PIL import features

    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
         "pillow": PIL.__version__, "libjpeg_turbo": str(features.check_feature("libjpeg_turbo"))}
    for name in ("open_clip", "polars"):
        try:
            v[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            v[name] = f"unavailable ({type(exc).__name__})"
    return v


def _fmt(x: Any, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def summary(rec: dict[str, Any]) -> str:
    lines = [(f"{rec['device']} | {rec['cpu_count']} CPUs | world {rec['world']['train_size']} JPEG "
              f"({rec['world']['shards']} shards) written in {rec['world']['write_s']:.1f}s "
              f"({_fmt(rec['world']['write_images_per_s'])} images/s, one process)")]
    lo = rec.get("loader")
    if isinstance(lo, list):
        lines += ["", f"loader (train_clip's pipeline alone), batch {rec['batch']}:",
                  ("workers noise  decode  first-batch  samples/s  per-worker  no-epoch-edge  wait med/max ms  "
                   "worker samples/s per busy s / per cpu s (med)  cpu/busy  pinned")]
        for r in lo:
            if "error" in r or "skipped" in r:
                lines.append(f"{r['workers']:>7} {r['label_noise']:>5}  {r.get('decode', 'loader'):>6}  "
                             f"{r.get('error', r.get('skipped'))}")
                continue
            pw = r["per_worker"]
            busy = statistics.median([w["busy_samples_per_s"] for w in pw if w["busy_samples_per_s"]] or [0])
            cpu = statistics.median([w["cpu_over_busy"] for w in pw if w["cpu_over_busy"]] or [0])
            per_cpu = statistics.median([w["cpu_samples_per_s"] for w in pw if w["cpu_samples_per_s"]] or [0])
            lines.append(
                f"{r['workers']:>7} {r['label_noise']:>5}  {r.get('decode', 'loader'):>6}  {r['first_batch_latency_s']:>10.2f}s  "
                f"{_fmt(r['samples_per_s']):>9}  {_fmt(r['samples_per_s_per_worker']):>10}  "
                f"{_fmt(r['samples_per_s_without_epoch_boundaries']):>13}  "
                f"{r['wait_ms'].get('median', 0):>6.0f}/{r['wait_ms'].get('max', 0):<7.0f}  {busy:>31.0f} / {per_cpu:<12.0f}  "
                f"{cpu:>8.2f}  {r['batch_images_pinned']}")
    st = rec.get("stages")
    if isinstance(st, dict) and "error" not in st:
        lines += ["", (f"one sample's stages, main process ({st['samples']} samples, us/sample; "
                       f"{st['image_bytes_mean'] / 1024:.1f} KiB JPEG, decoded {st['decoded_size']}):")]
        for k, share in st["share"].items():
            lines.append(f"  {k[:-3]:<26} {st[k]:>8.0f}  {share:6.1%}")
        lines.append(f"  {'sum -> per-worker samples/s':<26} {st['sum_us']:>8.0f}  "
                     f"{st['predicted_samples_per_s_per_worker']:.0f}/s")
        lines.append(f"  (to_uint8 with a CPU resize to 224: {st['to_uint8_resize_to_image_size_us']:.0f}; whole-shard "
                     f"tar read {st['tar_read_whole_shard_samples_per_s']:.0f} samples/s; chain import "
                     f"{st['chain_import_s']:.2f}s, build {st['chain_build_ms']:.1f}ms)")
        lines.append("  shared epoch read per worker at epoch start: "
                     + ", ".join(f"{k} samples {v:.1f}s" for k, v in st["shared_epoch_read_s"].items()))
        lines.append(f"  main process per batch: join (cat of {st['join_parts']} parts, {st['batch_mb']:.0f} MB) "
                     f"{st['join_cat_ms_per_batch']:.1f} ms, result pinned: {st['joined_is_pinned']}"
                     + (f"; pin {st['pin_ms_per_batch']:.1f} ms" if "pin_ms_per_batch" in st else ""))
    elif st:
        lines.append(f"stages: {st}")
    dv = rec.get("device_step")
    if isinstance(dv, dict) and "error" not in dv:
        lines += ["", f"device step on {dv['on']} ({dv['input']} -> {dv['output']}), ms/batch:"]
        for k in ("crop_boxes_ms", "h2d_pageable_ms", "h2d_pinned_ms", "h2d_pageable_host_blocked_ms_gpu_busy_150ms",
                  "h2d_pinned_host_blocked_ms_gpu_busy_150ms", "device_images_rrc_ms", "device_images_resize_only_ms"):
            if k in dv:
                lines.append(f"  {k:<44} {dv[k]:>8.2f}")
    elif dv:
        lines.append(f"device step: {dv}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--world", default=None, help="JPEG world directory (reused when complete; default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke: tiny world, workers 1,2, few batches")
    ap.add_argument("--train-size", type=int, default=8192)
    ap.add_argument("--per-shard", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", default="14,1,8,4", help="loader worker counts, in the order run")
    ap.add_argument("--noise", default="0.2,0.0", help="label-noise levels")
    ap.add_argument("--decode", default="loader", help="image_decode values: loader (workers decode), device "
                    "(workers ship JPEG bytes; the loader is then timed without the device's decode)")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per configuration (after one warm-up)")
    ap.add_argument("--seconds", type=float, default=15.0, help="at most this long timed per configuration")
    ap.add_argument("--stage-samples", type=int, default=200)
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip loader configurations after this long")
    args = ap.parse_args()
    if args.quick:
        args.train_size, args.per_shard, args.batch = 512, 128, 128
        args.workers, args.batches, args.seconds, args.stage_samples = "1,2", 4, 10.0, 100

    import open_clip
    from inheritlab.trainers.clip_images import transfer_size
    from inheritlab.trainers.clip_models import get_rung

    use_gpu = torch.cuda.is_available()
    rung = get_rung(RUNG)
    tokenizer = open_clip.get_tokenizer(rung.open_clip_name)   # what build_clip gives the trainer
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.world) if args.world else Path(tmp) / "world"
        shards, write_s = make_world(root, args.train_size, args.per_shard)
        loader_size = transfer_size(shards, rung.image_size)
        print(f"[{_since_start():.0f}s] world: {len(shards)} shards in {write_s:.1f}s; loader ships {loader_size} px",
              file=sys.stderr)
        rec: dict[str, Any] = {
            "bench": "clip_input_probe", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": torch.cuda.get_device_name(0) if use_gpu else (platform.processor() or platform.machine()),
            "cuda": use_gpu, "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "versions": _versions(), "quick": args.quick, "rung": RUNG, "image_size": rung.image_size,
            "augment": rung.augment, "batch": args.batch, "loader_size": loader_size,
            "world": {"train_size": args.train_size, "per_shard": args.per_shard, "shards": len(shards),
                      "write_s": write_s, "write_images_per_s": args.train_size / write_s if write_s > 0.5 else None,
                      "note": "make_jpeg_shards, one process (its shards share one RNG stream)"},
        }

        def section(name: str, fn: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
                out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(f"[{_since_start():.0f}s] {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            return out

        # The device step first: the trainer's loader also forks after CUDA is initialised.
        rec["device_step"] = section("device step", lambda: probe_device(
            args.batch, loader_size, rung.image_size, use_gpu, repeats=10 if use_gpu else 2))
        loader: list[dict[str, Any]] = []
        noises = [float(x) for x in args.noise.split(",")]
        for workers, noise, decode in itertools.product([int(w) for w in args.workers.split(",")], noises,
                                                        args.decode.split(",")):
            if _since_start() > args.budget_s:
                loader.append({"workers": workers, "label_noise": noise, "decode": decode, "skipped": "over --budget-s"})
                continue
            r = section(f"loader workers={workers} noise={noise} decode={decode}", functools.partial(
                probe_loader, shards, workers=workers, noise=noise, batch=args.batch, train_size=args.train_size,
                batches=args.batches, seconds=args.seconds, tokenizer=tokenizer, cell=str(Path(tmp) / "cell"),
                decode=decode))
            loader.append({"workers": workers, "label_noise": noise, "decode": decode, **r})
        rec["loader"] = loader
        # Last: it imports the chain (polars) into this process, which the trainer's main process never does.
        rec["stages"] = section("stages", lambda: probe_stages(
            shards, args.stage_samples, loader_size, rung.image_size, tokenizer, max(noises),
            workers_for_join=max(int(w) for w in args.workers.split(",")), batch=args.batch, use_gpu=use_gpu,
            train_size=args.train_size))
        rec["wall_s"] = _since_start()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(summary(rec))
    print(f"wrote {out} ({rec['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
