"""Near-duplicate making: small, deterministic perturbations of an image or a text.

A near-duplicate must stay recognisably the same item (so dedup by perceptual hash or MinHash
can find it, and a model can memorise it) while not being byte-identical (so exact dedup
cannot). Every perturbation is drawn from a generator seeded by the caller (from the key).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def near_image(image: Any, rng: np.random.Generator) -> Any:
    """Crop 0–1 px per side and resize back, re-encode as JPEG (quality 75–95), jitter
    brightness by ±5 % and add faint noise — what a re-uploaded copy of an image looks like.

    ``image`` is a PIL image or encoded bytes; the result has the same form (bytes come back
    as PNG, so the copy is never byte-identical to its source).
    """
    as_bytes = isinstance(image, (bytes, bytearray))
    im = Image.open(io.BytesIO(bytes(image))).convert("RGB") if as_bytes else image.convert("RGB")
    w, h = im.size
    c = [int(v) for v in rng.integers(0, 2, size=4)]
    im = im.crop((c[0], c[1], w - c[2], h - c[3])).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
    arr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)
    arr = arr * float(rng.uniform(0.95, 1.05)) + rng.normal(0.0, 2.0, arr.shape)
    out = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")
    if not as_bytes:
        return out
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def near_text(text: str, rng: np.random.Generator) -> str:
    """Drop one word (texts of 4+ words) or, for shorter ones, swap two neighbouring words."""
    words = text.split()
    if len(words) >= 4:
        i = int(rng.integers(0, len(words)))
        return " ".join(words[:i] + words[i + 1 :])
    if len(words) >= 2:
        i = int(rng.integers(0, len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    return text + " ."
