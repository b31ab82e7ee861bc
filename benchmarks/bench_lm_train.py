"""LM training throughput: lm-125m on DeepSpeed bf16 ZeRO-2, tokens/s and model FLOPs utilisation.

MFU = 6·N·tokens/s over the bf16 matmul peak *measured in the same run* (a large square GEMM),
so the number is honest about the machine it ran on. N counts every matmul weight (the tied
head included).

Two data sources, side by side in one run (``--data both``, the default), on the same engine:

- ``random``: random token ids made on the device. Measures the model and engine path (fused
  linear cross-entropy head included), not data loading.
- ``world``: real packed text. A built-in text world (``corruptors.text_world``: synthetic
  biographies, its byte-level BPE tokenizer) is generated once before anything is timed (in a
  temp dir keyed by its config, reused by a later run; ``--world-dir`` to choose), sized so the
  measured steps read each document at most once, and its train split reaches the model through
  the trainer's own data path: ``trainers.lm_data.lm_batches`` (data slots, DataLoader worker
  processes that read the shards, tokenise and pack ``seq_len + 1``-token windows, parts
  joined in slot order), each step's batch cut into micro-batches and copied to the device as
  ``train_lm`` does. The timed loop therefore runs end to end from packed text; the time the training
  process spent blocked on the loader is reported beside it, and the loader alone (no model)
  is timed once before the model runs.

The record's ``comparison`` gives, per mode, the real-text over random-id throughput ratio and
both MFUs. Model vocab: ``--vocab`` for both sources (the world's token ids are all below it),
so N and the FLOPs per token are the same; a study cell would size the embedding to its
tokenizer instead (``pad_vocab(tokenizer vocab)``).

    python benchmarks/bench_lm_train.py --out $OUT/lm.json                 # 1 GPU
    python benchmarks/bench_lm_train.py --modes compile --accum 16 --warmup 2 --steps 8 --out ...  # recipe batch
    torchrun --nproc_per_node 2 benchmarks/bench_lm_train.py --out ...      # 2 GPUs of one node
    python benchmarks/bench_lm_train.py --tiny --out /tmp/lm_tiny.json      # CPU smoke test (both sources)

Modes (``--modes eager,compile``): ``compile`` compiles each decoder block with torch.compile.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from typing import Any

import torch
from results_io import write_record  # beside this script


def _matmul_peak(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    """Measured dense matmul FLOP/s (the ceiling MFU is relative to)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2.0 * n**3 * iters / (time.perf_counter() - t)


def _profile(step: Any, device: torch.device, top: int = 25) -> dict[str, Any]:
    """GPU time of one optimizer step by kernel (torch.profiler), largest first, plus the step's
    wall time and the share of it the GPU was busy: where the rest of the MFU gap is."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - t) * 1e3
    # Kernel events only (CPU-side ops also carry the device time of the kernels they launch).
    rows = [(e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.device_time_total > 0 and str(getattr(e, "device_type", "")).endswith("CUDA")]
    rows.sort(key=lambda r: -r[1])
    busy = sum(r[1] for r in rows)
    return {"wall_ms": wall_ms, "gpu_kernel_ms": busy,
            "kernels": [{"name": k[:120], "ms": round(ms, 3), "calls": c} for k, ms, c in rows[:top]]}


STAGE_USED: dict[str, int] = {}
SOURCES = ("random", "world")
# Tokens per training biography of the built-in world, a low estimate (about 45 with a large BPE,
# 53 with the default 1024-token one): sizing the world with it errs on the side of more text.
WORLD_TOKENS_PER_DOC = 45.0
WORLD_MIN_DOCS = 2000           # the world's default 500 individuals need >= 500; BPE training wants text
WORLD_MAX_DOCS_PER_SHARD = 2000


def world_size_for(*, global_batch: int, seq_len: int, batches: int, tokens_per_doc: float = WORLD_TOKENS_PER_DOC,
                   margin: float = 1.1, docs: int = 0) -> tuple[int, int]:
    """(train_docs, docs_per_shard) of a text world that fills ``batches`` global batches of
    ``seq_len``-token windows without a data slot starting a second epoch (or of about ``docs``
    documents when given): the shards are a multiple of the run's data slots, so each slot reads
    whole shards of its own, all the same size."""
    import math

    from inheritlab.trainers.slots import data_slots

    slots = data_slots(global_batch)
    need = docs or max(WORLD_MIN_DOCS, math.ceil(batches * global_batch * seq_len * margin / tokens_per_doc))
    shards = slots * math.ceil(need / (slots * WORLD_MAX_DOCS_PER_SHARD))
    per = math.ceil(need / shards)
    return per * shards, per


def _build_world(args: argparse.Namespace, *, global_batch: int, batches: int, rank: int, world: int) -> dict[str, Any]:
    """The built-in text world the ``world`` source reads (built by rank 0, once; reused when a
    world of the same config is already in the directory). Untimed by the training loops."""
    import dataclasses
    import hashlib
    import json
    import tempfile
    from pathlib import Path

    from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world

    docs, per = world_size_for(global_batch=global_batch, seq_len=args.seq_len, batches=batches, docs=args.world_docs)
    cfg = TextWorldConfig(seed=0, train_docs=docs, docs_per_shard=per, vocab_size=args.world_vocab)
    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    root = Path(args.world_dir or Path(tempfile.gettempdir()) / f"inheritlab-bench-lm-world-{key}")
    old = root / "world.json"
    reused = old.is_file() and json.loads(old.read_text()).get("config") == dataclasses.asdict(cfg)
    t = time.perf_counter()
    if rank == 0:
        info = write_text_world(cfg, root)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank != 0:
        info = write_text_world(cfg, root)  # rank 0 wrote it: this only reads world.json
    build_s = time.perf_counter() - t
    return {"root": str(info.root), "shards": list(info.splits["train"]), "tokenizer": str(info.tokenizer),
            "config": dataclasses.asdict(cfg), "build_s": build_s, "reused": reused}


def _world_spec(args: argparse.Namespace, wd: dict[str, Any], *, rank: int, world: int) -> Any:
    """This rank's stream spec, made the way ``train_lm`` makes it (``lm_pretrain._batches``):
    the global batch's data slots, this rank's block of them, ``batch / slots`` windows each.
    A clean-control stream: no corruptors (the chain, and polars with it, is never imported)."""
    from inheritlab.trainers.lm_data import text_stream_spec
    from inheritlab.trainers.lm_pretrain import LMTrainConfig
    from inheritlab.trainers.slots import data_slots, rank_slots

    batch = args.micro_batch * args.accum * world
    slots = data_slots(batch)
    cfg = LMTrainConfig(rung=args.rung, cell_dir="(benchmark: none)", train_shards=tuple(wd["shards"]),
                        tokenizer=wd["tokenizer"], steps=1, batch_size=batch, seq_len=args.seq_len,
                        loader_workers=args.loader_workers)
    return text_stream_spec(cfg, seq_len=args.seq_len, num_slots=slots, slots=tuple(rank_slots(rank, world, slots)),
                            chunk=batch // slots)


def _world_batches(spec: Any, args: argparse.Namespace, use_gpu: bool) -> Any:
    from inheritlab.trainers.lm_data import lm_batches

    return lm_batches(spec, loader_workers=args.loader_workers, pin_memory=use_gpu)


def _close(batches: Any) -> None:
    """Stop a loader's worker processes now, not whenever the generator is collected."""
    import gc

    batches.close()
    gc.collect()


def _loader_only(spec: Any, args: argparse.Namespace, use_gpu: bool, world: int) -> dict[str, Any]:
    """The packed loader alone (no model): its start-up (first batch) and its steady rate."""
    from inheritlab.trainers.lm_data import PREFETCH_STEPS

    n = args.loader_batches
    t = time.perf_counter()
    batches = _world_batches(spec, args, use_gpu)
    try:
        first = next(batches)
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            b = next(batches)
        wall = time.perf_counter() - t
    finally:
        _close(batches)
    rows, width = first["tokens"].shape
    tokens = n * rows * (width - 1)
    return {"loader_workers": min(args.loader_workers, len(spec.slots)), "prefetch_steps_per_worker": PREFETCH_STEPS,
            "first_batch_s": first_s, "batches_timed": n, "batch_s": wall / n, "tokens_per_s_per_rank": tokens / wall,
            "tokens_per_s": tokens * world / wall, "batch_shape": [rows, width], "batch_dtype": str(first["tokens"].dtype),
            # The DataLoader pins each worker's part; the step's joined batch is a new tensor.
            "joined_batch_pinned": bool(first["tokens"].is_pinned()) if use_gpu else None,
            "docs_packed_per_rank": sum(s["docs"] for s in b["states"].values()),
            "max_slot_epoch": max(s["epoch"] for s in b["states"].values())}


def _run_mode(mode: str, args: argparse.Namespace, rank: int, world: int, device: torch.device, peak: float,
              sources: list[str], spec: Any) -> list[dict[str, Any]]:
    """One engine for ``mode``; each data source in turn on it (warm-up, timed steps, profile)."""
    from inheritlab.trainers.engine import EngineConfig, build_engine, optimizer_step
    from inheritlab.trainers.lm_models import (
        build_lm,
        compile_blocks,
        count_params,
        flops_per_token,
        get_rung,
    )

    rung = get_rung(args.rung)
    torch.manual_seed(0)
    model = build_lm(rung, vocab_size=args.vocab, max_seq_len=args.seq_len)
    model.activation_checkpointing = args.activation_checkpointing
    if mode == "compile":
        compile_blocks(model)
    bf16 = device.type == "cuda"
    total = (args.warmup + args.steps) * len(sources)
    ecfg = EngineConfig(
        micro_batch_per_rank=args.micro_batch, world_size=world, grad_accum=args.accum, zero_stage=args.zero_stage if args.zero_stage == "auto" else int(args.zero_stage),
        precision="bf16" if bf16 else "fp32", lr=rung.recipe.lr, weight_decay=rung.recipe.weight_decay,
        betas=(rung.recipe.beta1, rung.recipe.beta2), eps=1e-8, grad_clip=rung.recipe.grad_clip,
        warmup_steps=min(10, total), total_steps=total * 10, use_gpu=device.type == "cuda",
    )
    engine, _, _ = build_engine(model, ecfg)
    STAGE_USED["stage"] = int(engine.zero_optimization_stage())
    cfg = model.cfg
    fpt = flops_per_token(cfg)
    fpt_attn = flops_per_token(cfg, args.seq_len, attention=True)
    out = []
    for source in sources:
        try:
            out.append(_run_source(source, mode, args, rank, world, device, peak, engine, optimizer_step, spec,
                                   fpt, fpt_attn, count_params(cfg)))
        except Exception as exc:  # the other source's numbers must survive
            out.append({"mode": mode, "data": source, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            if rank == 0:
                print(f"mode {mode}, data {source} failed: {exc}", file=sys.stderr)
    del engine, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _run_source(source: str, mode: str, args: argparse.Namespace, rank: int, world: int, device: torch.device,
                peak: float, engine: Any, optimizer_step: Any, spec: Any, fpt: float, fpt_attn: float,
                params: dict[str, int]) -> dict[str, Any]:
    losses: list[float] = []
    waits: list[float] = []
    batches = None
    last: dict[str, Any] = {}
    use_gpu = device.type == "cuda"

    def finish(loss_sum: torch.Tensor) -> None:
        losses.append(float(loss_sum) / args.accum if len(losses) % 5 == 0 else float("nan"))

    if source == "random":
        gen = torch.Generator(device=device).manual_seed(1234 + rank)

        def step() -> None:
            loss_sum = torch.zeros((), device=device)
            for _ in range(args.accum):
                batch = torch.randint(0, args.vocab, (args.micro_batch, args.seq_len + 1), device=device, generator=gen)
                loss = engine(batch[:, :-1], batch[:, 1:])
                engine.backward(loss)
                optimizer_step(engine)
                loss_sum += loss.detach().float()
            finish(loss_sum)
    else:
        batches = _world_batches(spec, args, use_gpu)

        def step() -> None:  # train_lm's step: the rank's packed batch, cut into micro-batches
            t = time.perf_counter()
            batch = next(batches)
            waits.append(time.perf_counter() - t)
            last["states"] = batch["states"]
            tokens = batch["tokens"]
            loss_sum = torch.zeros((), device=device)
            for i in range(0, len(tokens), args.micro_batch):
                micro = tokens[i : i + args.micro_batch].to(device, non_blocking=True)
                loss = engine(micro[:, :-1], micro[:, 1:])
                engine.backward(loss)
                optimizer_step(engine)
                loss_sum += loss.detach().float()
            finish(loss_sum)

    try:
        for _ in range(args.warmup):
            step()
        if use_gpu:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        waits.clear()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if use_gpu:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        timed_waits = list(waits)
        profile = _profile(step, device) if args.profile and use_gpu else None
    finally:
        if batches is not None:
            _close(batches)
    tokens = args.steps * args.accum * args.micro_batch * args.seq_len * world
    tps = tokens / wall
    out: dict[str, Any] = {
        "mode": mode,
        "data": source,
        "params": params["total"],
        "params_flops": params["flops"],
        "tokens_per_s": tps,
        "tokens_per_s_per_gpu": tps / world,
        "step_s": wall / args.steps,
        "model_flops_per_s_per_gpu": fpt * tps / world,
        "mfu": fpt * tps / world / peak,
        "mfu_with_attention": fpt_attn * tps / world / peak,
        "loss_first": next((x for x in losses if x == x), None),
        "loss_last": next((x for x in reversed(losses) if x == x), None),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if use_gpu else None,
    }
    if source == "world":
        wait = sum(timed_waits)
        states = last["states"].values()
        out.update({
            # Host time the training process was blocked on the loader in the timed steps (the GPU
            # may have been busy with queued work meanwhile); the rest of step_s is the model step.
            "loader_wait_s": wait,
            "loader_wait_s_per_step": wait / args.steps,
            "loader_wait_max_s": max(timed_waits),
            "step_s_without_loader_wait": (wall - wait) / args.steps,
            "loader_workers": min(args.loader_workers, len(spec.slots)),
            "docs_packed_per_rank": sum(s["docs"] for s in states),
            "max_slot_epoch": max(s["epoch"] for s in states),
        })
    if profile is not None:
        out["profile_one_step"] = profile
    return out


def _comparison(results: list[dict[str, Any]], *, gpu: bool = True) -> dict[str, Any]:
    """Per mode: real text against random ids (throughput ratio, both MFUs, and the goals: text
    within 5 % of random ids, text MFU >= 40 %; ``None`` off a GPU, where MFU means nothing)."""
    by = {(r["mode"], r["data"]): r for r in results if "error" not in r}
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in results):
        rnd, wld = by.get((mode, "random")), by.get((mode, "world"))
        if rnd is None or wld is None:
            continue
        ratio = wld["tokens_per_s"] / rnd["tokens_per_s"]
        out[mode] = {"random_tokens_per_s": rnd["tokens_per_s"], "world_tokens_per_s": wld["tokens_per_s"],
                     "world_over_random": ratio, "random_mfu": rnd["mfu"], "world_mfu": wld["mfu"],
                     "world_within_5pct_of_random": ratio >= 0.95 if gpu else None,
                     "world_mfu_at_least_40pct": wld["mfu"] >= 0.40 if gpu else None}
    return out


def _auto_loader_workers(use_gpu: bool, world: int) -> int:
    """What the scheduler gives a cell (flows.scheduler.resolve): on a GPU node all but one of
    the CPUs per GPU, at most 8; on CPU none (loading in the training process)."""
    import os

    if not use_gpu:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_gpu = cpus // max(1, torch.cuda.device_count(), world)
    return int(min(8, max(0, per_gpu - 1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: lm-tiny, fp32, a few steps")
    p.add_argument("--rung", default="lm-125m")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32000, help="model vocabulary, both sources")
    p.add_argument("--zero-stage", default="auto", help="0-3 or auto (what a cell gets)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--profile", action="store_true", help="record one step's GPU kernels by time")
    p.add_argument("--data", default="both",
                   help="random: random ids on the device; world: packed text of a built-in text world through "
                        "the trainer's loader; both (default, = random,world): each in turn on the same engine, "
                        "and their ratio; a comma list sets the order (world,random)")
    p.add_argument("--loader-workers", default="auto",
                   help="packing processes per rank for --data world (auto: what a GPU cell gets, all but one "
                        "CPU per GPU up to 8; 0 on CPU)")
    p.add_argument("--loader-batches", type=int, default=8, help="batches of the loader-alone timing (0: skip it)")
    p.add_argument("--world-dir", default=None,
                   help="where the text world is built or reused (default: a temp dir keyed by its config)")
    p.add_argument("--world-docs", type=int, default=0,
                   help="training biographies of the world (0: enough for the run, each read once)")
    p.add_argument("--world-vocab", type=int, default=1024,
                   help="the world's BPE tokenizer size (the built-in world's default); at most --vocab")
    args = p.parse_args(argv)
    if args.tiny:
        args.rung, args.seq_len, args.micro_batch, args.vocab = "lm-tiny", 64, 4, 1024
        args.warmup, args.steps, args.modes = 1, 3, "eager"
        args.loader_batches = min(args.loader_batches, 3)
    sources = list(SOURCES) if args.data == "both" else [d.strip() for d in args.data.split(",") if d.strip()]
    if not sources or len(set(sources)) != len(sources) or not set(sources) <= set(SOURCES):
        p.error(f"--data: got {args.data!r}; expected both, random, world or a comma list of those two")

    from inheritlab.trainers.engine import init_distributed

    use_gpu = torch.cuda.is_available() and not args.tiny
    rank, world, local_rank = init_distributed(use_gpu=use_gpu)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    args.loader_workers = _auto_loader_workers(use_gpu, world) if args.loader_workers == "auto" else int(args.loader_workers)

    world_data: dict[str, Any] | None = None
    loader_only: dict[str, Any] | None = None
    spec = None
    if "world" in sources:
        from inheritlab.corruptors.tokenizer import load_tokenizer

        n_modes = len([m for m in args.modes.split(",") if m.strip()])
        batches = max(args.warmup + args.steps + int(args.profile), 1 + args.loader_batches) if n_modes else 0
        world_data = _build_world(args, global_batch=args.micro_batch * args.accum * world, batches=batches,
                                  rank=rank, world=world)
        tok = load_tokenizer(world_data["tokenizer"])
        world_data["tokenizer_vocab"] = tok.vocab_size
        if tok.vocab_size > args.vocab:
            raise SystemExit(f"--world-vocab: the world's tokenizer has {tok.vocab_size} tokens, more than the "
                             f"model's --vocab {args.vocab}")
        spec = _world_spec(args, world_data, rank=rank, world=world)
        world_data.update({"data_slots": spec.num_slots, "windows_per_slot_per_step": spec.chunk,
                           "loader_workers_per_rank": min(args.loader_workers, len(spec.slots))})
        if rank == 0:
            print(f"text world: {world_data['config']['train_docs']} train docs in {len(world_data['shards'])} shards, "
                  f"{'reused' if world_data['reused'] else 'built'} in {world_data['build_s']:.1f} s at "
                  f"{world_data['root']}", flush=True)
        if args.loader_batches > 0:
            loader_only = _loader_only(spec, args, use_gpu, world)

    if use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        peak = _matmul_peak(device, torch.bfloat16, 8192, 50)
    else:
        peak = _matmul_peak(device, torch.float32, 256, 5)
    results: list[dict[str, Any]] = []
    for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
        try:
            results.extend(_run_mode(mode, args, rank, world, device, peak, sources, spec))
        except Exception as exc:  # one failing mode (e.g. compile) must not lose the others' numbers
            results.append({"mode": mode, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            if rank == 0:
                print(f"mode {mode} failed: {exc}", file=sys.stderr)
    if rank == 0:
        import deepspeed

        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        data_desc = {
            "random": "random token ids on device",
            "world": (f"built-in text world (corruptors.text_world, {args.world_vocab}-token BPE), packed "
                      f"{args.seq_len + 1}-token windows through trainers.lm_data.lm_batches with "
                      f"{args.loader_workers} loader workers per rank, as train_lm reads them"),
        }
        record = {
            "benchmark": "lm_train",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if use_gpu else platform.processor() or "cpu",
            "world_size": world,
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "deepspeed": deepspeed.__version__,
                         "triton": triton_version, "cuda": torch.version.cuda},
            "setup": {"rung": args.rung, "seq_len": args.seq_len, "micro_batch_per_gpu": args.micro_batch,
                      "grad_accum": args.accum, "global_batch": args.micro_batch * args.accum * world,
                      "vocab": args.vocab, "zero_stage": args.zero_stage, "zero_stage_used": STAGE_USED.get("stage"),
                      "precision": "bf16" if use_gpu else "fp32", "warmup_steps": args.warmup, "timed_steps": args.steps,
                      "activation_checkpointing": args.activation_checkpointing,
                      "data": "; ".join(f"{s}: {data_desc[s]}" for s in sources),
                      "sources_order": "per mode, one engine: " + " then ".join(sources)},
            "mfu_basis": "6·N·tokens/s per GPU over the measured bf16 matmul rate in the same run" if use_gpu
                         else "6·N·tokens/s over the measured fp32 matmul rate in the same run (CPU smoke: not an MFU)",
            "matmul_peak_flops": peak,
            "matmul_peak_dtype": "bf16 8192^3" if use_gpu else "fp32 256^3",
            "world_data": world_data and {k: v for k, v in world_data.items() if k != "shards"} | {
                "train_shards": len(world_data["shards"])},
            "loader_only": loader_only,
            "results": results,
            "comparison": _comparison([r for r in results if "data" in r], gpu=use_gpu),
            "heavy_imports": sorted({m.split(".")[0] for m in sys.modules} & {"polars", "ray", "pyarrow", "pandas"}),
        }
        write_record(args.out, record)
        for mode, c in record["comparison"].items():
            print(f"{mode}: random ids {c['random_tokens_per_s']:,.0f} tok/s (MFU {c['random_mfu']:.1%}), "
                  f"packed text {c['world_tokens_per_s']:,.0f} tok/s (MFU {c['world_mfu']:.1%}), "
                  f"text/random {c['world_over_random']:.3f}")
        if loader_only:
            print(f"loader alone: {loader_only['tokens_per_s']:,.0f} tok/s ({loader_only['loader_workers']} workers/rank, "
                  f"first batch {loader_only['first_batch_s']:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
