"""JPEG decoding on the training device: the loader ships encoded bytes, the GPU decodes batches.

A loader worker's per-sample cost on img2dataset-style 256-px JPEG shards is about two thirds
JPEG decoding (``benchmarks/results/clip_input_h200.json``): 14 workers of an H200 node top out
near 1,500–1,800 samples/s, a quarter of what one GPU trains at. With device decoding a worker
only checks each kept sample's JPEG header (:func:`deferrable_jpeg`) and ships its bytes — tens
of kB instead of the 196 kB decoded image — and the training process decodes the whole batch
with nvJPEG (``torchvision.io.decode_jpeg`` on the device), one batch ahead, in a thread of its
own and on a side stream, while the current step runs (:class:`DeviceFeed`).

A share of the deferrable images may still be decoded in the loader workers
(:data:`WORKER_DECODE_SHARE`, chosen by position, :func:`worker_decodes`); a part's
worker-decoded images cross to the training process as one shared-memory block
(:class:`DecodedRow`), not one tensor per image. On an H200 this did not pay at any share: the
device's decode of a batch did not shorten with fewer images (see :data:`WORKER_DECODE_SHARE`),
so the default ships every deferrable image encoded.

Only images the device can decode exactly as the loader would are shipped encoded: baseline RGB
JPEGs, complete, at exactly the loader's transfer size (so no resize or reduced decode applies).
Anything else — PNGs, other sizes, greyscale, progressive scans — is decoded in the worker as
before, where a bad image is counted and skipped under the stream's ceiling. On the CPU the same
path decodes with libjpeg-turbo through torchvision, pixel-identical to the loader's PIL decode
(``tests/unit/test_image_feed.py``); nvJPEG's IDCT may differ from it by a level or two.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from inheritlab.infra.background import Background
from inheritlab.infra.errors import ShardError, SpecError

DECODES = ("auto", "loader", "device")
# Whether DeviceFeed joins a batch's JPEG bytes in page-locked memory (decode_rows' pinned):
# on an H200 it cut nvJPEG's batch of 512 from 24.3 to 20.8 ms alone, and from 43.1 to 40.0 ms
# beside matmuls (benchmarks/results/device_decode_h200_20261203b.jsonl).
PIN_ENCODED = True
# With device decoding, the share of deferrable images the loader workers decode all the same
# (ClipTrainConfig.worker_decode_share overrides it). On an H200 (ViT-B/32 at batch 512, 8
# workers) shares 0, 0.25, 0.4 and 0.55 gave 5,095, 4,666, 4,341 and 4,232 samples/s: the
# batch's device decode took 100, 107, 115 and 116 ms, so it is not bound by its image count
# (benchmarks/results/clip_e2e_h200.md). A GPU without nvJPEG's hardware decoder may differ.
WORKER_DECODE_SHARE = 0.0
# DeviceFeed keeps the timings of this many latest batches.
FEED_TIMINGS_KEPT = 4096
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def deferrable_jpeg(data: bytes | bytearray, side: int) -> bool:
    """Whether the loader may ship ``data`` undecoded: a complete (SOI … EOI) baseline RGB JPEG
    of exactly ``side × side``. Reads the header only (tens of microseconds)."""
    from PIL import Image

    if not (data[:2] == _SOI and data[-2:] == _EOI):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.format == "JPEG" and im.mode == "RGB" and im.size == (side, side)
                    and not im.info.get("progressive") and not im.info.get("progression"))
    except Exception:  # not ours to judge here: the worker's decode counts a bad image
        return False


@functools.lru_cache(maxsize=4)
def device_decodes(device: str) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` here (nvJPEG on CUDA): tried once on a
    tiny image, so a build without it falls back to the loader instead of failing a step."""
    try:
        from PIL import Image
        from torchvision.io import ImageReadMode, decode_jpeg

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 90)).save(buf, format="JPEG")
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        out = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
        return tuple(out[0].shape) == (3, 64, 64)
    except Exception:
        return False


def check_decode(choice: str) -> None:
    if choice not in DECODES:
        raise SpecError(f"image_decode: got {choice!r}; expected one of {list(DECODES)}")


def resolve_decode(choice: str, *, use_gpu: bool) -> bool:
    """``image_decode`` → whether the device decodes. ``auto``: on a GPU whose torchvision has
    nvJPEG; the CPU rungs keep decoding in their loader workers (the training process is the
    bottleneck there, not the workers)."""
    check_decode(choice)
    if choice == "loader":
        return False
    gpu_decodes = use_gpu and device_decodes(f"cuda:{torch.cuda.current_device()}")
    if choice == "device" and use_gpu and not gpu_decodes:
        raise SpecError("image_decode: device, but this torchvision cannot decode JPEGs on the GPU (no nvJPEG); "
                        "use auto or loader")
    return gpu_decodes if choice == "auto" else True


def worker_decodes(position: int, share: float) -> bool:
    """Whether the sample at ``position`` is decoded in the worker under a worker ``share``:
    exactly ``share`` of every run of consecutive positions, evenly spread. Positions are the
    data's (a sample's place in its epoch, counted across the data slots), not the process's, so
    a resume makes the same choices."""
    return math.floor((position + 1) * share) > math.floor(position * share)


class DecodedRow:
    """A worker-decoded image among a part's encoded rows: row ``index`` of ``block`` (``uint8
    [n, L, L, 3]``), the part's worker-decoded images stacked. Every row of a part refers to the
    same block object, so pickling the part sends the block once: one shared-memory segment per
    part, where a tensor per image costs a segment and a file descriptor each (on a 2-core host a
    part of 20 256-px images crossed in 19 ms as tensors, 5 ms as one block)."""

    __slots__ = ("block", "index")

    def __init__(self, block: torch.Tensor, index: int) -> None:
        self.block = block
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return DecodedRow, (self.block, self.index)

    def pin_memory(self) -> DecodedRow:
        # The DataLoader pins every tensor it finds, row by row: it would copy the block once per
        # row. decode_rows gathers the rows into pinned memory itself.
        return self

    def pixels(self) -> torch.Tensor:
        return self.block[self.index]


def encoded_row(sample: dict[str, Any]) -> tuple[str, str, bytes]:
    """How the loader ships a deferred image: (shard, member, JPEG bytes) — the names are for
    the error should the device fail to decode it."""
    from inheritlab.corruptors.shards import image_member

    return str(sample.get("__shard__", "?")), image_member(sample), bytes(sample["image"])


def decode_rows(rows: Sequence[Any], device: torch.device, *, pinned: bool = False) -> torch.Tensor:
    """A batch's image rows — :func:`encoded_row` tuples, :class:`DecodedRow` or worker-decoded
    ``uint8 [L, L, 3]`` arrays — as ``uint8 [B, L, L, 3]`` on ``device`` (a channels-last view where every row was
    encoded). An image that passed :func:`deferrable_jpeg` but does not decode is a
    :class:`ShardError` naming its shard and member: its place in the batch is fixed, so it
    cannot be skipped here as a worker skips a bad image.

    ``pinned`` (CUDA only) joins the batch's JPEG bytes in page-locked memory, once per batch:
    nvJPEG copies each image's bytes to the device itself, and from pageable memory every one
    of those copies is staged and waited on (512 a batch at batch 512). Worker-decoded rows
    are gathered in page-locked memory too, so their copy does not block the host."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # The DataLoader's conversion turns tuples into lists and arrays into tensors on the way.
    encoded = [i for i, r in enumerate(rows) if isinstance(r, (tuple, list))]
    decoded = [i for i, r in enumerate(rows) if not isinstance(r, (tuple, list))]
    parts: list[torch.Tensor] = []
    if encoded:
        # One buffer for the batch, split into views: decode_jpeg wants a uint8 tensor per image.
        lengths = [len(rows[i][2]) for i in encoded]
        flat = torch.frombuffer(bytearray().join(rows[i][2] for i in encoded), dtype=torch.uint8)
        if pinned and device.type == "cuda":
            # decode_jpeg returns only after its stream is synchronised, so the pinned block is
            # not reused (freed with ``flat``) while nvJPEG still copies from it.
            flat = flat.pin_memory()
        chunks = list(torch.split(flat, lengths))
        try:
            images = decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # find the culprit one image at a time
            images = [_decode_one(c, device, rows[i]) for c, i in zip(chunks, encoded)]
        parts.append(torch.stack(images).permute(0, 2, 3, 1))
    if decoded:
        pixels = [rows[i].pixels() if isinstance(rows[i], DecodedRow) else torch.as_tensor(rows[i]) for i in decoded]
        if pinned and device.type == "cuda":
            # Gathered straight into page-locked memory, the copy to the device does not block the
            # host; the caching host allocator keeps the block until the copy is done.
            host = torch.stack(pixels, out=torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8,
                                                         pin_memory=True))
        else:
            host = torch.stack(pixels)
        parts.append(host.to(device, non_blocking=True))
    if len(parts) == 1:
        return parts[0]
    out = torch.empty((len(rows), *parts[0].shape[1:]), dtype=torch.uint8, device=device)
    out[torch.tensor(encoded, device=device)] = parts[0]
    out[torch.tensor(decoded, device=device)] = parts[1]
    return out


def _decode_one(data: torch.Tensor, device: torch.device, row: Sequence[Any]) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as exc:
        raise ShardError(row[0], row[1], f"the JPEG passed the loader's header check but does not decode ({exc}); "
                         "train with image_decode: loader to count and skip such images") from None


class DeviceFeed:
    """The training loop's batches with their images as ``uint8 [B, L, L, 3]`` on the device.

    A thread of its own decodes batches continuously, on a side stream, one batch ahead of the
    one the training thread holds (one decoded batch waits; the next decodes), while a second
    thread reads the batch after from the loader. :meth:`take` hands them out in order. The
    decode does not wait for the training thread to queue a step: nvJPEG's batched decode waits
    on its own copies and kernels image by image, and beside a step that fills the device it took
    ~74 ms a batch on an H200 (24 ms alone) — started only once a step was queued, it added its
    latency to every step (``benchmarks/results/clip_e2e_h200.md``). Where the loader decoded
    (tensors), images are copied as they come.

    ``count`` is how many batches the process will take: the loader is never read past them.
    :meth:`close` (or leaving the ``with`` block) stops the threads when training ends early.

    It times itself (:meth:`timings`): how long the training thread waited in :meth:`take`, and
    how long each batch took to read from the loader and to decode (host side, until its images
    are on the device). A wait near zero means the feed keeps up; a decode near the step time
    with a long wait means the decode bounds it.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], device: torch.device, *, count: int,
                 pinned: bool = PIN_ENCODED) -> None:
        self._batches = batches
        self._device = device
        self._pinned = pinned
        self._count = count
        self._taken = 0
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
        # The latest batches' seconds (a long run keeps the recent ones), and how many there were.
        self._seconds: dict[str, collections.deque[float]] = {
            k: collections.deque(maxlen=FEED_TIMINGS_KEPT) for k in ("wait", "read", "decode")}
        self._counts: collections.Counter[str] = collections.Counter()
        # Decoded batches in order; the producer's exception, if any, in its batch's place.
        self._ready: queue.Queue[tuple[dict[str, Any], torch.Tensor, torch.cuda.Event | None] | BaseException] = (
            queue.Queue(maxsize=1))
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="image-feed", daemon=True)
        self._thread.start()

    def __enter__(self) -> DeviceFeed:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _timed(self, name: str, since: float) -> None:
        self._seconds[name].append(time.perf_counter() - since)
        self._counts[name] += 1

    def _read(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch = next(self._batches)
        self._timed("read", t0)
        return batch

    def _decode(self, batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor, torch.cuda.Event | None]:
        t0 = time.perf_counter()
        images = batch["images"]
        done = None
        if self._side is None:
            out = images if isinstance(images, torch.Tensor) else decode_rows(images, self._device)
        else:
            with torch.cuda.device(self._device), torch.cuda.stream(self._side):
                if isinstance(images, torch.Tensor):
                    out = images.to(self._device, non_blocking=True)
                else:
                    out = decode_rows(images, self._device, pinned=self._pinned)
                # The training stream waits for this batch's work only, not for batches queued after it.
                done = torch.cuda.Event()
                done.record(self._side)
        self._timed("decode", t0)
        return batch, out, done

    def _produce(self) -> None:
        try:
            ahead: Background[dict[str, Any]] | None = None
            for i in range(self._count):
                batch = ahead.result() if ahead is not None else self._read()
                # One reader at a time: the next read starts once this batch is in hand.
                ahead = Background(self._read, "image-feed-read") if i + 1 < self._count else None
                if not self._put(self._decode(batch)):
                    return
        except BaseException as exc:  # raised again in the training thread, in its batch's place
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take(self) -> tuple[dict[str, Any], torch.Tensor]:
        """The next batch and its images on the device (waits for its decode if need be)."""
        if self._taken >= self._count:
            raise RuntimeError(f"DeviceFeed: all {self._count} batches it was made for were taken")
        t0 = time.perf_counter()
        while True:
            try:
                item = self._ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError("DeviceFeed: its decoding thread ended without a batch") from None
        self._timed("wait", t0)
        if isinstance(item, BaseException):
            raise item
        self._taken += 1
        batch, images, done = item
        if done is not None:
            main = torch.cuda.current_stream(self._device)
            main.wait_event(done)
            images.record_stream(main)  # freed after the main stream's use, not the side stream's
        return batch, images

    def close(self) -> None:
        """Stop decoding ahead (training ended before ``count`` batches); batches waiting are dropped."""
        self._closed.set()
        while True:
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break

    def timings(self, skip: int = 5) -> dict[str, Any]:
        """Median and 90th percentile (ms) of the training thread's wait in :meth:`take`, and of
        each batch's read and decode, over the kept (latest) batches, leaving out the first
        ``skip`` of the run (loader start-up, the decoder's first call) while they are kept."""
        out: dict[str, Any] = {"batches": self._counts["wait"]}
        for name, seconds in self._seconds.items():
            first = max(0, skip - (self._counts[name] - len(seconds)))  # of the run's first, still kept
            kept = sorted(list(seconds)[first:] if len(seconds) > first else seconds)
            if kept:
                out[f"{name}_ms"] = {"median": round(1e3 * kept[len(kept) // 2], 2),
                                     "p90": round(1e3 * kept[min(len(kept) - 1, int(0.9 * len(kept)))], 2)}
        return out
