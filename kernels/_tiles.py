"""Pieces shared by the contrastive kernels: the score tile, launch configs, chunking, TMA."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from inheritlab.kernels._tuning import interpreting

__all__ = ["scores_tile", "scores_tile_tma", "dot_prec", "launch_opts", "chunk_rows", "stream_candidates",
           "stream_candidates_tma", "tile_candidates", "persistent_candidates", "use_tma", "descriptor", "num_programs",
           "add_t_matmul", "matmul_f32"]


@triton.jit
def scores_tile(q_ptr, k_ptr, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                DOT_PREC: tl.constexpr):
    """fp32 tile q[rows] · k[cols]ᵀ [BLOCK_M, BLOCK_N], reducing over d in BLOCK_D slices."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        q = tl.load(q_ptr + rows[:, None] * stride_q + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        k = tl.load(k_ptr + cols[:, None] * stride_k + dd[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(q, tl.trans(k), acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def scores_tile_tma(q_desc, k_desc, r0, c0, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    """``scores_tile`` through tensor descriptors (TMA on Hopper): tiles at rows r0 of q and c0 of
    k, zero-filled past the ends, so no masks or address arithmetic in the loop."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        q = q_desc.load([r0, d0])
        k = k_desc.load([c0, d0])
        acc = tl.dot(q, k.T, acc, input_precision=DOT_PREC)
    return acc


def use_tma(*tensors: torch.Tensor) -> bool:
    """Whether the kernels read these [rows, d] tensors through tensor descriptors.

    TMA needs Hopper or newer, a unit inner stride and 16-byte aligned base and row stride; on
    an H100 it took the CLIP forward from 374 to 439 TFLOP/s (benchmarks/results/kernels_h100_notes.md).
    Elsewhere, or with ``INHERITLAB_KERNEL_TMA=0``, the kernels use plain pointer loads. The
    interpreter runs the descriptor path too, so CI checks both (odd d takes the pointer path).
    """
    if os.environ.get("INHERITLAB_KERNEL_TMA", "1") == "0":
        return False
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    if interpreting():
        return True
    dev = tensors[0].device
    return dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9


def descriptor(t: torch.Tensor, block: tuple[int, int]):  # -> triton TensorDescriptor
    """Host-side tensor descriptor of a 2-D tensor (out-of-bounds tiles read as zeros)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], list(block))


def num_programs(device: torch.device) -> int:
    """Programs of a persistent kernel: one per SM (a few under the interpreter, so that each
    walks several tiles there too)."""
    if interpreting() or device.type != "cuda":
        return 3
    return torch.cuda.get_device_properties(device).multi_processor_count


def dot_prec(dtype: torch.dtype) -> str:
    """fp32 inputs multiply in full fp32: tf32 would cost ~1e-3 relative error on every logit."""
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_opts(cfg: dict[str, int]) -> dict[str, int]:
    return dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def chunk_rows(m: int, n: int, elt: int, budget_bytes: int) -> int:
    """Rows of an [m, n] buffer that fit ``budget_bytes`` (a multiple of 64, at least 64)."""
    rows = (budget_bytes // max(1, n * elt)) // 64 * 64
    return min(m, max(64, rows))


def _cfg(bm: int, bn: int, bd: int, w: int, s: int) -> dict[str, int]:
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=w, num_stages=s)


def stream_candidates() -> list[dict[str, int]]:
    """Configs for kernels where a program owns a row block and streams over all columns."""
    if interpreting():
        return [_cfg(16, 32, 16, 4, 1)]
    return [_cfg(128, 64, 64, 4, 4), _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 3),
            _cfg(128, 64, 128, 8, 3), _cfg(64, 128, 64, 4, 4), _cfg(128, 128, 128, 8, 2),
            _cfg(128, 128, 64, 8, 4), _cfg(128, 64, 64, 4, 3), _cfg(128, 64, 128, 4, 3),
            _cfg(256, 64, 64, 8, 3), _cfg(64, 64, 64, 4, 4), _cfg(64, 64, 128, 4, 3)]


def stream_candidates_tma() -> list[dict[str, int]]:
    """``stream_candidates`` for the descriptor path (four warps and two resident programs per SM
    won on an H100: one program's epilogue overlaps the other's loads and products)."""
    if interpreting():
        return [_cfg(16, 32, 16, 4, 1)]
    return [_cfg(128, 128, 64, 4, 3), _cfg(128, 128, 64, 4, 4), _cfg(128, 128, 64, 4, 2),
            _cfg(128, 64, 64, 4, 3), _cfg(128, 128, 32, 4, 4), _cfg(128, 128, 64, 8, 3),
            _cfg(64, 128, 64, 4, 3), _cfg(256, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 3)]


def persistent_candidates() -> list[dict[str, int]]:
    """Configs for persistent kernels walking output tiles (descriptor loads and stores)."""
    if interpreting():
        return [_cfg(16, 32, 16, 4, 1)]
    return [_cfg(128, 256, 64, 8, 3), _cfg(128, 256, 64, 8, 2), _cfg(256, 128, 64, 8, 3),
            _cfg(128, 128, 64, 8, 4), _cfg(128, 128, 64, 8, 3), _cfg(128, 256, 32, 8, 5),
            _cfg(128, 128, 64, 4, 4)]


def tile_candidates() -> list[dict[str, int]]:
    """Configs for kernels with one program per output tile (a GEMM grid)."""
    if interpreting():
        return [_cfg(16, 32, 16, 4, 1)]
    return [_cfg(128, 256, 64, 8, 3), _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 4),
            _cfg(64, 128, 64, 4, 4), _cfg(128, 64, 64, 4, 4), _cfg(128, 128, 128, 8, 2),
            _cfg(256, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 4), _cfg(128, 256, 128, 8, 2),
            _cfg(256, 128, 128, 8, 2), _cfg(256, 64, 64, 8, 3), _cfg(128, 128, 128, 4, 3),
            _cfg(64, 256, 64, 4, 3), _cfg(64, 128, 128, 4, 3), _cfg(64, 64, 64, 4, 4)]


def matmul_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with an fp32 result: straight from cuBLAS for bf16/fp16 on CUDA (same speed as a
    bf16 output, no rounding of the product), otherwise formed in the input dtype and widened."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, NotImplementedError):
            pass
    return torch.mm(a, b).float()


def add_t_matmul(acc32: torch.Tensor | None, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``acc32 + pᵀ q`` in fp32 (``acc32`` None: just ``pᵀ q``), for key gradients summed over chunks.

    On CUDA one cuBLAS call writes (or accumulates into) the fp32 result directly; elsewhere, or
    where this torch lacks the fp32-output matmul, the product is formed in the input dtype first.
    """
    if acc32 is None:
        return matmul_f32(p.t(), q)
    if p.is_cuda and p.dtype in (torch.float16, torch.bfloat16):
        try:
            return torch.addmm(acc32, p.t(), q, out_dtype=torch.float32, out=acc32)
        except (TypeError, NotImplementedError):
            pass
    return acc32.add_(torch.mm(p.t(), q).float())
