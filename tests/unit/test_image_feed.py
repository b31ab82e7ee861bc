"""Decoding JPEGs in the training process (trainers.image_feed): which images the loader ships
encoded, that the decode is the loader's pixel for pixel, and that a cell trains identically
either way (on the CPU, where torchvision's libjpeg-turbo stands in for nvJPEG)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inheritlab.infra.errors import ShardError, SpecError
from inheritlab.trainers.image_feed import (DecodedRow, DeviceFeed, decode_rows, deferrable_jpeg, resolve_decode,
                                            worker_decodes)


def _photo(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, side)
    g = np.meshgrid(x, x)
    smooth = np.stack([g[0], g[1], np.outer(np.sin(x / 9), np.cos(x / 13)) * 120 + 128], -1)
    return np.clip(smooth + rng.integers(-25, 25, smooth.shape), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85, **kw)
    return buf.getvalue()


def test_only_complete_baseline_rgb_jpegs_of_the_transfer_size_are_deferred() -> None:
    good = _jpeg(_photo(32))
    assert deferrable_jpeg(good, 32)
    assert not deferrable_jpeg(good, 40)                                   # another size: resized in the worker
    assert not deferrable_jpeg(good[:-40], 32)                             # truncated
    assert not deferrable_jpeg(_jpeg(_photo(32), progressive=True), 32)    # progressive scan
    grey = io.BytesIO()
    Image.fromarray(_photo(32)[..., 0]).save(grey, format="JPEG")
    assert not deferrable_jpeg(grey.getvalue(), 32)
    png = io.BytesIO()
    Image.fromarray(_photo(32)).save(png, format="PNG")
    assert not deferrable_jpeg(png.getvalue(), 32)
    assert not deferrable_jpeg(b"\xff\xd8 not a jpeg \xff\xd9", 32)


def test_decoded_rows_are_the_loaders_pixels_in_batch_order() -> None:
    pixels = [_photo(32, seed=i) for i in range(5)]
    encoded = [_jpeg(p, subsampling=i % 3) for i, p in enumerate(pixels)]
    pil = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded]
    # Rows 1 and 3 were decoded in the worker (uint8 arrays); the rest travel encoded.
    row = lambda i: ("s.tar", f"{i}.jpg", encoded[i])  # noqa: E731
    rows = [row(0), pil[1], row(2), pil[3], row(4)]
    out = decode_rows(rows, torch.device("cpu"))
    assert out.shape == (5, 32, 32, 3) and out.dtype == torch.uint8
    for i in range(5):
        assert np.array_equal(out[i].numpy(), pil[i]), i
    only_encoded = decode_rows([row(0), row(2)], torch.device("cpu"))
    assert np.array_equal(only_encoded.numpy(), np.stack([pil[0], pil[2]]))


def test_the_workers_share_is_exact_evenly_spread_and_fixed_by_position() -> None:
    for share in (0.0, 0.25, 0.3, 0.5, 1.0):
        chosen = [i for i in range(1000) if worker_decodes(i, share)]
        assert len(chosen) == round(1000 * share), share
        if 0 < share < 1:  # spread: no run of positions longer than 1/share without one
            assert max(np.diff([-1, *chosen, 1000])) <= int(np.ceil(1 / share)), share


def test_a_resumed_stream_decodes_in_the_worker_what_the_uninterrupted_one_did(tmp_path: Path) -> None:
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.trainers.clip_data import SlotPosition, StreamSpec, iter_epoch_samples

    world = write_image_world(ImageWorldConfig(seed=0, train_size=64, test_id_size=8, test_ood_size=8,
                                               samples_per_shard=32, image_format="jpeg"), tmp_path / "world")
    spec = StreamSpec(shards=tuple(world.splits["train"]), corruptors=(), study_seed=0, seed=0, plan_dir=None,
                      num_classes=10, class_names=(), slots=(1,), num_slots=4, chunk=2, image_size=32,
                      device_decode=True, worker_decode_share=0.3)

    def where(position: SlotPosition | None) -> list[tuple[str, bool]]:  # (key, decoded in the worker)
        return [(s["__key__"], not isinstance(s["image"], bytes))
                for s in iter_epoch_samples(spec, 1, 0, position=position)]

    whole = where(None)
    assert 0 < sum(w for _, w in whole) < len(whole)
    assert where(SlotPosition(epoch=0, taken=5)) == whole[5:]


class _Part(torch.utils.data.IterableDataset):
    """One loader part as ClipBatchStream makes it under device decoding with a worker share."""

    def __init__(self, encoded: list[bytes], pixels: list[np.ndarray]) -> None:
        self.encoded, self.pixels = encoded, pixels

    def __iter__(self) -> Iterator[dict[str, Any]]:
        block = torch.from_numpy(np.stack(self.pixels))
        yield {"images": [DecodedRow(block, i // 2) if i % 2 else ("s.tar", f"{i}.jpg", self.encoded[i])
                          for i in range(len(self.encoded))]}


def test_a_parts_worker_decoded_rows_cross_as_one_block_and_decode_in_order() -> None:
    pixels = [_photo(32, seed=i) for i in range(6)]
    encoded = [_jpeg(p) for p in pixels]
    pil = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded]
    loader = torch.utils.data.DataLoader(_Part(encoded, pil[1::2]), batch_size=None, num_workers=1)
    rows = next(iter(loader))["images"]
    assert [type(r).__name__ for r in rows] == ["list", "DecodedRow"] * 3
    # Pickled once for the part: one block (one shared-memory segment), not one per image.
    assert rows[1].block is rows[3].block is rows[5].block and rows[1].block.shape == (3, 32, 32, 3)
    out = decode_rows(rows, torch.device("cpu"))
    assert np.array_equal(out.numpy(), np.stack(pil))
    assert rows[1].pin_memory() is rows[1]  # the loader's pinning leaves the block to decode_rows


def test_a_worker_share_outside_zero_to_one_is_named() -> None:
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig

    with pytest.raises(SpecError, match=r"worker_decode_share: got 1.5; expected a share in \[0, 1\]"):
        ClipTrainConfig(rung="clip-tiny", train_shards=("a.tar",), cell_dir="c", samples_seen=64,
                        worker_decode_share=1.5)


def test_a_jpeg_that_passes_the_check_but_does_not_decode_is_named() -> None:
    good = _jpeg(_photo(32))
    # Scramble the entropy-coded data behind an intact header and end marker.
    broken = good[:200] + bytes(len(good) - 202) + good[-2:]
    assert deferrable_jpeg(broken, 32)
    with pytest.raises(ShardError, match="bad shard s-3.tar member '000042.jpg': the JPEG passed"):
        decode_rows([("s-3.tar", "000041.jpg", good), ("s-3.tar", "000042.jpg", broken)], torch.device("cpu"))


def test_decode_choice() -> None:
    assert resolve_decode("auto", use_gpu=False) is False
    assert resolve_decode("device", use_gpu=False) is True
    assert resolve_decode("loader", use_gpu=True) is False
    with pytest.raises(SpecError, match="image_decode: got 'gpu'"):
        resolve_decode("gpu", use_gpu=False)


def _numbered(n: int, reads: list[int] | None = None, delay: float = 0.0) -> Iterator[dict[str, Any]]:
    for i in range(n):
        time.sleep(delay)
        if reads is not None:
            reads.append(i)
        yield {"images": torch.full((1, 2, 2, 3), i, dtype=torch.uint8)}


def test_the_feed_hands_out_batches_in_order_and_times_them() -> None:
    with DeviceFeed(_numbered(3), torch.device("cpu"), count=3) as feed:
        got = [int(feed.take()[1][0, 0, 0, 0]) for _ in range(3)]
        with pytest.raises(RuntimeError, match="all 3 batches"):
            feed.take()
    assert got == [0, 1, 2]
    timed = feed.timings(skip=0)
    assert timed["batches"] == 3 and set(timed) == {"batches", "wait_ms", "read_ms", "decode_ms"}
    assert all(timed[k]["median"] <= timed[k]["p90"] for k in ("wait_ms", "read_ms", "decode_ms"))


def test_the_feed_works_ahead_of_the_training_thread_but_never_past_its_count() -> None:
    reads: list[int] = []
    with DeviceFeed(_numbered(6, reads), torch.device("cpu"), count=4) as feed:
        time.sleep(0.3)
        # Before any take: batch 0 decoded and waiting, batch 1 decoded, batch 2 read.
        assert reads == [0, 1, 2]
        got = [int(feed.take()[1][0, 0, 0, 0]) for _ in range(4)]
        time.sleep(0.2)
    assert got == [0, 1, 2, 3] and reads == [0, 1, 2, 3]


def test_the_decode_overlaps_the_step_instead_of_following_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step and a decode of 0.1 s each: the feed decodes while the step runs, so after the
    first batch the training thread does not wait (a decode started only after each step was
    queued made every step wait for it)."""
    from inheritlab.trainers import image_feed

    def slow_decode(rows: Any, device: torch.device, **_: Any) -> torch.Tensor:
        time.sleep(0.1)
        return torch.zeros((len(rows), 2, 2, 3), dtype=torch.uint8)

    monkeypatch.setattr(image_feed, "decode_rows", slow_decode)
    batches = ({"images": [("s.tar", f"{i}.jpg", b"")]} for i in range(8))
    with DeviceFeed(batches, torch.device("cpu"), count=8) as feed:
        for _ in range(8):
            feed.take()
            time.sleep(0.1)  # the step
    timed = feed.timings(skip=1)
    assert timed["decode_ms"]["median"] >= 90 and timed["wait_ms"]["median"] < 30, timed


def test_the_feed_times_what_the_training_thread_waits_for() -> None:
    """A slow loader shows as read time and, unhidden by a step, as the training thread's wait."""
    with DeviceFeed(_numbered(4, delay=0.05), torch.device("cpu"), count=4) as feed:
        for _ in range(4):
            feed.take()
    timed = feed.timings(skip=0)
    assert timed["read_ms"]["median"] >= 45 and timed["wait_ms"]["median"] >= 40


def test_a_loader_error_is_raised_in_its_batchs_place_and_close_stops_the_feed() -> None:
    def failing() -> Iterator[dict[str, Any]]:
        yield from _numbered(2)
        raise ShardError("s-1.tar", "000007.jpg", "truncated member")

    with DeviceFeed(failing(), torch.device("cpu"), count=5) as feed:
        assert [int(feed.take()[1][0, 0, 0, 0]) for _ in range(2)] == [0, 1]
        with pytest.raises(ShardError, match="000007.jpg"):
            feed.take()
    reads: list[int] = []
    feed = DeviceFeed(_numbered(100, reads), torch.device("cpu"), count=100)
    feed.take()
    feed.close()  # training ended early: the threads stop instead of decoding the rest
    time.sleep(0.5)
    assert not feed._thread.is_alive() and len(reads) <= 4


def test_a_cell_trains_identically_with_the_device_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.trainers import image_feed
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig, train_clip

    shipped: list[int] = []  # encoded rows reaching the training process, per batch
    real = image_feed.decode_rows
    monkeypatch.setattr(image_feed, "decode_rows",
                        lambda rows, device: shipped.append(sum(isinstance(r, list) for r in rows)) or real(rows, device))

    world = write_image_world(ImageWorldConfig(seed=0, train_size=256, test_id_size=16, test_ood_size=16,
                                               samples_per_shard=64, image_format="jpeg"), tmp_path / "world")
    curves = {}
    for decode, share in (("loader", None), ("device", 0.0), ("device", 0.25)):
        done = train_clip(ClipTrainConfig(
            rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(tmp_path / f"{decode}-{share}"),
            samples_seen=6 * 32, batch_size=32, log_every=1, loader_workers=2, image_decode=decode,
            worker_decode_share=share,
            corruptors=({"type": "label_noise", "level": 0.3, "mode": "symmetric"},), num_classes=10))
        curves[decode, share] = [v for _, v in done.loss_curve]
        # The summary says where images were decoded, and the workers' share of it.
        assert (done.extra["step"]["device_decode"], done.extra["step"]["worker_decode_share"]) == (
            decode == "device", share if decode == "device" else None)
    assert len(curves["loader", None]) == 6
    assert curves["device", 0.0] == curves["loader", None] == curves["device", 0.25]
    # Every image travelled encoded under "device", a quarter of them decoded in the workers under
    # the share, and none under "loader".
    assert shipped == [32] * 6 + [24] * 6
