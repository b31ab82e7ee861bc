"""Text samples: the topic world and the text forms of noise, duplication, imbalance, contamination."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest

from inheritlab.corruptors.chain import build_chain, condition_data
from inheritlab.corruptors.dedup import dedup_quality
from inheritlab.corruptors.duplication import leaked_keys
from inheritlab.corruptors.shards import iter_samples
from topic_world import TopicWorldConfig, write_topic_world  # a test corpus beside this file

SEED = 2


@pytest.fixture(scope="module")
def tw(tmp_path_factory):
    cfg = TopicWorldConfig(seed=4, num_topics=4, train_size=400, test_size=80, doc_words=30, samples_per_shard=100)
    return write_topic_world(cfg, tmp_path_factory.mktemp("text") / "tw")


def _cond(tw, specs, out):
    c = condition_data(tw.splits["train"], specs, study_seed=SEED, out_dir=out, num_classes=tw.num_classes,
                       class_names=tw.class_names, kind="text")
    assert c["balanced"]
    return c, pl.read_parquet(out / "manifest.parquet")


def test_text_world_is_deterministic_and_readable(tw, tmp_path):
    docs = list(iter_samples(tw.splits["train"], kind="text"))
    assert len(docs) == 400 and set(docs[0]) >= {"__key__", "text", "label", "meta"} and "caption" not in docs[0]
    assert Counter(d["meta"]["topic"] for d in docs) == Counter({t: 100 for t in tw.class_names})
    again = write_topic_world(TopicWorldConfig(seed=4, num_topics=4, train_size=400, test_size=80, doc_words=30,
                                             samples_per_shard=100), tmp_path / "again")
    assert [open(p, "rb").read() for p in again.splits["train"]] == [open(p, "rb").read() for p in tw.splits["train"]]


@pytest.mark.parametrize("op", ["replace", "drop", "swap"])
def test_token_noise(tw, op):
    chain = build_chain([{"type": "token_noise", "level": 0.5, "rate": 0.2, "op": op}], study_seed=SEED,
                        num_classes=None, class_names=None)
    out = list(chain.apply(iter_samples(tw.splits["train"][:1], kind="text")))
    touched = [d for d in out if "token_noise" in d["meta"]]
    assert 30 < len(touched) < 70
    for d in touched:
        before, after = d["meta"]["true_text"].split(), d["text"].split()
        assert len(after) == (24 if op == "drop" else 30)
        if op == "swap":
            assert Counter(after) == Counter(before) and after != before


def test_document_duplication_and_minhash_dedup(tw, tmp_path):
    specs = [{"type": "duplicate", "level": 0.1, "repeats": 2, "mode": "near"},
             {"type": "dedup", "method": "minhash", "threshold": 0.7}]
    c, manifest = _cond(tw, specs, tmp_path)
    planted = manifest.filter(pl.col("action") == "duplicate")["key"].to_list()
    dropped = manifest.filter(pl.col("action") == "drop:duplicate")["key"].to_list()
    q = dedup_quality(dropped, [[k, f"{k}_dup1"] for k in planted])
    assert q["recall"] >= 0.95 and q["precision"] >= 0.95


def test_topic_imbalance_and_benchmark_contamination(tw, tmp_path):
    spec = {"type": "imbalance", "level": 1.0, "max_ratio": 10, "concepts": "meta:topic", "order": tw.class_names}
    c, _ = _cond(tw, [spec], tmp_path / "imb")
    counts = {int(k): v for k, v in c["labels_out"].items()}
    assert counts[0] == 100 and counts[3] < 30 and counts[0] > counts[1] > counts[3]  # keep_3 = 0.1
    c, manifest = _cond(tw, [{"type": "contamination", "level": 0.25, "source": "test"}], tmp_path / "leak")
    keys = leaked_keys(tmp_path / "leak")["test"]
    assert 10 <= len(keys) <= 32 and c["corruptors"]["contamination"]["added"] == len(keys)
    chain = build_chain([{"type": "contamination", "level": 0.25, "source": "test"}], study_seed=SEED,
                        num_classes=4, class_names=tw.class_names, plan_dir=tmp_path / "leak")
    injected = [d for d in chain.apply(iter_samples(tw.splits["train"], kind="text")) if "leaked_from" in d["meta"]]
    test = {d["__key__"]: d["text"] for d in iter_samples(tw.splits["test"], kind="text")}
    assert sorted(d["meta"]["leaked_from"] for d in injected) == keys
    assert all(d["text"] == test[d["meta"]["leaked_from"]] for d in injected)
