"""The ViT patch embedding computed as a matrix product: the same function, the same parameters."""

from __future__ import annotations

import pytest
import torch

from inheritlab.trainers.clip_models import PatchConv2d, build_clip, patch_embed_as_matmul


@pytest.mark.parametrize(("bias", "hw"), [(False, (32, 32)), (True, (33, 37))])  # 33x37: a ragged edge dropped
def test_patch_matmul_equals_the_convolution(bias: bool, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 8, stride=8, bias=bias).double()
    x = torch.randn(2, 3, *hw, dtype=torch.double, requires_grad=True)
    g = torch.randn(2, 16, hw[0] // 8, hw[1] // 8, dtype=torch.double)
    ref = conv(x)
    ref.backward(g)
    want = [x.grad.clone(), *(p.grad.clone() for p in conv.parameters())]
    x.grad = None
    conv.zero_grad(set_to_none=True)
    conv.__class__ = PatchConv2d
    out = conv(x)
    out.backward(g)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, exp in zip([x.grad, *(p.grad for p in conv.parameters())], want):
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)


def test_only_non_overlapping_convolutions_change() -> None:
    class Visual(torch.nn.Module):
        def __init__(self, conv: torch.nn.Conv2d) -> None:
            super().__init__()
            self.conv1 = conv

    class Model(torch.nn.Module):
        def __init__(self, conv: torch.nn.Conv2d) -> None:
            super().__init__()
            self.visual = Visual(conv)

    assert patch_embed_as_matmul(Model(torch.nn.Conv2d(3, 8, 4, stride=4)))
    assert not patch_embed_as_matmul(Model(torch.nn.Conv2d(3, 8, 7, stride=4)))             # overlapping
    assert not patch_embed_as_matmul(Model(torch.nn.Conv2d(3, 8, 4, stride=4, padding=1)))  # padded
    assert not patch_embed_as_matmul(torch.nn.Linear(3, 3))                                 # no ViT at all


def test_built_model_loads_in_plain_open_clip_and_agrees() -> None:
    # Checkpoints and exports are state dicts: a plain open_clip model must take ours as is and
    # embed images the same.
    import open_clip

    ours = build_clip("clip-tiny", seed=0).model.eval()
    assert isinstance(ours.visual.conv1, PatchConv2d)
    plain = open_clip.create_model("clip-tiny").eval()
    assert type(plain.visual.conv1) is torch.nn.Conv2d
    plain.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), plain.encode_image(images), rtol=1e-5, atol=1e-5)
