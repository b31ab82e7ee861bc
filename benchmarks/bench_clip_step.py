"""CLIP training-step throughput on one GPU, in-memory random data: our engine path next to the
open_clip anchor recipe, measured in the same run on the same GPU.

    python benchmarks/bench_clip_step.py --out $OUT/clip_step.json      (one CUDA GPU)

Rows (ViT-B-32, batch 512, 224 px, 77 text tokens, the anchor's shape):

``open_clip + ClipLoss, AdamW``   the anchor recipe (``shared/anchors/clip_train_anchor.py``): fp32
                                  weights under bf16 autocast, fused AdamW; eager and compiled.
``inheritlab engine``             what a study cell runs per step, the fused Triton contrastive
                                  loss, eager and compiled, at the ZeRO stage the rule picks
                                  (``auto``: stage 0 — fp32 weights under bf16 autocast, torch's
                                  fused AdamW, a multi-tensor clip, the module's forward called
                                  outside DeepSpeed's hooks and compiled whole) and, for
                                  comparison, DeepSpeed's bf16 ZeRO-2 (FusedAdam, fp32 master
                                  weights, towers compiled): rows ``ours-eager``, ``ours-compile``,
                                  ``ours-graphs`` (compiled and replayed as CUDA graphs, what
                                  ``cuda_graphs: auto`` runs), ``zero2-eager``, ``zero2-compile``.
                                  Diagnostic rows:
                                  ``ours-wcompile`` (the whole module compiled with the engine's
                                  hooks inside), ``bare-compile``/``bare-wcompile`` (the same step
                                  without DeepSpeed), ``direct-wcompile``.

Samples/s from 20 timed steps after 5 warm-up steps; MFU = 3 × forward matmul FLOPs (torch's
FlopCounterMode, as the anchor counts) / step time / the bf16 GEMM rate measured in this run.
Data loading is not included (the trainer's loader is measured by ``bench_clip_train.py``).
"""

from __future__ import annotations

import argparse
import os
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


# Where the row being timed writes its profile (``--profile``): set per row by main().
_PROFILE_TO: str | None = None


def _time(step: Callable[[], None], warmup: int = 5, n: int = 20) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    if _PROFILE_TO:
        _profile(step, dt, _PROFILE_TO)
    return dt


def _profile(step: Callable[[], None], dt: float, path: str, steps: int = 3) -> None:
    """Kernel times of ``steps`` more steps (torch.profiler) next to the timed step ``dt``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    write_profile(prof, steps, dt, path, "step (timed)")


def write_profile(prof: Any, steps: int, step_s: float, path: str, label: str) -> None:
    """A profile's kernel table sorted by device time and its host-op table, headed by how much
    of the step the device was busy: a step far from busy is bound by the host. With shapes
    recorded, a third table names the operator shapes behind the largest device times."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    # Kernels and copies only: an operator's self device time repeats its kernels' time, and a
    # user annotation's device-side range spans the kernels under it, so a sum over every event
    # counts each kernel two or three times. (Streams that overlap still add up.)
    device = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    busy_us = sum(e.self_device_time_total for e in device)
    launches = sum(e.count for e in device)
    head = (f"{label}: {step_s * 1e3:.2f} ms; device busy {busy_us / 1e3 / steps:.2f} ms a step "
            f"({busy_us / 1e3 / steps / (step_s * 1e3):.0%}); {launches / steps:.0f} device ops a step\n")
    with open(path, "w") as fh:
        fh.write(head + events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=70))
        fh.write("\n\nhost ops by self CPU time\n")
        fh.write(events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70))
        fh.write("\n\noperators by input shape, by device time\n")
        fh.write(prof.key_averages(group_by_input_shape=True).table(
            sort_by="device_time_total", row_limit=30, max_name_column_width=50, max_shapes_column_width=90))
    print(head.strip(), flush=True)


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


def _engine(model: torch.nn.Module, r: Any, batch: int, stage: int | str) -> Any:
    """The DeepSpeed engine a cell of rung ``r`` builds on one GPU (bf16, the rung's recipe)."""
    from inheritlab.trainers.engine import EngineConfig, build_engine

    ecfg = EngineConfig(micro_batch_per_rank=batch, world_size=1, zero_stage=stage, precision="bf16", lr=r.lr,
                        weight_decay=r.weight_decay, betas=(r.beta1, r.beta2), eps=r.eps, grad_clip=r.grad_clip,
                        warmup_steps=10, total_steps=1000, use_gpu=True)
    return build_engine(model, ecfg)[0]


def _ours(rung: str, img: torch.Tensor, txt: torch.Tensor, compile_: bool | str, stage: int | str) -> tuple[float, float]:
    from inheritlab.kernels import clip_contrastive_loss
    from inheritlab.trainers.clip_models import build_clip, compile_towers, get_rung
    from inheritlab.trainers.engine import optimizer_step, step_forward

    r = get_rung(rung)
    built = build_clip(r, seed=0)
    model = built.model.to(DEV)
    flops = _fwd_flops(model, img, txt) * 3
    if compile_ == "whole":
        model.compile()   # the whole module, hooks and all (how stage 0 used to go wrong)
    elif compile_ and stage != "auto" and int(stage) != 0:
        compile_towers(model)   # ZeRO 1-3: the towers, inside the engine (as the trainer does)
    bs = img.shape[0]
    engine = _engine(model, r, bs, stage)
    img16 = img.to(torch.bfloat16)
    # What the trainer calls: at stage 0 the module's forward outside the engine's hooks, compiled
    # whole when compiling (engine.step_forward); elsewhere the engine.
    compiled = compile_ in (True, "graphs") and engine.zero_optimization_stage() == 0
    forward = step_forward(engine, compile_model=compiled, cuda_graphs=compile_ == "graphs")

    def step() -> None:
        i, t, s = forward(img16, txt)
        loss = clip_contrastive_loss(i, t, s)
        engine.backward(loss)
        optimizer_step(engine)

    dt = _time(step)
    del engine
    return dt, flops


def _bare(rung: str, img: torch.Tensor, txt: torch.Tensor, compile_: str) -> tuple[float, float]:
    """The engine's stage-0 step without DeepSpeed: fp32 weights under bf16 autocast, the fused
    loss, torch's fused AdamW and a multi-tensor clip; towers (``compile``) or the whole model
    (``wcompile``) compiled. Tells DeepSpeed's share of a compiled step apart from the model's."""
    from inheritlab.kernels import clip_contrastive_loss
    from inheritlab.trainers.clip_models import build_clip, compile_towers, get_rung
    from inheritlab.trainers.engine import param_groups

    r = get_rung(rung)
    model = build_clip(r, seed=0).model.to(DEV)
    flops = _fwd_flops(model, img, txt) * 3
    if compile_ == "wcompile":
        model.compile()
    elif compile_ == "compile":
        compile_towers(model)
    opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=r.lr, fused=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            i, t, s = model(img, txt)
            loss = clip_contrastive_loss(i, t, s)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step), flops


def _direct(rung: str, img: torch.Tensor, txt: torch.Tensor) -> tuple[float, float]:
    """The stage-0 DeepSpeed engine with its module's ``forward`` compiled whole and called
    directly under our own autocast (the engine's forward hooks left out of the compiled graph),
    backward and step through the engine."""
    from inheritlab.kernels import clip_contrastive_loss
    from inheritlab.trainers.clip_models import build_clip, get_rung
    from inheritlab.trainers.engine import optimizer_step

    r = get_rung(rung)
    model = build_clip(r, seed=0).model.to(DEV)
    flops = _fwd_flops(model, img, txt) * 3
    engine = _engine(model, r, img.shape[0], 0)
    fwd = torch.compile(engine.module.forward)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            i, t, s = fwd(img, txt)
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
    ap.add_argument("--profile", action="store_true", help="write each row's kernel table beside --out")
    ap.add_argument("--rows", default="anchor-eager,anchor-compile,ours-eager,ours-compile,ours-graphs,zero2-eager,zero2-compile")
    args = ap.parse_args(argv)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints where a slow row is
    if os.environ.get("BENCH_STACKS_EVERY_S"):  # or every N seconds, unasked
        faulthandler.dump_traceback_later(float(os.environ["BENCH_STACKS_EVERY_S"]), repeat=True)
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
        global _PROFILE_TO
        _PROFILE_TO = f"{os.path.splitext(args.out)[0]}_{row}_profile.txt" if args.profile else None
        try:
            if kind == "anchor":
                dt, flops = _anchor("ViT-B-32", img, txt, mode == "compile")
                label = "open_clip + ClipLoss, AdamW (anchor recipe)"
            elif kind == "bare":
                dt, flops = _bare("datacomp-small", img, txt, mode)
                label = f"no DeepSpeed: fused AdamW, multi-tensor clip, loss by size rule ({mode})"
            elif kind == "direct":
                dt, flops = _direct("datacomp-small", img, txt)
                label = "inheritlab engine, stage 0, module forward compiled whole and called directly"
            elif kind == "ours" and mode == "graphs":
                dt, flops = _ours("datacomp-small", img, txt, "graphs", "auto")
                label = ("inheritlab engine (auto: ZeRO-0, bf16 autocast, fused AdamW, multi-tensor clip; loss by size rule; "
                         "patch embedding as a matmul), forward and backward compiled and replayed as CUDA graphs")
            elif kind == "ours" and mode == "wcompile":
                dt, flops = _ours("datacomp-small", img, txt, "whole", "auto")
                label = "inheritlab engine (auto: ZeRO-0, bf16 autocast, fused AdamW, multi-tensor clip; loss by size rule; patch embedding as a matmul), whole model compiled"
            elif kind == "ours":
                dt, flops = _ours("datacomp-small", img, txt, mode == "compile", "auto")
                label = "inheritlab engine (auto: ZeRO-0, bf16 autocast, fused AdamW, multi-tensor clip; loss by size rule; patch embedding as a matmul)"
            else:
                dt, flops = _ours("datacomp-small", img, txt, mode == "compile", 2)
                label = "inheritlab engine (DeepSpeed bf16 ZeRO-2, loss by size rule)"
            rows.append({"method": label, "compile": mode != "eager", "cuda_graphs": mode == "graphs", "model": "ViT-B-32", "batch": args.batch,
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
