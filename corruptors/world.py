"""The built-in procedural image–caption world.

Each class is a visual concept — a shape, optionally with a fill pattern once there are more
classes than shapes — drawn with random position, size, rotation, colour and pixel noise on a
background. Captions mention the class word plus attributes (colour, background, size). The
out-of-distribution split keeps the classes but shifts the domain: colours and backgrounds the
training pool never shows. Classes differ by shape alone, so a tiny CLIP on 32×32 images can
learn them in a few hundred CPU steps, and the OOD gap measures reliance on colour/background.

The world is drawn at the size the models train at (32 px for the CPU rungs, 224 px for the
DataComp ones), so no rung is fed upscaled images. Small images are stored as PNG (lossless and
tiny); large ones as JPEG at quality 95 with 4:2:0 chroma subsampling, what img2dataset writes,
so a GPU rung sees the same kind of bytes as on real shards.

Everything is a pure function of the config: the same seed gives the same shard bytes.
"""

from __future__ import annotations

import copy
import io
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from inheritlab.corruptors.shards import list_shards, write_shards
from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import ShardError, SpecError
from inheritlab.infra.hashing import stable_rng

# Bump when the rendering changes: an old world.json then no longer matches and is rebuilt.
WORLD_FORMAT = 1
SPLITS = ("train", "test_id", "test_ood")

SHAPES = (
    "circle", "square", "triangle", "cross", "ring", "diamond", "saltire", "stripes",
    "checkerboard", "crescent", "hourglass", "frame", "bar", "wedge", "dots", "semicircle",
)
PATTERNS = ("", "striped", "dotted", "hollow")

# Foreground colours (RGB 0..1). ID and OOD palettes are disjoint: the OOD shift.
ID_COLOURS = {
    "red": (0.85, 0.15, 0.15), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.1), "orange": (0.95, 0.5, 0.05), "purple": (0.55, 0.2, 0.75),
}
OOD_COLOURS = {
    "pink": (1.0, 0.55, 0.75), "teal": (0.0, 0.55, 0.55), "brown": (0.5, 0.3, 0.1),
    "grey": (0.6, 0.6, 0.6),
}
ID_BACKGROUNDS = ("black", "white", "gradient")
OOD_BACKGROUNDS = ("noisy", "diagonal-striped")

CAPTION_TEMPLATES = (
    "a {colour} {cls} on a {bg} background.",
    "a photo of a {size} {colour} {cls}.",
    "a {cls} drawn in {colour}.",
    "{size} {cls}, {colour}, {bg} background",
    "an image showing a {cls}.",
    "a {colour} {cls}.",
)
PROMPT_TEMPLATES = ["a photo of a {}.", "a {} shape.", "an image showing a {}.", "a drawing of a {}."]

ImageFormat = Literal["png", "jpeg"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg")
# The tar member extension of each format (img2dataset names its JPEGs ``.jpg``).
IMAGE_EXTS: dict[str, str] = {"png": "png", "jpeg": "jpg"}
# Up to this size a world is PNG: a 32-px PNG is a couple of kB and lossless; above it PNGs of
# noisy pixels grow past 100 kB at 224 px, where a JPEG at quality 95 is several times smaller.
PNG_MAX_SIZE = 64
JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 2  # 4:2:0, PIL's default at this quality
# Shapes are drawn at this many sub-pixels per side, then box-filtered down: smooth edges
# make shapes legible at 32 px.
_SUPERSAMPLE = 2
# Sub-pixels rendered at once: bounds memory (a few float64 arrays of this many values)
# whatever the image size; the bytes do not depend on it.
_CHUNK_PIXELS = 1 << 22


def image_format_for(image_size: int) -> ImageFormat:
    """The format a world of ``image_size`` px is stored in when the study does not say."""
    return "png" if image_size <= PNG_MAX_SIZE else "jpeg"


@dataclass(frozen=True, kw_only=True)
class ImageWorldConfig:
    """Size and shape of the built-in world. ``imbalance`` is the Zipf exponent of class
    frequencies in the train pool (0 = uniform); the test splits are always balanced.
    ``image_format`` is how images are stored (a study that does not say gets
    :func:`image_format_for` its size)."""

    seed: int = 0
    num_classes: int = 10
    image_size: int = 32
    image_format: ImageFormat = "png"
    train_size: int = 4000
    test_id_size: int = 500
    test_ood_size: int = 500
    samples_per_shard: int = 500
    imbalance: float = 0.0

    def __post_init__(self) -> None:
        limit = len(SHAPES) * len(PATTERNS)
        if not 2 <= self.num_classes <= limit:
            raise SpecError(f"world.num_classes: got {self.num_classes}; allowed 2..{limit}")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 512:
            raise SpecError(f"world.image_size: got {self.image_size!r}; allowed an int in 8..512")
        if self.image_format not in IMAGE_FORMATS:
            raise SpecError(f"world.image_format: got {self.image_format!r}; allowed {list(IMAGE_FORMATS)}")
        for name in ("train_size", "test_id_size", "test_ood_size", "samples_per_shard"):
            if getattr(self, name) < 1:
                raise SpecError(f"world.{name}: got {getattr(self, name)}; expected >= 1")
        if not self.imbalance >= 0:
            raise SpecError(f"world.imbalance: got {self.imbalance}; expected a Zipf exponent >= 0")

    def build(self, out_dir: str | os.PathLike[str]) -> "WorldInfo":
        return write_image_world(self, out_dir)


@dataclass(frozen=True, kw_only=True)
class WorldInfo:
    """What a consumer needs to know about a world directory (built-in or a user's shards).

    For a user's img2dataset shards ``class_names`` is empty and ``num_classes`` is 0.
    """

    root: Path
    class_names: list[str]
    prompt_templates: list[str]
    splits: dict[str, list[str]]
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)


def class_names_for(num_classes: int) -> list[str]:
    """``circle, square, ...`` then ``striped circle, ...`` once shapes run out."""
    names = []
    for i in range(num_classes):
        pattern, shape = PATTERNS[i // len(SHAPES)], SHAPES[i % len(SHAPES)]
        names.append(f"{pattern} {shape}".strip())
    return names


# ----------------------------------------------------------------------------------- rendering


def _radius(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v)


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape in normalised coordinates (u, v in about [-1, 1]); (n, H, W).

    The radial and box distances are computed only for the shapes that use them: at 224 px
    every whole-image array costs more than the rest of a sample's rendering.
    """
    if shape == "circle":
        return _radius(u, v) < 0.95
    if shape == "square":
        return _box(u, v) < 0.8
    if shape == "triangle":
        return (v < 0.75) & (np.abs(u) < (v + 0.9) * 0.55)
    if shape == "cross":
        return ((np.abs(u) < 0.28) | (np.abs(v) < 0.28)) & (_box(u, v) < 0.95)
    if shape == "ring":
        r = _radius(u, v)
        return (r < 0.95) & (r > 0.55)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) < 1.0
    if shape == "saltire":
        return ((np.abs(u - v) < 0.35) | (np.abs(u + v) < 0.35)) & (_box(u, v) < 0.9)
    if shape == "stripes":
        return (np.sin(v * np.pi * 2.5) > 0) & (_box(u, v) < 0.9)
    if shape == "checkerboard":
        return ((np.floor(u * 2.0 + 2) + np.floor(v * 2.0 + 2)) % 2 == 0) & (_box(u, v) < 0.95)
    if shape == "crescent":
        return (_radius(u, v) < 0.95) & (np.sqrt((u - 0.45) ** 2 + v * v) > 0.75)
    if shape == "hourglass":
        return (np.abs(u) < np.abs(v) * 0.9) & (np.abs(v) < 0.95)
    if shape == "frame":
        m = _box(u, v)
        return (m < 0.95) & (m > 0.6)
    if shape == "bar":
        return (np.abs(u) < 0.3) & (np.abs(v) < 0.95)
    if shape == "wedge":
        return (v > -0.75) & (np.abs(u) < (0.9 - v) * 0.55)
    if shape == "dots":
        gu, gv = np.round(u / 0.65) * 0.65, np.round(v / 0.65) * 0.65
        return (np.sqrt((u - gu) ** 2 + (v - gv) ** 2) < 0.24) & (_box(u, v) < 1.0)
    if shape == "semicircle":
        return (_radius(u, v) < 0.95) & (v > 0.0)
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, base: np.ndarray) -> np.ndarray:
    if pattern == "":
        return base
    if pattern == "striped":
        return base & (np.sin((u + v) * np.pi * 3.0) > -0.2)
    if pattern == "dotted":
        return base & (np.sin(u * np.pi * 4) * np.sin(v * np.pi * 4) < 0.35)
    if pattern == "hollow":
        # Keep a band along the edge: erode by testing the shape at a shrunk scale.
        return base & ~_shrunk(base)
    raise ValueError(f"unknown pattern {pattern!r}")


def _shrunk(mask: np.ndarray) -> np.ndarray:
    # One-pixel erosion, twice, over the last two axes (vectorised over the batch).
    m = mask
    for _ in range(2):
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=False)
        m = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return m


def _articles(text: str) -> str:
    """Fix indefinite articles ("a orange" → "an orange") so captions read naturally."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def class_counts(n: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Exact per-class counts for a pool of n (largest remainder over Zipf weights)."""
    w = 1.0 / np.arange(1, num_classes + 1, dtype=np.float64) ** imbalance
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    rest = n - counts.sum()
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _coverage(labels: np.ndarray, scale: np.ndarray, cx: np.ndarray, cy: np.ndarray, theta: np.ndarray,
              size: int) -> np.ndarray:
    """Fraction of each pixel the class's shape covers, (n, S, S, 1) in [0, 1]."""
    n = labels.size
    ss = _SUPERSAMPLE
    H = size * ss
    grid = (np.arange(H) + 0.5) / H * 2 - 1
    gx, gy = grid[None, None, :], grid[None, :, None]
    mask = np.empty((n, H, H), dtype=bool)
    for cls in np.unique(labels):
        # Shape coordinates of this class's samples only: no whole-chunk arrays to index into.
        idx = np.nonzero(labels == cls)[0]
        dx, dy = gx - cx[idx, None, None], gy - cy[idx, None, None]
        c, s_ = np.cos(theta[idx])[:, None, None], np.sin(theta[idx])[:, None, None]
        u = (c * dx + s_ * dy) / scale[idx, None, None]
        v = (-s_ * dx + c * dy) / scale[idx, None, None]
        pattern, shape = PATTERNS[cls // len(SHAPES)], SHAPES[cls % len(SHAPES)]
        mask[idx] = _pattern_mask(pattern, u, v, _shape_mask(shape, u, v))
    # The box filter as a count of covered sub-pixels (strided adds, far cheaper than a mean
    # over two axes): the same exact fractions.
    sub = mask.view(np.uint8).reshape(n, size, ss, size, ss)
    hits = sum(sub[:, :, i, :, j] for i in range(ss) for j in range(ss))
    return (hits / (ss * ss))[..., None]


def _backgrounds(names: tuple[str, ...], bg_idx: np.ndarray, base_tone: np.ndarray, size: int,
                 noise_rng: np.random.Generator) -> np.ndarray:
    """The background of each sample, (n, S, S, 3); ``noise_rng`` supplies the noisy ones' pixels."""
    n, S = bg_idx.size, size
    g = (np.arange(S) + 0.5) / S
    bg = np.empty((n, S, S, 3))
    for b, name in enumerate(names):
        idx = np.nonzero(bg_idx == b)[0]
        if idx.size == 0:
            continue
        m = idx.size
        if name == "black":
            bg[idx] = (0.05 + 0.1 * base_tone[idx])[:, None, None, :]
        elif name == "white":
            bg[idx] = (0.85 + 0.1 * base_tone[idx])[:, None, None, :]
        elif name == "gradient":
            ramp = g[None, :, None, None] * np.ones((m, 1, S, 1))
            bg[idx] = 0.15 + 0.6 * ramp * base_tone[idx][:, None, None, :]
        elif name == "noisy":
            bg[idx] = 0.35 + 0.3 * noise_rng.uniform(0, 1, (m, S, S, 3))
        elif name == "diagonal-striped":
            stripe = ((np.arange(S)[:, None] + np.arange(S)[None, :]) // 3 % 2).astype(float)
            bg[idx] = 0.25 + 0.45 * stripe[None, :, :, None] * base_tone[idx][:, None, None, :]
    return bg


def _skip_uniform(rng: np.random.Generator, count: int, step: int = _CHUNK_PIXELS) -> None:
    """Move ``rng`` past ``count`` uniform draws without holding them all in memory."""
    for start in range(0, count, step):
        rng.uniform(0, 1, min(step, count - start))


def _encode(pixels: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if image_format == "png":
        image.save(buf, format="PNG", compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def _render_split(cfg: ImageWorldConfig, split: str, n: int, names: list[str]) -> list[dict[str, Any]]:
    """All samples of one split as dicts ready for :func:`write_shards` (encoded image bytes).

    Pixels are rendered a chunk of samples at a time, so memory stays bounded at 224 px and
    beyond. The random stream is read in the same order as if the split were drawn at once,
    which keeps every byte independent of the chunk size (and a 32-px world what it always was).
    """
    rng = stable_rng("world", WORLD_FORMAT, cfg.seed, split)
    k = cfg.num_classes
    imbalance = cfg.imbalance if split == "train" else 0.0
    labels = np.repeat(np.arange(k), class_counts(n, k, imbalance))
    labels = labels[rng.permutation(n)]
    ood = split == "test_ood"
    colours = OOD_COLOURS if ood else ID_COLOURS
    backgrounds = OOD_BACKGROUNDS if ood else ID_BACKGROUNDS
    colour_names = list(colours)
    colour_idx = rng.integers(0, len(colour_names), n)
    bg_idx = rng.integers(0, len(backgrounds), n)
    S = cfg.image_size
    scale = rng.uniform(0.45, 0.75, n)  # half-extent of the shape as a fraction of the image
    cx = rng.uniform(-1, 1, n) * (1 - scale) * 0.9
    cy = rng.uniform(-1, 1, n) * (1 - scale) * 0.9
    theta = rng.uniform(-0.35, 0.35, n)  # small rotations keep shapes recognisable
    base_tone = rng.uniform(0.0, 1.0, (n, 3))
    # Next in the stream come the pixels of every noisy background, in sample order: a copy of
    # the generator hands them out chunk by chunk while the generator itself moves past them.
    noise_rng = copy.deepcopy(rng)
    if "noisy" in backgrounds:
        _skip_uniform(rng, int(np.sum(bg_idx == backgrounds.index("noisy"))) * S * S * 3)
    palette = np.array([colours[c] for c in colour_names])
    fg = palette[colour_idx] + rng.normal(0, 0.06, (n, 3))  # colour jitter

    images: list[bytes] = []
    chunk = max(1, _CHUNK_PIXELS // (S * S * _SUPERSAMPLE**2))
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        cover = _coverage(labels[sl], scale[sl], cx[sl], cy[sl], theta[sl], S)
        img = _backgrounds(backgrounds, bg_idx[sl], base_tone[sl], S, noise_rng)
        # bg * (1 - cover) + fg * cover, then pixel noise, worked in place (same arithmetic).
        img *= 1 - cover
        img += fg[sl, None, None, :] * cover
        img += rng.normal(0, 0.03, img.shape)  # pixel noise
        img *= 255
        pix = np.clip(np.round(img, out=img), 0, 255, out=img).astype(np.uint8)
        images.extend(_encode(p, cfg.image_format) for p in pix)

    sizes = np.where(scale < 0.55, "small", np.where(scale < 0.65, "medium", "large"))
    tmpl_idx = rng.integers(0, len(CAPTION_TEMPLATES), n)
    domain = "ood" if ood else "id"
    ext = IMAGE_EXTS[cfg.image_format]
    out = []
    for i in range(n):
        cls = int(labels[i])
        attrs = {"colour": colour_names[colour_idx[i]], "bg": backgrounds[bg_idx[i]], "size": str(sizes[i])}
        caption = _articles(CAPTION_TEMPLATES[tmpl_idx[i]].format(cls=names[cls], **attrs))
        key = f"{split}_{i:07d}"
        meta = {"label": cls, "class_name": names[cls], "domain": domain, "split": split, **attrs}
        out.append({"__key__": key, "image": images[i], "image_ext": ext, "caption": caption,
                    "label": cls, "meta": meta})
    return out


# ----------------------------------------------------------------------------------- world dir


def _world_record(cfg: ImageWorldConfig) -> dict[str, Any]:
    return {"format": WORLD_FORMAT, "config": asdict(cfg)}


def _is_world_of(data: dict[str, Any], cfg: ImageWorldConfig) -> bool:
    """Whether a parsed ``world.json`` records exactly the world ``cfg`` renders."""
    config = dict(data.get("config") or {})
    # Worlds written before the format was a setting are PNG, rendered as a PNG world still is:
    # such a world is reused, not rebuilt.
    config.setdefault("image_format", "png")
    return {"format": data.get("format"), "config": config} == _world_record(cfg)


def world_info_from_json(root: Path, data: dict[str, Any]) -> WorldInfo:
    """The :class:`WorldInfo` of a world directory from its parsed ``world.json``."""
    splits = {name: [str(root / p) for p in rels] for name, rels in data["splits"].items()}
    return WorldInfo(
        root=root,
        class_names=list(data["class_names"]),
        prompt_templates=list(data["prompt_templates"]),
        splits=splits,
        num_classes=int(data["num_classes"]),
        config=dict(data.get("config") or {}),
    )


def write_image_world(cfg: ImageWorldConfig, out_dir: str | os.PathLike[str]) -> WorldInfo:
    """Write the world as WebDataset shards plus ``world.json``; reuse it if already there.

    The directory is built under a temp name and renamed into place, so a crash never leaves
    a half world that looks complete. A non-empty directory that is not a world is refused
    rather than overwritten.
    """
    root = Path(out_dir).expanduser().resolve()
    meta_path = root / "world.json"
    if meta_path.is_file():
        data = read_json(meta_path)
        if _is_world_of(data, cfg):
            return world_info_from_json(root, data)
    elif root.is_dir() and any(root.iterdir()):
        raise ShardError(str(root), None, "directory is not empty and holds no world.json; refusing to overwrite")
    names = class_names_for(cfg.num_classes)
    sizes = {"train": cfg.train_size, "test_id": cfg.test_id_size, "test_ood": cfg.test_ood_size}
    with atomic_dir(root) as tmp:
        rel: dict[str, list[str]] = {}
        for split in SPLITS:
            samples = _render_split(cfg, split, sizes[split], names)
            paths = write_shards(samples, tmp / split, samples_per_shard=cfg.samples_per_shard)
            rel[split] = [f"{split}/{p.name}" for p in paths]
        data = {
            **_world_record(cfg),
            "class_names": names,
            "num_classes": cfg.num_classes,
            "prompt_templates": PROMPT_TEMPLATES,
            "caption_templates": list(CAPTION_TEMPLATES),
            "image_ext": IMAGE_EXTS[cfg.image_format],
            "domains": {"id": {"colours": list(ID_COLOURS), "backgrounds": list(ID_BACKGROUNDS)},
                        "ood": {"colours": list(OOD_COLOURS), "backgrounds": list(OOD_BACKGROUNDS)}},
            "splits": rel,
        }
        # world.json is written last inside the temp dir: its presence marks a whole world.
        atomic_write_json(tmp / "world.json", data)
    return world_info_from_json(root, read_json(meta_path))


def load_world_info(root: str | os.PathLike[str]) -> WorldInfo:
    """A :class:`WorldInfo` for a built-in world dir, or for a user's shard dir.

    A user's directory may hold ``train/``, ``test_id/``, ``test_ood/`` sub-directories of
    shards, or ``.tar`` shards directly (an img2dataset output dir, read as the train split).
    Without ``world.json`` there is no class information (empty names, ``num_classes`` 0).
    """
    r = Path(root).expanduser().resolve()
    if not r.exists():
        raise ShardError(str(r), None, "world/shard directory does not exist")
    if not r.is_dir():
        raise ShardError(str(r), None, "expected a directory holding world.json or .tar shards")
    if (r / "world.json").is_file():
        return world_info_from_json(r, read_json(r / "world.json"))
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        if (r / split).is_dir() and any(p.suffix == ".tar" for p in (r / split).iterdir()):
            splits[split] = list_shards(r / split)
    if not splits and any(p.suffix == ".tar" for p in r.iterdir()):
        splits["train"] = list_shards(r)
    if not splits:
        raise ShardError(
            str(r), None, "no world.json and no .tar shards (expected shards directly or in train/, test_id/, test_ood/)"
        )
    return WorldInfo(root=r, class_names=[], prompt_templates=list(PROMPT_TEMPLATES), splits=splits, num_classes=0)

