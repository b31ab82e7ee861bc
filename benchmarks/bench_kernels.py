"""Benchmark the fused losses next to the alternatives a user would pick, on one GPU, in one run.

Forward + backward of each loss on random inputs (the anchor shapes from the project's anchor
tables), median time from CUDA events, peak device memory above the inputs (measured on a warm
call, gradients cleared), and the fraction of the bf16 matmul floor: the time the loss's
matmul FLOPs would take at the matmul rate measured in this same run.

Writes ``<out>/kernels_<gpu>.json`` and ``<out>/kernels_<gpu>.md`` (default out:
benchmarks/results). Alternatives that are not installed are recorded as skipped.

    python benchmarks/bench_kernels.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

DEV = "cuda"
GiB = 2**30


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def time_ms(fn: Callable[[], None], grads: list[torch.Tensor]) -> float:
    """Median ms of ``fn``: triton's do_bench for fast calls, a few event-timed calls for slow ones."""
    from triton.testing import do_bench

    for g in grads:
        g.grad = None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = start.elapsed_time(end)
    if once > 400:  # seconds-long baselines: three timed calls are plenty
        times = []
        for _ in range(3):
            for g in grads:
                g.grad = None
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[1]
    return do_bench(fn, warmup=25, rep=200, grad_to_none=grads, return_mode="median")


def peak_gib(fn: Callable[[], None], grads: list[torch.Tensor]) -> float:
    """Peak device memory of one warm call above what was allocated before it (grads cleared)."""
    for g in grads:
        g.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / GiB


class Bench:
    def __init__(self, out: Path, gpu_tag: str) -> None:
        self.out, self.tag = out, gpu_tag
        self.res: dict = {
            "device": torch.cuda.get_device_name(),
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "cuda": torch.version.cuda,
            "liger_kernel": _version("liger-kernel"),
            "cut_cross_entropy": _version("cut-cross-entropy"),
            "open_clip_torch": _version("open_clip_torch"),
            "inf_cl": _version("inf-cl"),
            "rows": [],
        }

    def ceilings(self) -> None:
        from triton.testing import do_bench

        a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
        b = torch.randn_like(a)
        ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
        self.res["bf16_matmul_tflops"] = round(2 * 8192**3 / ms / 1e9, 1)
        x = torch.empty(2**30, device=DEV, dtype=torch.bfloat16).normal_()
        y = torch.empty_like(x)
        ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
        self.res["copy_tb_s"] = round(2 * x.numel() * 2 / ms / 1e9, 2)
        del a, b, x, y
        torch.cuda.empty_cache()
        print({k: v for k, v in self.res.items() if k != "rows"}, flush=True)

    def run(self, group: str, method: str, shape: str, flop: float,
            make: Callable[[], tuple], factory: Callable[..., Callable[[], None]]) -> None:
        torch.cuda.empty_cache()
        row: dict = dict(group=group, method=method, shape=shape)
        inputs = fn = None
        try:
            inputs = make()
            fn = factory(*inputs)
            grads = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
            fn()  # warm: compilation, config choice, cuBLAS handles
            torch.cuda.synchronize()
            row["peak_gib"] = round(peak_gib(fn, grads), 3)
            ms = time_ms(fn, grads)
            floor_ms = flop / (self.res["bf16_matmul_tflops"] * 1e9)
            row.update(ms=round(ms, 3), tflops=round(flop / ms / 1e9, 1),
                       floor_ms=round(floor_ms, 3), floor_fraction=round(floor_ms / ms, 3))
        except ImportError as exc:
            row["skipped"] = f"not installed: {exc}"[:200]
        except Exception as exc:  # one method failing (OOM) must not lose the others
            row["error"] = repr(exc)[:300]
            if not isinstance(exc, torch.cuda.OutOfMemoryError):
                traceback.print_exc()
        self.res["rows"].append(row)
        print(row, flush=True)
        del inputs, fn
        torch.cuda.empty_cache()
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"kernels_{self.tag}.json").write_text(json.dumps(self.res, indent=1))
        (self.out / f"kernels_{self.tag}.md").write_text(self.markdown())

    def markdown(self) -> str:
        r = self.res
        lines = [f"# Loss kernels on {r['device']} ({r['date_utc']})", "",
                 f"torch {r['torch']}, triton {r['triton']}, CUDA {r['cuda']}, Python {r['python']}; "
                 f"liger-kernel {r['liger_kernel']}, cut-cross-entropy {r['cut_cross_entropy']}, "
                 f"open_clip {r['open_clip_torch']}, inf-cl {r['inf_cl']}.",
                 f"Measured in this run: bf16 matmul {r.get('bf16_matmul_tflops')} TFLOP/s (8192³), "
                 f"device copy {r.get('copy_tb_s')} TB/s. Forward+backward, median; peak = device "
                 "memory above the inputs on a warm call; floor = the loss's matmul FLOPs at the "
                 "measured matmul rate.", ""]
        for group in dict.fromkeys(row["group"] for row in r["rows"]):
            lines += [f"## {group}", "", "| method | shape | ms | peak GiB | TFLOP/s | floor ms | of floor |",
                      "|---|---|---|---|---|---|---|"]
            for row in (x for x in r["rows"] if x["group"] == group):
                if "ms" in row:
                    lines.append(f"| {row['method']} | {row['shape']} | {row['ms']} | {row['peak_gib']} | "
                                 f"{row['tflops']} | {row['floor_ms']} | {row['floor_fraction']:.0%} |")
                else:
                    why = row.get("error") or row.get("skipped") or "?"
                    lines.append(f"| {row['method']} | {row['shape']} | {why.split('(')[0][:60]} | | | | |")
            lines.append("")
        if r.get("checks"):
            lines += ["## Agreement with fp32 references at benchmark sizes", ""]
            lines += [f"- {k}: {v}" for k, v in r["checks"].items()]
        if r.get("configs"):
            lines += ["", "## Launch configs chosen", ""] + [f"- {k}: {v}" for k, v in r["configs"].items()]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- LM head + cross-entropy
def lm_inputs(n: int, h: int, v: int) -> Callable[[], tuple]:
    def make() -> tuple:
        g = torch.Generator(device=DEV).manual_seed(0)
        hid = (torch.randn(n, h, device=DEV, dtype=torch.bfloat16, generator=g) * 0.5).requires_grad_()
        w = (torch.randn(v, h, device=DEV, dtype=torch.bfloat16, generator=g) * h**-0.5).requires_grad_()
        y = torch.randint(0, v, (n,), device=DEV, generator=g)
        return hid, w, y
    return make


def lm_ours(hid, w, y):
    from inheritlab.kernels import linear_cross_entropy
    return lambda: linear_cross_entropy(hid, w, y, impl="triton").backward()


def lm_eager(hid, w, y):
    return lambda: F.cross_entropy((hid @ w.t()).float(), y).backward()


_compiled_lm = None


def lm_compile(hid, w, y):
    global _compiled_lm
    if _compiled_lm is None:
        _compiled_lm = torch.compile(lambda a, b, t: F.cross_entropy((a @ b.t()).float(), t))
    return lambda: _compiled_lm(hid, w, y).backward()


def lm_liger(hid, w, y):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda: loss(w, hid, y).backward()


def lm_cce(hid, w, y):
    from cut_cross_entropy import linear_cross_entropy as cce
    return lambda: cce(hid, w, y).backward()


# ---------------------------------------------------------------- CLIP / SigLIP
def clip_inputs(b: int, d: int) -> Callable[[], tuple]:
    def make() -> tuple:
        g = torch.Generator(device=DEV).manual_seed(0)
        i = F.normalize(torch.randn(b, d, device=DEV, generator=g), dim=-1).to(torch.bfloat16).requires_grad_()
        t = F.normalize(torch.randn(b, d, device=DEV, generator=g), dim=-1).to(torch.bfloat16).requires_grad_()
        s = torch.tensor(1 / 0.07, device=DEV).requires_grad_()
        return i, t, s
    return make


def clip_inputs_trained(b: int, d: int) -> Callable[[], tuple]:
    """Late-training regime: scale 100, each text close to its image (logits spread over ±100)."""
    def make() -> tuple:
        g = torch.Generator(device=DEV).manual_seed(0)
        i = F.normalize(torch.randn(b, d, device=DEV, generator=g), dim=-1)
        t = F.normalize(i + 0.8 * F.normalize(torch.randn(b, d, device=DEV, generator=g), dim=-1), dim=-1)
        s = torch.tensor(100.0, device=DEV).requires_grad_()
        return i.to(torch.bfloat16).requires_grad_(), t.to(torch.bfloat16).requires_grad_(), s
    return make


def clip_ours(i, t, s):
    from inheritlab.kernels import clip_contrastive_loss
    return lambda: clip_contrastive_loss(i, t, s, impl="triton").backward()


def clip_open_clip(i, t, s):
    from open_clip.loss import ClipLoss
    loss = ClipLoss()

    def f() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = loss(i, t, s)
        out.backward()
    return f


def clip_inf_cl(i, t, s):
    from inf_cl import cal_flash_loss
    return lambda: ((cal_flash_loss(i, t, scale=s).mean() + cal_flash_loss(t, i, scale=s).mean()) / 2).backward()


def siglip_inputs(b: int, d: int) -> Callable[[], tuple]:
    base = clip_inputs(b, d)

    def make() -> tuple:
        i, t, _ = base()
        s = torch.tensor(10.0, device=DEV).requires_grad_()
        bias = torch.tensor(-10.0, device=DEV).requires_grad_()
        return i, t, s, bias
    return make


def siglip_ours(i, t, s, b):
    from inheritlab.kernels import siglip_loss
    return lambda: siglip_loss(i, t, s, b, impl="triton").backward()


def siglip_open_clip(i, t, s, b):
    from open_clip.loss import SigLipLoss
    loss = SigLipLoss()

    def f() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = loss(i, t, s, b)
        out.backward()
    return f


# ---------------------------------------------------------------- agreement checks
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def _agreement(loss: Callable[..., torch.Tensor], args: tuple, grads: dict[str, int], extra: dict | None = None) -> str:
    """The bf16 kernel against the fp32 reference on the same inputs: losses and relative gradient errors.

    ``grads`` names the inputs whose gradients are compared (name → position in ``args``); the
    reference gets fp32 copies of exactly those.
    """
    ref = [x.detach().float().requires_grad_() if k in grads.values() else x for k, x in enumerate(args)]
    lr = loss(*ref, impl="reference", **(extra or {}))
    lr.backward()
    lo = loss(*args, impl="triton", **(extra or {}))
    lo.backward()
    errs = ", ".join(f"{name} {_rel(args[k].grad, ref[k].grad):.2e}" for name, k in grads.items())
    return f"loss {lo.item():.6f} vs {lr.item():.6f}; relative grad error {errs}"


def agreement_checks() -> dict[str, str]:
    from inheritlab.kernels import clip_contrastive_loss, linear_cross_entropy, siglip_loss

    out = {}
    out["clip B=16384 bf16 vs fp32 reference"] = _agreement(
        clip_contrastive_loss, clip_inputs(16384, 512)(), {"image": 0, "text": 1, "scale": 2})
    out["siglip B=8192 bf16 vs fp32 reference"] = _agreement(
        siglip_loss, siglip_inputs(8192, 512)(), {"image": 0, "text": 1, "scale": 2, "bias": 3})
    out["linear CE N=4096 H=2048 V=50304 bf16 vs fp32 reference"] = _agreement(
        linear_cross_entropy, lm_inputs(4096, 2048, 50304)(), {"hidden": 0, "weight": 1})
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default=None, help="file suffix (default: h100/h200/... from the GPU name)")
    ap.add_argument("--quick", action="store_true", help="smallest shape of each loss only")
    ap.add_argument("--only", default="", help="comma list of groups: lm,clip,siglip,checks")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs a CUDA GPU")
    name = torch.cuda.get_device_name().lower()
    tag = args.tag or next((k for k in ("h100", "h200", "a100", "b200") if k in name), "gpu")
    bench = Bench(Path(args.out), tag)
    only = set(filter(None, args.only.split(","))) or {"lm", "clip", "siglip", "checks"}
    t0 = time.time()
    bench.ceilings()

    if "checks" in only:
        try:
            bench.res["checks"] = agreement_checks()
        except Exception as exc:
            bench.res["checks"] = {"error": repr(exc)[:300]}
            traceback.print_exc()
        print(bench.res["checks"], flush=True)
        bench.save()

    clip_sizes = [16384] if args.quick else [16384, 32768, 65536, 131072]
    lm_shapes = [(16384, 2048, 50304)] if args.quick else [(16384, 2048, 50304), (16384, 4096, 128256)]
    siglip_sizes = [16384] if args.quick else [16384, 32768]
    clip_g, lm_g, sig_g = "CLIP contrastive, d=512, bf16", "LM head + cross-entropy, bf16", "SigLIP, d=512, bf16"
    # Ours first, so a run cut short still has them; then the alternatives.
    if "clip" in only:
        for b in clip_sizes:
            bench.run(clip_g, "ours (Triton)", f"B={b}", 6 * b * b * 512, clip_inputs(b, 512), clip_ours)
        if not args.quick:
            b = 32768
            bench.run(clip_g, "ours (Triton), scale 100, aligned pairs", f"B={b}", 6 * b * b * 512,
                      clip_inputs_trained(b, 512), clip_ours)
    if "lm" in only:
        for n, h, v in lm_shapes:
            bench.run(lm_g, "ours (Triton)", f"N={n} H={h} V={v}", 6 * n * h * v, lm_inputs(n, h, v), lm_ours)
    if "siglip" in only:
        for b in siglip_sizes:
            bench.run(sig_g, "ours (Triton)", f"B={b}", 6 * b * b * 512, siglip_inputs(b, 512), siglip_ours)
    if "clip" in only:
        for b in clip_sizes:
            if b <= 32768:  # out of memory at 65536 on 80 GB (see the anchors)
                bench.run(clip_g, "open_clip ClipLoss (bf16 autocast)", f"B={b}", 6 * b * b * 512,
                          clip_inputs(b, 512), clip_open_clip)
            if b <= 65536:  # ~4 s per step at 131072: recorded in the anchors
                bench.run(clip_g, "Inf-CL flash path", f"B={b}", 6 * b * b * 512, clip_inputs(b, 512), clip_inf_cl)
    if "lm" in only:
        for n, h, v in lm_shapes:
            for method, fac in [("torch eager (bf16 logits, fp32 CE)", lm_eager), ("torch.compile", lm_compile),
                                ("Liger-Kernel fused linear CE", lm_liger), ("cut-cross-entropy", lm_cce)]:
                bench.run(lm_g, method, f"N={n} H={h} V={v}", 6 * n * h * v, lm_inputs(n, h, v), fac)
    if "siglip" in only:
        for b in siglip_sizes:
            bench.run(sig_g, "open_clip SigLipLoss (bf16 autocast)", f"B={b}", 6 * b * b * 512,
                      siglip_inputs(b, 512), siglip_open_clip)

    from inheritlab.kernels._tuning import chosen_configs

    bench.res["configs"] = {str(k[:-1]): v for k, v in chosen_configs().items()}
    bench.res["wall_s"] = round(time.time() - t0, 1)
    bench.save()
    print(bench.markdown())


if __name__ == "__main__":
    main()
