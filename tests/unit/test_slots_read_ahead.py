"""SharedEpochs' read-ahead: the next epoch is read while the current one is consumed, and changes
nothing a slot sees — not its samples, not their order, not where a bad shard fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from inheritlab.trainers import slots
from inheritlab.trainers.slots import SharedEpochs

NUM_SLOTS = 4


class _Stats:
    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}


class _Reads:
    """A world of 23 samples whose order depends on the epoch; records which epochs were read."""

    def __init__(self, fail_epoch: int | None = None) -> None:
        self.epochs: list[int] = []
        self.read_started = {e: threading.Event() for e in range(8)}
        self.fail_epoch = fail_epoch

    def __call__(self, epoch: int, stats: Any) -> Iterator[dict[str, Any]]:
        self.epochs.append(epoch)
        self.read_started[epoch].set()
        if epoch == self.fail_epoch:
            raise ValueError(f"bad shard in epoch {epoch}")
        for i in range(23):
            yield {"__key__": f"{(i * (epoch + 3)) % 23:04d}", "jpg": bytes(10 + i)}


def _take_all(shared: SharedEpochs, epochs: int) -> list[list[str]]:
    """Every slot's keys, epoch by epoch, as slot streams take them."""
    return [[s["__key__"] for s in shared.samples(v, e)] for e in range(epochs) for v in range(NUM_SLOTS)]


def test_read_ahead_changes_no_sample_and_no_order() -> None:
    plain = _take_all(SharedEpochs(_Reads(), list(range(NUM_SLOTS)), NUM_SLOTS, _Stats), 3)
    ahead = _take_all(SharedEpochs(_Reads(), list(range(NUM_SLOTS)), NUM_SLOTS, _Stats, read_ahead=True), 3)
    assert ahead == plain
    # Each slot gets every NUM_SLOTS-th sample of the epoch's order.
    assert plain[1] == [f"{(i * 3) % 23:04d}" for i in range(1, 23, NUM_SLOTS)]


def test_the_next_epoch_is_read_before_any_slot_asks_for_it() -> None:
    reads = _Reads()
    shared = SharedEpochs(reads, list(range(NUM_SLOTS)), NUM_SLOTS, _Stats, read_ahead=True)
    shared.samples(0, 0)
    assert reads.read_started[1].wait(10), "epoch 1 was not read ahead"
    for v in range(1, NUM_SLOTS):
        shared.samples(v, 0)
    shared.samples(0, 1)
    # Epoch 1 was read once (ahead), and taking it started epoch 2's read.
    assert reads.read_started[2].wait(10)
    assert reads.epochs.count(1) == 1


def test_a_failing_read_fails_the_epoch_that_needs_it_not_the_one_before() -> None:
    reads = _Reads(fail_epoch=1)
    shared = SharedEpochs(reads, list(range(NUM_SLOTS)), NUM_SLOTS, _Stats, read_ahead=True)
    for v in range(NUM_SLOTS):
        shared.samples(v, 0)  # epoch 0 is whole, though epoch 1's read (ahead) has failed
    assert reads.read_started[1].wait(10)
    with pytest.raises(ValueError, match="bad shard in epoch 1"):
        shared.samples(0, 1)


def test_no_read_ahead_for_an_epoch_above_the_memory_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slots, "READ_AHEAD_MAX_BYTES", 100)  # the 23 samples hold 575 bytes
    reads = _Reads()
    shared = SharedEpochs(reads, list(range(NUM_SLOTS)), NUM_SLOTS, _Stats, read_ahead=True)
    for v in range(NUM_SLOTS):
        shared.samples(v, 0)
    assert not reads.read_started[1].wait(0.5)
    assert reads.epochs == [0]
