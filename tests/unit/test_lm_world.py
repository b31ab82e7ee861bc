"""The built-in text world and its tokenizer: determinism, long tail, held-out splits."""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import pytest

from inheritlab.corruptors.shards import iter_samples
from inheritlab.corruptors.text_world import (
    ATTRIBUTES,
    N_TEMPLATES,
    TEXT_SPLITS,
    TextWorldConfig,
    load_text_world_info,
    render_sentence,
    write_text_world,
)
from inheritlab.corruptors.tokenizer import load_tokenizer, train_tokenizer
from inheritlab.infra.errors import ShardError, SpecError

SMALL = TextWorldConfig(num_individuals=60, num_heldout_individuals=15, train_docs=400, zipf=1.2, test_docs=30,
                        qa_individuals=10, docs_per_shard=150, vocab_size=400)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return write_text_world(SMALL, tmp_path_factory.mktemp("tw") / "world")


def _texts(info, split):
    return list(iter_samples(info.splits[split], kind="text"))


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = write_text_world(SMALL, tmp_path / "again")
    assert _digest(again.root) == _digest(world.root)
    other = write_text_world(TextWorldConfig(**{**SMALL.__dict__, "seed": 1}), tmp_path / "other")
    assert _digest(other.root) != _digest(world.root)


def test_splits_sizes_and_keys(world):
    assert set(world.splits) == set(TEXT_SPLITS)
    train = _texts(world, "train")
    assert len(train) == SMALL.train_docs
    assert len(world.splits["train"]) == 3  # 400 docs / 150 per shard
    assert all("." not in s["__key__"] for s in train)
    for split in ("qa_id", "qa_ood_templates"):
        assert len(_texts(world, split)) == SMALL.qa_individuals * len(ATTRIBUTES)


def test_long_tail_and_every_id_person_trained(world):
    counts = collections.Counter(s["meta"]["individual"] for s in _texts(world, "train"))
    assert set(counts) == set(range(SMALL.num_individuals))  # min_docs=1: everyone appears
    top = counts.most_common(1)[0][1]
    assert top >= 10 * min(counts.values())  # Zipf 1.2: a head far above the tail
    # The recorded frequency is the real one.
    for s in _texts(world, "qa_id"):
        assert s["meta"]["train_docs"] == counts[s["meta"]["individual"]]


def test_heldout_people_and_templates_never_in_training(world):
    train = _texts(world, "train")
    train_people = {s["meta"]["individual"] for s in train}
    train_text = "\n".join(s["text"] for s in train)
    held = {s["meta"]["individual"] for s in _texts(world, "test_ood_people")}
    assert held and not held & train_people
    assert all(s["meta"]["train_docs"] == 0 for s in _texts(world, "qa_ood_people"))
    heldout_ids = list(range(N_TEMPLATES - SMALL.heldout_templates, N_TEMPLATES))
    for s in train:
        assert not set(s["meta"]["templates"]) & set(heldout_ids)
    # A held-out phrasing never occurs in the training text.
    person = {"name": "X", **{a: "v" for a in ATTRIBUTES}}
    for a in ATTRIBUTES:
        for t in heldout_ids:
            prompt, _ = render_sentence(person, a, t)
            stem = prompt.replace("X", "").strip()
            assert stem not in train_text, (a, t, stem)


def test_qa_items_are_prompt_plus_answer(world):
    items = _texts(world, "qa_ood_people")
    for s in items:
        m = s["meta"]
        assert s["text"] == f"{m['prompt']} {m['answer']}."
        assert m["open_book"] and m["answer"] in m["prompt"]  # the biography is in context
    for s in _texts(world, "qa_id"):
        assert not s["meta"]["open_book"] and s["meta"]["answer"] not in s["meta"]["prompt"]


def test_reuse_and_refuse(world, tmp_path):
    assert write_text_world(SMALL, world.root).root == world.root
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ShardError, match="refusing to overwrite"):
        write_text_world(SMALL, tmp_path / "junk")
    with pytest.raises(SpecError, match="train_docs"):
        TextWorldConfig(num_individuals=100, train_docs=50)
    info = load_text_world_info(world.root)
    assert info.tokenizer == world.tokenizer and info.attributes == list(ATTRIBUTES)


def test_user_text_shards_dir(world, tmp_path):
    info = load_text_world_info(Path(world.splits["train"][0]).parent, tokenizer=world.tokenizer)
    assert info.splits["train"] == world.splits["train"] and info.tokenizer == world.tokenizer
    with pytest.raises(ShardError, match="no world.json"):
        load_text_world_info(tmp_path)


def test_tokenizer_round_trip_and_errors(world, tmp_path):
    tok = load_tokenizer(world.tokenizer)
    assert tok.vocab_size == SMALL.vocab_size
    assert tok.eos_id != tok.pad_id
    for text in [s["text"] for s in _texts(world, "test_ood_templates")[:5]] + ["Ünïcode ✓ and 123 tabs\tok"]:
        assert tok.decode(tok.encode(text)) == text  # byte level: anything round-trips
    # Loading by directory works; a missing name is an error that says nothing is downloaded.
    assert load_tokenizer(world.root).vocab_size == tok.vocab_size
    with pytest.raises(SpecError, match="nothing is downloaded"):
        load_tokenizer(tmp_path / "nope" / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SpecError, match="not a valid tokenizer"):
        load_tokenizer(bad)


def test_tokenizer_training_is_deterministic(tmp_path):
    texts = ["the cat sat on the mat", "a dog sat on a log"] * 20
    a = train_tokenizer(texts, vocab_size=300, out_path=tmp_path / "a.json")
    b = train_tokenizer(texts, vocab_size=300, out_path=tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.encode("the cat") == b.encode("the cat")
