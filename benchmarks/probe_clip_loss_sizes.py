"""Where the fused CLIP loss starts to pay: forward + backward of ``clip_contrastive_loss`` with
the Triton kernel and with the reference (plain logits) at the per-GPU batches a cell uses, one
GPU, one run. The kernel table (benchmarks/results/kernels_*.md) starts at B=16384, where the
B×B logits are what the kernel exists to avoid; a ViT-B/32 cell on one GPU trains at B=512, where
the logits are 1 MiB and what counts is launch count and occupancy.

    python benchmarks/probe_clip_loss_sizes.py --out $OUT/clip_loss_sizes.json

Median of CUDA-event timings per size, bf16 and fp32 features (d=512, normalised, scale with grad).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics

import torch
import torch.nn.functional as F

from inheritlab.kernels import clip_contrastive_loss

SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)


def _time(impl: str, b: int, dtype: torch.dtype, reps: int = 30) -> float:
    g = torch.Generator(device="cuda").manual_seed(b)
    img = F.normalize(torch.randn(b, 512, device="cuda", generator=g), dim=-1).to(dtype).requires_grad_()
    txt = F.normalize(torch.randn(b, 512, device="cuda", generator=g), dim=-1).to(dtype).requires_grad_()
    scale = torch.tensor(100.0, device="cuda", requires_grad=True)
    times = []
    for i in range(reps + 5):
        a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        clip_contrastive_loss(img, txt, scale, impl=impl).backward()
        z.record()
        z.synchronize()
        if i >= 5:   # the first calls pick tile configurations
            times.append(a.elapsed_time(z))
        img.grad = txt.grad = scale.grad = None
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    record = {"probe": "clip_loss_sizes", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "d": 512, "rows": []}
    for dtype in (torch.bfloat16, torch.float32):
        for b in SIZES:
            ms = {impl: round(_time(impl, b, dtype), 4) for impl in ("triton", "reference")}
            record["rows"].append({"batch": b, "dtype": str(dtype).split(".")[-1], "ms": ms,
                                   "triton_over_reference": round(ms["triton"] / ms["reference"], 3)})
            print(json.dumps(record["rows"][-1]), flush=True)
            # Rewritten after every row: a run stopped by its time limit (a new shape's first call
            # tunes the kernel's tiles) keeps the rows it finished.
            with open(args.out, "w") as fh:
                json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
