"""Data slots: the training stream as a fixed number of sub-streams, whatever runs it.

A cell's training data is split into ``V`` *slots*, a number fixed by the global batch alone
(:func:`data_slots`). Each slot is an endless, seeded stream of its own: its share of the
shards (or, with fewer shards than slots, every ``V``-th sample), the corruptor chain, a
shuffle buffer. Step ``k`` trains on samples ``[k·c, (k+1)·c)`` of every slot, ``c = B / V``.

Ranks and loader workers only decide *who* reads which slots: rank ``r`` of ``W`` reads a
contiguous block of ``V / W`` slots, and its loader workers split that block. So the samples of
every global batch — and the sample order within it, sorted by slot — are the same on 1, 2 or
8 workers with any number of loader processes, and a run resumed at step ``s`` on another number
of workers continues at sample ``s·c`` of each slot: every sample is still seen once. The
only constraint is that ``W`` divides ``V``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from inheritlab.infra.background import Background
from inheritlab.infra.errors import SpecError

# Enough slots for 64 ranks; more would only shrink each slot's chunk of a batch.
MAX_SLOTS = 64

# SharedEpochs reads the next epoch while the current one is consumed when this worker's share of
# an epoch holds at most this many bytes: two epochs in memory instead of one, no stall at the edge.
READ_AHEAD_MAX_BYTES = 1 << 30


def data_slots(global_batch: int) -> int:
    """The number of slots of a run with this global batch: the largest power of two that
    divides it, at most :data:`MAX_SLOTS` (1 for an odd batch)."""
    if global_batch < 1:
        raise SpecError(f"batch_size: got {global_batch}; expected >= 1")
    slots = 1
    while slots < MAX_SLOTS and global_batch % (slots * 2) == 0:
        slots *= 2
    return slots


def rank_slots(rank: int, world: int, slots: int) -> list[int]:
    """The block of slots rank ``rank`` of ``world`` reads; ``world`` must divide ``slots``."""
    if slots % world:
        allowed = [w for w in range(1, slots + 1) if slots % w == 0]
        raise SpecError(
            f"train.workers: {world} training ranks do not divide the run's {slots} data slots "
            f"(the largest power of two dividing the global batch, at most {MAX_SLOTS}); use one of {allowed}"
        )
    per = slots // world
    return list(range(rank * per, (rank + 1) * per))


def worker_slots(mine: list[int], worker: int, workers: int) -> list[int]:
    """The slots loader worker ``worker`` of ``workers`` reads out of its rank's ``mine``."""
    return mine[worker::workers]


def slot_shards(shards: list[str] | tuple[str, ...], slot: int, slots: int) -> tuple[list[str], int, int]:
    """(shards to read, sample stride, sample offset) of one slot.

    With at least as many shards as slots, slot ``v`` reads shards ``v, v + V, ...`` of the
    sorted list, whole. With fewer (tiny worlds, few large shards), every slot reads all shards
    in sorted order and keeps every ``V``-th sample from offset ``v``: no slot is ever starved,
    at the price of reading the shards once per slot.
    """
    ordered = sorted(str(s) for s in shards)
    if len(ordered) >= slots:
        return ordered[slot::slots], 1, 0
    return ordered, slots, slot


class SharedEpochs:
    """One read of the shards per epoch for several slots that stride over the same shards.

    With fewer shards than slots (tiny worlds, a few large shards), every slot would otherwise
    read every shard. This reads each epoch once, in the one order all slots share, and hands
    each slot its samples (index ``i`` goes to slot ``i mod V``). ``read(epoch)`` yields the
    epoch's samples and fills ``stats(epoch)``'s counters.

    A slot's first sample of an epoch waits for the whole epoch's read (its shuffle buffer would
    need most of it anyway): every loader worker stalls at each epoch edge for as long as reading
    every shard takes (3 s for 32,768 256-px JPEGs on one core). With ``read_ahead`` the next
    epoch is read in a thread of its own as soon as the current one is taken, so the edge finds
    it ready; the streams turn it on in loader workers, where the read overlaps the
    worker's per-sample work, and only while this worker's share of an epoch is at most
    :data:`READ_AHEAD_MAX_BYTES`. Samples and their order are the same either way.
    """

    def __init__(self, read: Callable[[int, Any], Iterator[Any]], slots: list[int], num_slots: int,
                 new_stats: Callable[[], Any], first_epochs: Mapping[int, int] | None = None,
                 read_ahead: bool = False) -> None:
        self._read, self.slots, self.num_slots, self._new_stats = read, list(slots), num_slots, new_stats
        # Slots resumed at a later epoch never ask for the earlier ones: holding their samples would leak.
        self._first = {v: int((first_epochs or {}).get(v, 0)) for v in self.slots}
        self._epochs: dict[int, dict[int, list[Any]]] = {}
        self._stats: dict[int, Any] = {}
        self._read_ahead = read_ahead
        self._ahead: dict[int, Background[tuple[dict[int, list[Any]], Any, int]]] = {}

    def samples(self, slot: int, epoch: int) -> list[Any]:
        """Slot ``slot``'s raw samples of ``epoch`` (each slot takes each epoch once)."""
        if epoch not in self._epochs:
            ahead = self._ahead.pop(epoch, None)
            # A bad shard fails the epoch that reads it, with read-ahead as without.
            self._epochs[epoch], self._stats[epoch], held = ahead.result() if ahead else self._load(epoch)
            if self._read_ahead and held <= READ_AHEAD_MAX_BYTES and epoch + 1 not in self._ahead:
                self._ahead[epoch + 1] = Background(functools.partial(self._load, epoch + 1), f"read-epoch-{epoch + 1}")
        out = self._epochs[epoch].pop(slot)
        if not self._epochs[epoch]:
            del self._epochs[epoch]
        return out

    def skipped(self, epoch: int, slot: int) -> dict[str, int]:
        """Bad samples skipped while reading ``epoch``, for ``slot``'s read counters: all of them
        for slot 0, none for the others (the read is shared; the checker sums the slots)."""
        stats = self._stats.get(epoch)
        return dict(stats.skipped) if stats is not None and slot == 0 else {}

    def _load(self, epoch: int) -> tuple[dict[int, list[Any]], Any, int]:
        """The epoch's samples per slot, its read counters, and the payload bytes held."""
        per: dict[int, list[Any]] = {v: [] for v in self.slots if self._first[v] <= epoch}
        stats = self._new_stats()
        held = 0
        for i, sample in enumerate(self._read(epoch, stats)):
            if i % self.num_slots in per:
                per[i % self.num_slots].append(sample)
                held += _payload_bytes(sample)
        return per, stats, held


def _payload_bytes(sample: Any) -> int:
    """A raw sample's bytes and text (a dict of fields), for the read-ahead bound."""
    if not isinstance(sample, dict):
        return 0
    return sum(len(v) for v in sample.values() if isinstance(v, (bytes, bytearray, str)))


def join_parts(parts: Iterator[dict[str, Any]], num_parts: int,
               fields: tuple[str, ...]) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each step's rows, joined from its ``num_parts`` parts and sorted by slot: the same rows in
    the same order whatever the number of loader workers.

    A DataLoader over an iterable dataset hands out its workers' items round-robin, and every
    worker yields one part per step, so ``num_parts`` consecutive parts make one step. A part
    names its ``slots`` (in its own order) and their ``sizes`` (rows each); under each of
    ``fields`` it holds those rows, a tensor or a list, in that order. Yields the joined fields
    and the step's parts, for whatever else they carry.
    """
    while True:
        step = [next(parts) for _ in range(num_parts)]
        pieces: list[tuple[int, dict[str, Any]]] = []
        for part in step:
            start = 0
            for slot, n in zip(part["slots"], part["sizes"]):
                pieces.append((slot, {f: part[f][start : start + n] for f in fields}))
                start += n
        pieces.sort(key=lambda p: p[0])
        yield {f: _concat([p[1][f] for p in pieces]) for f in fields}, step


def _concat(rows: list[Any]) -> Any:
    """Tensors joined along their rows; otherwise rows chained (a tensor's rows among lists')."""
    # Imported here: the scheduler reads data_slots from this module and needs no torch.
    import torch

    if all(isinstance(r, torch.Tensor) for r in rows):
        if not rows[0].is_pinned():
            return torch.cat(rows)
        # The parts come pinned from the loader; joined into pageable memory, the step's
        # non-blocking copy to the GPU would block the host (16 ms for a 100 MB CLIP batch on an
        # H200 host, against 0.1 ms pinned: benchmarks/results/clip_input_h200.json). Pinned
        # blocks come from torch's caching host allocator, so this allocates once per shape.
        shape = (sum(r.shape[0] for r in rows), *rows[0].shape[1:])
        return torch.cat(rows, out=torch.empty(shape, dtype=rows[0].dtype, pin_memory=True))
    return [x for r in rows for x in r]


def gather_slot_states(mine: Mapping[int, Any]) -> dict[str, Any]:
    """Every rank's per-slot loader states in one JSON-able dict keyed by slot number as text.

    A collective (every rank calls it): a checkpoint's client state is written by rank 0, and
    each rank knows only its own slots.
    """
    from inheritlab.trainers.engine import all_gather

    merged: dict[str, Any] = {}
    for part in all_gather({str(v): s for v, s in mine.items()}):
        merged.update(part)
    return dict(sorted(merged.items(), key=lambda kv: int(kv[0])))
