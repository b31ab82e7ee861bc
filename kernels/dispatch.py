"""The one entry point the trainers call: Triton kernels on GPU, PyTorch references on CPU.

``impl``:
  * ``"auto"``      Triton when the tensors are on CUDA, the reference on CPU; for the CLIP
                    loss, the reference also below ``CLIP_FUSED_MIN_LOGITS`` (a fixed rule on
                    the shape, so a cell's numerics never depend on the machine).
  * ``"triton"``    the Triton kernel; on CPU only under ``TRITON_INTERPRET=1`` (set before the
                    kernel modules are first imported), otherwise an error.
  * ``"reference"`` the PyTorch reference, anywhere.
When Triton is asked for (explicitly, or by "auto" on CUDA) and cannot run, that is an error,
never a quiet switch to the reference: a study must not change numerics or memory behind the
researcher's back.
"""

from __future__ import annotations

import os

import torch

from inheritlab.kernels.reference import (
    clip_contrastive_loss_reference,
    linear_cross_entropy_reference,
    siglip_loss_reference,
)

__all__ = [
    "IMPLS",
    "clip_contrastive_loss",
    "siglip_loss",
    "linear_cross_entropy",
    "KernelUnavailableError",
    "triton_status",
]

IMPLS = ("auto", "triton", "reference")
# Local rows x candidate columns below which "auto" scores the CLIP loss with plain logits. The
# fused kernel exists to avoid the B x B logits; below ~4096² entries they are a few MiB and the
# plain path's few large launches win: fwd+bwd at d=512, bf16, H200 (benchmarks/results/
# clip_loss_sizes_h200.json): B=512 1.95 against 0.82 ms, 2048 1.54 against 0.91, 4096 1.69
# against 1.84, 8192 1.72 against 6.37.
CLIP_FUSED_MIN_LOGITS = 4096 * 4096
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class KernelUnavailableError(RuntimeError):
    """A Triton kernel was requested but cannot run here (no CUDA, no Triton, ...)."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_status() -> str | None:
    """None when Triton can be imported, else the reason it cannot."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # any import failure means "cannot run", with the reason
        return f"triton cannot be imported: {exc!r}"
    return None


def _choose(impl: str, fn: str, *tensors: torch.Tensor) -> str:
    """Resolve ``impl`` to "triton" or "reference", raising where Triton is asked for and can't run."""
    if impl not in IMPLS:
        raise ValueError(f"{fn}: impl={impl!r}; expected one of {IMPLS}")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{fn}: inputs are on different devices {sorted(map(str, devices))}")
    device = next(iter(devices))
    if impl == "reference" or (impl == "auto" and device.type != "cuda"):
        return "reference"
    # From here Triton was asked for (explicitly, or by "auto" on a CUDA tensor).
    if device.type != "cuda" and not _interpreting():
        raise KernelUnavailableError(
            f"{fn}: impl={impl!r} needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before "
            "importing inheritlab.kernels to run the Triton kernels on CPU, or pass impl='reference'"
        )
    if device.type == "cuda" and _interpreting():
        raise KernelUnavailableError(f"{fn}: TRITON_INTERPRET=1 is set but the tensors are on {device}")
    reason = triton_status()
    if reason is not None:
        raise KernelUnavailableError(f"{fn}: impl={impl!r} on {device}: {reason}")
    return "triton"


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype in force for ``t``'s device, if any.

    A custom autograd Function is not autocast by torch, so the dispatcher does what ``F.linear``
    would: under autocast the matmul inputs are cast (differentiably) to the autocast dtype. This
    also keeps fp32 features from reaching the kernels' slow full-fp32 path inside a bf16 step.
    """
    dev = t.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _check_float(fn: str, name: str, t: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} has dtype {t.dtype}; expected one of fp16, bf16, fp32, fp64")


def _check_scalar(fn: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor (it may carry a gradient), got {type(t).__name__}")
    if t.numel() != 1:
        raise ValueError(f"{fn}: {name} must hold one value, got shape {tuple(t.shape)}")


def _check_pair(fn: str, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    _check_float(fn, "image_features", image_features, 2)
    _check_float(fn, "text_features", text_features, 2)
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"{fn}: image_features {tuple(image_features.shape)} and text_features "
            f"{tuple(text_features.shape)} must have the same shape [B, d]"
        )
    if image_features.shape[0] == 0:
        raise ValueError(f"{fn}: empty batch (B=0)")
    if image_features.dtype != text_features.dtype:
        raise TypeError(f"{fn}: image_features is {image_features.dtype}, text_features {text_features.dtype}")


def _clip_logits(image_features: torch.Tensor, gather: bool) -> int:
    """Entries of the logits one rank would score: local rows x (world x local) columns."""
    import torch.distributed as dist

    world = dist.get_world_size() if gather and dist.is_available() and dist.is_initialized() else 1
    rows = image_features.shape[0]
    return rows * rows * world


def clip_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    impl: str = "auto",
    gather: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (already normalised) image/text features [B, d].

    ``logit_scale`` is the exponentiated scale (a 0-dim or 1-element tensor, may require grad).
    With ``gather=True`` each rank scores its local rows against all ranks' features (open_clip's
    ``ClipLoss(local_loss=True, gather_with_grad=True)``). Returns an fp32 scalar. Under
    autocast the features are cast to the autocast dtype first.
    """
    fn = "clip_contrastive_loss"
    ac = _autocast_dtype(image_features) if isinstance(image_features, torch.Tensor) else None
    if ac is not None and isinstance(text_features, torch.Tensor):
        image_features, text_features = image_features.to(ac), text_features.to(ac)
    _check_pair(fn, image_features, text_features)
    _check_scalar(fn, "logit_scale", logit_scale)
    which = _choose(impl, fn, image_features, text_features, logit_scale)
    if impl == "auto" and which == "triton" and _clip_logits(image_features, gather) < CLIP_FUSED_MIN_LOGITS:
        which = "reference"
    if which == "reference":
        return clip_contrastive_loss_reference(image_features, text_features, logit_scale, gather=gather)
    from inheritlab.kernels.clip_loss import clip_loss_triton

    return clip_loss_triton(image_features, text_features, logit_scale, gather=gather)


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    impl: str = "auto",
    gather: bool = False,
) -> torch.Tensor:
    """Sigmoid contrastive loss (SigLIP) with learnable scale (exponentiated) and bias.

    Sum over all (image, text) pairs of -log σ(±logit), divided by the local batch size, as in
    open_clip's ``SigLipLoss``; ``gather=True`` scores local images against all ranks' texts.
    """
    fn = "siglip_loss"
    ac = _autocast_dtype(image_features) if isinstance(image_features, torch.Tensor) else None
    if ac is not None and isinstance(text_features, torch.Tensor):
        image_features, text_features = image_features.to(ac), text_features.to(ac)
    _check_pair(fn, image_features, text_features)
    _check_scalar(fn, "logit_scale", logit_scale)
    _check_scalar(fn, "logit_bias", logit_bias)
    which = _choose(impl, fn, image_features, text_features, logit_scale, logit_bias)
    if which == "reference":
        return siglip_loss_reference(image_features, text_features, logit_scale, logit_bias, gather=gather)
    from inheritlab.kernels.siglip import siglip_loss_triton

    return siglip_loss_triton(image_features, text_features, logit_scale, logit_bias, gather=gather)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of the LM head ``hidden @ weight.T (+ bias)`` without keeping N×V logits.

    hidden [N, H] (flatten batch and time first), weight [V, H], targets [N] int64 with
    ``ignore_index`` for padding. ``z_loss`` adds ``z_loss * logsumexp²`` per kept token.
    ``reduction``: "mean" (over kept tokens; 0 when none is kept), "sum" or "none".
    Under autocast, hidden/weight/bias are cast to the autocast dtype first (as ``F.linear`` is).
    """
    fn = "linear_cross_entropy"
    ac = _autocast_dtype(hidden) if isinstance(hidden, torch.Tensor) else None
    if ac is not None and isinstance(weight, torch.Tensor):
        hidden, weight = hidden.to(ac), weight.to(ac)
        bias = bias.to(ac) if isinstance(bias, torch.Tensor) else bias
    _check_float(fn, "hidden", hidden, 2)
    _check_float(fn, "weight", weight, 2)
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{fn}: hidden is [N, H]={tuple(hidden.shape)} but weight is [V, H]={tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"{fn}: hidden is {hidden.dtype} but weight is {weight.dtype}")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"{fn}: targets must be a 1-D tensor of N={hidden.shape[0]} class ids, got {shape}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{fn}: targets has dtype {targets.dtype}; expected int64 or int32")
    if bias is not None:
        _check_float(fn, "bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{fn}: bias has {bias.shape[0]} entries, weight has V={weight.shape[0]} rows")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction={reduction!r}; expected 'mean', 'sum' or 'none'")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"{fn}: label_smoothing={label_smoothing!r}; expected a value in [0, 1)")
    if float(z_loss) < 0.0:
        raise ValueError(f"{fn}: z_loss={z_loss!r}; expected >= 0")
    if ignore_index >= 0 and ignore_index < weight.shape[0]:
        raise ValueError(f"{fn}: ignore_index={ignore_index} is a real class id (V={weight.shape[0]})")
    tensors = [hidden, weight, targets] + ([bias] if bias is not None else [])
    which = _choose(impl, fn, *tensors)
    if which == "reference":
        return linear_cross_entropy_reference(
            hidden, weight, targets, bias=bias, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction,
        )
    from inheritlab.kernels.linear_ce import linear_cross_entropy_triton

    return linear_cross_entropy_triton(
        hidden, weight, targets, bias=bias, ignore_index=ignore_index,
        label_smoothing=float(label_smoothing), z_loss=float(z_loss), reduction=reduction,
    )
