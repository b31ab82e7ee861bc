"""Device JPEG decoding in stages, each timed on its own, to find what limits (or stalls) it.

    python benchmarks/probe_device_decode.py --world /tmp/e2e-data --out decode.jsonl

On the JPEG world of ``bench_clip_train.py --data jpeg`` (256-px img2dataset-style shards):

1. ``nvjpeg``: ``image_feed.decode_rows`` of one batch on the device, in the main thread;
   ``nvjpeg-pinned``: the same with the batch's bytes joined in page-locked memory;
2. ``cpu``: the same batch decoded by torchvision on the CPU (libjpeg-turbo, one thread);
3. ``feed-memory``: :class:`DeviceFeed` over in-memory batches, decoding ahead in its threads
   while the main thread keeps the GPU busy with matmuls (the trainer's overlap, without the model);
   ``feed-memory-pinned``: the same, bytes pinned;
4. ``loader``: the trainer's own loader shipping bytes (``image_decode: device``), alone;
5. ``feed-loader``: :class:`DeviceFeed` over that loader — what a training step could be fed.

Each stage prints one JSON line as it ends (a stalled stage shows as the last line missing; run
it under ``timeout -s ABRT`` with ``PYTHONFAULTHANDLER=1`` to get every thread's stack).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _emit(out: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out, "a") as fh:
        fh.write(line + "\n")


def _rows(shards: list[str], n: int) -> list[tuple[str, str, bytes]]:
    rows: list[tuple[str, str, bytes]] = []
    for shard in shards:
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    rows.append((shard, m.name, tf.extractfile(m).read()))
                    if len(rows) == n:
                        return rows
    return rows


def _timed(fn: Callable[[], Any], reps: int, sync: bool) -> float:
    fn()
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _feed_rate(batches: Iterator[dict[str, Any]], count: int, busy: bool, pinned: bool = False) -> dict[str, Any]:
    from inheritlab.trainers.image_feed import DeviceFeed

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    waits: list[float] = []
    got = 0
    t0 = time.perf_counter()
    with DeviceFeed(batches, torch.device("cuda", 0), count=count, pinned=pinned) as feed:
        for _ in range(count):
            w = time.perf_counter()
            _, images = feed.take()
            waits.append(time.perf_counter() - w)
            got += images.shape[0]
            if busy:  # ~ a training step's worth of device work queued, as the trainer does
                for _ in range(20):
                    a @ a
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    waits.sort()
    return {"batches": count, "samples_per_s": got / elapsed, "wait_ms_median": waits[len(waits) // 2] * 1e3,
            "wait_ms_max": waits[-1] * 1e3, "elapsed_s": elapsed, "feed": feed.timings()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, help="a JPEG world of bench_clip_train.py --data jpeg")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-size", type=int, default=65536, help="the world's size (written when absent)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--stages", default="nvjpeg,nvjpeg-pinned,cpu,feed-memory,feed-memory-pinned,loader,feed-loader")
    args = ap.parse_args()
    out = Path(args.out)
    from bench_clip_train import make_jpeg_shards
    from inheritlab.trainers.image_feed import decode_rows

    shards = make_jpeg_shards(Path(args.world), args.train_size, 1024)
    rows = _rows(shards, args.batch)
    stages = set(args.stages.split(","))
    base = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": args.batch,
            "mean_jpeg_bytes": sum(len(r[2]) for r in rows) / len(rows),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    import torchvision

    base["torchvision"] = torchvision.__version__
    dev = torch.device("cuda", 0)
    for pinned in (False, True):
        stage = "nvjpeg-pinned" if pinned else "nvjpeg"
        if stage in stages:
            s = _timed(lambda: decode_rows(rows, dev, pinned=pinned), 10, sync=True)
            _emit(out, {**base, "stage": stage, "ms_per_batch": s * 1e3, "samples_per_s": args.batch / s})
    if "cpu" in stages:
        s = _timed(lambda: decode_rows(rows, torch.device("cpu")), 2, sync=False)
        _emit(out, {**base, "stage": "cpu", "ms_per_batch": s * 1e3, "samples_per_s": args.batch / s})
    for pinned in (False, True):
        stage = "feed-memory-pinned" if pinned else "feed-memory"
        if stage in stages:
            memory = ({"images": rows} for _ in range(10**9))
            _emit(out, {**base, "stage": stage, **_feed_rate(memory, args.batches, busy=True, pinned=pinned)})
    if {"loader", "feed-loader"} & stages:
        from types import SimpleNamespace

        import open_clip
        from probe_clip_input import RUNG, _config, probe_loader

        from inheritlab.trainers.clip_pretrain import _batches, _plan

        tok = open_clip.get_tokenizer("ViT-B-32")
        if "loader" in stages:
            rec = probe_loader(shards, workers=args.workers, noise=0.2, batch=args.batch, train_size=args.train_size,
                               batches=args.batches, seconds=60, tokenizer=tok, cell="/tmp/probe-decode-cell",
                               decode="device")
            _emit(out, {**base, "stage": "loader", "rung": RUNG, **{k: rec[k] for k in (
                "workers", "first_batch_latency_s", "samples_per_s", "wait_ms", "batch_shape")}})
        if "feed-loader" in stages:
            cfg = _config(shards, workers=args.workers, noise=0.2, batch=args.batch, train_size=args.train_size,
                          cell="/tmp/probe-decode-cell2", decode="device")
            plan = _plan(cfg, 1, True)
            stream = _batches(cfg, plan, SimpleNamespace(tokenizer=tok), rank=0, world=1, use_gpu=True, step=0,
                              loader_state=None)
            next(stream)
            _emit(out, {**base, "stage": "feed-loader", "workers": args.workers,
                        **_feed_rate(stream, args.batches, busy=True)})


if __name__ == "__main__":
    main()
