"""QA fine-tuning as an LM adaptation: the qa_train split, the fine-tune, and its evaluation rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inheritlab.corruptors.shards import iter_samples
from inheritlab.corruptors.text_world import (
    ATTRIBUTES,
    N_TEMPLATES,
    TextWorldConfig,
    load_text_world_info,
    render_splits,
    write_text_world,
)
from inheritlab.corruptors.tokenizer import load_tokenizer
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.lm_adapt import finetune_qa, qa_sequences
from inheritlab.trainers.lm_eval import accuracy, score_sequences
from inheritlab.trainers.lm_tasks import evaluate_lm
from inheritlab.trainers.lm_pretrain import LMTrainConfig, load_exported, train_lm


@pytest.fixture(scope="module")
def world(tiny_text_world):  # type: ignore[no-untyped-def]
    return tiny_text_world


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory: pytest.TempPathFactory):
    """A briefly pre-trained lm-tiny (12 steps of 8 × 64 tokens: the format, few facts)."""
    cfg = LMTrainConfig(rung="lm-tiny", train_shards=world.splits["train"], tokenizer=str(world.tokenizer),
                        cell_dir=str(tmp_path_factory.mktemp("lmadapt") / "cell"), steps=12, batch_size=8,
                        seq_len=64, log_every=4, device="cpu")
    res = train_lm(cfg)
    model, _ = load_exported(res.final_export.path)
    return model


def _items(world, split):
    return list(iter_samples(world.splits[split], kind="text"))


def _acc(model, tok, items) -> float:
    return accuracy(score_sequences(model, qa_sequences(tok, items), batch_size=32))


def test_qa_train_other_individuals_train_templates(world):
    WORLD = TextWorldConfig(**world.config)
    train = _items(world, "qa_train")
    people = {s["meta"]["individual"] for s in train}
    assert len(people) == WORLD.qa_individuals and len(train) == WORLD.qa_individuals * len(ATTRIBUTES)
    for split in ("qa_id", "qa_ood_templates", "qa_ood_people"):
        assert not people & {s["meta"]["individual"] for s in _items(world, split)}, split
    assert all(p < WORLD.num_individuals for p in people)  # ID individuals: their facts are in training
    trained = {s["meta"]["individual"] for s in _items(world, "train")}
    assert people <= trained
    heldout = set(range(N_TEMPLATES - WORLD.heldout_templates, N_TEMPLATES))
    for s in train:
        m = s["meta"]
        assert m["template"] not in heldout and not m["open_book"] and m["train_docs"] >= 1
        assert s["text"] == f"{m['prompt']} {m['answer']}." and m["answer"] not in m["prompt"]
    # Every ID individual already in qa_id: no one is left to adapt on, and the split is empty.
    full = render_splits(TextWorldConfig(num_individuals=10, num_heldout_individuals=5, train_docs=100,
                                         qa_individuals=10, vocab_size=0))
    assert full["qa_train"] == [] and len(full["qa_id"]) == 10 * len(ATTRIBUTES)


def test_finetune_is_deterministic_and_leaves_the_model(world, pretrained):
    tok = load_tokenizer(world.tokenizer)
    items = _items(world, "qa_train")
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    a = finetune_qa(pretrained, tok, items, steps=6, lr=1e-3, batch_size=8, seed=3)
    b = finetune_qa(pretrained, tok, items, steps=6, lr=1e-3, batch_size=8, seed=3)
    c = finetune_qa(pretrained, tok, items, steps=6, lr=1e-3, batch_size=8, seed=4)
    for name, p in pretrained.state_dict().items():
        assert torch.equal(p, before[name]), name  # the pre-trained weights are untouched
    assert a is not pretrained and not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert any(not torch.equal(x, before[k]) for k, x in a.state_dict().items())
    # The tie between embedding and output projection survives the copy.
    assert a.lm_head.weight is a.embed_tokens.weight
    with pytest.raises(ValueError, match="no QA items"):
        finetune_qa(pretrained, tok, [], steps=1)
    with pytest.raises(ValueError, match="steps=0"):
        finetune_qa(pretrained, tok, items, steps=0)


def test_finetune_answers_its_training_questions(world, pretrained):
    tok = load_tokenizer(world.tokenizer)
    items = _items(world, "qa_train")
    before = _acc(pretrained, tok, items)
    tuned = finetune_qa(pretrained, tok, items, seed=0)  # the defaults
    after = _acc(tuned, tok, items)
    print(f"qa_train accuracy: {before:.3f} prompted, {after:.3f} fine-tuned")
    assert before <= 0.2 and after >= 0.7, (before, after)


def test_evaluate_lm_finetune_rows(world, pretrained):
    rows = evaluate_lm(pretrained, world, tasks=["qa"], adaptations=["prompting", "finetune"], finetune_steps=10,
                       max_items=10)
    got = {(r["task"], r["split"], r["metric"]) for r in rows}
    for split in ("id", "ood_templates", "ood_people"):
        assert ("qa", split, "acc") in got and ("qa_finetune", split, "acc") in got
    assert {r["task"] for r in rows} <= {"qa", "qa_by_frequency", "qa_finetune"}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    only = evaluate_lm(pretrained, world, tasks=["qa"], adaptations=["finetune"], finetune_steps=10, max_items=10)
    assert {r["task"] for r in only} == {"qa_finetune"}
    # Same seed, same fine-tune, same rows.
    again = evaluate_lm(pretrained, world, tasks=["qa"], adaptations=["finetune"], finetune_steps=10, max_items=10)
    assert only == again


def test_adaptation_errors(world, tmp_path):
    # A user's text shards: a train split only, nothing to fine-tune on.
    user = Path(world.splits["train"][0]).parent
    info = load_text_world_info(user, tokenizer=world.tokenizer)
    with pytest.raises(ValueError, match="'qa_train'.*is missing"):
        evaluate_lm("unused", info, tasks=["qa"], adaptations=["finetune"])
    empty = write_text_world(TextWorldConfig(num_individuals=10, num_heldout_individuals=5, train_docs=100,
                                             qa_individuals=10, vocab_size=0), tmp_path / "full")
    with pytest.raises(ValueError, match="'qa_train'.*is empty"):
        evaluate_lm("unused", empty, tasks=["qa"], adaptations=["finetune"])
    with pytest.raises(ValueError, match="adaptations"):
        evaluate_lm("unused", world, tasks=["qa"], adaptations=["few_shot"])
    with pytest.raises(ValueError, match="add 'qa' to tasks"):
        evaluate_lm("unused", world, tasks=["perplexity"], adaptations=["finetune"])


def test_spec_lm_adaptation():
    from inheritlab.flows.spec import parse_spec

    base = {"name": "s", "modality": "lm", "grid": {"bias": [{"type": "duplicate", "levels": [0.0]}],
                                                    "model": ["lm-tiny"], "data_scale": {"values": [8]}}}
    spec = parse_spec({**base, "eval": {"lm_adaptation": ["prompting", "finetune"], "finetune_steps": 50}})
    assert spec.eval.lm_adaptation == ("prompting", "finetune") and spec.eval.finetune_steps == 50
    assert parse_spec(base).eval.lm_adaptation == ("prompting",)
    for ev, msg in (({"lm_adaptation": ["finetune", "finetune"]}, "repeats"),
                    ({"lm_adaptation": ["probe"]}, "lm_adaptation"),
                    ({"finetune_lr": 1e-3}, "only used when lm_adaptation includes 'finetune'"),
                    ({"lm_adaptation": ["finetune"], "finetune_steps": 0}, "finetune_steps"),
                    ({"tasks": ["perplexity"], "lm_adaptation": ["finetune"]}, "add 'qa' to eval.tasks")):
        with pytest.raises(SpecError, match=msg):
            parse_spec({**base, "eval": ev})
    clip = {**base, "modality": "clip", "grid": {**base["grid"], "bias": [{"type": "label_noise", "levels": [0.0]}],
                                                 "model": ["clip-tiny"]}}
    parse_spec(clip)
    with pytest.raises(SpecError, match="LM studies"):
        parse_spec({**clip, "eval": {"lm_adaptation": ["finetune"]}})
