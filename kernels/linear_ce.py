"""Fused LM head + cross-entropy: never more than one chunk of rows of the N×V logits alive.

Per chunk of ``rows`` tokens (at most ``CHUNK_BYTES`` of logits, see ``_chunk_rows``):
  1. logits = h_c Wᵀ (+ b)                  torch.mm on the tensor cores, in the input dtype
  2. ``_lce_rows_kernel``: one program per row streams the vocabulary twice — an online
     log-sum-exp (fp32), then dL/dlogits written over the logits in place
  3. dh_c = dlogits W, dW += dlogitsᵀ h_c, db += Σ dlogits   torch.mm / addmm
When a gradient is needed (``reduction`` "mean"/"sum"), the gradients are computed during the
forward pass, as in Liger-Kernel: the loss is a scalar, so the backward pass only scales them by
the upstream gradient and no logits are recomputed (three N×V×H products, the floor). The scaling
is in place and decided on the device, so a second backward through the same loss is refused.
With ``reduction="none"`` the upstream gradient is a vector, so the forward keeps only per-token
losses and the backward recomputes the chunks with the per-token weights (four products).

Precision: logits are rounded to the input dtype by the matmul (as torch, Liger and
cut-cross-entropy do); the log-sum-exp and the gradient arithmetic run in fp32; dW accumulates
across chunks in the weight's dtype (bf16 for bf16 weights, ~N/rows roundings).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inheritlab.kernels._tiles import num_programs
from inheritlab.kernels._tuning import interpreting

__all__ = ["linear_cross_entropy_triton", "CHUNK_BYTES"]

# Logits chunk budget: 65 % of the weight's size (its gradient is unavoidable memory, the chunk
# stays a fraction of it), at least MIN_CHUNK_BYTES (small heads: large enough matmuls) and at most
# CHUNK_BYTES (past ~200 MiB the weight-gradient accumulation no longer gets cheaper).
CHUNK_BYTES = 192 * 2**20
MIN_CHUNK_BYTES = 64 * 2**20
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _lce_rows_kernel(logits_ptr, stride_l, targets_ptr, weight_ptr, weight_stride, loss_ptr,
                     V, ignore_index, smoothing, z_loss,
                     WRITE_GRAD: tl.constexpr, HAS_SMOOTH: tl.constexpr, HAS_Z: tl.constexpr,
                     BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_l
    y = tl.load(targets_ptr + row).to(tl.int32)
    keep = y != ignore_index
    in_range = (y >= 0) & (y < V)
    # Pass 1: online log-sum-exp over the vocabulary (and Σx for label smoothing), fp32.
    m = float("-inf")
    l = 0.0
    sx = 0.0
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        ok = offs < V
        x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        l = l * tl.exp2((m - m_new) * 1.4426950408889634) + tl.sum(tl.exp2((x - m_new) * 1.4426950408889634), axis=0)
        m = m_new
        if HAS_SMOOTH:
            sx += tl.sum(tl.where(ok, x, 0.0), axis=0)
    lse = m + tl.log2(l) * 0.6931471805599453
    x_y = tl.load(base + tl.where(keep & in_range, y, 0)).to(tl.float32)
    loss = lse - (1.0 - smoothing) * x_y
    if HAS_SMOOTH:
        loss -= smoothing * sx / V
    if HAS_Z:
        loss += z_loss * lse * lse
    # An out-of-range class id poisons the loss with NaN rather than reading another row.
    loss = tl.where(keep, tl.where(in_range, loss, float("nan")), 0.0)
    tl.store(loss_ptr + row, loss)
    if WRITE_GRAD:
        # Pass 2: dL/dx_c = w·(p_c·(1 + 2z·lse) − ε/V − (1−ε)·[c = y]), written over the logits.
        w = tl.where(keep, tl.load(weight_ptr + row * weight_stride).to(tl.float32), 0.0)
        coef_p = w
        if HAS_Z:
            coef_p = w * (1.0 + 2.0 * z_loss * lse)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            ok = offs < V
            x = tl.load(base + offs, mask=ok, other=0.0).to(tl.float32)
            d = tl.exp2((x - lse) * 1.4426950408889634) * coef_p
            if HAS_SMOOTH:
                d -= w * smoothing / V
            d = tl.where(offs == y, d - w * (1.0 - smoothing), d)
            tl.store(base + offs, d.to(logits_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _scale_by_upstream_kernel(x_ptr, n, g_ptr, BLOCK: tl.constexpr):
    # The upstream gradient is read here, on the device: for the usual unit gradient every program
    # returns at once, and the host never waits for the forward pass to decide whether to scale.
    g = tl.load(g_ptr)
    if g != 1.0:
        step = tl.num_programs(0).to(tl.int64) * BLOCK
        for base in range(tl.program_id(0).to(tl.int64) * BLOCK, n, step):
            offs = base + tl.arange(0, BLOCK)
            ok = offs < n
            x = tl.load(x_ptr + offs, mask=ok)
            tl.store(x_ptr + offs, (x.to(tl.float32) * g).to(x_ptr.dtype.element_ty), mask=ok)


def _scale_by_upstream(x: torch.Tensor, g: torch.Tensor) -> None:
    """x *= g in place (g: one fp32 element on x's device), skipped on the device when g == 1."""
    block = 1024 if interpreting() else 4096
    # A grid-stride loop over a bounded grid: the unit-gradient case is one short launch.
    programs = min(triton.cdiv(x.numel(), block), 8 * num_programs(x.device))
    _scale_by_upstream_kernel[(max(1, programs),)](x, x.numel(), g, BLOCK=block, num_warps=8)


def _row_launch(V: int) -> dict[str, int]:
    if interpreting():
        return dict(BLOCK_V=min(256, triton.next_power_of_2(V)), num_warps=4)
    block = min(16384, triton.next_power_of_2(V))
    return dict(BLOCK_V=block, num_warps=16 if block >= 8192 else 8)


def _chunk_rows(n: int, v: int, elt: int, weight_bytes: int) -> int:
    """Rows per logits chunk: a multiple of 256 where possible (a ragged tile row costs the three
    matmuls a partial wave; 1216 rows measured 8 % slower than 1280 on an H100)."""
    budget = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, int(0.65 * weight_bytes)))
    rows = budget // max(1, v * elt)
    rows = rows // 256 * 256 if rows >= 256 else rows // 64 * 64
    return min(n, max(64, rows))


def _chunked(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, targets: torch.Tensor,
             row_weight: torch.Tensor, ignore_index: int, smoothing: float, z_loss: float,
             need: tuple[bool, bool, bool]
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-token losses [N] fp32 and, where ``need`` asks, dh, dW, db weighted per row by ``row_weight``."""
    N, _ = h.shape
    V = w.shape[0]
    rows = _chunk_rows(N, V, h.element_size(), w.numel() * w.element_size())
    buf = torch.empty((rows, V), device=h.device, dtype=h.dtype)  # one chunk of logits / dlogits
    loss = torch.empty(N, device=h.device, dtype=torch.float32)
    dh = torch.empty_like(h) if need[0] else None
    dw = torch.empty_like(w) if need[1] else None
    db = torch.zeros(V, device=h.device, dtype=torch.float32) if need[2] else None
    write_grad = any(need)
    w_stride = row_weight.stride(0) if row_weight.numel() > 1 else 0
    opts = _row_launch(V)
    for r0 in range(0, N, rows):
        n = min(rows, N - r0)
        lg = buf[:n]
        hc = h[r0:r0 + n]
        if b is None:
            torch.mm(hc, w.t(), out=lg)  # [n, V]
        else:
            torch.addmm(b, hc, w.t(), out=lg)
        _lce_rows_kernel[(n,)](lg, lg.stride(0), targets[r0:r0 + n], row_weight[r0:] if w_stride else row_weight,
                               w_stride, loss[r0:r0 + n], V, ignore_index, smoothing, z_loss,
                               WRITE_GRAD=write_grad, HAS_SMOOTH=smoothing > 0.0, HAS_Z=z_loss > 0.0, **opts)
        if not write_grad:
            continue
        if dh is not None:
            torch.mm(lg, w, out=dh[r0:r0 + n])  # [n, V] @ [V, H]
        if dw is not None:
            if r0 == 0:
                torch.mm(lg.t(), hc, out=dw)  # [V, n] @ [n, H]
            else:
                dw.addmm_(lg.t(), hc)
        if db is not None:
            db += lg.sum(0, dtype=torch.float32)
    return loss, dh, dw, db


class _LinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, targets: torch.Tensor,  # type: ignore[override]
                ignore_index: int, smoothing: float, z_loss: float, reduction: str,
                need: tuple[bool, bool, bool]) -> torch.Tensor:
        ctx.cfg = (ignore_index, smoothing, z_loss, reduction, need)
        ctx.scaled = False
        ctx.bias_dtype = b.dtype if b is not None else None
        if reduction == "none":
            ones = torch.ones(1, device=h.device, dtype=torch.float32)
            loss, *_ = _chunked(h, w, b, targets, ones, ignore_index, smoothing, z_loss, (False, False, False))
            ctx.save_for_backward(h, w, b, targets)
            return loss
        if reduction == "mean":
            # 1/(kept tokens), on the device: no host sync in the forward pass.
            row_weight = (targets != ignore_index).sum().clamp(min=1).to(torch.float32).reciprocal().reshape(1)
        else:
            row_weight = torch.ones(1, device=h.device, dtype=torch.float32)
        loss, dh, dw, db = _chunked(h, w, b, targets, row_weight, ignore_index, smoothing, z_loss, need)
        ctx.save_for_backward(dh, dw, db)
        return (loss.sum() * row_weight[0]) if reduction == "mean" else loss.sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        ignore_index, smoothing, z_loss, reduction, need = ctx.cfg
        if reduction == "none":
            h, w, b, targets = ctx.saved_tensors
            g = grad_out.detach().to(torch.float32).contiguous()
            _, dh, dw, db = _chunked(h, w, b, targets, g, ignore_index, smoothing, z_loss, need)
        else:
            if ctx.scaled:
                raise RuntimeError("linear_cross_entropy(impl='triton'): a second backward pass through the same "
                                   "loss is not supported (the gradients made in the forward pass are scaled in "
                                   "place by the first); compute the loss again instead of retain_graph=True")
            ctx.scaled = True
            dh, dw, db = ctx.saved_tensors
            # In place (no second copy of dW, ~1 GiB at a 128k vocabulary) and decided on the device
            # (no host sync between forward and backward); a unit gradient skips the passes.
            g = grad_out.detach().reshape(1).to(torch.float32)
            for grad in (dh, dw, db):
                if grad is not None:
                    _scale_by_upstream(grad, g)
        if db is not None and ctx.bias_dtype is not None:
            db = db.to(ctx.bias_dtype)
        return dh, dw, db, None, None, None, None, None, None


def linear_cross_entropy_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                bias: torch.Tensor | None = None, ignore_index: int = -100,
                                label_smoothing: float = 0.0, z_loss: float = 0.0,
                                reduction: str = "mean") -> torch.Tensor:
    """Fused linear cross-entropy; arguments as ``inheritlab.kernels.linear_cross_entropy``."""
    if hidden.dtype not in _SUPPORTED:
        raise TypeError(f"linear_cross_entropy(impl='triton'): dtype {hidden.dtype} is not supported; "
                        "expected fp16, bf16 or fp32")
    if bias is not None and bias.dtype != hidden.dtype:
        raise TypeError(f"linear_cross_entropy(impl='triton'): bias is {bias.dtype}, hidden is {hidden.dtype}")
    grad_on = torch.is_grad_enabled()
    need = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad)
    h, w = hidden.contiguous(), weight.contiguous()
    b = bias.contiguous() if bias is not None else None
    with torch.autocast(device_type=h.device.type, enabled=False):  # dtypes were settled by the caller
        return _LinearCE.apply(h, w, b, targets.contiguous(), int(ignore_index), float(label_smoothing),
                               float(z_loss), reduction, need)
