"""The CLIP training stream: shards → corruptor chain → shuffle → fixed-size batches, forever.

Samples seen, not epochs, is the unit of a study (DataComp's convention), so the stream repeats
the rank's shards as often as the step budget needs and counts the repeats. Everything is a
function of (seed, epoch, rank, loader worker): replaying the stream gives the same batches,
which is how a resumed run skips what it already trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import stable_rng


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """Everything a loader worker needs to rebuild its part of the stream (picklable)."""

    shards: tuple[str, ...]
    corruptors: tuple[dict[str, Any], ...]
    study_seed: int
    seed: int
    plan_dir: str | None
    num_classes: int | None
    class_names: tuple[str, ...]
    rank: int
    world_size: int
    batch_size: int            # per rank
    shuffle_buffer: int = 256
    bad_sample_ceiling: float | int = 0


def _slot_shards(spec: StreamSpec, worker_id: int, num_workers: int) -> tuple[list[str], int, int]:
    """(shards to read, sample stride, sample offset) of one (rank, worker) slot.

    With at least as many shards as slots each slot reads its own shards; with fewer (tiny
    worlds, many ranks) every slot reads all shards and keeps every ``slots``-th sample, so no
    rank is ever starved.
    """
    from inheritlab.corruptors.shards import split_shards

    slots = spec.world_size * num_workers
    slot = spec.rank * num_workers + worker_id
    if len(spec.shards) >= slots:
        mine = split_shards(spec.shards, rank=spec.rank, world_size=spec.world_size,
                            worker_id=worker_id, num_workers=num_workers)
        return mine, 1, 0
    return sorted(spec.shards), slots, slot


def iter_epoch_samples(spec: StreamSpec, worker_id: int, num_workers: int, epoch: int, *,
                       on_pass_end: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
                       ) -> Iterator[dict[str, Any]]:
    """One pass over the slot's shards: shard order and a shuffle buffer seeded per epoch, the
    corruptor chain (its decisions depend on sample keys only, so repeats of a sample are
    corrupted the same way in every epoch), and only then image decoding — samples are chosen
    on keys and metadata, and a sample dropped by the chain is never decoded.

    ``on_pass_end(chain_counters, read_stats)`` is called once the pass is complete (what the
    trainer checks against the cell's data-condition stage).
    """
    from inheritlab.corruptors.shards import ReadStats, decode_sample_image, iter_samples

    shards, stride, offset = _slot_shards(spec, worker_id, num_workers)
    rng = stable_rng(spec.study_seed, "clip-stream", spec.seed, epoch, spec.rank, worker_id, num_workers)
    order = [shards[i] for i in rng.permutation(len(shards))]
    stats = ReadStats()
    raw = iter_samples(order, decode=False, bad_sample_ceiling=spec.bad_sample_ceiling, stats=stats)
    if stride > 1:
        raw = (s for i, s in enumerate(raw) if i % stride == offset)
    stream: Iterator[dict[str, Any]] = raw
    chain = None
    if spec.corruptors:
        # Imported only when needed: the chain brings in polars, which a clean-control run on
        # a bare GPU node does not need.
        from inheritlab.corruptors.chain import build_chain

        chain = build_chain(list(spec.corruptors), study_seed=spec.study_seed, num_classes=spec.num_classes,
                            class_names=list(spec.class_names) or None, plan_dir=spec.plan_dir)
        stream = chain.apply(raw)
    for sample in _shuffled(stream, rng, spec.shuffle_buffer):
        decoded = decode_sample_image(sample, stats=stats, bad_sample_ceiling=spec.bad_sample_ceiling)
        if decoded is not None:
            yield decoded
    if on_pass_end is not None:
        on_pass_end(chain.counters() if chain is not None else {}, stats.to_dict())


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


class ClipBatchStream(IterableDataset):
    """Endless collated batches ``{"images", "texts", "epoch"}`` of one rank.

    With ``n`` loader workers, worker ``w`` builds batches ``w, w+n, ...`` of the rank (the
    DataLoader hands them out round-robin, so the order is fixed for a fixed ``n``). The first
    ``skip_batches`` batches of the rank are replayed without transforms and dropped.
    """

    def __init__(
        self,
        spec: StreamSpec,
        *,
        transform: Callable[[Any], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        skip_batches: int = 0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.transform = transform
        self.tokenizer = tokenizer
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from inheritlab.trainers.data_check import pass_report

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # Round-robin: this worker's k-th batch is the rank's batch wid + k*nw.
        skip = len(range(wid, self.skip_batches, nw))
        produced = 0
        batch: list[dict[str, Any]] = []
        epoch = 0
        # The first pass's counters ride on the next batch this worker hands out.
        report: list[dict[str, Any]] = []

        def first_pass_done(counters: dict[str, Any], read: dict[str, Any]) -> None:
            report.append(pass_report((self.spec.rank, wid), counters, read))

        while True:
            seen = 0
            for sample in iter_epoch_samples(self.spec, wid, nw, epoch,
                                             on_pass_end=first_pass_done if epoch == 0 else None):
                seen += 1
                batch.append(sample)
                if len(batch) == self.spec.batch_size:
                    if produced >= skip:
                        out = self._collate(batch, epoch)
                        if report:
                            out["pass_report"] = report.pop()
                        yield out
                    produced += 1
                    batch = []
            if seen == 0:
                raise SpecError(
                    f"training stream of rank {self.spec.rank} (loader worker {wid}) is empty: "
                    f"{len(self.spec.shards)} shard(s) yielded no samples after the corruptor chain"
                )
            epoch += 1

    def _collate(self, batch: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
        images = torch.stack([self.transform(s["image"]) for s in batch])
        texts = self.tokenizer([s["caption"] for s in batch])
        return {"images": images, "texts": texts, "epoch": epoch}
