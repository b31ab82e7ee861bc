"""The LM data stream in loader workers: same batches for any worker count, exact resume from the
loader state without tokenising anything again, states per slot (any number of ranks)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from inheritlab.corruptors.tokenizer import TextTokenizer
from inheritlab.infra.errors import CheckpointError
from inheritlab.trainers.lm_data import StreamState, TextStreamSpec, lm_batches, states_from_checkpoint
from inheritlab.trainers.slots import gather_slot_states

# Unplanned corruptors that drop and rewrite documents: the chain's counters go into the
# first-pass report, which a resume must reproduce.
CHAIN = ({"type": "token_noise", "level": 0.5}, {"type": "subsample", "fraction": 0.8})


@pytest.fixture(scope="module")
def world(tiny_text_world):  # type: ignore[no-untyped-def]
    return tiny_text_world


def _spec(world, *, num_slots: int, slots: tuple[int, ...] | None = None, chunk: int = 2) -> TextStreamSpec:
    # The world has 3 train shards: 2 slots read shards of their own, 4 stride over shared ones.
    return TextStreamSpec(shards=tuple(world.splits["train"]), corruptors=CHAIN, study_seed=1, seed=2, plan_dir=None,
                          tokenizer=str(world.tokenizer), seq_len=16,
                          slots=tuple(range(num_slots)) if slots is None else slots, num_slots=num_slots, chunk=chunk)


def _take(spec: TextStreamSpec, n: int, *, workers: int = 0, states: dict[int, StreamState] | None = None,
          skip: int = 0) -> list[dict[str, Any]]:
    it = lm_batches(spec, loader_workers=workers, pin_memory=False, states=states, skip_steps=skip)
    return [next(it) for _ in range(n)]


def _restore(saved: dict[str, Any], spec: TextStreamSpec) -> dict[int, StreamState]:
    # Through JSON, as a checkpoint's client state must survive it.
    return states_from_checkpoint(json.loads(json.dumps(saved)), list(spec.slots), seq_len=spec.seq_len, where="test")


@pytest.fixture()
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text tokenised in this process, in order."""
    texts: list[str] = []
    original = TextTokenizer.encode

    def counting(self: TextTokenizer, text: str) -> list[int]:
        texts.append(text)
        return original(self, text)

    monkeypatch.setattr(TextTokenizer, "encode", counting)
    return texts


@pytest.mark.parametrize("num_slots", [2, 4])
def test_batches_are_the_same_for_any_number_of_loader_workers(world, num_slots: int) -> None:
    spec = _spec(world, num_slots=num_slots)
    runs = {w: _take(spec, 6, workers=w) for w in (0, 1, 2)}
    ref = runs[0]
    assert ref[0]["tokens"].shape == (num_slots * 2, 17) and ref[0]["tokens"].dtype == torch.int64
    for w in (1, 2):
        for a, b in zip(ref, runs[w]):
            assert torch.equal(a["tokens"], b["tokens"]), w
            assert a["states"] == b["states"], w
    # Each slot's chunk of windows continues where its previous one stopped (one-token overlap).
    a, b = ref[0]["tokens"], ref[1]["tokens"]
    assert all(a[2 * v + 1, -1] == b[2 * v, 0] for v in range(num_slots))


@pytest.mark.parametrize("num_slots", [2, 4])
def test_resume_is_exact_and_tokenises_nothing_twice(world, encoded: list[str], num_slots: int) -> None:
    spec = _spec(world, num_slots=num_slots)
    # Uninterrupted, until every slot is in its third epoch.
    full: list[dict[str, Any]] = []
    it = lm_batches(spec, loader_workers=0, pin_memory=False)
    while not full or min(s["epoch"] for s in full[-1]["states"].values()) < 2:
        full.append(next(it))
    full_texts = list(encoded)
    epochs = [min(s["epoch"] for s in b["states"].values()) for b in full]
    mid_first = epochs.index(1) // 2             # inside epoch 0, part-way
    assert full[mid_first]["states"][0]["consumed"] > 0 and epochs[mid_first] == 0
    after_boundary = epochs.index(1) + 1        # every slot past its first epoch
    assert all(s["first_pass"] for s in full[after_boundary]["states"].values())

    # Cut inside epoch 0, resumed; cut again past the epoch boundary, resumed again.
    encoded.clear()
    got = _take(spec, mid_first + 1)
    got += _take(spec, after_boundary - mid_first, states=_restore(gather_slot_states(got[-1]["states"]), spec))
    got += _take(spec, len(full) - after_boundary - 1,
                 states=_restore(gather_slot_states(got[-1]["states"]), spec))
    assert len(got) == len(full)
    for step, (a, b) in enumerate(zip(full, got)):
        assert torch.equal(a["tokens"], b["tokens"]), step
        assert a["states"] == b["states"], step  # positions, buffers, counts and first-pass reports
    # Every document was tokenised once, in the uninterrupted order: none again after a resume.
    assert encoded == full_texts
    reports = [s["first_pass"] for s in got[-1]["states"].values()]
    assert sum(r["read"]["samples"] for r in reports) == 150  # the world's documents, once over all slots
    assert all(r["counters"] for r in reports)


def test_a_state_saved_by_one_rank_resumes_on_two(world) -> None:
    one = _spec(world, num_slots=2)                 # one rank reads both slots
    full = _take(one, 12)
    saved = gather_slot_states(_take(one, 5)[-1]["states"])
    assert sorted(saved) == ["0", "1"]
    parts = []
    for rank, workers in ((0, 0), (1, 1)):          # each rank reads one slot, with and without a worker
        spec = _spec(world, num_slots=2, slots=(rank,))
        parts.append(_take(spec, 7, workers=workers, states=_restore(saved, spec)))
    for step, (r0, r1) in enumerate(zip(*parts), start=5):
        assert torch.equal(torch.cat([r0["tokens"], r1["tokens"]]), full[step]["tokens"]), step
        assert {**r0["states"], **r1["states"]} == full[step]["states"]


def test_without_a_loader_state_the_stream_is_replayed(world) -> None:
    spec = _spec(world, num_slots=4)
    full = _take(spec, 8)
    replayed = _take(spec, 3, skip=5, workers=2)
    for a, b in zip(full[5:], replayed):
        assert torch.equal(a["tokens"], b["tokens"])
        assert a["states"] == b["states"]


def test_a_state_that_does_not_fit_the_data_is_refused(world) -> None:
    spec = _spec(world, num_slots=2)
    saved = gather_slot_states(_take(spec, 2)[-1]["states"])
    with pytest.raises(CheckpointError, match=r"no entry for data slots \[2, 3\]"):
        states_from_checkpoint(saved, [0, 1, 2, 3], seq_len=16, where="test")
    saved["1"]["consumed"] = 10**6  # more documents than the epoch has: other shards than the run's
    with pytest.raises(CheckpointError, match="data slot 1: .* 1000000 documents into epoch 0"):
        _take(spec, 1, states=_restore(saved, spec))
    saved["1"]["epoch"], saved["1"]["first_pass"] = 1, None
    with pytest.raises(CheckpointError, match="impossible counts"):
        _restore(saved, spec)


def test_trainer_commits_loader_state_and_resumes_old_checkpoints_by_replay(world, tmp_path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from inheritlab.trainers import lm_pretrain
    from inheritlab.trainers.checkpoint import read_latest
    from inheritlab.trainers.lm_pretrain import LMTrainConfig, load_exported, train_lm

    def cfg(cell: str, **kw: Any) -> LMTrainConfig:
        return LMTrainConfig(rung="lm-tiny", train_shards=world.splits["train"], tokenizer=str(world.tokenizer),
                             cell_dir=str(tmp_path / cell), steps=6, batch_size=4, seq_len=16, ckpt_every=3,
                             log_every=1, device="cpu", corruptors=CHAIN, **kw)

    full = train_lm(cfg("full"))
    client = torch.load(tmp_path / "full" / "ckpt" / "step_6" / "mp_rank_00_model_states.pt", weights_only=False)
    loader = json.loads(json.dumps(client["loader"]))
    assert sorted(loader) == ["0", "1", "2", "3"]  # batch 4: four data slots, all in the checkpoint
    assert sum(s["sequences"] for s in loader.values()) == 6 * 4

    # A checkpoint written before loader states were saved: the resume replays the stream.
    monkeypatch.setattr(lm_pretrain, "gather_slot_states", lambda states: None)
    part = train_lm(cfg("cut", stop_after_steps=4))
    assert part.steps == 4 and read_latest(tmp_path / "cut" / "ckpt")["step"] == 3
    old = torch.load(tmp_path / "cut" / "ckpt" / "step_3" / "mp_rank_00_model_states.pt", weights_only=False)
    assert old["loader"] is None
    monkeypatch.undo()
    resumed = train_lm(cfg("cut", loader_workers=2))
    assert resumed.resumed_from == 3 and resumed.finished
    assert resumed.data_check == full.data_check and resumed.extra["docs_read_rank0"] == full.extra["docs_read_rank0"]
    a, _ = load_exported(full.final_export.path)
    b, _ = load_exported(resumed.final_export.path)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
