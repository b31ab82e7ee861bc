"""Fused CLIP (symmetric InfoNCE) loss in Triton: no B×B logits kept, fp32 accumulation.

Shapes: q [M, d] local rows, k [N, d] candidate columns (N = M on one GPU, world·M with
``gather=True``); logits S = scale · q kᵀ, the positive of row i is column ``offset + i``.

Forward (one Triton pass, ``_clip_fwd_kernel``): each program owns BLOCK_M rows and streams over
all column tiles, keeping an online log-sum-exp per row (flash-attention style) and writing one
log-sum-exp per (row block, column) so the column (text→image) log-sum-exp costs a small
reduction instead of a second pass over the logits.

Backward: logits are recomputed tile by tile (``_clip_bwd_kernel``), turned into
dL/dS · scale, written in the input dtype for one chunk of rows at a time (bounded memory,
``CHUNK_BYTES``), and the two gradient products dq = P k, dk = Pᵀ q run on the tensor cores
through torch.mm. The kernel also reduces dL/dscale per tile, deterministically (no atomics).
Total work: four B×B×d products (the minimum once logits are not stored) instead of three.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inheritlab.kernels._tiles import (
    add_t_matmul,
    chunk_rows,
    dot_prec,
    launch_opts,
    scores_tile,
    stream_candidates,
    tile_candidates,
)
from inheritlab.kernels._tuning import pick_config
from inheritlab.kernels.reference import gather_with_grad

__all__ = ["clip_loss_triton", "CHUNK_BYTES"]

LN2 = 0.6931471805599453
# Backward materialises dL/dS for this many bytes of rows at a time (the rest is streamed).
CHUNK_BYTES = 512 * 2**20
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _clip_fwd_kernel(q_ptr, k_ptr, scale_ptr, row_lse_ptr, col_part_ptr,
                     M, N, D, stride_q, stride_k,
                     COMPUTE_COLS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    # Work in the log2 domain: exp2 is the native instruction.
    scale2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        acc = scores_tile(q_ptr, k_ptr, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                           BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
        s = tl.where(col_ok[None, :], acc * scale2, float("-inf"))  # [BM, BN] log2-domain logits
        mt = tl.max(s, axis=1)  # this tile's row maxima [BM]
        p = tl.exp2(s - mt[:, None])  # ≤ 1; the one exponential per logit
        m_new = tl.maximum(m_i, mt)
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(p, axis=1) * tl.exp2(mt - m_new)
        m_i = m_new
        if COMPUTE_COLS:
            # Column sums relative to the tile maximum T: 2^(s-T) = p · 2^(mt_i-T), so no second
            # exponential per logit. Exact while the tile's logits span less than 2^100 (no
            # underflow); otherwise fall back to per-column maxima and a second exponential.
            big = tl.max(tl.where(row_ok, mt, float("-inf")), axis=0)
            lo = tl.min(tl.min(tl.where(row_ok[:, None] & col_ok[None, :], s, float("inf")), axis=1), axis=0)
            if big - lo < 100.0:
                w = tl.exp2(tl.where(row_ok, mt - big, float("-inf")))  # [BM] ≤ 1, 0 on padding
                cl = tl.sum(p * w[:, None], axis=0)
                part = big + tl.log2(tl.where(col_ok, cl, 1.0))
            else:
                sc = tl.where(row_ok[:, None], s, float("-inf"))
                cm = tl.where(col_ok, tl.max(sc, axis=0), 0.0)  # per-column max over this row block
                cl = tl.sum(tl.exp2(sc - cm[None, :]), axis=0)
                part = cm + tl.log2(tl.where(col_ok, cl, 1.0))
            tl.store(col_part_ptr + pid * N + cols, part, mask=col_ok)
    tl.store(row_lse_ptr + rows, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)


@triton.jit
def _clip_bwd_kernel(q_ptr, k_ptr, scale_ptr, grad_ptr, row_lse_ptr, col_lse_ptr, p_ptr, part_ptr,
                     row0, Mc, N, D, offset, stride_q, stride_k, stride_p, coef_r, coef_c,
                     HAS_COLS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    lrows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows inside this chunk
    row_ok = lrows < Mc
    rows = row0 + lrows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = scores_tile(q_ptr, k_ptr, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                       BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)  # unscaled dot products
    scale = tl.load(scale_ptr).to(tl.float32)
    g = tl.load(grad_ptr).to(tl.float32)
    s2 = acc * (scale * 1.4426950408889634)
    r2 = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    ok = row_ok[:, None] & col_ok[None, :]
    coef_pos = coef_r
    if HAS_COLS:
        c2 = tl.load(col_lse_ptr + cols, mask=col_ok, other=0.0) * 1.4426950408889634
        coef_pos += coef_c
        # Both softmaxes from one exponential: 2^(s-r_i) = 2^(s-T)·2^(T-r_i), T = the tile's largest
        # logit. Used while the row/column log-sum-exps are within 2^100 of T, so anything that
        # underflows is below 2^-26 of the largest entry; otherwise two exponentials per logit.
        top = tl.max(tl.max(tl.where(ok, s2, float("-inf")), axis=1), axis=0)
        low_r = tl.min(tl.where(row_ok, r2, float("inf")), axis=0)
        low_c = tl.min(tl.where(col_ok, c2, float("inf")), axis=0)
        if tl.maximum(top - low_r, top - low_c) < 100.0:
            e = tl.exp2(s2 - top)
            a = coef_r * tl.exp2(top - r2)
            b = coef_c * tl.exp2(top - c2)
            dlog = e * (a[:, None] + b[None, :])
        else:
            dlog = coef_r * tl.exp2(s2 - r2[:, None]) + coef_c * tl.exp2(s2 - c2[None, :])
    else:
        dlog = coef_r * tl.exp2(s2 - r2[:, None])  # row softmax, weighted
    is_pos = cols[None, :] == (rows[:, None] + offset)
    dlog = dlog - tl.where(is_pos, coef_pos, 0.0)  # dL/dlogit for unit upstream gradient
    dlog = tl.where(ok, dlog, 0.0)
    p_offs = lrows.to(tl.int64)[:, None] * stride_p + cols[None, :]
    tl.store(p_ptr + p_offs, (dlog * (g * scale)).to(p_ptr.dtype.element_ty),
             mask=ok)
    # dL/dscale = Σ dL/dlogit · (q·k): one partial per program, summed on the host side.
    part = tl.sum(tl.sum(dlog * acc, axis=1), axis=0) * g
    tl.store(part_ptr + pid_m * tl.num_programs(1) + pid_n, part)


def _forward_lse(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, cols: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row log-sum-exp [M] of scale·q kᵀ, and the column one [N] when ``cols`` (needs M == N)."""
    M, D = q.shape
    N = k.shape[0]

    def launch(cfg: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = triton.cdiv(M, cfg["BLOCK_M"])
        row_lse = torch.empty(M, device=q.device, dtype=torch.float32)
        col_part = torch.empty((blocks, N) if cols else (1,), device=q.device, dtype=torch.float32)
        _clip_fwd_kernel[(blocks,)](q, k, scale, row_lse, col_part, M, N, D, q.stride(0), k.stride(0),
                                    COMPUTE_COLS=cols, DOT_PREC=dot_prec(q.dtype), **launch_opts(cfg))
        return row_lse, col_part

    cfg = pick_config(("clip_fwd", q.dtype, M, N, D, cols, q.device), stream_candidates(), launch)
    row_lse, col_part = launch(cfg)
    if not cols:
        return row_lse, None
    # Per-(row block, column) log2-sum-exp → natural log-sum-exp per column.
    return row_lse, torch.logsumexp(col_part.mul_(LN2), dim=0)


def _backward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, grad: torch.Tensor,
              row_lse: torch.Tensor, col_lse: torch.Tensor | None, offset: int,
              coef_r: float, coef_c: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq [M, d], dk [N, d] (input dtype) and dscale (fp32 scalar) for upstream gradient ``grad``."""
    M, D = q.shape
    N = k.shape[0]
    chunk = chunk_rows(M, N, q.element_size(), CHUNK_BYTES)
    p_buf = torch.empty((chunk, N), device=q.device, dtype=q.dtype)  # dL/dS·scale for one chunk
    dq = torch.empty_like(q)
    dk32 = None  # fp32 sum over chunks of Pᵀ q (several chunks only)
    dk = None
    parts = []
    has_cols = col_lse is not None
    col_arg = col_lse if has_cols else row_lse
    for r0 in range(0, M, chunk):
        mc = min(chunk, M - r0)
        p = p_buf[:mc]

        def launch(cfg: dict[str, int], r0: int = r0, mc: int = mc, p: torch.Tensor = p) -> torch.Tensor:
            grid = (triton.cdiv(mc, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
            part = torch.empty(grid, device=q.device, dtype=torch.float32)
            _clip_bwd_kernel[grid](q, k, scale, grad, row_lse, col_arg, p, part,
                                   r0, mc, N, D, offset, q.stride(0), k.stride(0), p.stride(0),
                                   coef_r, coef_c, HAS_COLS=has_cols, DOT_PREC=dot_prec(q.dtype),
                                   **launch_opts(cfg))
            return part

        cfg = pick_config(("clip_bwd", q.dtype, mc, N, D, has_cols, q.device), tile_candidates(), launch)
        parts.append(launch(cfg).sum())
        torch.mm(p, k, out=dq[r0:r0 + mc])  # [mc, N] @ [N, d]
        if chunk >= M:
            dk = torch.mm(p.t(), q)  # one chunk: the whole Pᵀ q
        else:
            dk32 = add_t_matmul(dk32, p, q[r0:r0 + mc])
    if dk32 is not None:
        dk = dk32.to(q.dtype)
    assert dk is not None
    return dq, dk, torch.stack(parts).sum()


class _ClipCE(torch.autograd.Function):
    """Mean cross-entropy of the rows (and, if symmetric, the columns) of scale·q kᵀ."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int,  # type: ignore[override]
                symmetric: bool) -> torch.Tensor:
        M = q.shape[0]
        scale_d = scale.detach().reshape(1).contiguous()
        row_lse, col_lse = _forward_lse(q, k, scale_d, cols=symmetric)
        pos = scale_d.float() * (q.float() * k[offset:offset + M].float()).sum(1)  # [M] positive logits
        loss = (row_lse - pos).mean()
        if symmetric:
            assert col_lse is not None
            loss = (loss + (col_lse - pos).mean()) / 2
        ctx.save_for_backward(q, k, scale_d, row_lse, col_lse if col_lse is not None else row_lse)
        ctx.offset, ctx.symmetric, ctx.scale_shape, ctx.scale_dtype = offset, symmetric, scale.shape, scale.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, scale_d, row_lse, col_lse = ctx.saved_tensors
        M = q.shape[0]
        coef = 1.0 / (2 * M) if ctx.symmetric else 1.0 / M
        grad = grad_out.detach().float().reshape(1).contiguous()
        dq, dk, dscale = _backward(q, k, scale_d, grad, row_lse, col_lse if ctx.symmetric else None,
                                   ctx.offset, coef, coef if ctx.symmetric else 0.0)
        dscale = dscale.reshape(ctx.scale_shape).to(ctx.scale_dtype)
        return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None,
                dscale if ctx.needs_input_grad[2] else None, None, None)


def clip_loss_triton(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor, *, gather: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE with the Triton kernels; arguments as ``inheritlab.kernels.clip_contrastive_loss``."""
    if image_features.dtype not in _SUPPORTED:
        raise TypeError(f"clip_contrastive_loss(impl='triton'): dtype {image_features.dtype} is not "
                        "supported; expected fp16, bf16 or fp32")
    img, txt = image_features.contiguous(), text_features.contiguous()
    with torch.autocast(device_type=img.device.type, enabled=False):  # dtypes were settled by the caller
        return _clip_loss(img, txt, logit_scale, gather)


def _clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, gather: bool) -> torch.Tensor:
    if not gather:
        return _ClipCE.apply(img, txt, logit_scale, 0, True)
    all_img, offset = gather_with_grad(img)
    all_txt, _ = gather_with_grad(txt)
    # Each direction scores local rows against everyone's columns (open_clip's local_loss=True).
    return (_ClipCE.apply(img, all_txt, logit_scale, offset, False)
            + _ClipCE.apply(txt, all_img, logit_scale, offset, False)) / 2
