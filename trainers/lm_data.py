"""The LM training stream: per data slot, text shards → corruptor chain → tokens → packed windows.

Each slot (:mod:`inheritlab.trainers.slots`) reads its shards (or, with fewer shards than
slots, every ``V``-th document), runs the cell's corruptor chain (the same decisions as the
data-condition stage, since they depend on keys only), tokenises each document, appends an
end-of-text token and cuts the token stream into ``seq_len + 1`` windows that overlap by one
token, so every token is a target exactly once. The stream repeats over epochs (shard order
reshuffled per epoch from the seed tree) until the budget is spent.

Tokenising and packing run in DataLoader worker processes (:class:`LMBatchStream`); the
training process only joins each step's parts in slot order (:func:`rank_batches`), so a
step's batch is the same whatever the number of ranks and loader workers.

Every batch carries each slot's :class:`StreamState` after it. Saved in a checkpoint, a state
continues the exact window sequence: the chain's outputs of the epoch already packed are read
and corrupted again (cheap, and needed for the first-pass counters) but not tokenised, and the
tokens packed but not yet trained come back from the state itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from inheritlab.corruptors.shards import ReadStats, iter_samples, list_shards
from inheritlab.infra.errors import CheckpointError, SpecError
from inheritlab.infra.hashing import stable_rng
from inheritlab.trainers.data_check import pass_report, slot_ceiling
from inheritlab.trainers.slots import SharedEpochs, join_parts, slot_shards, worker_slots

if TYPE_CHECKING:
    from inheritlab.corruptors.tokenizer import TextTokenizer
    from inheritlab.trainers.lm_pretrain import LMTrainConfig

# Steps each loader worker keeps ready: token batches are small, and a few absorb a slow shard.
PREFETCH_STEPS = 4


@dataclass(frozen=True, kw_only=True)
class TextStreamSpec:
    """Everything a loader worker needs to rebuild its slots' streams (picklable).

    ``slots`` are the slots this rank reads (a block of the run's ``num_slots``); each gives
    ``chunk`` windows of ``seq_len + 1`` tokens to every step's batch. ``tokenizer`` is a path:
    each worker loads its own.
    """

    shards: tuple[str, ...]
    corruptors: tuple[dict[str, Any], ...]
    study_seed: int
    seed: int
    plan_dir: str | None
    tokenizer: str
    seq_len: int
    slots: tuple[int, ...]
    num_slots: int
    chunk: int = 1
    bad_sample_ceiling: float | int = 0


def text_stream_spec(cfg: "LMTrainConfig", *, seq_len: int, num_slots: int, slots: tuple[int, ...] = (0,),
                     chunk: int = 1) -> TextStreamSpec:
    """The stream spec of an LM run's ``slots`` (its shard directory listed once, here)."""
    shards = list_shards(cfg.train_shards) if isinstance(cfg.train_shards, str) else cfg.train_shards
    return TextStreamSpec(
        shards=tuple(str(s) for s in shards), corruptors=tuple(cfg.corruptors), study_seed=cfg.study_seed,
        seed=cfg.seed, plan_dir=cfg.plan_dir, tokenizer=str(cfg.tokenizer), seq_len=seq_len, slots=tuple(slots),
        num_slots=num_slots, chunk=chunk, bad_sample_ceiling=slot_ceiling(cfg.bad_sample_ceiling),
    )


@dataclass
class StreamState:
    """Where one data slot's stream stands, and what it has done so far.

    ``epoch``: the epoch being read (= epochs completed); ``consumed``: chain outputs of that
    epoch already packed; ``buffer``: tokens packed but not yet handed out in a window (fewer
    than ``seq_len + 1``, unless one document is longer than a window: then the rest of it);
    ``docs``/``sequences``: documents packed and windows handed out since the run began;
    ``first_pass``: the slot's first-pass report (chain and read counters, checked against the
    data-condition stage) once epoch 0 is complete. ``read`` counts this process's reads and is
    not saved: a slot resumed inside epoch 0 reads that epoch again from its start, so its
    first-pass report comes out the same; one resumed later has the report in its state.
    """

    slot: int = 0
    epoch: int = 0
    consumed: int = 0
    buffer: list[int] = field(default_factory=list)
    docs: int = 0
    sequences: int = 0
    first_pass: dict[str, Any] | None = None
    read: ReadStats = field(default_factory=ReadStats)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint form (JSON-able; a snapshot: the buffer is copied)."""
        return {"slot": self.slot, "epoch": self.epoch, "consumed": self.consumed, "buffer": list(self.buffer),
                "docs": self.docs, "sequences": self.sequences, "first_pass": self.first_pass}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, seq_len: int, where: str) -> "StreamState":
        try:
            st = cls(slot=int(data["slot"]), epoch=int(data["epoch"]), consumed=int(data["consumed"]),
                     buffer=[int(t) for t in data["buffer"]], docs=int(data["docs"]),
                     sequences=int(data["sequences"]), first_pass=data.get("first_pass"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: loader state is not an LM slot state ({exc!r})") from None
        if min(st.epoch, st.consumed, st.docs, st.sequences) < 0 or (st.epoch > 0 and st.first_pass is None):
            raise CheckpointError(f"{where}: loader state has impossible counts (epoch {st.epoch}, consumed "
                                  f"{st.consumed}, first pass {'done' if st.first_pass else 'missing'})")
        if st.sequences and not st.buffer:
            # Windows overlap by one token: after the first window the last token always stays.
            raise CheckpointError(f"{where}: loader state has an empty buffer after {st.sequences} windows "
                                  f"of {seq_len + 1} tokens")
        return st


def states_from_checkpoint(saved: Mapping[str, Any], slots: list[int], *, seq_len: int,
                           where: str) -> dict[int, StreamState]:
    """The states of ``slots`` in a checkpoint's loader state (keyed by slot number as text);
    any number of ranks and loader workers may have written it: states are per slot."""
    missing = [v for v in slots if str(v) not in saved]
    if missing:
        raise CheckpointError(f"{where}: loader state has no entry for data slots {missing} (has {sorted(saved)})")
    states = {v: StreamState.from_dict(saved[str(v)], seq_len=seq_len, where=f"{where} slot {v}") for v in slots}
    wrong = [v for v, st in states.items() if st.slot != v]
    if wrong:
        raise CheckpointError(f"{where}: loader state entries {wrong} hold another slot's state")
    return states


def shared_text_reader(spec: TextStreamSpec, slots: list[int],
                       first_epochs: Mapping[int, int] | None = None, *,
                       read_ahead: bool = False) -> SharedEpochs | None:
    """One reader for ``slots`` when they stride over shared shards (``None`` when each slot
    reads shards of its own); ``first_epochs``: the epoch each slot resumes at; ``read_ahead``: read
    each next epoch in a thread (a reader that lives for the whole stream, in a loader worker)."""
    shards, stride, _ = slot_shards(spec.shards, 0, spec.num_slots)
    if stride == 1:
        return None

    def read(epoch: int, stats: ReadStats) -> Iterator[dict[str, Any]]:
        # One document order per epoch for all striding slots: the stride partitions it.
        rng = stable_rng("lm-stream", spec.study_seed, spec.seed, "all", spec.num_slots, epoch)
        order = [shards[i] for i in rng.permutation(len(shards))]
        return iter_samples(order, kind="text", bad_sample_ceiling=spec.bad_sample_ceiling, stats=stats)

    return SharedEpochs(read, slots, spec.num_slots, ReadStats, first_epochs=first_epochs,
                        read_ahead=read_ahead)


class SlotWindows:
    """One slot's endless ``seq_len + 1``-token windows, continuing from ``state`` (which it
    advances in place). ``shared`` reads striding slots' shards once for all of them."""

    def __init__(self, spec: TextStreamSpec, tok: "TextTokenizer", state: StreamState,
                 shared: SharedEpochs | None = None) -> None:
        self.spec, self.tok, self.state = spec, tok, state
        self._mine, stride, _ = slot_shards(spec.shards, state.slot, spec.num_slots)
        self._shared = (shared or shared_text_reader(spec, [state.slot], {state.slot: state.epoch})) if stride > 1 else None
        self._chain = None
        if spec.corruptors:
            # Imported only when needed: the chain brings in polars, which a clean-control run
            # does not need. Its decisions depend on keys alone, so one chain serves every epoch.
            from inheritlab.corruptors.chain import build_chain

            self._chain = build_chain(list(spec.corruptors), study_seed=spec.study_seed, num_classes=None,
                                      class_names=None, plan_dir=spec.plan_dir)
        self._docs = self._open_epoch()

    def take(self, n: int) -> list[list[int]]:
        """The next ``n`` windows."""
        st, size = self.state, self.spec.seq_len + 1
        out = []
        for _ in range(n):
            while len(st.buffer) < size:
                self._pull()
            out.append(st.buffer[:size])
            del st.buffer[: self.spec.seq_len]
            st.sequences += 1
        return out

    def _pull(self) -> None:
        """Pack the next document (or move on to the next epoch)."""
        st = self.state
        doc = next(self._docs, None)
        if doc is None:
            self._end_epoch()
            return
        st.buffer.extend(self.tok.encode(doc["text"]))
        st.buffer.append(self.tok.eos_id)
        st.docs += 1
        st.consumed += 1

    def _end_epoch(self) -> None:
        st = self.state
        if st.consumed == 0:
            raise SpecError(f"data slot {st.slot}: the training stream is empty after the corruptor chain "
                            f"(shards {self._mine[:3]}...)")
        if st.epoch == 0:
            counters = self._chain.counters() if self._chain is not None else {}
            st.first_pass = pass_report((st.slot,), counters, st.read.to_dict())
        st.epoch, st.consumed = st.epoch + 1, 0
        self._docs = self._open_epoch()

    def _open_epoch(self) -> Iterator[dict[str, Any]]:
        """The chain's outputs of the state's epoch, past the ``consumed`` ones already packed."""
        st, spec = self.state, self.spec
        stream: Iterator[dict[str, Any]]
        if self._shared is not None:
            raw = self._shared.samples(st.slot, st.epoch)
            st.read.samples += len(raw)
            st.read.skipped.update(self._shared.skipped(st.epoch, st.slot))
            stream = iter(raw)
        else:  # a slot with its own shards shuffles their order per epoch
            rng = stable_rng("lm-stream", spec.study_seed, spec.seed, st.slot, spec.num_slots, st.epoch)
            order = [self._mine[i] for i in rng.permutation(len(self._mine))]
            stream = iter_samples(order, kind="text", bad_sample_ceiling=spec.bad_sample_ceiling, stats=st.read)
        docs = self._chain.apply(stream) if self._chain is not None else stream
        # A resumed slot: read and corrupt what it already packed (the chain counts it, as the
        # uninterrupted pass did), but tokenise none of it.
        for i in range(st.consumed):
            if next(docs, None) is None:
                raise CheckpointError(
                    f"data slot {st.slot}: the checkpoint's loader state is {st.consumed} documents into epoch "
                    f"{st.epoch}, but the epoch has only {i}: were the shards or the corruptor plans changed? "
                    "Resume on the data the run started with, or start a new cell"
                )
        return docs


def packed_sequences(cfg: "LMTrainConfig", tok: "TextTokenizer", seq_len: int, *, slot: int, num_slots: int,
                     state: StreamState, shared: SharedEpochs | None = None) -> Iterator[list[int]]:
    """Endless ``seq_len + 1``-token windows of one data slot of ``cfg``'s stream, from ``state``
    on (a fresh one starts at the beginning); ``state`` is advanced as windows are taken."""
    state.slot = slot
    windows = SlotWindows(text_stream_spec(cfg, seq_len=seq_len, num_slots=num_slots, slots=(slot,)), tok, state,
                          shared)
    while True:
        yield windows.take(1)[0]


class LMBatchStream(IterableDataset):
    """Endless per-step parts of one rank's batches.

    Each loader worker (or the main process, without workers) reads its share of the rank's
    slots and yields, for every step in order, one part: ``{"tokens"`` (int64 ``[n, seq_len +
    1]``, each slot's ``chunk`` windows in turn), ``"slots"``, ``"sizes"``, ``"states"`` (each
    slot's state after the step, as dicts)``}``. :func:`rank_batches` joins the parts of a step
    in slot order. A resume starts each slot at its saved ``states``; without them (a
    checkpoint from before loader state was saved) the first ``skip_steps`` steps are replayed,
    tokenised, and dropped.
    """

    def __init__(self, spec: TextStreamSpec, *, states: Mapping[int, StreamState] | None = None,
                 skip_steps: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.states = {v: st.to_dict() for v, st in (states or {}).items()}
        self.skip_steps = skip_steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from inheritlab.corruptors.tokenizer import load_tokenizer

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = worker_slots(list(self.spec.slots), wid, nw)
        tok = load_tokenizer(self.spec.tokenizer)
        # Fresh objects in every worker and every iteration: states advance in place.
        states = [StreamState.from_dict(self.states[v], seq_len=self.spec.seq_len, where="loader state")
                  if v in self.states else StreamState(slot=v) for v in mine]
        shared = shared_text_reader(self.spec, mine, {st.slot: st.epoch for st in states},
                                    read_ahead=info is not None)  # a worker's read overlaps its samples' work
        streams = [SlotWindows(self.spec, tok, st, shared) for st in states]
        for _ in range(self.skip_steps):  # step by step: striding slots then hold one epoch at most
            for stream in streams:
                stream.take(self.spec.chunk)
        while True:
            chunks = [stream.take(self.spec.chunk) for stream in streams]
            yield {"tokens": torch.tensor([w for c in chunks for w in c], dtype=torch.long), "slots": mine,
                   "sizes": [len(c) for c in chunks], "states": [st.to_dict() for st in states]}


def rank_batches(parts: Iterator[dict[str, Any]], num_parts: int) -> Iterator[dict[str, Any]]:
    """Join each step's ``num_parts`` parts (one per loader worker) into the rank's batch:
    ``{"tokens": [B / W, seq_len + 1], "states": {slot: state after the step}}``, windows sorted
    by slot, so the same batch whatever the number of loader workers."""
    for joined, step in join_parts(parts, num_parts, ("tokens",)):
        states = sorted((s for part in step for s in part["states"]), key=lambda s: s["slot"])
        yield {"tokens": joined["tokens"], "states": {s["slot"]: s for s in states}}


def lm_batches(spec: TextStreamSpec, *, loader_workers: int, pin_memory: bool,
               states: Mapping[int, StreamState] | None = None, skip_steps: int = 0) -> Iterator[dict[str, Any]]:
    """This rank's batches (see :func:`rank_batches`), tokenised and packed by up to
    ``loader_workers`` worker processes (never more than it has slots; 0: in this process)."""
    workers = min(loader_workers, len(spec.slots))
    stream = LMBatchStream(spec, states=states, skip_steps=skip_steps)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=PREFETCH_STEPS if workers else None)
    return rank_batches(iter(loader), max(1, workers))
