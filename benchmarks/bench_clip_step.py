"""CLIP training-step throughput on one GPU, in-memory random data: our engine path next to the
open_clip anchor recipe, measured in the same run on the same GPU.

    python benchmarks/bench_clip_step.py --out $OUT/clip_step.json      (one CUDA GPU)

Rows (ViT-B-32, batch 512, 224 px, 77 text tokens, the anchor's shape):

``open_clip + ClipLoss, AdamW``   the anchor recipe (``shared/anchors/clip_train_anchor.py``): fp32
                                  weights under bf16 autocast, fused AdamW; eager and compiled.
``inheritlab engine``             what a study cell runs per step, the fused Triton contrastive
                                  loss, eager and with the towers under torch.compile, at the ZeRO
                                  stage the rule picks (``auto``: stage 0 — fp32 weights under
                                  bf16 autocast, torch's fused AdamW, a multi-tensor clip) and, for
                                  comparison, DeepSpeed's bf16 ZeRO-2 (FusedAdam, fp32 master
                                  weights): rows ``ours-eager``, ``ours-compile``, ``zero2-eager``,
                                  ``zero2-compile``.

Samples/s from 20 timed steps after 5 warm-up steps; MFU = 3 × forward matmul FLOPs (torch's
FlopCounterMode, as the anchor counts) / step time / the bf16 GEMM rate measured in this run.
Data loading is not included (the trainer's loader is measured by ``bench_clip_train.py``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from typing import Any, Callable

import torch
from results_io import write_record  # beside this script

DEV = "cuda"


def _matmul_rate() -> float:
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    ms = do_bench(lambda: a @ b, warmup=50, rep=200, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3)


def _fwd_flops(model: torch.nn.Module, img: torch.Tensor, txt: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.autocast("cuda", dtype=torch.bfloat16):
        model(img, txt)
    return float(fc.get_total_flops())


def _time(step: Callable[[], None], warmup: int = 5, n: int = 20) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def _anchor(name: str, img: torch.Tensor, txt: torch.Tensor, compile_: bool) -> tuple[float, float]:
    import open_clip
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = open_clip.create_model(name).to(DEV).train()
    flops = _fwd_flops(model, img, txt) * 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = ClipLoss()
    fwd = torch.compile(model) if compile_ else model

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            i, t, s = fwd(img, txt)
            loss = loss_fn(i, t, s)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step), flops


def _ours(rung: str, img: torch.Tensor, txt: torch.Tensor, compile_: bool, stage: int | str) -> tuple[float, float]:
    from inheritlab.kernels import clip_contrastive_loss
    from inheritlab.trainers.clip_models import build_clip, compile_towers, get_rung
    from inheritlab.trainers.engine import EngineConfig, build_engine, optimizer_step

    r = get_rung(rung)
    built = build_clip(r, seed=0)
    model = built.model.to(DEV)
    flops = _fwd_flops(model, img, txt) * 3
    if compile_:
        compile_towers(model)
    bs = img.shape[0]
    ecfg = EngineConfig(micro_batch_per_rank=bs, world_size=1, zero_stage=stage, precision="bf16", lr=r.lr,
                        weight_decay=r.weight_decay, betas=(r.beta1, r.beta2), eps=r.eps, grad_clip=r.grad_clip,
                        warmup_steps=10, total_steps=1000, use_gpu=True)
    engine, _, _ = build_engine(model, ecfg)
    img16 = img.to(torch.bfloat16)

    def step() -> None:
        i, t, s = engine(img16, txt)
        loss = clip_contrastive_loss(i, t, s)
        engine.backward(loss)
        optimizer_step(engine)

    dt = _time(step)
    del engine
    return dt, flops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rows", default="anchor-eager,anchor-compile,ours-eager,ours-compile,zero2-eager,zero2-compile")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_clip_step.py needs a CUDA GPU")
    from inheritlab.trainers.engine import init_distributed

    init_distributed(use_gpu=True)
    rate = _matmul_rate()
    torch.manual_seed(0)
    img = torch.randn(args.batch, 3, 224, 224, device=DEV)
    txt = torch.randint(0, 49408, (args.batch, 77), device=DEV)
    rows: list[dict[str, Any]] = []
    import deepspeed
    import open_clip
    import triton

    record = {"benchmark": "clip_step", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "bf16_matmul_tflops": round(rate / 1e12, 1),
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
                           "deepspeed": deepspeed.__version__, "open_clip": open_clip.__version__},
              "rows": rows}
    print({"bf16_matmul_tflops": record["bf16_matmul_tflops"]}, flush=True)
    for row in filter(None, args.rows.split(",")):
        kind, mode = row.split("-")
        try:
            if kind == "anchor":
                dt, flops = _anchor("ViT-B-32", img, txt, mode == "compile")
                label = "open_clip + ClipLoss, AdamW (anchor recipe)"
            elif kind == "ours":
                dt, flops = _ours("datacomp-small", img, txt, mode == "compile", "auto")
                label = "inheritlab engine (auto: ZeRO-0, bf16 autocast, fused AdamW, multi-tensor clip; fused loss)"
            else:
                dt, flops = _ours("datacomp-small", img, txt, mode == "compile", 2)
                label = "inheritlab engine (DeepSpeed bf16 ZeRO-2, fused loss)"
            rows.append({"method": label, "compile": mode == "compile", "model": "ViT-B-32", "batch": args.batch,
                         "samples_per_s": round(args.batch / dt, 1), "step_ms": round(dt * 1e3, 2),
                         "mfu": round(flops / dt / rate, 4), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        except Exception as exc:  # one failing row must not lose the others
            rows.append({"method": row, "error": f"{type(exc).__name__}: {exc}"[:1000]})
        print(rows[-1], flush=True)
        write_record(args.out, record)  # after every row: a run cut short keeps what it measured
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
