"""PyTorch references for the fused losses.

These are the definitions the Triton kernels are tested against and what the dispatcher runs on
CPU. They materialise the full logits (B×B or N×V), in fp32 (or fp64 when the inputs are
fp64), so they are exact but memory-hungry: fine on CPU-sized models, not at pre-training scale.

Conventions shared with the kernels:

* ``logit_scale`` is the already exponentiated scale (open_clip passes ``logit_scale.exp()``).
* Contrastive losses with ``gather=True`` score the local features against the features of all
  ranks (``torch.distributed.nn.all_gather``, which carries gradients back to their owner), the
  positive of local row ``i`` being global column ``rank * B_local + i``. This is open_clip's
  ``ClipLoss(local_loss=True, gather_with_grad=True)`` and its ``SigLipLoss`` (any dist_impl).
* Linear cross-entropy with ``reduction="mean"`` divides by the number of non-ignored targets;
  a batch whose targets are all ignored has loss 0 (not NaN) so a fully padded micro-batch
  cannot poison a run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "clip_contrastive_loss_reference",
    "siglip_loss_reference",
    "linear_cross_entropy_reference",
    "gather_with_grad",
    "compute_dtype",
    "no_autocast",
]


def no_autocast(t: torch.Tensor) -> torch.autocast:
    """Autocast off on ``t``'s device: the references compute in fp32/fp64 even inside a bf16 step."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 if any input is fp64 (exact tests), else fp32: the reference never computes in bf16."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` along dim 0 with gradients flowing back to each rank's slice.

    Returns the concatenation over ranks and this rank's row offset into it. Every rank must hold
    the same number of rows (the all-gather has fixed-size slots).
    """
    import torch.distributed as dist
    import torch.distributed.nn as dist_nn

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("gather=True needs torch.distributed to be initialised (init_process_group)")
    parts = dist_nn.all_gather(x)
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def _clip_contrastive_loss_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gather: bool = False,
) -> torch.Tensor:
    cd = compute_dtype(image_features, text_features)
    img, txt = image_features.to(cd), text_features.to(cd)
    scale = logit_scale.to(cd)
    if gather:
        all_img, offset = gather_with_grad(img)
        all_txt, _ = gather_with_grad(txt)
        labels = torch.arange(img.shape[0], device=img.device) + offset
        logits_i = scale * img @ all_txt.t()  # [B, world*B]
        logits_t = scale * txt @ all_img.t()  # [B, world*B]
        return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
    labels = torch.arange(img.shape[0], device=img.device)
    logits = scale * img @ txt.t()  # [B, B]
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _siglip_loss_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    gather: bool = False,
) -> torch.Tensor:
    cd = compute_dtype(image_features, text_features)
    img, txt = image_features.to(cd), text_features.to(cd)
    offset = 0
    if gather:
        txt, offset = gather_with_grad(txt)
    logits = logit_scale.to(cd) * img @ txt.t() + logit_bias.to(cd)  # [B, world*B]
    rows = torch.arange(img.shape[0], device=img.device)
    z = -torch.ones_like(logits)
    z[rows, rows + offset] = 1.0
    return -F.logsigmoid(z * logits).sum() / img.shape[0]


def _linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    cd = compute_dtype(hidden, weight)
    logits = hidden.to(cd) @ weight.to(cd).t()  # [N, V]
    if bias is not None:
        logits = logits + bias.to(cd)
    keep = targets != ignore_index
    safe_t = torch.where(keep, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
    per_tok = lse - (1.0 - label_smoothing) * target_logit
    if label_smoothing:
        per_tok = per_tok - label_smoothing * logits.mean(dim=-1)
    if z_loss:
        per_tok = per_tok + z_loss * lse * lse
    per_tok = torch.where(keep, per_tok, torch.zeros_like(per_tok))
    if reduction == "none":
        return per_tok
    total = per_tok.sum()
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1)


def clip_contrastive_loss_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gather: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): mean of image→text and text→image cross-entropy."""
    with no_autocast(image_features):
        return _clip_contrastive_loss_reference(image_features, text_features, logit_scale, gather=gather)


def siglip_loss_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    gather: bool = False,
) -> torch.Tensor:
    """Sigmoid loss (SigLIP): -sum log σ(z·(s·<i,t> + b)) / B_local, z = +1 on positives, -1 else."""
    with no_autocast(image_features):
        return _siglip_loss_reference(image_features, text_features, logit_scale, logit_bias, gather=gather)


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, plus ``z_loss * lse²``.

    Per kept token: ``lse - (1-ε)·x_y - (ε/V)·Σ_c x_c + z_loss·lse²`` (torch's label smoothing,
    PaLM's z-loss). ``reduction``: "mean" over kept tokens, "sum", or "none" (0 on ignored).
    """
    with no_autocast(hidden):
        return _linear_cross_entropy_reference(
            hidden, weight, targets, bias=bias, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction,
        )
