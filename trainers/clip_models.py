"""The CLIP rung registry: each rung is an open_clip architecture plus a fixed training recipe.

The DataComp rungs reproduce its fixed-recipe ladder (so results compare with published
baselines); the CPU rungs are tiny ViTs on 32×32 images for the embedded default and the tests.
Our own architectures are registered with open_clip under the rung name when this module is
imported, so an exported checkpoint loads with ``open_clip.create_model("clip-tiny",
pretrained=<export>/open_clip_model.pt)`` after ``import inheritlab.trainers.clip_models``; an
export directory also loads with ``open_clip.create_model("local-dir:<export dir>")``, which
needs nothing of ours (the export carries ``open_clip_config.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from inheritlab.infra.errors import SpecError

# Every rung's tokenizer is open_clip's byte-pair tokenizer, whose vocabulary ships in the
# package (nothing is downloaded).
_VOCAB = 49408


@dataclass(frozen=True, kw_only=True)
class ClipRung:
    """One model size with its fixed recipe (the study may override batch, lr and warmup)."""

    name: str
    open_clip_name: str           # name open_clip resolves (our rungs register themselves)
    model_cfg: dict[str, Any] | None  # architecture for rungs open_clip does not ship
    batch_size: int               # global batch
    lr: float
    warmup_steps: int
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    image_size: int = 224
    reference_samples_seen: int | None = None  # the DataComp scale this rung was tuned for
    device: str = "gpu"           # "cpu" rungs are sized for CPU runs; "gpu" ones are not
    # Training augmentation (trainers/clip_images.py): open_clip's random resized crop on the GPU
    # rungs; none on the 32-px CPU rungs, whose few pixels a crop would mostly cut.
    augment: str = "rrc"

    def recipe(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size, "lr": self.lr, "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay, "betas": (self.beta1, self.beta2), "eps": self.eps,
            "grad_clip": self.grad_clip, "image_size": self.image_size, "augment": self.augment,
        }


def _tiny_cfg(width: int, layers: int, embed: int, context: int, patch: int = 8) -> dict[str, Any]:
    # 8×8 patches (16 tokens on 32×32 images): measured on the built-in world, the tiny rung
    # learns shape classes (zero-shot 0.37 after 600 steps at batch 256) where 4×4 patches stay
    # at chance for as long, and each step is ~3× cheaper.
    return {
        "embed_dim": embed,
        "vision_cfg": {"image_size": 32, "layers": layers, "width": width, "patch_size": patch, "head_width": 32},
        "text_cfg": {"context_length": context, "vocab_size": _VOCAB, "width": width, "heads": width // 32,
                     "layers": layers},
    }


RUNGS: dict[str, ClipRung] = {
    r.name: r
    for r in (
        ClipRung(name="clip-tiny", open_clip_name="clip-tiny", model_cfg=_tiny_cfg(64, 2, 64, 32),
                 batch_size=256, lr=3e-3, warmup_steps=10, weight_decay=0.1, image_size=32, device="cpu", augment="none"),
        ClipRung(name="clip-mini", open_clip_name="clip-mini", model_cfg=_tiny_cfg(128, 4, 128, 32),
                 batch_size=128, lr=5e-4, warmup_steps=20, weight_decay=0.1, image_size=32, device="cpu", augment="none"),
        ClipRung(name="datacomp-small", open_clip_name="ViT-B-32", model_cfg=None, batch_size=4096,
                 lr=5e-4, warmup_steps=500, reference_samples_seen=12_800_000),
        ClipRung(name="datacomp-medium", open_clip_name="ViT-B-32", model_cfg=None, batch_size=4096,
                 lr=5e-4, warmup_steps=500, reference_samples_seen=128_000_000),
        ClipRung(name="datacomp-large", open_clip_name="ViT-B-16", model_cfg=None, batch_size=8192,
                 lr=5e-4, warmup_steps=500, reference_samples_seen=1_280_000_000),
        ClipRung(name="datacomp-xlarge", open_clip_name="ViT-L-14", model_cfg=None, batch_size=90112,
                 lr=1e-3, warmup_steps=10_000, beta2=0.95, reference_samples_seen=12_800_000_000),
    )
}


def get_rung(name: str) -> ClipRung:
    """The rung called ``name``; an unknown name is a spec error listing the known ones."""
    try:
        return RUNGS[name]
    except KeyError:
        raise SpecError(f"model rung {name!r} is not a CLIP rung; known: {sorted(RUNGS)}") from None


_registered = False


def register_open_clip_configs() -> None:
    """Make open_clip resolve our rung names (idempotent, per process).

    open_clip's registry is fed from JSON files; we write ours to a private directory once.
    """
    global _registered
    if _registered:
        return
    import open_clip

    folder = Path(tempfile.gettempdir()) / f"inheritlab-open-clip-configs-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    for rung in RUNGS.values():
        if rung.model_cfg is None:
            continue
        target = folder / f"{rung.open_clip_name}.json"
        text = json.dumps(rung.model_cfg, indent=2, sort_keys=True)
        if not target.is_file() or target.read_text() != text:
            # Per-process temp name + rename: concurrent workers never read half a file.
            tmp = folder / f".{rung.open_clip_name}.{os.getpid()}.tmp"
            tmp.write_text(text)
            os.replace(tmp, target)
    open_clip.add_model_config(folder)
    _registered = True


# Importing the module is enough for open_clip to know our rung names.
register_open_clip_configs()


@dataclass(frozen=True)
class BuiltClip:
    """A model with the image transform and tokenizer that go with it."""

    model: torch.nn.Module
    transform: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    rung: ClipRung
    model_cfg: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # noqa: ANN204 - ``model, transform, tokenizer = build_clip(...)``
        return iter((self.model, self.transform, self.tokenizer))


def open_clip_model_cfg(rung: ClipRung) -> dict[str, Any]:
    """The open_clip architecture dict of ``rung`` (ours, or open_clip's shipped one)."""
    import open_clip

    register_open_clip_configs()
    cfg = open_clip.get_model_config(rung.open_clip_name)
    if cfg is None:
        raise SpecError(f"open_clip does not know architecture {rung.open_clip_name!r} (rung {rung.name})")
    return cfg


def build_clip(rung: str | ClipRung, *, pretrained: str | None = None, seed: int | None = None) -> BuiltClip:
    """Build ``rung``'s open_clip model (random init, or weights from ``pretrained``), its
    evaluation image transform and tokenizer. ``seed`` fixes the initialisation."""
    import open_clip

    r = get_rung(rung) if isinstance(rung, str) else rung
    register_open_clip_configs()
    if seed is not None:
        torch.manual_seed(seed)
    model = open_clip.create_model(r.open_clip_name, pretrained=pretrained)
    patch_embed_as_matmul(model)
    cfg = open_clip_model_cfg(r)
    transform = open_clip.image_transform(r.image_size, is_train=False)
    tokenizer = open_clip.get_tokenizer(r.open_clip_name)
    return BuiltClip(model=model, transform=transform, tokenizer=tokenizer, rung=r, model_cfg=cfg)


class PatchConv2d(torch.nn.Conv2d):
    """A ViT patch embedding (kernel = stride, no padding) computed as one matrix product.

    For non-overlapping patches the convolution is exactly ``patches @ weight.T``; cuDNN's
    default algorithm for this shape is not a tensor-core GEMM (ViT-B/32 at batch 512 on an
    H200: 4.3 ms forward and 5.1 ms weight gradient a step, 11 % of the step, where the matrix
    product takes a fraction of a millisecond: benchmarks/results/clip_step_h200.md). Same
    parameters and state-dict keys as the convolution it replaces, so checkpoints and exports
    load in plain open_clip.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        (p, q), o = self.kernel_size, self.out_channels
        gh, gw = h // p, w // q
        patches = x[:, :, :gh * p, :gw * q].reshape(b, c, gh, p, gw, q).permute(0, 2, 4, 1, 3, 5)
        y = torch.nn.functional.linear(patches.reshape(b * gh * gw, c * p * q), self.weight.reshape(o, -1), self.bias)
        return y.reshape(b, gh, gw, o).permute(0, 3, 1, 2)   # the convolution's [B, O, gh, gw]


def patch_embed_as_matmul(model: torch.nn.Module) -> bool:
    """Compute an open_clip ViT's patch embedding as a matrix product (in place; see
    ``PatchConv2d``). The rule: only a plain non-overlapping convolution qualifies (kernel =
    stride, no padding or dilation, one group); anything else is left to cuDNN. True if changed."""
    conv = getattr(getattr(model, "visual", None), "conv1", None)
    if type(conv) is not torch.nn.Conv2d:
        return False
    if (conv.kernel_size != conv.stride or conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.padding_mode != "zeros"):
        return False
    conv.__class__ = PatchConv2d   # same module, same parameters: only forward changes
    return True


def compile_towers(model: torch.nn.Module) -> torch.nn.Module:
    """Put the two transformer towers of an open_clip model under torch.compile (in place).

    The towers (``visual``; the text ``transformer``) are where the FLOPs are; token embedding,
    pooling, projections and the loss stay eager, the loss being our own Triton kernel. Module
    names and the state dict are unchanged, so checkpoints and exports are unaffected.
    """
    for name in ("visual", "transformer"):
        tower = getattr(model, name, None)
        if tower is None:
            raise ValueError(f"compile_towers: {type(model).__name__} has no {name!r} tower (not an open_clip CLIP)")
        tower.compile()
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tower_flops(width: int, layers: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    # Per token per layer: QKV + out projections (4·w²) and the MLP (2·r·w²) multiply-adds, plus
    # attention scores and mixing (2·tokens·w); ×2 FLOPs per multiply-add.
    per_token = 2.0 * (4 * width * width + 2 * mlp_ratio * width * width + 2 * tokens * width)
    return per_token * tokens * layers


def flops_per_sample(rung: str | ClipRung) -> float:
    """Approximate training FLOPs per image–text pair (forward + backward ≈ 3× forward).

    Counts the transformer blocks of both towers and the patch embedding; ignores norms,
    softmax and the loss, which are a few percent at every rung.
    """
    r = get_rung(rung) if isinstance(rung, str) else rung
    cfg = open_clip_model_cfg(r)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    image = v.get("image_size", r.image_size)
    image = image if isinstance(image, int) else image[0]
    patch = v["patch_size"]
    n_patch = (image // patch) ** 2
    fwd = _tower_flops(v["width"], v["layers"], n_patch + 1, v.get("mlp_ratio", 4.0))
    fwd += 2.0 * n_patch * (3 * patch * patch) * v["width"]
    fwd += _tower_flops(t["width"], t["layers"], t.get("context_length", 77), t.get("mlp_ratio", 4.0))
    fwd += 2.0 * (v["width"] + t["width"]) * cfg["embed_dim"]
    return 3.0 * fwd
