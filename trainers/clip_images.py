"""Training images: uint8 from the loader to the device, float only in the training step.

A loader worker turns shard bytes into the smallest tensor that holds what the model sees: the
image decoded at the smallest size the codec allows (JPEG's DCT scaling when the stored image
is at least twice the target), resized on its shortest side to the rung's ``image_size``
(bicubic, antialiased) and centre-cropped, as ``uint8`` ``[S, S, 3]``. This is open_clip's
evaluation transform up to the conversion to float, so without augmentation the step sees
exactly the pixels open_clip's transform would give (``tests/unit/test_clip_images.py``).
A 512-image batch at 224 px is then 77 MB of ``uint8`` across shared memory and the host-to-
device copy, not 308 MB of ``float32``. Shards of square images slightly larger than the
training size (img2dataset's 256 px) are shipped at their stored size and resized on the
device instead (:func:`transfer_size`): at 256 px PIL's resize costs twice the decode.

In the step, :func:`device_images` converts to float, crops and resizes (augmentation, or the
transfer size down to the training size) and normalises, batched, on whatever device trains
(the CPU rungs run the same code on the CPU).

Augmentation (``rrc``) is open_clip's training crop: a random resized crop of 90–100 % of the
area with aspect ratio in [3/4, 4/3], resized back to ``S`` with PIL's bicubic kernel (as
open_clip resizes its PIL crops), batched as two small matrix products per image. It is drawn from the
seed tree per (step, data slot), so the same sample gets the same crop on any number of ranks
and loader workers, and a resumed run draws what an uninterrupted one would. It crops the
loader's ``S × S`` centre crop rather than the full stored image: with images stored at or near
the training size (img2dataset's 256 px for 224 px training) the difference is a few pixels
of border.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from inheritlab.infra.hashing import stable_rng

# open_clip's (OpenAI's) normalisation, recorded in every export's preprocess config.
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
AUGMENTS = ("none", "rrc")
RRC_SCALE, RRC_RATIO = (0.9, 1.0), (3 / 4, 4 / 3)   # open_clip's training crop
_RRC_TRIES = 10                                     # torchvision's rejection-sampling budget


def to_uint8(image: Image.Image, size: int) -> np.ndarray:
    """``image`` (RGB) resized on its shortest side to ``size`` (bicubic, antialiased) and
    centre-cropped: ``uint8 [size, size, 3]``. The sizes and rounding are torchvision's
    ``Resize(size)`` + ``CenterCrop(size)``, which open_clip's transform uses."""
    w, h = image.size
    if (w, h) != (size, size):
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new = (size, new_long) if w <= h else (new_long, size)
        if new != (w, h):
            image = image.resize(new, Image.Resampling.BICUBIC)
        w, h = image.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        if (w, h) != (size, size):
            image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def crop_boxes(study_seed: int, seed: int, step: int, slots: Sequence[int], chunk: int, size: int) -> np.ndarray:
    """Random-resized-crop boxes ``[len(slots) * chunk, 4]`` as (top, left, height, width) in
    pixels of an ``size × size`` image: ``chunk`` per slot, in slot order (a batch's order)."""
    out = np.empty((len(slots) * chunk, 4), dtype=np.int64)
    area = float(size * size)
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for i, slot in enumerate(slots):
        rng = stable_rng(study_seed, "clip-augment", seed, step, slot)
        targets = area * rng.uniform(*RRC_SCALE, size=(chunk, _RRC_TRIES))
        aspects = np.exp(rng.uniform(*log_ratio, size=(chunk, _RRC_TRIES)))
        ws = np.rint(np.sqrt(targets * aspects)).astype(np.int64)
        hs = np.rint(np.sqrt(targets / aspects)).astype(np.int64)
        ok = (ws > 0) & (ws <= size) & (hs > 0) & (hs <= size)
        offsets = rng.uniform(size=(chunk, 2))
        first = ok.argmax(axis=1)          # torchvision keeps the first try that fits
        rows = np.arange(chunk)
        # Every try failing (never at these scales) falls back to the whole image, as torchvision does.
        w = np.where(ok.any(axis=1), ws[rows, first], size)
        h = np.where(ok.any(axis=1), hs[rows, first], size)
        top = (offsets[:, 0] * (size - h + 1)).astype(np.int64)
        left = (offsets[:, 1] * (size - w + 1)).astype(np.int64)
        out[i * chunk:(i + 1) * chunk] = np.stack([top, left, h, w], axis=1)
    return out


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5), which open_clip's crop of PIL images uses."""
    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resize_weights(start: torch.Tensor, length: torch.Tensor, size: int, in_size: int) -> torch.Tensor:
    """``[B, size, in_size]``: row ``i`` resamples output pixel ``i`` of each crop
    ``[start, start + length)`` of one axis, as PIL resizes a cropped image (the kernel widened
    by the scale when shrinking, clipped to the crop and renormalised)."""
    scale = (length / size)[:, None, None]
    support = scale.clamp(min=1.0)
    centre = start[:, None, None] + (torch.arange(size, device=start.device)[None, :, None] + 0.5) * scale
    j = torch.arange(in_size, device=start.device)[None, None, :] + 0.5
    w = _cubic((j - centre) / support)
    inside = (j > start[:, None, None]) & (j < (start + length)[:, None, None])
    w = w * inside
    return w / w.sum(dim=2, keepdim=True)


def _resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image of ``x`` ``[B, 3, L, L]`` cropped to its box and resized to ``size`` (PIL's
    bicubic), batched as two matrix products per image: columns, then rows."""
    in_size = x.shape[-1]
    b = boxes.to(x.device, torch.float32, non_blocking=True)
    rows = _resize_weights(b[:, 0], b[:, 2], size, in_size)      # [B, size, L]
    cols = _resize_weights(b[:, 1], b[:, 3], size, in_size)
    # PIL resamples horizontally first and clips to the pixel range between the passes: a
    # bicubic overshoot at a sharp edge is cut before the vertical pass sees it.
    across = (x @ cols[:, None].transpose(-1, -2)).clamp_(0, 1)
    return (rows[:, None] @ across).clamp_(0, 1)


def device_images(images: torch.Tensor, *, size: int, dtype: torch.dtype, boxes: np.ndarray | None = None,
                  ) -> torch.Tensor:
    """A loader batch ``uint8 [B, L, L, 3]`` (already on the training device) as the model's
    input ``[B, 3, size, size]`` in ``dtype``: scaled to [0, 1], cropped to ``boxes`` (pixels of
    the ``L × L`` image; default the whole image) and resized to ``size`` where either applies,
    normalised. The float work is done in fp32, then cast."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    side = x.shape[-1]
    if boxes is None and side != size:
        boxes = np.tile(np.array([[0, 0, side, side]]), (x.shape[0], 1))
    if boxes is not None:
        b = torch.from_numpy(boxes)
        # A pageable host-to-device copy would wait for the GPU's queue: pinned, it does not.
        b = b.pin_memory().to(x.device, non_blocking=True) if x.is_cuda else b
        x = _resized_crops(x, b, size)
    mean, std = _normalisation(x.device)
    return x.sub_(mean).div_(std).to(dtype)


@functools.lru_cache(maxsize=8)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std as ``[1, 3, 1, 1]`` tensors on ``device``, made once (not every step)."""
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1))


def transfer_size(shards: Sequence[str], size: int) -> int:
    """The side ``L`` of the square ``uint8`` images the loader ships for training at ``size``.

    When the first sample of the first shard is square with a side in ``[size, 2·size)`` — as
    img2dataset writes (256 px for 224-px training) — the loader ships every image at that
    side and the device resizes whole batches: the CPU's bicubic resize (twice the cost of the
    decode itself at 256 px) leaves the loader. Otherwise ``size``: the loader resizes (after a
    reduced-size JPEG decode when the image is at least twice as large). Images of another
    shape are always resized on the CPU to ``L``, so either choice is correct for any data.
    """
    from inheritlab.corruptors.shards import first_samples

    ordered = sorted(str(s) for s in shards)
    sample = next(first_samples(ordered[:1], kind="any", decode=False), None)
    data = sample.get("image") if sample else None
    if not isinstance(data, (bytes, bytearray)):
        return size
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only: nothing is decoded
            w, h = im.size
    except Exception:  # a bad first image is the stream's to count; the choice falls back
        return size
    return w if w == h and size <= w < 2 * size else size
