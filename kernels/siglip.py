"""Fused SigLIP (pairwise sigmoid) loss in Triton: no B×B logits kept, fp32 accumulation.

loss = -(1/M) Σ_ij log σ(z_ij · (scale · q_i·k_j + bias)), z = +1 for the positive pair
(column ``offset + i``), -1 otherwise; q [M, d] local images, k [N, d] texts (all ranks' with
``gather=True``).

Forward (``_siglip_fwd_kernel``): a program owns a row block and streams over column tiles,
summing softplus(-z·x) per row; no reduction couples rows, so one pass and no scratch.
Backward (``_siglip_bwd_kernel``): logits recomputed per tile, dL/dx · scale written for one
chunk of rows at a time, then dq = P k and dk = Pᵀ q through torch.mm; dL/dscale and dL/dbias
are reduced per tile into partial sums (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inheritlab.kernels._tiles import (
    add_t_matmul,
    chunk_rows,
    descriptor,
    dot_prec,
    launch_opts,
    scores_tile,
    scores_tile_tma,
    stream_candidates,
    stream_candidates_tma,
    tile_candidates,
    use_tma,
)
from inheritlab.kernels._tuning import pick_config
from inheritlab.kernels.reference import gather_with_grad

__all__ = ["siglip_loss_triton", "CHUNK_BYTES"]

CHUNK_BYTES = 256 * 2**20
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _softplus(t):
    """log(1 + e^t), accurate for large |t| (log1p via Kahan's trick: the sum of many tiny
    negative-pair terms is the loss late in training, so they must not round to zero)."""
    u = tl.exp2(-tl.abs(t) * 1.4426950408889634)
    w = 1.0 + u
    log1p_u = tl.where(w == 1.0, u, tl.log2(w) * 0.6931471805599453 * (u / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.maximum(t, 0.0) + log1p_u


@triton.jit
def _siglip_fwd_kernel(q_src, k_src, scale_ptr, bias_ptr, row_loss_ptr,
                       M, N, D: tl.constexpr, offset, stride_q, stride_k, TMA: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       DOT_PREC: tl.constexpr):
    # q_src/k_src: tensor descriptors when TMA, else pointers (as in the CLIP kernels).
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        if TMA:
            acc = scores_tile_tma(q_src, k_src, pid * BLOCK_M, n0, D, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
        else:
            acc = scores_tile(q_src, k_src, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                              BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
        x = acc * scale + bias
        z = tl.where(cols[None, :] == (rows[:, None] + offset), 1.0, -1.0)
        term = tl.where(col_ok[None, :], _softplus(-z * x), 0.0)  # -log σ(z·x)
        total += tl.sum(term, axis=1)
    tl.store(row_loss_ptr + rows, total, mask=row_ok)


@triton.jit
def _siglip_bwd_kernel(q_ptr, k_ptr, scale_ptr, bias_ptr, grad_ptr, p_ptr, part_ptr,
                       row0, Mc, N, D, offset, stride_q, stride_k, stride_p, inv_m,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       DOT_PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    lrows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = lrows < Mc
    rows = row0 + lrows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = scores_tile(q_ptr, k_ptr, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                      BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    g = tl.load(grad_ptr).to(tl.float32)
    x = acc * scale + bias
    z = tl.where(cols[None, :] == (rows[:, None] + offset), 1.0, -1.0)
    # d/dx of -log σ(z·x) = -z·σ(-z·x) = -z / (1 + e^{z·x})
    dx = -z / (1.0 + tl.exp2(z * x * 1.4426950408889634)) * (inv_m * g)
    ok = row_ok[:, None] & col_ok[None, :]
    dx = tl.where(ok, dx, 0.0)
    p_offs = lrows.to(tl.int64)[:, None] * stride_p + cols[None, :]
    tl.store(p_ptr + p_offs, (dx * scale).to(p_ptr.dtype.element_ty), mask=ok)
    base = (pid_m * tl.num_programs(1) + pid_n) * 2
    tl.store(part_ptr + base, tl.sum(tl.sum(dx * acc, axis=1), axis=0))  # dL/dscale
    tl.store(part_ptr + base + 1, tl.sum(tl.sum(dx, axis=1), axis=0))  # dL/dbias


def _forward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, offset: int) -> torch.Tensor:
    M, D = q.shape
    N = k.shape[0]
    tma = use_tma(q, k)

    def launch(cfg: dict[str, int]) -> torch.Tensor:
        blocks = triton.cdiv(M, cfg["BLOCK_M"])
        row_loss = torch.empty(M, device=q.device, dtype=torch.float32)
        q_src, k_src = ((descriptor(q, (cfg["BLOCK_M"], cfg["BLOCK_D"])), descriptor(k, (cfg["BLOCK_N"], cfg["BLOCK_D"])))
                        if tma else (q, k))
        _siglip_fwd_kernel[(blocks,)](q_src, k_src, scale, bias, row_loss, M, N, D, offset, q.stride(0), k.stride(0),
                                      TMA=tma, DOT_PREC=dot_prec(q.dtype), **launch_opts(cfg))
        return row_loss

    cfg = pick_config(("siglip_fwd", q.dtype, M, N, D, tma, q.device),
                      stream_candidates_tma() if tma else stream_candidates(), launch)
    return launch(cfg)


def _backward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor,
              offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    M, D = q.shape
    N = k.shape[0]
    chunk = chunk_rows(M, N, q.element_size(), CHUNK_BYTES)
    p_buf = torch.empty((chunk, N), device=q.device, dtype=q.dtype)
    dq = torch.empty_like(q)
    dk32 = None  # fp32 sum over chunks of Pᵀ q (several chunks only)
    dk = None
    parts = []
    for r0 in range(0, M, chunk):
        mc = min(chunk, M - r0)
        p = p_buf[:mc]

        def launch(cfg: dict[str, int], r0: int = r0, mc: int = mc, p: torch.Tensor = p) -> torch.Tensor:
            grid = (triton.cdiv(mc, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
            part = torch.empty((grid[0] * grid[1], 2), device=q.device, dtype=torch.float32)
            _siglip_bwd_kernel[grid](q, k, scale, bias, grad, p, part, r0, mc, N, D, offset,
                                     q.stride(0), k.stride(0), p.stride(0), 1.0 / M,
                                     DOT_PREC=dot_prec(q.dtype), **launch_opts(cfg))
            return part

        cfg = pick_config(("siglip_bwd", q.dtype, mc, N, D, q.device), tile_candidates(), launch)
        parts.append(launch(cfg).sum(0))
        torch.mm(p, k, out=dq[r0:r0 + mc])
        if chunk >= M:
            dk = torch.mm(p.t(), q)  # one chunk: the whole Pᵀ q
        else:
            dk32 = add_t_matmul(dk32, p, q[r0:r0 + mc])
    if dk32 is not None:
        dk = dk32.to(q.dtype)
    assert dk is not None
    sums = torch.stack(parts).sum(0)
    return dq, dk, sums[0], sums[1]


class _SigLip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,  # type: ignore[override]
                offset: int) -> torch.Tensor:
        scale_d = scale.detach().reshape(1).contiguous()
        bias_d = bias.detach().reshape(1).contiguous()
        loss = _forward(q, k, scale_d, bias_d, offset).sum() / q.shape[0]
        ctx.save_for_backward(q, k, scale_d, bias_d)
        ctx.offset = offset
        ctx.meta = (scale.shape, scale.dtype, bias.shape, bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, scale_d, bias_d = ctx.saved_tensors
        grad = grad_out.detach().float().reshape(1).contiguous()
        dq, dk, dscale, dbias = _backward(q, k, scale_d, bias_d, grad, ctx.offset)
        s_shape, s_dtype, b_shape, b_dtype = ctx.meta
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None,
                dscale.reshape(s_shape).to(s_dtype) if need[2] else None,
                dbias.reshape(b_shape).to(b_dtype) if need[3] else None, None)


def siglip_loss_triton(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                       logit_bias: torch.Tensor, *, gather: bool = False) -> torch.Tensor:
    """SigLIP loss with the Triton kernels; arguments as ``inheritlab.kernels.siglip_loss``."""
    if image_features.dtype not in _SUPPORTED:
        raise TypeError(f"siglip_loss(impl='triton'): dtype {image_features.dtype} is not supported; "
                        "expected fp16, bf16 or fp32")
    img, txt = image_features.contiguous(), text_features.contiguous()
    with torch.autocast(device_type=img.device.type, enabled=False):  # dtypes were settled by the caller
        offset = 0
        if gather:
            txt, offset = gather_with_grad(txt)
        return _SigLip.apply(img, txt, logit_scale, logit_bias, offset)
