"""The Triton kernels on a CUDA GPU in bf16/fp16 against fp64 references over odd shapes.

The reference sees the same rounded inputs, so the differences measured are the kernels' own
(bf16 storage of dL/dlogits and of LM logits; fp32 accumulation everywhere else).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import inheritlab.kernels.clip_loss as clip_mod  # noqa: E402
from inheritlab.kernels import (  # noqa: E402
    KernelUnavailableError,
    clip_contrastive_loss,
    linear_cross_entropy,
    siglip_loss,
)

DEV = "cuda"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _features(b: int, d: int, aligned: float, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=DEV).manual_seed(seed)
    i = F.normalize(torch.randn(b, d, device=DEV, generator=g), dim=-1)
    t = F.normalize(aligned * i + torch.randn(b, d, device=DEV, generator=g), dim=-1)
    return i.to(dtype), t.to(dtype)


CASES = [
    (1, 64, 14.3, 0.0, torch.bfloat16),
    (1000, 512, 14.3, 0.0, torch.bfloat16),
    (4097, 512, 100.0, 1.0, torch.bfloat16),  # huge logits, a ragged last tile
    (777, 96, 1e-3, 0.0, torch.bfloat16),  # tiny logits
    (1500, 256, 30.0, 0.5, torch.float16),
    (300, 40, 20.0, 0.5, torch.float32),
]


def _agrees_with_reference(loss, inputs: list[torch.Tensor], dtype: torch.dtype, *, grad_dtype: bool) -> None:
    """The Triton kernel against the float64 reference: loss and every gradient."""
    ours = [x.clone().requires_grad_() for x in inputs]
    ref = [x.double().clone().requires_grad_() for x in inputs]
    lo = loss(*ours, impl="triton")
    lr = loss(*ref, impl="reference")
    lo.backward()
    lr.backward()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert abs(lo.item() - lr.item()) <= max(tol / 4, 1e-5) * max(1.0, abs(lr.item()))
    for a, r in zip(ours, ref):
        if grad_dtype:
            assert a.grad.dtype == a.dtype
        assert _rel(a.grad, r.grad) < tol


@pytest.mark.parametrize(("b", "d", "scale", "aligned", "dtype"), CASES)
def test_clip_gpu(b: int, d: int, scale: float, aligned: float, dtype: torch.dtype) -> None:
    i, t = _features(b, d, aligned, dtype, seed=b)
    _agrees_with_reference(clip_contrastive_loss, [i, t, torch.tensor(scale, device=DEV)], dtype, grad_dtype=True)


@pytest.mark.parametrize(("b", "d", "scale", "aligned", "dtype"), CASES)
def test_siglip_gpu(b: int, d: int, scale: float, aligned: float, dtype: torch.dtype) -> None:
    i, t = _features(b, d, aligned, dtype, seed=b + 7)
    s, bias = torch.tensor(scale, device=DEV), torch.tensor(-scale / 2, device=DEV)
    _agrees_with_reference(siglip_loss, [i, t, s, bias], dtype, grad_dtype=False)


@pytest.mark.parametrize(("b", "expect"), [(512, "reference"), (4096, "triton")])
def test_clip_auto_follows_the_size_rule(b: int, expect: str) -> None:
    # "auto" scores small batches with plain logits (dispatch.CLIP_FUSED_MIN_LOGITS), large ones fused.
    i, t = _features(b, 512, 0.5, torch.bfloat16, seed=b)
    s = torch.tensor(30.0, device=DEV)
    assert torch.equal(clip_contrastive_loss(i, t, s), clip_contrastive_loss(i, t, s, impl=expect))


def test_clip_backward_in_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip_mod, "CHUNK_BYTES", 512 * 3000 * 2)  # 512-row chunks of 3000 columns
    i, t = _features(3000, 512, 0.5, torch.bfloat16, seed=5)
    s = torch.tensor(30.0, device=DEV)
    ours = [x.clone().requires_grad_() for x in (i, t, s)]
    ref = [x.double().clone().requires_grad_() for x in (i, t, s)]
    clip_contrastive_loss(*ours, impl="triton").backward()
    clip_contrastive_loss(*ref, impl="reference").backward()
    for a, r in zip(ours, ref):
        assert _rel(a.grad, r.grad) < 2e-2


LCE_CASES = [
    # (N, H, V, smoothing, z_loss, reduction, bias, logit_mult, ignore_every, dtype)
    (1, 64, 1000, 0.0, 0.0, "mean", False, 1.0, 0, torch.bfloat16),
    (3000, 256, 32001, 0.0, 0.0, "mean", False, 1.0, 5, torch.bfloat16),
    (777, 128, 50304, 0.1, 1e-4, "sum", True, 1.0, 3, torch.bfloat16),
    (500, 128, 5003, 0.0, 1e-3, "none", True, 1.0, 4, torch.bfloat16),
    (400, 64, 4099, 0.0, 0.0, "mean", False, 1e-4, 2, torch.bfloat16),  # tiny logits
    (600, 128, 7001, 0.05, 0.0, "mean", False, 1.0, 3, torch.float16),
    (300, 64, 3001, 0.1, 1e-3, "mean", True, 1.0, 3, torch.float32),
]


@pytest.mark.parametrize(("n", "h", "v", "eps", "z", "reduction", "bias", "mult", "ignore_every", "dtype"), LCE_CASES)
def test_linear_ce_gpu(n: int, h: int, v: int, eps: float, z: float, reduction: str, bias: bool, mult: float,
                       ignore_every: int, dtype: torch.dtype) -> None:
    g = torch.Generator(device=DEV).manual_seed(n + v)
    hid = torch.randn(n, h, device=DEV, generator=g).to(dtype)
    w = (torch.randn(v, h, device=DEV, generator=g) * mult / h**0.5).to(dtype)
    b = torch.randn(v, device=DEV, generator=g).to(dtype) if bias else None
    y = torch.randint(0, v, (n,), device=DEV, generator=g)
    if ignore_every:
        y[::ignore_every] = -100
    ins = [hid, w] + ([b] if bias else [])
    ours = [x.clone().requires_grad_() for x in ins]
    ref = [x.double().clone().requires_grad_() for x in ins]
    kw = dict(label_smoothing=eps, z_loss=z, reduction=reduction)
    lo = linear_cross_entropy(ours[0], ours[1], y, bias=ours[2] if bias else None, **kw)
    lr = linear_cross_entropy(ref[0], ref[1], y, bias=ref[2] if bias else None, impl="reference", **kw)
    up = torch.rand(lr.shape, device=DEV, dtype=torch.float64) + 0.5
    (lo * up.float()).sum().backward()
    (lr * up).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert _rel(lo, lr) < tol
    for a, r in zip(ours, ref):
        assert a.grad.dtype == a.dtype
        assert _rel(a.grad, r.grad) < tol


def test_linear_ce_huge_logits_gpu() -> None:
    # Logits in the hundreds: their bf16 rounding by the matmul (as in torch, Liger and
    # cut-cross-entropy) dominates a comparison with fp64 logits, so the reference takes the very
    # bf16 logits the kernel sees (one chunk, same matmul) and must agree on the log-sum-exp
    # (no overflow) and on the gradients that follow from them.
    g = torch.Generator(device=DEV).manual_seed(11)
    hid = torch.randn(400, 64, device=DEV, generator=g).to(torch.bfloat16)
    w = (torch.randn(4099, 64, device=DEV, generator=g) * 30 / 8).to(torch.bfloat16)
    y = torch.randint(0, 4099, (400,), device=DEV, generator=g)
    x = (hid @ w.t()).double().requires_grad_()
    assert x.abs().max() > 100
    ref = F.cross_entropy(x, y)
    ref.backward()
    ours = [hid.clone().requires_grad_(), w.clone().requires_grad_()]
    loss = linear_cross_entropy(*ours, y)
    loss.backward()
    assert abs(loss.item() - ref.item()) <= 1e-4 * abs(ref.item())
    assert _rel(ours[0].grad, x.grad @ w.double()) < 2e-2
    assert _rel(ours[1].grad, x.grad.t() @ hid.double()) < 2e-2


def test_linear_ce_all_ignored_gpu() -> None:
    hid = torch.randn(64, 32, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(100, 32, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    loss = linear_cross_entropy(hid, w, torch.full((64,), -100, device=DEV))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(w.grad) == 0


def test_interpreter_flag_with_cuda_tensors_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    i, t = _features(8, 16, 0.0, torch.bfloat16, seed=0)
    with pytest.raises(KernelUnavailableError):
        clip_contrastive_loss(i, t, torch.tensor(1.0, device=DEV), impl="triton")


def _train(impl: str, kind: str, steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    g = torch.Generator(device=DEV).manual_seed(1)
    losses = []
    if kind == "clip":
        enc_i, enc_t = torch.nn.Linear(64, 128).to(DEV), torch.nn.Linear(64, 128).to(DEV)
        log_scale = torch.nn.Parameter(torch.tensor(2.0, device=DEV))
        params = [*enc_i.parameters(), *enc_t.parameters(), log_scale]
        x = torch.randn(512, 64, device=DEV, generator=g)
        y = x @ torch.randn(64, 64, device=DEV, generator=g) + 0.1 * torch.randn(512, 64, device=DEV, generator=g)
    else:
        emb, head = torch.nn.Embedding(5003, 128).to(DEV), torch.nn.Linear(128, 5003).to(DEV)
        params = [*emb.parameters(), *head.parameters()]
        tokens = torch.randint(0, 5003, (2048,), device=DEV, generator=g)
        targets = (tokens * 7 + 3) % 5003
        targets[::9] = -100
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if kind == "clip":
                fi, ft = F.normalize(enc_i(x), dim=-1), F.normalize(enc_t(y), dim=-1)
                loss = clip_contrastive_loss(fi, ft, log_scale.exp(), impl=impl)
            else:
                hid = emb(tokens).to(torch.bfloat16)
                loss = linear_cross_entropy(hid, head.weight.to(torch.bfloat16), targets,
                                            bias=head.bias.to(torch.bfloat16), z_loss=1e-4, impl=impl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["clip", "lm"])
def test_mini_model_bf16_loss_curve_matches_reference(kind: str) -> None:
    ours, ref = _train("triton", kind), _train("reference", kind)
    assert ref[-1] < 0.7 * ref[0]
    # bf16 features/logits: curves agree to bf16 rounding, not bit for bit.
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert abs(a - b) <= 2e-2 * max(1.0, abs(b)), (step, a, b)
