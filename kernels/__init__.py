"""Fused losses for pre-training: CLIP/SigLIP contrastive and LM-head cross-entropy.

Trainers call the dispatcher functions below; they run the Triton kernels on CUDA tensors and
the PyTorch references on CPU (see ``inheritlab.kernels.dispatch`` for the ``impl`` switch).
This package imports torch and triton only.
"""

from inheritlab.kernels import dispatch
from inheritlab.kernels.dispatch import (
    IMPLS,
    KernelUnavailableError,
    clip_contrastive_loss,
    linear_cross_entropy,
    siglip_loss,
    triton_status,
)
from inheritlab.kernels.reference import (
    clip_contrastive_loss_reference,
    linear_cross_entropy_reference,
    siglip_loss_reference,
)

# The dispatcher's names, and the references (for with/without comparisons).
__all__ = [
    *dispatch.__all__,
    "clip_contrastive_loss_reference",
    "siglip_loss_reference",
    "linear_cross_entropy_reference",
]
