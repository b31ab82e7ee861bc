"""Pieces shared by the contrastive kernels: the score tile, launch configs, chunking."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inheritlab.kernels._tuning import interpreting

__all__ = ["scores_tile", "dot_prec", "launch_opts", "chunk_rows", "stream_candidates", "tile_candidates",
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
