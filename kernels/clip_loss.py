"""Fused CLIP (symmetric InfoNCE) loss in Triton: no B×B logits kept, fp32 accumulation.

Shapes: q [M, d] local rows, k [N, d] candidate columns (N = M on one GPU, world·M with
``gather=True``); logits S = scale · q kᵀ, the positive of row i is column ``offset + i``.

Forward (one Triton pass, ``_clip_fwd_kernel``): each program owns BLOCK_M rows and streams over
all column tiles, keeping an online log-sum-exp per row (flash-attention style) and writing one
log-sum-exp per (row block, column) so the column (text→image) log-sum-exp costs a small
reduction instead of a second pass over the logits. The column sums reuse the row exponentials
(one exponential and no extra tile-wide reduction per logit); a cheap check afterwards, on the
device, proves they lost nothing, else an exact variant (per-column maxima) re-runs — launched
every time and a no-op unless flagged, so the host never waits for the forward.

Backward: logits are recomputed tile by tile, turned into dL/dS with an element-wise epilogue,
written in the input dtype for one chunk of rows at a time (bounded memory, ``CHUNK_BYTES``), and
the two gradient products dq = scale·P k, dk = scale·Pᵀ q run on the tensor cores through cuBLAS
with fp32 outputs; dL/dscale = Σ_i q_i·(P k)_i falls out of the first product (``_row_dots``).
Deterministic (no atomics). Total work: four B×B×d products (the minimum once logits are not
stored) instead of three.

On Hopper, with 16-byte aligned rows, both kernels read through tensor descriptors (TMA) and the
backward is persistent (``_clip_bwd_persistent``); elsewhere they use pointer loads and one
program per tile (``_clip_bwd_kernel``). Same arithmetic either way.
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
    matmul_f32,
    num_programs,
    persistent_candidates,
    scores_tile,
    scores_tile_tma,
    stream_candidates,
    stream_candidates_tma,
    tile_candidates,
    use_tma,
)
from inheritlab.kernels._tuning import interpreting, pick_config
from inheritlab.kernels.reference import gather_with_grad

__all__ = ["clip_loss_triton", "CHUNK_BYTES"]

LN2 = 0.6931471805599453
# Backward materialises dL/dS for this many bytes of rows at a time (the rest is streamed).
CHUNK_BYTES = 512 * 2**20
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _clip_fwd_kernel(q_src, k_src, scale_ptr, flag_ptr, row_lse_ptr, col_part_ptr, col_big_ptr,
                     M, N, D: tl.constexpr, stride_q, stride_k,
                     COMPUTE_COLS: tl.constexpr, FAST_COLS: tl.constexpr, TMA: tl.constexpr,
                     SPLIT_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     DOT_PREC: tl.constexpr):
    # q_src/k_src: tensor descriptors when TMA, else pointers (with row strides stride_q/stride_k).
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    # Work in the log2 domain: exp2 is the native instruction.
    scale2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_end = N
    if not FAST_COLS:
        # The exact variant is launched after every fast pass, without waiting for the host: it
        # does its work (and writes anything) only when the device-side check raised the flag.
        n_end = tl.where(tl.load(flag_ptr) != 0, N, 0)
    for n0 in range(0, n_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        if TMA:
            acc = scores_tile_tma(q_src, k_src, pid * BLOCK_M, n0, D, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
        else:
            acc = scores_tile(q_src, k_src, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                              BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
        s = tl.where(col_ok[None, :], acc * scale2, float("-inf"))  # [BM, BN] log2-domain logits
        mt = tl.max(s, axis=1)  # this tile's row maxima [BM]
        p = tl.exp2(s - mt[:, None])  # ≤ 1; the one exponential per logit
        m_new = tl.maximum(m_i, mt)
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(p, axis=1) * tl.exp2(mt - m_new)
        m_i = m_new
        if COMPUTE_COLS:
            if FAST_COLS:
                big = tl.max(tl.where(row_ok, mt, float("-inf")), axis=0)
                # Column sums relative to the tile maximum T: 2^(s-T) = p · 2^(mt_i-T), so no second
                # exponential. Terms below 2^-126 of T flush to zero; the caller checks afterwards
                # that no column needed them (see ``_needs_exact``) and otherwise the exact variant
                # below does the work.
                w = tl.exp2(tl.where(row_ok, mt - big, float("-inf")))  # [BM] ≤ 1, 0 on padding
                pw = p * w[:, None]
                # The sum over the tile's rows is a product with a row of ones on the tensor cores:
                # a reduction across warps (shuffles, shared memory and a barrier per tile) cost a
                # quarter of the forward. p·w is split into two bf16 terms (hi + lo, ~2^-17
                # relative: bf16 alone left 3e-3 nats in peaked columns) and summed in fp32.
                if SPLIT_BF16:
                    hi = pw.to(tl.bfloat16)
                    lo = (pw - hi.to(tl.float32)).to(tl.bfloat16)
                    ones = tl.full([16, BLOCK_M], 1.0, dtype=tl.float32).to(tl.bfloat16)
                    cs = tl.dot(ones, lo, tl.dot(ones, hi))  # [16, BN], each row the column sums
                else:  # the CPU interpreter (its dot reads bf16 operands as raw bits): fp32
                    cs = tl.dot(tl.full([16, BLOCK_M], 1.0, dtype=tl.float32), pw, input_precision="ieee")
                first = tl.arange(0, 16) == 0
                # Raw sums, and T once per tile; the caller turns them into log2 partials.
                tl.store(col_part_ptr + pid * N + cols[None, :] + 0 * first[:, None], cs,
                         mask=first[:, None] & col_ok[None, :])
                tl.store(col_big_ptr + pid * tl.cdiv(N, BLOCK_N) + n0 // BLOCK_N, big)
            else:
                sc = tl.where(row_ok[:, None], s, float("-inf"))
                cm = tl.where(col_ok, tl.max(sc, axis=0), 0.0)  # per-column max over this row block
                cl = tl.sum(tl.exp2(sc - cm[None, :]), axis=0)
                part = cm + tl.log2(tl.where(col_ok, cl, 1.0))
                tl.store(col_part_ptr + pid * N + cols, part, mask=col_ok)
    tl.store(row_lse_ptr + rows, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok & (n_end > 0))


@triton.jit
def _dlogits_tile(acc, scale_ptr, row_lse_ptr, col_lse_ptr, rows, row_ok, cols, col_ok, offset, coef_r, coef_c,
                  top2, HAS_COLS: tl.constexpr, ONE_EXP: tl.constexpr):
    """dL/dS for one tile of unscaled dot products ``acc`` (unit upstream gradient, zero outside).

    ``ONE_EXP`` (only when the forward's column check passed; ``top2`` = the largest row
    log2-sum-exp): the column softmax is derived from the row one, 2^(s-c_j) = 2^(s-r_i) ·
    2^(r_i-top) · 2^(top-c_j), with per-row and per-column factors instead of a second
    exponential per logit. The check guarantees top - c_j ≤ 90, so nothing overflows, and a
    row term that underflows had a column term below 2^-36.
    """
    scale = tl.load(scale_ptr).to(tl.float32)
    s2 = acc * (scale * 1.4426950408889634)
    r2 = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    # Each softmax against its own log-sum-exp: the exponents are ≤ 0, so nothing overflows
    # and no reduction over the tile is needed (the tile's epilogue is element-wise only).
    e = tl.exp2(s2 - r2[:, None])
    dlog = coef_r * e
    coef_pos = coef_r
    if HAS_COLS:
        c2 = tl.load(col_lse_ptr + cols, mask=col_ok, other=0.0) * 1.4426950408889634
        if ONE_EXP:
            a = coef_c * tl.exp2(r2 - top2)  # [BM], ≤ coef_c
            b = tl.exp2(top2 - c2)  # [BN], ≤ 2^90
            dlog = e * (coef_r + a[:, None] * b[None, :])
        else:
            dlog += coef_c * tl.exp2(s2 - c2[None, :])
        coef_pos += coef_c
    is_pos = cols[None, :] == (rows[:, None] + offset)
    dlog = dlog - tl.where(is_pos, coef_pos, 0.0)
    return tl.where(row_ok[:, None] & col_ok[None, :], dlog, 0.0)


@triton.jit
def _clip_bwd_kernel(q_ptr, k_ptr, scale_ptr, grad_ptr, row_lse_ptr, col_lse_ptr, p_ptr,
                     row0, Mc, N, D: tl.constexpr, offset, stride_q, stride_k, stride_p, coef_r, coef_c,
                     HAS_COLS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    """One program per tile of the chunk's dL/dS (pointer loads: any GPU, any alignment)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    lrows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows inside this chunk
    row_ok = lrows < Mc
    rows = row0 + lrows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = scores_tile(q_ptr, k_ptr, rows, row_ok, cols, col_ok, D, stride_q, stride_k,
                      BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)  # unscaled dot products
    dlog = _dlogits_tile(acc, scale_ptr, row_lse_ptr, col_lse_ptr, rows, row_ok, cols, col_ok, offset,
                         coef_r, coef_c, 0.0, HAS_COLS, False)
    # Stored without the logit scale: the host multiplies the [·, d] products by it and gets
    # dL/dscale = Σ_i q_i · (P k)_i from the same product, with no reduction here.
    g = tl.load(grad_ptr).to(tl.float32)
    p_offs = lrows.to(tl.int64)[:, None] * stride_p + cols[None, :]
    tl.store(p_ptr + p_offs, (dlog * g).to(p_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _clip_bwd_persistent(q_desc, k_desc, p_desc, scale_ptr, grad_ptr, row_lse_ptr, col_lse_ptr, flag_ptr, top_ptr,
                         row0, Mc, N, D: tl.constexpr, offset, coef_r, coef_c,
                         HAS_COLS: tl.constexpr, MODE: tl.constexpr, NUM_PROGS: tl.constexpr, GROUP_M: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         DOT_PREC: tl.constexpr):
    """``_clip_bwd_kernel`` through descriptors, one program per SM walking the tiles.

    q_desc covers the chunk's rows (local row 0 = global row ``row0``). The flattened tile loop
    lets the compiler issue the next tile's loads during this tile's epilogue and TMA store,
    which a one-tile-per-program grid cannot (0.70 against 0.76 ms per 8192-row chunk at
    B=32768 on an H100). Tiles go in groups of GROUP_M row blocks so column tiles are reused
    from L2 (32 rather than 8: 0.65 against 0.69 ms per 4096-row chunk at B=65536).
    """
    tiles_m = tl.cdiv(Mc, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    total = tiles_m * tiles_n
    # MODE 0: always runs (two exponentials). With column terms both variants are launched and
    # the forward's exact-path flag decides on the device which one works: MODE 1 (one
    # exponential) when it is clear, MODE 2 (two) when it is raised; the other exits at once.
    top2 = 0.0
    if MODE == 1:
        total = tl.where(tl.load(flag_ptr) == 0, total, 0)
        top2 = tl.load(top_ptr)
    if MODE == 2:
        total = tl.where(tl.load(flag_ptr) != 0, total, 0)
    g = tl.load(grad_ptr).to(tl.float32)
    for tile in tl.range(tl.program_id(0), total, NUM_PROGS, flatten=True):
        group = tile // (GROUP_M * tiles_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % (GROUP_M * tiles_n)) % size_m
        pid_n = (tile % (GROUP_M * tiles_n)) // size_m
        acc = scores_tile_tma(q_desc, k_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, D,
                              BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC)
        lrows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dlog = _dlogits_tile(acc, scale_ptr, row_lse_ptr, col_lse_ptr, row0 + lrows, lrows < Mc, cols, cols < N,
                             offset, coef_r, coef_c, top2, HAS_COLS, MODE == 1)
        p_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], (dlog * g).to(p_desc.dtype))


@triton.jit
def _row_dots_kernel(a_ptr, b_ptr, out_ptr, scale_ptr, scaled_ptr, M, D, stride_a, stride_b, stride_s,
                     WRITE_SCALED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[i] = a_i · b_i in fp32, reading each row once; with WRITE_SCALED also
    scaled[i] = scale · b_i in the output's dtype (dq from the fp32 product P k, in the same pass)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < M
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    if WRITE_SCALED:
        scale = tl.load(scale_ptr).to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (dd < D)[None, :]
        av = tl.load(a_ptr + rows[:, None] * stride_a + dd[None, :], mask=ok, other=0.0).to(tl.float32)
        bv = tl.load(b_ptr + rows[:, None] * stride_b + dd[None, :], mask=ok, other=0.0).to(tl.float32)
        total += tl.sum(av * bv, axis=1)
        if WRITE_SCALED:
            tl.store(scaled_ptr + rows[:, None] * stride_s + dd[None, :], (bv * scale).to(scaled_ptr.dtype.element_ty),
                     mask=ok)
    tl.store(out_ptr + rows, total, mask=row_ok)


def _row_dots(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
              scale: torch.Tensor | None = None, scaled: torch.Tensor | None = None) -> torch.Tensor:
    """[M] fp32 a_i · b_i in one pass (widening both to fp32 first moved ~1 GB at B=65536); with
    ``scaled`` also ``scaled[:] = scale · b``. Used for the positive logits (q, k) and for dq and
    dL/dscale = Σ_i q_i·(P k)_i from the fp32 product P k (five kernels per chunk before)."""
    m, d = a.shape
    out = torch.empty(m, device=a.device, dtype=torch.float32) if out is None else out
    write = scaled is not None
    block_r = 16 if interpreting() else 32
    _row_dots_kernel[(triton.cdiv(m, block_r),)](
        a, b, out, scale if write else out, scaled if write else out, m, d, a.stride(0), b.stride(0),
        scaled.stride(0) if write else 0, WRITE_SCALED=write, BLOCK_R=block_r,
        BLOCK_D=min(128, triton.next_power_of_2(d)), num_warps=4)
    return out


def _forward_lse(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, cols: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Row log-sum-exp [M] of scale·q kᵀ, and the column one [N] when ``cols`` (needs M == N),
    with the device flag [1] (int32) that says whether the exact column path was needed.

    No host synchronisation: the check of the fast column sums and the exact re-run it may
    call for are both decided on the device (``_needs_exact``, then a launch that is a no-op
    unless flagged), so the host keeps queueing the backward while the forward runs.
    """
    M, D = q.shape
    N = k.shape[0]
    blocks_of = lambda cfg: triton.cdiv(M, cfg["BLOCK_M"])  # noqa: E731
    tma = use_tma(q, k)

    def run(cfg: dict[str, int], row_lse: torch.Tensor, col_part: torch.Tensor, col_big: torch.Tensor,
            exact_flag: torch.Tensor | None = None) -> None:
        bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
        q_src, k_src = (descriptor(q, (bm, bd)), descriptor(k, (bn, bd))) if tma else (q, k)
        _clip_fwd_kernel[(blocks_of(cfg),)](
            q_src, k_src, scale, scale if exact_flag is None else exact_flag, row_lse, col_part, col_big,
            M, N, D, q.stride(0), k.stride(0), COMPUTE_COLS=cols, FAST_COLS=exact_flag is None, TMA=tma,
            SPLIT_BF16=not interpreting(), DOT_PREC=dot_prec(q.dtype), **launch_opts(cfg))

    def launch(cfg: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row_lse = torch.empty(M, device=q.device, dtype=torch.float32)
        shape = (blocks_of(cfg), N) if cols else (1,)
        col_part = torch.empty(shape, device=q.device, dtype=torch.float32)
        big = torch.empty((shape[0], triton.cdiv(N, cfg["BLOCK_N"])) if cols else (1,), device=q.device,
                          dtype=torch.float32)
        run(cfg, row_lse, col_part, big)
        return row_lse, col_part, big

    cfg = pick_config(("clip_fwd", q.dtype, M, N, D, cols, tma, q.device),
                      stream_candidates_tma() if tma else stream_candidates(), launch)
    row_lse, col_part, col_big = launch(cfg)
    if not cols:
        return row_lse, None, None
    col_lse = torch.empty(N, device=q.device, dtype=torch.float32)
    col_max = torch.empty(N, device=q.device, dtype=torch.float32)
    _column_lse(col_part, col_big, cfg["BLOCK_N"], col_lse, col_max, None)
    flag = _needs_exact(row_lse, col_max)
    # Both no-ops unless flagged: the exact partials overwrite the raw sums, then their LSE.
    run(cfg, row_lse, col_part, col_big, exact_flag=flag)
    _column_lse(col_part, None, cfg["BLOCK_N"], col_lse, None, flag)
    return row_lse, col_lse, flag


@triton.jit
def _column_lse_kernel(part_ptr, big_ptr, flag_ptr, lse_ptr, max_ptr, NB, N, TILE_N: tl.constexpr,
                       RAW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per column: natural log-sum-exp over the NB row-block partials, in one read of them.

    RAW: partials are sums relative to their tile's maximum (``big_ptr`` [NB, tiles], log2), and
    the largest log2 partial per column also goes to ``max_ptr`` for the flush check. Otherwise
    partials are already log2-sum-exps (the exact forward's) and the kernel runs only when the
    device flag is raised.
    """
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = cols < N
    nb_end = NB
    if not RAW:
        nb_end = tl.where(tl.load(flag_ptr) != 0, NB, 0)
    m = tl.full([BLOCK_C], float("-inf"), dtype=tl.float32)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    n_tiles = tl.cdiv(N, TILE_N)
    for r in range(0, nb_end):
        v = tl.load(part_ptr + r * N + cols, mask=ok, other=1.0)  # < 2^31 elements up to B=2^18
        if RAW:
            v = tl.log2(v) + tl.load(big_ptr + r * n_tiles + cols // TILE_N, mask=ok, other=0.0)
        m_new = tl.maximum(m, v)
        # -inf partials (a fully flushed sum) add nothing and must not turn the sum into NaN.
        alpha = tl.where(m == m_new, 1.0, tl.exp2(m - m_new))
        term = tl.where(v == float("-inf"), 0.0, tl.exp2(v - m_new))
        acc = acc * alpha + term
        m = m_new
    if nb_end > 0:
        tl.store(lse_ptr + cols, (m + tl.log2(acc)) * 0.6931471805599453, mask=ok)
        if RAW:
            tl.store(max_ptr + cols, m, mask=ok)


def _column_lse(part: torch.Tensor, big: torch.Tensor | None, tile_n: int, lse: torch.Tensor,
                col_max: torch.Tensor | None, flag: torch.Tensor | None) -> None:
    """Column log-sum-exps from the forward's per-block partials (see ``_column_lse_kernel``)."""
    nb, n = part.shape
    raw = big is not None
    block_c = 32 if interpreting() else 256
    _column_lse_kernel[(triton.cdiv(n, block_c),)](
        part, big if raw else part, flag if flag is not None else part, lse, col_max if raw else lse, nb, n,
        TILE_N=tile_n, RAW=raw, BLOCK_C=block_c, num_warps=4)


# How far (in log2 units) a column's log-sum-exp may sit below the largest logit before the fast
# column sums could have flushed terms that matter to it.
_FLUSH_MARGIN = 90.0


def _needs_exact(row_lse: torch.Tensor, col_max: torch.Tensor) -> torch.Tensor:
    """Device flag [1] (int32): 1 when the fast forward's column sums may have lost something.

    The fast kernel drops terms below 2^(T-126), T a tile's largest logit. T ≤ G ≤ max row LSE,
    so if every column's largest per-block partial (``col_max``, ≤ its LSE) is ≥ G - 90 (log2), each dropped
    term is < 2^-36 of its column's sum and all B of them (B ≤ 2^17) change it by < 2^-19. Any
    sane training state passes (failing needs a logit ~60 nats above some column's whole sum).
    """
    top = row_lse.max() / LN2
    return (col_max < top - _FLUSH_MARGIN).any().to(torch.int32).reshape(1)


def _backward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, grad: torch.Tensor,
              row_lse: torch.Tensor, col_lse: torch.Tensor | None, exact_flag: torch.Tensor | None, offset: int,
              coef_r: float, coef_c: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq [M, d], dk [N, d] (input dtype) and dscale (fp32 scalar) for upstream gradient ``grad``.

    The kernel writes P = dL/dS (for the given upstream gradient), one chunk of rows at a time;
    then dq = scale · P k, dk = scale · Pᵀ q on the tensor cores with fp32 outputs, and
    dL/dscale = Σ_i q_i · (P k)_i from the dq product itself.
    """
    M, D = q.shape
    N = k.shape[0]
    chunk = chunk_rows(M, N, q.element_size(), CHUNK_BYTES)
    # Rows padded to 16 bytes so the chunk can be written through a tensor descriptor; the
    # products read the [chunk, N] view with its leading dimension.
    n_pad = -(-N * q.element_size() // 16) * 16 // q.element_size()
    p_buf = torch.empty((chunk, n_pad), device=q.device, dtype=q.dtype)[:, :N]  # dL/dS for one chunk
    dq = torch.empty_like(q)
    dk32 = None  # fp32 sum over chunks of Pᵀ q
    qpk = torch.empty(M, device=q.device, dtype=torch.float32)  # q_i · (P k)_i, summed into dL/dscale
    has_cols = col_lse is not None
    col_arg = col_lse if has_cols else row_lse
    tma = use_tma(q, k, p_buf)
    progs = num_programs(q.device)
    # With column terms, the one-exponential variant runs unless the forward needed its exact
    # path (decided on the device, see ``_clip_bwd_persistent``); it needs the largest row LSE.
    modes = (1, 2) if has_cols and exact_flag is not None else (0,)
    flag_arg = exact_flag if exact_flag is not None else row_lse
    top2 = (row_lse.max() / LN2).reshape(1) if 1 in modes else row_lse
    for r0 in range(0, M, chunk):
        mc = min(chunk, M - r0)
        p = p_buf[:mc]

        def launch(cfg: dict[str, int], r0: int = r0, mc: int = mc, p: torch.Tensor = p) -> torch.Tensor:
            bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
            if tma:
                tiles = triton.cdiv(mc, bm) * triton.cdiv(N, bn)
                descs = (descriptor(q[r0:r0 + mc], (bm, bd)), descriptor(k, (bn, bd)), descriptor(p, (bm, bn)))
                for mode in modes:
                    _clip_bwd_persistent[(min(progs, tiles),)](
                        *descs, scale, grad, row_lse, col_arg, flag_arg, top2, r0, mc, N, D, offset, coef_r, coef_c,
                        HAS_COLS=has_cols, MODE=mode, NUM_PROGS=min(progs, tiles), GROUP_M=32,
                        DOT_PREC=dot_prec(q.dtype), **launch_opts(cfg))
                return p
            grid = (triton.cdiv(mc, bm), triton.cdiv(N, bn))
            _clip_bwd_kernel[grid](q, k, scale, grad, row_lse, col_arg, p,
                                   r0, mc, N, D, offset, q.stride(0), k.stride(0), p.stride(0),
                                   coef_r, coef_c, HAS_COLS=has_cols, DOT_PREC=dot_prec(q.dtype),
                                   **launch_opts(cfg))
            return p

        cfg = pick_config(("clip_bwd", q.dtype, mc, N, D, has_cols, tma, q.device),
                          persistent_candidates() if tma else tile_candidates(), launch)
        launch(cfg)
        qc = q[r0:r0 + mc]
        pk = matmul_f32(p, k)  # [mc, N] @ [N, d]
        _row_dots(qc, pk, qpk[r0:r0 + mc], scale, dq[r0:r0 + mc])
        dk32 = add_t_matmul(dk32, p, qc)
    assert dk32 is not None
    return dq, dk32.mul_(scale.float()).to(q.dtype), qpk.sum().reshape(1)


class _ClipCE(torch.autograd.Function):
    """Mean cross-entropy of the rows (and, if symmetric, the columns) of scale·q kᵀ."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int,  # type: ignore[override]
                symmetric: bool) -> torch.Tensor:
        M = q.shape[0]
        scale_d = scale.detach().reshape(1).contiguous()
        row_lse, col_lse, exact_flag = _forward_lse(q, k, scale_d, cols=symmetric)
        pos = scale_d.float() * _row_dots(q, k[offset:offset + M])  # [M] positive logits
        loss = (row_lse - pos).mean()
        if symmetric:
            assert col_lse is not None
            loss = (loss + (col_lse - pos).mean()) / 2
        ctx.save_for_backward(q, k, scale_d, row_lse, col_lse if col_lse is not None else row_lse,
                              exact_flag if exact_flag is not None else row_lse)
        ctx.offset, ctx.symmetric, ctx.scale_shape, ctx.scale_dtype = offset, symmetric, scale.shape, scale.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, scale_d, row_lse, col_lse, exact_flag = ctx.saved_tensors
        M = q.shape[0]
        coef = 1.0 / (2 * M) if ctx.symmetric else 1.0 / M
        grad = grad_out.detach().float().reshape(1).contiguous()
        dq, dk, dscale = _backward(q, k, scale_d, grad, row_lse, col_lse if ctx.symmetric else None,
                                   exact_flag if ctx.symmetric else None,
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
