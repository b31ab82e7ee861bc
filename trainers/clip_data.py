"""The CLIP training stream: per data slot, shards → corruptor chain → shuffle → decode, forever.

Samples seen, not epochs, is the unit of a study (DataComp's convention), so each slot repeats
its shards as often as the step budget needs and counts the repeats. Everything is a function of
(seed, slot, epoch) — see :mod:`inheritlab.trainers.slots` — so a global batch holds the same
samples in the same order whatever the number of ranks and loader workers.

Samples are chosen on keys and metadata (the slot's stride, the corruptor chain's subsample,
dedup and rebalancing plans, duplication, the shuffle) before any image is decoded: a dropped
sample is never decoded. Images leave the loader as ``uint8`` at the training size
(:mod:`inheritlab.trainers.clip_images`). Each batch carries every slot's
:class:`SlotPosition` after it; saved in a checkpoint, it resumes the same sample sequence
mid-epoch by re-reading keys only, decoding nothing it already trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import stable_rng
from inheritlab.trainers.slots import SharedEpochs, join_parts, slot_shards, worker_slots


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """Everything a loader worker needs to rebuild its slots' streams (picklable).

    ``slots`` are the slots this rank reads (a block of the run's ``num_slots``); each gives
    ``chunk`` samples to every step's batch, as square ``uint8`` images of ``loader_size`` pixels.
    """

    shards: tuple[str, ...]
    corruptors: tuple[dict[str, Any], ...]
    study_seed: int
    seed: int
    plan_dir: str | None
    num_classes: int | None
    class_names: tuple[str, ...]
    slots: tuple[int, ...]
    num_slots: int
    chunk: int
    shuffle_buffer: int = 256
    bad_sample_ceiling: float | int = 0
    label_key: str | None = None
    image_size: int = 224
    transfer_size: int | None = None   # side of the shipped uint8 images (clip_images.transfer_size)
    device_decode: bool = False        # ship deferrable JPEGs encoded for the device (trainers.image_feed)
    worker_decode_share: float = 0.0   # ... but decode this share of them in the worker (image_feed.worker_decodes)

    @property
    def loader_size(self) -> int:
        return self.transfer_size or self.image_size


@dataclass
class SlotPosition:
    """Where one slot's stream stands, in a checkpoint's loader state (JSON-able).

    ``taken``: samples of the epoch's shuffled stream consumed, undecodable ones included (a
    resume skips them on keys alone); ``undecodable``: how many of those did not decode (counted
    again on resume, as a replay would), ``problems`` the first few of them; ``first_pass``: the slot's first-pass report once that
    pass is complete (the trainer checks it against the data-condition stage).
    """

    epoch: int = 0
    taken: int = 0
    undecodable: int = 0
    problems: list[str] = field(default_factory=list)
    first_pass: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> "SlotPosition":
        try:
            pos = cls(epoch=int(data["epoch"]), taken=int(data["taken"]), undecodable=int(data["undecodable"]),
                      problems=[str(p) for p in data.get("problems", [])], first_pass=data.get("first_pass"))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"{where}: loader state {dict(data)!r} is not a slot position ({exc!r})") from None
        if min(pos.epoch, pos.taken, pos.undecodable) < 0 or pos.undecodable > pos.taken:
            raise SpecError(f"{where}: loader state {dict(data)!r} has impossible counts")
        return pos


def positions_from_state(state: Mapping[str, Any], slots: list[int], *, where: str) -> dict[int, SlotPosition]:
    """The positions of ``slots`` in a checkpoint's loader state (keys are slot numbers as text)."""
    missing = [v for v in slots if str(v) not in state]
    if missing:
        raise SpecError(f"{where}: loader state has no position for data slots {missing} (has {sorted(state)})")
    return {v: SlotPosition.from_dict(state[str(v)], where=f"{where} slot {v}") for v in slots}


def iter_epoch_samples(spec: StreamSpec, slot: int, epoch: int, *, shared: SharedEpochs | None = None,
                       on_pass_end: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
                       position: SlotPosition | None = None) -> Iterator[dict[str, Any]]:
    """One pass over a slot's shards: shard order and a shuffle buffer seeded per epoch, the
    corruptor chain (its decisions depend on sample keys only, so repeats of a sample are
    corrupted the same way in every epoch), and only then image decoding — samples are chosen
    on keys and metadata, and a sample dropped by the chain is never decoded.

    ``shared`` reads striding slots' shards once for all of them (see :class:`SharedEpochs`).
    ``on_pass_end(chain_counters, read_stats)`` is called once the pass is complete (what the
    trainer checks against the cell's data-condition stage). ``position`` (of this epoch) is
    advanced as samples are consumed; the first ``position.taken`` are skipped undecoded.
    """
    from inheritlab.corruptors.shards import ReadStats, decode_sample_image
    from inheritlab.trainers.image_feed import deferrable_jpeg, worker_decodes

    pos = position if position is not None else SlotPosition(epoch=epoch)
    stats = ReadStats()
    # Undecodable samples of the part skipped on resume: counted as the original pass counted them.
    stats.skipped["undecodable_image"] += pos.undecodable
    stats.samples -= pos.undecodable
    stats.problems.extend(pos.problems)
    if not stats.skipped["undecodable_image"]:
        del stats.skipped["undecodable_image"]
    skip = pos.taken
    raw = _raw_samples(spec, slot, epoch, stats, shared)
    stream: Iterator[dict[str, Any]] = raw
    chain = None
    if spec.corruptors:
        # Imported only when needed: the chain brings in polars, which a clean-control run on
        # a bare GPU node does not need.
        from inheritlab.corruptors.chain import build_chain

        chain = build_chain(list(spec.corruptors), study_seed=spec.study_seed, num_classes=spec.num_classes,
                            class_names=list(spec.class_names) or None, plan_dir=spec.plan_dir)
        stream = chain.apply(raw)
    rng = stable_rng(spec.study_seed, "clip-stream", spec.seed, epoch, slot, spec.num_slots)
    for index, sample in enumerate(_shuffled(stream, rng, spec.shuffle_buffer)):
        if index < skip:
            continue
        # Positions counted across the slots (index-major) so that every step's batch has the share,
        # not every n-th batch all of it.
        if (spec.device_decode and not worker_decodes(index * spec.num_slots + slot, spec.worker_decode_share)
                and deferrable_jpeg(sample["image"], spec.loader_size)):
            decoded = sample  # its bytes go to the training device, which decodes the batch
        else:
            decoded = decode_sample_image(sample, stats=stats, bad_sample_ceiling=spec.bad_sample_ceiling,
                                          min_size=spec.loader_size)
        pos.taken = index + 1
        if decoded is None:
            pos.undecodable += 1
            if len(pos.problems) < 3 and stats.problems:
                pos.problems.append(stats.problems[-1])
            continue
        yield decoded
    if on_pass_end is not None:
        on_pass_end(chain.counters() if chain is not None else {}, stats.to_dict())


def shared_reader(spec: StreamSpec, slots: list[int], first_epochs: Mapping[int, int] | None = None, *,
                  read_ahead: bool = False) -> SharedEpochs | None:
    """One reader for ``slots`` when they stride over shared shards (``None`` when each slot
    reads shards of its own); ``first_epochs``: the epoch each slot resumes at; ``read_ahead``: read
    each next epoch in a thread (a reader that lives for the whole stream, in a loader worker)."""
    from inheritlab.corruptors.shards import ReadStats, iter_samples

    shards, stride, _ = slot_shards(spec.shards, 0, spec.num_slots)
    if stride == 1:
        return None

    def read(epoch: int, stats: Any) -> Iterator[dict[str, Any]]:
        # All striding slots read the shards in one order per epoch, or the stride would not
        # partition the samples.
        rng = stable_rng(spec.study_seed, "clip-shards", spec.seed, epoch, "all", spec.num_slots)
        order = [shards[i] for i in rng.permutation(len(shards))]
        return iter_samples(order, decode=False, bad_sample_ceiling=spec.bad_sample_ceiling, stats=stats,
                            label_key=spec.label_key)

    return SharedEpochs(read, slots, spec.num_slots, ReadStats, first_epochs=first_epochs,
                        read_ahead=read_ahead)


def _raw_samples(spec: StreamSpec, slot: int, epoch: int, stats: Any,
                 shared: SharedEpochs | None) -> Iterator[dict[str, Any]]:
    """The slot's undecoded samples of one epoch, counted in ``stats``."""
    from inheritlab.corruptors.shards import iter_samples

    shards, stride, _ = slot_shards(spec.shards, slot, spec.num_slots)
    if stride == 1:
        rng = stable_rng(spec.study_seed, "clip-shards", spec.seed, epoch, slot, spec.num_slots)
        order = [shards[i] for i in rng.permutation(len(shards))]
        return iter_samples(order, decode=False, bad_sample_ceiling=spec.bad_sample_ceiling, stats=stats,
                            label_key=spec.label_key)
    shared = shared or shared_reader(spec, [slot])
    assert shared is not None
    samples = shared.samples(slot, epoch)
    stats.samples += len(samples)
    stats.skipped.update(shared.skipped(epoch, slot))
    return iter(samples)


def _shuffled(stream: Iterator[dict[str, Any]], rng: Any, size: int) -> Iterator[dict[str, Any]]:
    """A shuffle buffer of ``size`` samples, driven by ``rng`` (same seed, same order)."""
    buf: list[dict[str, Any]] = []
    for sample in stream:
        buf.append(sample)
        if len(buf) >= size:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


class SlotStream:
    """One slot's endless sample stream (epochs back to back), from ``position`` on."""

    def __init__(self, spec: StreamSpec, slot: int, shared: SharedEpochs | None = None,
                 position: SlotPosition | None = None) -> None:
        from inheritlab.trainers.data_check import pass_report

        self.spec, self.slot, self.shared = spec, slot, shared
        self.position = position or SlotPosition()
        self._report = pass_report
        self._it = self._samples()

    @property
    def first_pass(self) -> dict[str, Any] | None:
        return self.position.first_pass

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def _samples(self) -> Iterator[dict[str, Any]]:
        pos = self.position
        while True:
            seen = pos.taken - pos.undecodable

            def done(counters: dict[str, Any], read: dict[str, Any]) -> None:
                pos.first_pass = self._report((self.slot,), counters, read)

            for sample in iter_epoch_samples(self.spec, self.slot, pos.epoch, shared=self.shared, position=pos,
                                             on_pass_end=done if pos.epoch == 0 else None):
                seen += 1
                yield sample
            if seen == 0:
                raise SpecError(
                    f"training stream of data slot {self.slot} is empty: {len(self.spec.shards)} shard(s) yielded "
                    "no samples after the corruptor chain"
                )
            pos.epoch, pos.taken, pos.undecodable, pos.problems = pos.epoch + 1, 0, 0, []

    def take(self, n: int) -> list[dict[str, Any]]:
        return [next(self._it) for _ in range(n)]


class ClipBatchStream(IterableDataset):
    """Endless per-step parts of one rank's batches.

    Each loader worker (or the main process, without workers) reads its share of the rank's
    slots and yields, for every step in order, one part: its slots' chunks collated as
    ``{"images" (uint8 [n, S, S, 3], or with ``device_decode`` a list of encoded rows and
    image_feed.DecodedRow), "texts", "slots", "sizes", "keys", "epoch",
    "pass_reports", "positions"}``. :func:`rank_batches` joins the parts of a step in slot
    order. A resume starts each slot at its saved ``positions``; without them (a checkpoint
    from before loader state was saved) the first ``skip_batches`` steps are replayed, decoded,
    and dropped.
    """

    def __init__(
        self,
        spec: StreamSpec,
        *,
        tokenizer: Callable[..., torch.Tensor],
        positions: Mapping[int, SlotPosition] | None = None,
        skip_batches: int = 0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.tokenizer = tokenizer
        self.positions = dict(positions or {})
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = worker_slots(list(self.spec.slots), wid, nw)
        # Each worker process gets its own copies: positions advance in place.
        start = {v: SlotPosition.from_dict(self.positions[v].to_dict(), where="loader state")
                 for v in mine if v in self.positions}
        shared = shared_reader(self.spec, mine, {v: p.epoch for v, p in start.items()},
                               read_ahead=info is not None)  # a worker's read overlaps its samples' work
        streams = [SlotStream(self.spec, v, shared, start.get(v)) for v in mine]
        for stream in streams:
            stream.take(self.skip_batches * self.spec.chunk)
        reported: set[int] = set()
        while True:
            chunks = [stream.take(self.spec.chunk) for stream in streams]
            reports = [s.first_pass for s in streams if s.first_pass is not None and s.slot not in reported]
            reported |= {r["slot"][0] for r in reports}
            yield self._collate(chunks, streams, reports)

    def _collate(self, chunks: list[list[dict[str, Any]]], streams: list[SlotStream],
                 reports: list[dict[str, Any]]) -> dict[str, Any]:
        from inheritlab.trainers.clip_images import to_uint8
        from inheritlab.trainers.image_feed import DecodedRow, encoded_row

        flat = [s for chunk in chunks for s in chunk]
        size = self.spec.loader_size
        images: torch.Tensor | list[Any]
        if any(isinstance(s["image"], (bytes, bytearray)) for s in flat):
            # Device decoding: encoded JPEGs as they are; the images this worker decoded (its
            # share, or another size or format) stacked in one block that each of their rows names.
            mine = [i for i, s in enumerate(flat) if not isinstance(s["image"], (bytes, bytearray))]
            block = torch.from_numpy(np.stack([to_uint8(flat[i]["image"], size) for i in mine])) if mine else None
            where = {i: n for n, i in enumerate(mine)}
            images = [DecodedRow(block, where[i]) if i in where else encoded_row(s) for i, s in enumerate(flat)]
        else:
            images = torch.from_numpy(np.stack([to_uint8(s["image"], size) for s in flat]))
        texts = self.tokenizer([s["caption"] for s in flat])
        return {"images": images, "texts": texts, "slots": [s.slot for s in streams], "sizes": [len(c) for c in chunks],
                "keys": [s["__key__"] for s in flat], "epoch": max(s.epoch for s in streams), "pass_reports": reports,
                "positions": {str(s.slot): s.position.to_dict() for s in streams}}


def rank_batches(parts: Iterator[dict[str, Any]], num_parts: int) -> Iterator[dict[str, Any]]:
    """Join each step's ``num_parts`` parts (one per loader worker, in the DataLoader's round-robin
    order) into the rank's batch, its samples sorted by slot: the same batch whatever the
    number of loader workers."""
    for joined, step in join_parts(parts, num_parts, ("images", "texts", "keys")):
        positions: dict[str, Any] = {}
        for part in step:
            positions.update(part["positions"])
        yield {**joined, "epoch": max(int(p["epoch"]) for p in step),
               "pass_reports": [r for p in step for r in p["pass_reports"]], "positions": positions}
