"""LM training throughput: lm-125m on DeepSpeed bf16 ZeRO-2, tokens/s and model FLOPs utilisation.

MFU = 6·N·tokens/s over the bf16 matmul peak *measured in the same run* (a large square GEMM),
so the number is honest about the machine it ran on. N counts every matmul weight (the tied
head included). Batches are random token ids made on the device: this measures the model and
engine path (fused linear cross-entropy head included), not tokenisation.

    python benchmarks/bench_lm_train.py --out $OUT/lm.json                 # 1 GPU
    torchrun --nproc_per_node 2 benchmarks/bench_lm_train.py --out ...      # 2 GPUs of one node
    python benchmarks/bench_lm_train.py --tiny --out /tmp/lm_tiny.json      # CPU smoke test

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


def _run_mode(mode: str, args: argparse.Namespace, rank: int, world: int, device: torch.device, peak: float) -> dict[str, Any]:
    from inheritlab.trainers.engine import EngineConfig, build_engine, optimizer_step
    from inheritlab.trainers.lm_models import build_lm, compile_blocks, count_params, flops_per_token, get_rung

    rung = get_rung(args.rung)
    torch.manual_seed(0)
    model = build_lm(rung, vocab_size=args.vocab, max_seq_len=args.seq_len)
    model.activation_checkpointing = args.activation_checkpointing
    if mode == "compile":
        compile_blocks(model)
    bf16 = device.type == "cuda"
    total = args.warmup + args.steps
    ecfg = EngineConfig(
        micro_batch_per_rank=args.micro_batch, world_size=world, grad_accum=args.accum, zero_stage=args.zero_stage if args.zero_stage == "auto" else int(args.zero_stage),
        precision="bf16" if bf16 else "fp32", lr=rung.recipe.lr, weight_decay=rung.recipe.weight_decay,
        betas=(rung.recipe.beta1, rung.recipe.beta2), eps=1e-8, grad_clip=rung.recipe.grad_clip,
        warmup_steps=min(10, total), total_steps=total * 10, use_gpu=device.type == "cuda",
    )
    engine, _, _ = build_engine(model, ecfg)
    STAGE_USED["stage"] = int(engine.zero_optimization_stage())
    gen = torch.Generator(device=device).manual_seed(1234 + rank)
    losses: list[float] = []

    def step() -> None:
        loss_sum = torch.zeros((), device=device)
        for _ in range(args.accum):
            batch = torch.randint(0, args.vocab, (args.micro_batch, args.seq_len + 1), device=device, generator=gen)
            loss = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(loss)
            optimizer_step(engine)
            loss_sum += loss.detach().float()
        losses.append(float(loss_sum) / args.accum if len(losses) % 5 == 0 else float("nan"))

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    profile = _profile(step, device) if args.profile and device.type == "cuda" else None
    tokens = args.steps * args.accum * args.micro_batch * args.seq_len * world
    tps = tokens / wall
    cfg = model.cfg
    fpt = flops_per_token(cfg)
    fpt_attn = flops_per_token(cfg, args.seq_len, attention=True)
    out = {
        "mode": mode,
        "params": count_params(cfg)["total"],
        "params_flops": count_params(cfg)["flops"],
        "tokens_per_s": tps,
        "tokens_per_s_per_gpu": tps / world,
        "step_s": wall / args.steps,
        "model_flops_per_s_per_gpu": fpt * tps / world,
        "mfu": fpt * tps / world / peak,
        "mfu_with_attention": fpt_attn * tps / world / peak,
        "loss_first": next((x for x in losses if x == x), None),
        "loss_last": next((x for x in reversed(losses) if x == x), None),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    if profile is not None:
        out["profile_one_step"] = profile
    del engine, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: lm-tiny, fp32, a few steps")
    p.add_argument("--rung", default="lm-125m")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--zero-stage", default="auto", help="0-3 or auto (what a cell gets)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--profile", action="store_true", help="record one step's GPU kernels by time")
    args = p.parse_args(argv)
    if args.tiny:
        args.rung, args.seq_len, args.micro_batch, args.vocab = "lm-tiny", 64, 4, 1024
        args.warmup, args.steps, args.modes = 1, 3, "eager"

    from inheritlab.trainers.engine import init_distributed

    use_gpu = torch.cuda.is_available() and not args.tiny
    rank, world, local_rank = init_distributed(use_gpu=use_gpu)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        peak = _matmul_peak(device, torch.bfloat16, 8192, 50)
    else:
        peak = _matmul_peak(device, torch.float32, 256, 5)
    results = []
    for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
        try:
            results.append(_run_mode(mode, args, rank, world, device, peak))
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
        record = {
            "benchmark": "lm_train",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if use_gpu else platform.processor() or "cpu",
            "world_size": world,
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "deepspeed": deepspeed.__version__,
                         "triton": triton_version, "cuda": torch.version.cuda},
            "setup": {"rung": args.rung, "seq_len": args.seq_len, "micro_batch_per_gpu": args.micro_batch,
                      "grad_accum": args.accum, "vocab": args.vocab, "zero_stage": args.zero_stage, "zero_stage_used": STAGE_USED.get("stage"),
                      "precision": "bf16" if use_gpu else "fp32", "warmup_steps": args.warmup, "timed_steps": args.steps,
                      "activation_checkpointing": args.activation_checkpointing, "data": "random token ids on device"},
            "matmul_peak_flops": peak,
            "matmul_peak_dtype": "bf16 8192^3" if use_gpu else "fp32 256^3",
            "results": results,
        }
        write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
