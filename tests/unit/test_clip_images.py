"""The CLIP input pipeline: uint8 from the loader, float on the device — the same pixels as
open_clip's transform; crops drawn from the seed tree; decoding only what is kept; a resume that
continues the same sample sequence from the saved loader positions, re-decoding nothing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inheritlab.corruptors import shards as shards_mod
from inheritlab.corruptors.shards import write_shards
from inheritlab.trainers.clip_data import ClipBatchStream, SlotPosition, StreamSpec, rank_batches
from inheritlab.trainers.clip_images import MEAN, STD, crop_boxes, device_images, to_uint8
from inheritlab.trainers.clip_models import build_clip


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth image with edges (a gradient and a few discs): resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pix = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, min(w, h) / 3)
        pix[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, size=3)
    return Image.fromarray(pix.astype(np.uint8), "RGB")


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=95) if fmt in ("JPEG", "WEBP") else image.save(buf, format=fmt)
    return buf.getvalue()


def _ours(image: Image.Image, size: int) -> torch.Tensor:
    return device_images(torch.from_numpy(np.array(to_uint8(image, size)))[None], size=size, dtype=torch.float32)[0]


@pytest.mark.parametrize("w,h,size", [(32, 32, 32), (256, 256, 224), (300, 200, 224), (180, 400, 224), (100, 90, 224)])
def test_uint8_path_gives_open_clip_transform_exactly(w: int, h: int, size: int) -> None:
    import open_clip

    image = _photo(w, h, seed=w + h)
    want = open_clip.image_transform(size, is_train=False)(image)
    got = _ours(image, size)
    assert got.shape == want.shape == (3, size, size)
    # Same resize, same crop, the same float ops: equal to float32 rounding.
    assert (got - want).abs().max().item() <= 1e-6


def test_reduced_jpeg_decode_stays_close_to_the_full_decode() -> None:
    import open_clip

    data = _encoded(_photo(640, 480, seed=3), "JPEG")
    full = open_clip.image_transform(224, is_train=False)(Image.open(io.BytesIO(data)).convert("RGB"))
    fast_image = shards_mod._decode_image(data, "x.jpg", min_size=224)
    assert fast_image.size == (320, 240)  # decoded at half scale: both sides still >= 224
    fast = _ours(fast_image, 224)
    # In [0, 1] pixel units (undo the normalisation): the DCT-scaled decode differs by under
    # 1 % on average — below JPEG's own quantisation error at quality 95.
    std = torch.tensor(STD).view(3, 1, 1)
    diff = ((fast - full) * std).abs()
    assert diff.mean().item() < 0.01 and diff.max().item() < 0.25
    # A stored image smaller than twice the target decodes at full size.
    assert shards_mod._decode_image(_encoded(_photo(256, 256, 1), "JPEG"), "x.jpg", min_size=224).size == (256, 256)


def test_crop_boxes_are_seeded_per_step_and_slot_and_in_range() -> None:
    a = crop_boxes(0, 1, step=5, slots=[0, 1, 2, 3], chunk=64, size=224)
    assert np.array_equal(a, crop_boxes(0, 1, step=5, slots=[0, 1, 2, 3], chunk=64, size=224))
    # A slot's crops do not depend on which other slots the rank reads.
    assert np.array_equal(a[128:192], crop_boxes(0, 1, step=5, slots=[2], chunk=64, size=224))
    assert not np.array_equal(a, crop_boxes(0, 1, step=6, slots=[0, 1, 2, 3], chunk=64, size=224))
    assert not np.array_equal(a, crop_boxes(0, 2, step=5, slots=[0, 1, 2, 3], chunk=64, size=224))
    top, left, h, w = a.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    area = h * w / 224**2
    assert area.min() > 0.88 and area.max() <= 1.0 and (h != w).any()


def _open_clip_crop(image: Image.Image, box: tuple[int, int, int, int], size: int = 224) -> torch.Tensor:
    """What open_clip's RandomResizedCrop gives for this box: a PIL crop, a bicubic resize, normalised."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pil = TF.resized_crop(image, *box, size=[size, size], interpolation=InterpolationMode.BICUBIC)
    return TF.normalize(TF.to_tensor(pil), mean=list(MEAN), std=list(STD))


def _within_pil_rounding(got: torch.Tensor, want: torch.Tensor) -> bool:
    """PIL rounds to 8 bits between its two passes and at the end; we stay in float: within 1.5
    grey levels everywhere, a quarter of one on average."""
    diff = ((got - want) * torch.tensor(STD).view(3, 1, 1)).abs()
    return diff.max().item() < 1.5 / 255 and diff.mean().item() < 0.25 / 255


def test_device_crop_is_open_clips_crop_of_the_pil_image() -> None:
    image = _photo(224, 224, 7)
    u8 = torch.from_numpy(np.array(to_uint8(image, 224)))[None]
    identity = np.array([[0, 0, 224, 224]])
    assert (device_images(u8, size=224, dtype=torch.float32, boxes=identity) - device_images(u8, size=224, dtype=torch.float32)).abs().max() < 1e-5
    for box in [(10, 14, 205, 210), (0, 0, 212, 224), (0, 30, 224, 190), (12, 3, 200, 221)]:
        got = device_images(u8, size=224, dtype=torch.float32, boxes=np.array([box]))[0]
        assert _within_pil_rounding(got, _open_clip_crop(image, box))


def test_images_shipped_at_their_stored_size_are_resized_on_the_device_as_open_clip_does() -> None:
    import open_clip

    image = Image.open(io.BytesIO(_encoded(_photo(256, 256, 11), "JPEG"))).convert("RGB")
    shipped = torch.from_numpy(np.array(to_uint8(image, 256)))[None]      # img2dataset's 256 px, untouched
    got = device_images(shipped, size=224, dtype=torch.float32)[0]
    assert _within_pil_rounding(got, open_clip.image_transform(224, is_train=False)(image))
    # A crop drawn on the shipped 256-px image, resized to 224: open_clip's crop of the same box.
    box = (9, 12, 231, 240)
    got = device_images(shipped, size=224, dtype=torch.float32, boxes=np.array([box]))[0]
    assert _within_pil_rounding(got, _open_clip_crop(image, box))


def test_transfer_size_rule(tmp_path: Path) -> None:
    from inheritlab.trainers.clip_images import transfer_size

    def shards(name: str, w: int, h: int) -> list[str]:
        sample = {"__key__": "k0", "image": _encoded(_photo(w, h, 0), "JPEG"), "image_ext": "jpg", "caption": "x"}
        return [str(p) for p in write_shards([sample], tmp_path / name, samples_per_shard=1)]

    assert transfer_size(shards("a", 256, 256), 224) == 256     # img2dataset at 256: resized on the device
    assert transfer_size(shards("b", 224, 224), 224) == 224     # already the training size
    assert transfer_size(shards("c", 512, 512), 224) == 224     # large: reduced decode, resized on the CPU
    assert transfer_size(shards("d", 300, 256), 224) == 224     # not square
    assert transfer_size(shards("e", 32, 32), 32) == 32


# ----------------------------------------------------------------------------------- the stream


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """96 JPEG samples (64 px) in 3 shards, one of which does not decode."""
    samples: list[dict[str, Any]] = []
    for i in range(96):
        data = b"\xff\xd8 not a jpeg" if i == 41 else _encoded(_photo(64, 64, i), "JPEG")
        samples.append({"__key__": f"s{i:05d}", "image": data, "image_ext": "jpg", "caption": f"a picture {i % 4}",
                        "label": i % 4})
    return [str(p) for p in write_shards(samples, tmp_path_factory.mktemp("jpeg"), samples_per_shard=32)]


def _spec(shards: list[str], **kw: Any) -> StreamSpec:
    base = dict(shards=tuple(shards), corruptors=(), study_seed=0, seed=0, plan_dir=None, num_classes=4,
                class_names=("a", "b", "c", "d"), slots=(0, 1, 2, 3), num_slots=4, chunk=4, shuffle_buffer=16,
                bad_sample_ceiling=1.0, image_size=32)
    return StreamSpec(**{**base, **kw})


class _Decodes:
    """Counts image decodes (the expensive part a resume and a dropped sample must not pay)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = self.failed = 0
        real = shards_mod._decode_image

        def counted(*args: Any, **kw: Any) -> Any:
            self.n += 1
            try:
                return real(*args, **kw)
            except Exception:
                self.failed += 1
                raise

        monkeypatch.setattr(shards_mod, "_decode_image", counted)


def _steps(spec: StreamSpec, n: int, positions: dict[int, SlotPosition] | None = None,
           workers: int = 0) -> list[dict[str, Any]]:
    built = build_clip("clip-tiny", seed=0)
    stream = ClipBatchStream(spec, tokenizer=built.tokenizer, positions=positions)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    it = rank_batches(iter(loader), max(1, workers))
    return [next(it) for _ in range(n)]


def _positions(batch: dict[str, Any]) -> dict[int, SlotPosition]:
    return {int(v): SlotPosition.from_dict(p, where="test") for v, p in batch["positions"].items()}


def test_the_chain_decides_before_anything_is_decoded(jpeg_shards: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = _Decodes(monkeypatch)
    chain = ({"type": "subsample", "level": 0.5}, {"type": "label_noise", "level": 0.3})
    spec = _spec(jpeg_shards, corruptors=chain)
    steps = _steps(spec, 6)  # 96 samples, about half kept: two epochs or more of 16 a step
    assert max(b["epoch"] for b in steps) >= 1
    # Every decode is of a sample the step trains on (or the one that fails to decode): the
    # samples the subsample dropped were read as bytes and never decoded.
    assert decodes.n == 6 * 16 + decodes.failed and decodes.failed <= 3
    # The chain's decisions follow the keys: the same samples every epoch (the shuffle aside).
    first_epoch = {k for b in steps for k in b["keys"]}
    assert len(first_epoch) < 60
    assert steps[0]["images"].dtype == torch.uint8 and steps[0]["images"].shape == (16, 32, 32, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_positions_continues_the_same_sequence(jpeg_shards: list[str], workers: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(jpeg_shards)
    full = _steps(spec, 14)  # 95 good samples, 16 a step: an epoch boundary inside step 6, 12
    decodes = _Decodes(monkeypatch)
    first = _steps(spec, 4, workers=workers)
    second = _steps(spec, 5, _positions(first[-1]), workers=workers)   # a resume mid-epoch ...
    third = _steps(spec, 5, _positions(second[-1]), workers=workers)   # ... and a second one, across epochs
    resumed = first + second + third
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(resumed, full))
    if workers == 0:  # in-process: the decodes are visible here
        # Nothing trained before a resume was decoded again: one decode per sample, plus the bad one per epoch.
        bad = sum(p["undecodable"] for p in third[-1]["positions"].values())
        assert decodes.n == 14 * 16 + 2 + bad
    # The first-pass reports (what the trainer checks against the condition stage) survive the resumes.
    reports = {r["slot"][0]: r for b in resumed for r in b["pass_reports"]}
    want = {r["slot"][0]: r for b in full for r in b["pass_reports"]}
    assert reports == want and sum(r["read"]["skipped"].get("undecodable_image", 0) for r in want.values()) == 1


def test_a_bad_loader_state_is_named() -> None:
    from inheritlab.infra.errors import SpecError
    from inheritlab.trainers.clip_data import positions_from_state

    with pytest.raises(SpecError, match=r"ckpt: loader state has no position for data slots \[3\]"):
        positions_from_state({"0": {}, "1": {}, "2": {}}, [0, 1, 2, 3], where="ckpt")
    with pytest.raises(SpecError, match="ckpt slot 0: loader state .* is not a slot position"):
        positions_from_state({"0": {"epoch": 0}}, [0], where="ckpt")
    with pytest.raises(SpecError, match="impossible counts"):
        positions_from_state({"0": {"epoch": 0, "taken": 1, "undecodable": 2}}, [0], where="ckpt")


def test_loader_state_survives_a_real_checkpoint(jpeg_shards: list[str], tmp_path: Path) -> None:
    """train_clip saves every slot's position; the resumed run trains the same keys."""
    import json

    from inheritlab.trainers.clip_pretrain import ClipTrainConfig, train_clip

    base = dict(rung="clip-tiny", train_shards=tuple(jpeg_shards), samples_seen=8 * 16, batch_size=16, ckpt_every=3,
                log_every=1, num_classes=4, class_names=("a", "b", "c", "d"), trace_data=True, bad_sample_ceiling=0.05,
                shuffle_buffer=16)

    def keys(cell: Path) -> list[list[str]]:
        return [json.loads(x)["keys"] for x in (cell / "data" / "trace-rank0.jsonl").read_text().splitlines()]

    train_clip(ClipTrainConfig(**base, cell_dir=str(tmp_path / "full")))
    train_clip(ClipTrainConfig(**base, cell_dir=str(tmp_path / "hop"), stop_after_steps=3))
    state = torch.load(tmp_path / "hop" / "ckpt" / "step_3" / "mp_rank_00_model_states.pt", weights_only=False)
    assert sorted(state["loader"], key=int) == [str(v) for v in range(16)]  # batch 16: 16 data slots
    done = train_clip(ClipTrainConfig(**base, cell_dir=str(tmp_path / "hop")))
    assert done.resumed_from == 3 and keys(tmp_path / "hop") == keys(tmp_path / "full")
    assert done.data_check["first_pass_read"]["skipped"] == {"undecodable_image": 1}
