"""The loss dispatcher: references match open_clip / torch, impl selection and argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inheritlab.kernels import (
    KernelUnavailableError,
    clip_contrastive_loss,
    linear_cross_entropy,
    siglip_loss,
)


def _feats(b: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    i = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return i, t


def test_clip_reference_matches_open_clip() -> None:
    from open_clip.loss import ClipLoss

    i, t = _feats(13, 24)
    s = torch.tensor(1 / 0.07, dtype=torch.float64)
    ours = clip_contrastive_loss(i, t, s)
    assert torch.allclose(ours, ClipLoss()(i, t, s), rtol=1e-12, atol=1e-12)


def test_siglip_reference_matches_open_clip() -> None:
    from open_clip.loss import SigLipLoss

    i, t = _feats(11, 20)
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    assert torch.allclose(siglip_loss(i, t, s, b), SigLipLoss()(i, t, s, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_linear_ce_reference_matches_torch(smoothing: float) -> None:
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(17, 8, generator=g, dtype=torch.float64), torch.randn(29, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 29, (17,), generator=g)
    y[::3] = -100
    want = F.cross_entropy(h @ w.t(), y, label_smoothing=smoothing)
    assert torch.allclose(linear_cross_entropy(h, w, y, label_smoothing=smoothing), want, rtol=1e-12)
    want_sum = F.cross_entropy(h @ w.t(), y, label_smoothing=smoothing, reduction="sum")
    assert torch.allclose(linear_cross_entropy(h, w, y, label_smoothing=smoothing, reduction="sum"), want_sum)


def test_linear_ce_all_ignored_is_zero_not_nan() -> None:
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(5, 8)
    loss = linear_cross_entropy(h, w, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(h.grad) == 0


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    i, t = _feats(4, 8)
    with pytest.raises(KernelUnavailableError, match="needs CUDA"):
        clip_contrastive_loss(i, t, torch.tensor(1.0, dtype=torch.float64), impl="triton")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: clip_contrastive_loss(torch.randn(3, 4), torch.randn(4, 4), torch.tensor(1.0)), "same shape"),
        (lambda: clip_contrastive_loss(torch.randn(3, 4), torch.randn(3, 4), torch.ones(2)), "logit_scale"),
        (lambda: clip_contrastive_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor(1.0), impl="fast"), "impl='fast'"),
        (lambda: siglip_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor(1.0), torch.ones(3)), "logit_bias"),
        (lambda: linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 6), torch.zeros(3, dtype=torch.long)), "weight is"),
        (lambda: linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long)), "targets"),
        (lambda: linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3)), "dtype"),
        (lambda: linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long), reduction="avg"), "reduction='avg'"),
        (lambda: linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long), label_smoothing=1.5), "label_smoothing=1.5"),
        (lambda: linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long), ignore_index=2), "ignore_index=2"),
    ],
)
def test_bad_arguments_name_the_value(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_autocast_casts_matmul_inputs_like_f_linear() -> None:
    # bf16 activations against an fp32 head weight inside autocast: accepted, gradients reach the
    # fp32 parameter in fp32, and the loss matches the reference on the bf16-cast inputs.
    g = torch.Generator().manual_seed(3)
    h = torch.randn(12, 8, generator=g).to(torch.bfloat16).requires_grad_()
    w = torch.randn(20, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 20, (12,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, y)
        i, t = _feats(6, 8)
        c = clip_contrastive_loss(i.float(), t.to(torch.bfloat16), torch.tensor(10.0))
    loss.backward()
    assert w.grad is not None and w.grad.dtype == torch.float32
    want = F.cross_entropy((h.float() @ w.detach().to(torch.bfloat16).float().t()), y)
    assert torch.allclose(loss, want, rtol=1e-5)
    assert torch.isfinite(c)
    with pytest.raises(TypeError, match="weight is torch.float32"):
        linear_cross_entropy(h, w, y)  # outside autocast mixed dtypes stay an error
