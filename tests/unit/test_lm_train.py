"""LM pre-training on DeepSpeed (one gloo process, fp32): loss goes down, exact resume, eval rows."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from inheritlab.corruptors.chain import condition_data
from inheritlab.corruptors.tokenizer import load_tokenizer
from inheritlab.infra.errors import CheckpointError, SpecError
from inheritlab.trainers.checkpoint import read_latest
from inheritlab.trainers.lm_pretrain import LMTrainConfig, StreamState, load_exported, packed_sequences, train_lm

@pytest.fixture(scope="module")
def world(tiny_text_world):  # type: ignore[no-untyped-def]
    return tiny_text_world


def _cfg(world, cell, **kw) -> LMTrainConfig:
    base = dict(rung="lm-tiny", train_shards=world.splits["train"], tokenizer=str(world.tokenizer), cell_dir=str(cell),
                steps=12, batch_size=4, seq_len=32, log_every=1, device="cpu")
    return LMTrainConfig(**{**base, **kw})


def test_packing_covers_every_token_once(world):
    tok = load_tokenizer(world.tokenizer)
    cfg = _cfg(world, "unused")
    stream = packed_sequences(cfg, tok, 16, slot=0, num_slots=1, state=StreamState())
    windows = [next(stream) for _ in range(40)]
    for a, b in zip(windows, windows[1:]):
        assert a[-1] == b[0]  # one-token overlap: every token is a target exactly once
    assert all(len(w) == 17 for w in windows)
    # Two data slots over three shards split the documents between them without overlap.
    seen = []
    for slot in (0, 1):
        st = StreamState(slot=slot)
        s = packed_sequences(cfg, tok, 16, slot=slot, num_slots=2, state=st)
        while st.first_pass is None:
            next(s)
        seen.append(st)
    assert all(st.docs > 0 for st in seen)
    assert sum(st.first_pass["read"]["samples"] for st in seen) == 150  # the world's 150 documents, once


def test_train_loss_goes_down_resume_is_exact_and_evaluation_runs(world, tmp_path):
    # Uninterrupted reference run.
    full = train_lm(_cfg(world, tmp_path / "full", ckpt_every=4, export_steps=[4]))
    assert full.finished and full.steps == 12 and full.extra["tokens_seen"] == 12 * 4 * 32
    first, last = full.loss_curve[0][1], full.loss_curve[-1][1]
    assert last < first - 0.5, full.loss_curve
    assert [e.step for e in full.exports] == [4, 12]
    startup = json.loads((tmp_path / "full" / "progress.json").read_text())["startup"]
    assert set(startup) == {"start", "engine", "first_batch", "first_step"}
    assert 0 < startup["start"] <= startup["engine"] <= startup["first_batch"] <= startup["first_step"]

    # Killed after 6 steps (last commit at 4), then relaunched: resumes at 4 and ends identical.
    part = train_lm(_cfg(world, tmp_path / "cut", ckpt_every=4, stop_after_steps=6))
    assert not part.finished and part.steps == 6
    assert read_latest(tmp_path / "cut" / "ckpt")["step"] == 4
    resumed = train_lm(_cfg(world, tmp_path / "cut", ckpt_every=4))
    assert resumed.resumed_from == 4 and resumed.finished
    a, _ = load_exported(full.final_export.path)
    b, _ = load_exported(resumed.final_export.path)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    assert math.isclose(full.final_loss, resumed.final_loss, rel_tol=1e-5)
    # Another batch shape cannot continue the same data stream: refused, not silently misaligned.
    with pytest.raises(CheckpointError, match="data stream"):
        train_lm(_cfg(world, tmp_path / "cut", ckpt_every=4, steps=16, batch_size=2))

    from inheritlab.trainers.lm_tasks import evaluate_lm

    rows = evaluate_lm(full.final_export.path, world.root, tasks=["perplexity", "qa"], max_items=10)
    got = {(r["task"], r["split"], r["metric"]) for r in rows}
    assert ("perplexity", "id", "perplexity") in got and ("qa", "ood_people", "acc") in got
    assert all(r["checkpoint_step"] == 12 and r["samples_seen"] == 48 for r in rows)
    ppl = {r["split"]: r["value"] for r in rows if r["metric"] == "perplexity"}
    assert ppl["id"] < load_tokenizer(world.tokenizer).vocab_size  # learned something


@pytest.mark.slow
def test_corrupted_stream_memorization_and_contamination(world, tmp_path):
    specs = [{"type": "duplicate", "level": 0.3, "repeats": 8},
             {"type": "contamination", "level": 0.5, "source": "qa_id", "repeats": 4}]
    data = tmp_path / "data"
    counters = condition_data(world.splits["train"], specs, study_seed=3, out_dir=data, num_classes=None,
                              class_names=None, kind="text", sources=world.splits)
    assert counters["balanced"]
    res = train_lm(_cfg(world, tmp_path / "cell", corruptors=specs, study_seed=3, plan_dir=str(data), steps=40,
                        batch_size=8, seq_len=64, log_every=10))
    assert res.finished
    from inheritlab.corruptors.duplication import leaked_keys
    from inheritlab.trainers.lm_eval import duplicated_keys
    from inheritlab.trainers.lm_tasks import evaluate_lm

    dup = duplicated_keys(data)
    leaked = leaked_keys(data)
    assert dup and leaked["qa_id"]
    rows = evaluate_lm(res.final_export.path, world.root, tasks=["memorization", "contamination"],
                       duplicated_keys=dup, leaked_keys=leaked)
    v = {(r["task"], r["split"], r["metric"]): r["value"] for r in rows}
    # Seen 8 times vs once: the duplicated documents are fitted better.
    assert v[("memorization", "duplicated", "loss")] < v[("memorization", "unique", "loss")]
    assert v[("memorization", "train", "loss_gap")] > 0
    assert ("contamination_qa_id", "all", "inflation") in v


def test_config_errors(world, tmp_path):
    with pytest.raises(SpecError, match="exactly one of tokens"):
        _cfg(world, tmp_path, tokens=100)
    assert _cfg(world, tmp_path, steps=None, samples_seen=10).samples_seen == 10
    with pytest.raises(SpecError, match="unknown key"):
        LMTrainConfig.from_dict({**dataclasses.asdict(_cfg(world, tmp_path)), "lr_typo": 1})
    with pytest.raises(SpecError, match="unknown LM rung"):
        _cfg(world, tmp_path, rung="lm-huge")
    with pytest.raises(SpecError, match="loss_impl: got 'fused'"):
        _cfg(world, tmp_path, loss_impl="fused")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_lr_schedule_decays_to_the_recipe_floor(world, tmp_path):
    """The LM recipes keep 10 % of the peak LR at the end of the cosine (it used to decay to 0)."""
    from inheritlab.trainers.engine import build_engine, init_distributed
    from inheritlab.trainers.lm_models import get_rung
    from inheritlab.trainers.lm_pretrain import engine_config, plan_run

    cfg = _cfg(world, tmp_path, steps=20, lr=1e-3, warmup_steps=2)
    ecfg = engine_config(cfg, plan_run(cfg, 1), world=1, use_gpu=False)
    assert ecfg.min_lr_ratio == get_rung("lm-tiny").recipe.min_lr_ratio == 0.1
    init_distributed(use_gpu=False)
    _, opt, sched = build_engine(torch.nn.Linear(4, 4), ecfg)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[1] == pytest.approx(1e-3) and min(lrs) > 1e-4 - 1e-12
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
