"""Every bias injector and remover on the built-in world: semantics, nesting, accounting."""

from __future__ import annotations

import io
import random
from collections import Counter

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from inheritlab.corruptors.chain import build_chain, condition_data
from inheritlab.corruptors.dedup import MinHasher, dedup_quality
from inheritlab.corruptors.duplication import leaked_keys
from inheritlab.corruptors.shards import iter_samples, split_shards
from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
from inheritlab.infra.errors import SpecError

SEED = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = ImageWorldConfig(seed=1, num_classes=5, train_size=500, test_id_size=100, test_ood_size=50,
                           samples_per_shard=100)
    return write_image_world(cfg, tmp_path_factory.mktemp("bias") / "world")


def _run(world, specs, out, shards=None):
    counters = condition_data(shards or world.splits["train"], specs, study_seed=SEED, out_dir=out,
                              num_classes=world.num_classes, class_names=world.class_names)
    assert counters["balanced"]
    return counters, pl.read_parquet(out / "manifest.parquet")


def _stream(world, specs, plan_dir, shards=None):
    chain = build_chain(specs, study_seed=SEED, num_classes=world.num_classes, class_names=world.class_names,
                        plan_dir=plan_dir)
    return list(chain.apply(iter_samples(shards or world.splits["train"], decode=False))), chain


# ----------------------------------------------------------------------------------- label noise


def test_asymmetric_default_is_pair_flip_and_mapping_by_name(world, tmp_path):
    out, _ = _stream(world, [{"type": "label_noise", "level": 0.5, "mode": "asymmetric"}], None)
    flips = [(s["meta"].get("true_label", s["label"]), s["label"]) for s in out if s["label"] != s["meta"].get("true_label", s["label"])]
    assert flips and all(b == (a + 1) % 5 for a, b in flips)
    names = world.class_names
    spec = {"type": "label_noise", "level": 1.0, "mode": "asymmetric", "mapping": {names[0]: names[2]}}
    out, chain = _stream(world, [spec], None)
    assert {s["label"] for s in out if s["meta"].get("true_label", s["label"]) == 0} == {2}
    assert all(s["label"] == s["meta"].get("true_label", s["label"]) for s in out if s["meta"].get("true_label", s["label"]) != 0)
    assert chain.counters()["label_noise"]["skipped"]["no_target"] > 0


def test_class_conditional_rates_and_transition(world):
    rates = [1.0, 0.0, 0.5, 0.0, 0.0]
    transition = [[0, 0, 0, 0, 1]] + [[1, 1, 1, 1, 1]] * 4
    spec = {"type": "label_noise", "level": 0.8, "mode": "class_conditional", "class_rates": rates,
            "transition": transition}
    out, _ = _stream(world, [spec], None)
    by_true: dict[int, Counter] = {}
    for s in out:
        by_true.setdefault(s["meta"].get("true_label", s["label"]), Counter())[s["label"]] += 1
    assert set(by_true[0]) <= {0, 4} and by_true[0][4] > 0.6 * sum(by_true[0].values())
    assert set(by_true[1]) == {1} and set(by_true[3]) == {3}
    frac2 = 1 - by_true[2][2] / sum(by_true[2].values())
    assert 0.25 < frac2 < 0.55


@pytest.mark.parametrize("spec, needle", [
    ({"type": "label_noise", "level": 0.1, "mapping": {"0": 1}}, "mapping: only used with mode 'asymmetric'"),
    ({"type": "label_noise", "level": 0.1, "mode": "class_conditional", "class_rates": [1, 2]}, "class_rates"),
])
def test_label_noise_param_errors(spec, needle):
    with pytest.raises(SpecError, match=needle):
        build_chain([spec], study_seed=0, num_classes=5, class_names=None)


def test_class_rates_length_checked_against_classes():
    spec = {"type": "label_noise", "level": 0.1, "mode": "class_conditional", "class_rates": [1, 1]}
    with pytest.raises(SpecError, match="one per class"):
        build_chain([spec], study_seed=0, num_classes=5, class_names=None)


# ----------------------------------------------------------------------------------- caption noise


def test_caption_swap_is_a_derangement_of_the_selected(world, tmp_path):
    specs = [{"type": "caption_noise", "level": 0.3, "mode": "swap"}]
    counters, manifest = _run(world, specs, tmp_path)
    src = {s["__key__"]: s["caption"] for s in iter_samples(world.splits["train"], decode=False)}
    out, _ = _stream(world, specs, tmp_path)
    touched = {s["__key__"]: s["caption"] for s in out if "caption_noise" in s["meta"]}
    assert 100 < len(touched) < 200 and counters["corruptors"]["caption_noise"]["touched"] == len(touched)
    assert sorted(touched.values()) == sorted(src[k] for k in touched)  # captions only move around
    sources = dict(zip(manifest["key"], manifest["detail"].map_elements(lambda d: d, return_dtype=pl.Utf8)))
    assert all(k not in sources[k] for k in touched)  # nobody keeps its own caption
    with pytest.raises(SpecError, match="has no plan"):
        list(build_chain(specs, study_seed=SEED, num_classes=5, class_names=world.class_names).apply(out[:1]))


def test_word_drop_and_shuffle(world):
    base = {s["__key__"]: s["caption"] for s in iter_samples(world.splits["train"][:1], decode=False)}
    dropped, _ = _stream(world, [{"type": "caption_noise", "level": 1.0, "mode": "word_drop", "rate": 0.3}], None,
                         world.splits["train"][:1])
    shuffled, _ = _stream(world, [{"type": "caption_noise", "level": 1.0, "mode": "word_shuffle"}], None,
                          world.splits["train"][:1])
    for d, s in zip(dropped, shuffled):
        words = base[d["__key__"]].split()
        assert len(d["caption"].split()) == len(words) - max(1, round(0.3 * len(words)))
        assert Counter(s["caption"].split()) == Counter(words) and s["caption"] != base[s["__key__"]]


# ----------------------------------------------------------------------------------- duplication


def test_duplicate_exact_counts_and_near_copies(world, tmp_path):
    specs = [{"type": "duplicate", "level": 0.1, "repeats": 4, "count": "exact", "mode": "near"}]
    counters, manifest = _run(world, specs, tmp_path)
    c = counters["corruptors"]["duplicate"]
    assert c["added"] == 50 * 3 and c["out"] == 500 + 150 and counters["samples_out"] == 650
    out, _ = _stream(world, specs, tmp_path)
    orig = {s["__key__"]: s for s in out if "dup_of" not in s["meta"]}
    copies = [s for s in out if "dup_of" in s["meta"]]
    assert len(copies) == 150 and all(s["__key__"] == f"{s['meta']['dup_of']}_dup{s['meta']['dup_index']}" for s in copies)
    for s in copies[:10]:
        src = orig[s["meta"]["dup_of"]]
        assert s["image"] != src["image"] and s["caption"] == src["caption"] and s["label"] == src["label"]
        assert Image.open(io.BytesIO(s["image"])).size == (32, 32)


def test_duplicate_levels_nest(world):
    sets = []
    for level in (0.05, 0.1, 0.3):
        out, _ = _stream(world, [{"type": "duplicate", "level": level}], None)
        sets.append({s["meta"]["dup_of"] for s in out if "dup_of" in s["meta"]})
    assert sets[0] <= sets[1] <= sets[2] and len(sets[0]) < len(sets[2])


# ----------------------------------------------------------------------------------- contamination


def test_contamination_injects_records_and_nests(world, tmp_path):
    leaked = []
    for level in (0.1, 0.3):
        out_dir = tmp_path / f"l{level}"
        specs = [{"type": "contamination", "level": level, "repeats": 2}]
        counters, manifest = _run(world, specs, out_dir)
        keys = leaked_keys(out_dir)["test_id"]
        assert counters["corruptors"]["contamination"]["added"] == 2 * len(keys)
        assert set(manifest.filter(pl.col("action") == "inject")["key"]) == set(keys)
        # The trainer has no test split at hand: the plan carries the items.
        out, _ = _stream(world, specs, out_dir)
        injected = [s for s in out if "leaked_from" in s["meta"]]
        assert sorted({s["meta"]["leaked_from"] for s in injected}) == keys
        assert all(s["__key__"].startswith(s["meta"]["leaked_from"] + "_leak") for s in injected)
        test = {s["__key__"]: s for s in iter_samples(world.splits["test_id"], decode=False)}
        for s in injected[:5]:
            t = test[s["meta"]["leaked_from"]]
            assert s["image"] == t["image"] and s["caption"] == t["caption"] and s["label"] == t["label"]
        leaked.append(set(keys))
    assert leaked[0] < leaked[1]


def test_contamination_unknown_source_is_named(world, tmp_path):
    with pytest.raises(SpecError, match="source: got 'test_nope'"):
        _run(world, [{"type": "contamination", "level": 0.1, "source": "test_nope"}], tmp_path)


# ----------------------------------------------------------------------------------- imbalance


def test_imbalance_profile_and_nesting(world):
    kept = []
    for level in (0.0, 0.5, 1.0):
        out, chain = _stream(world, [{"type": "imbalance", "level": level, "max_ratio": 20}], None)
        kept.append({s["__key__"] for s in out})
        counts = Counter(s["label"] for s in out)
        if level == 1.0:
            assert counts[0] == 100 and 2 <= counts[4] <= 12
            assert [counts[c] for c in range(5)] == sorted(counts.values(), reverse=True)
    assert kept[0] == {s["__key__"] for s in iter_samples(world.splits["train"], decode=False)}
    assert kept[2] <= kept[1] <= kept[0]


def test_rebalance_cap_and_inverse(world, tmp_path):
    tail = {"type": "imbalance", "level": 1.0, "max_ratio": 10}
    before, _ = _run(world, [tail], tmp_path / "tail")
    pre = {int(k): v for k, v in before["labels_out"].items()}
    counters, _ = _run(world, [tail, {"type": "rebalance", "mode": "cap", "cap": 30}], tmp_path / "cap")
    labels = {int(k): v for k, v in counters["labels_out"].items()}
    assert pre[0] > 80 and labels[0] < 45  # the head is capped ...
    assert all(labels[c] == pre[c] for c in pre if pre[c] <= 30)  # ... the tail is kept whole
    counters, _ = _run(world, [tail, {"type": "rebalance", "mode": "inverse"}], tmp_path / "inv")
    labels = {int(k): v for k, v in counters["labels_out"].items()}
    mean = sum(labels.values()) / 5
    assert all(0.5 * mean < v < 1.6 * mean for v in labels.values())
    assert counters["corruptors"]["rebalance"]["added"] > 0


def test_imbalance_concepts_from_captions(world):
    spec = {"type": "imbalance", "level": 1.0, "max_ratio": 50, "concepts": "caption"}
    out, _ = _stream(world, [spec], None)
    counts = Counter(s["label"] for s in out)
    assert counts[0] == 100 and counts[4] < 10


# ----------------------------------------------------------------------------------- dedup


def test_exact_dedup_finds_every_planted_copy(world, tmp_path):
    specs = [{"type": "duplicate", "level": 0.2, "repeats": 3}, {"type": "dedup", "method": "exact"}]
    counters, manifest = _run(world, specs, tmp_path)
    planted = manifest.filter(pl.col("action") == "duplicate")["key"].to_list()
    groups = [[k, f"{k}_dup1", f"{k}_dup2"] for k in planted]
    dropped = manifest.filter(pl.col("action") == "drop:duplicate")["key"].to_list()
    assert dedup_quality(dropped, groups)["precision"] == 1.0 and dedup_quality(dropped, groups)["recall"] == 1.0
    assert counters["samples_out"] == 500


def test_embed_dedup_on_near_copies(world, tmp_path):
    specs = [{"type": "duplicate", "level": 0.2, "repeats": 2, "mode": "near"}, {"type": "dedup", "method": "embed"}]
    _, manifest = _run(world, specs, tmp_path)
    planted = manifest.filter(pl.col("action") == "duplicate")["key"].to_list()
    dropped = manifest.filter(pl.col("action") == "drop:duplicate")["key"].to_list()
    q = dedup_quality(dropped, [[k, f"{k}_dup1"] for k in planted])
    assert q["recall"] >= 0.9 and q["precision"] >= 0.8


@pytest.mark.parametrize("method", ["embed", "minhash"])
def test_dedup_plan_is_order_free(world, tmp_path, method):
    # minhash on the world's templated captions: huge LSH buckets, the order-sensitive path.
    specs = [{"type": "duplicate", "level": 0.2, "repeats": 2, "mode": "near"}, {"type": "dedup", "method": method}]
    shards = list(world.splits["train"][:3])
    _run(world, specs, tmp_path / "a", shards)
    random.Random(3).shuffle(shards)
    _run(world, specs, tmp_path / "b", shards)
    a = pl.read_parquet(tmp_path / "a" / "plan-dedup.parquet")
    b = pl.read_parquet(tmp_path / "b" / "plan-dedup.parquet")
    assert a.equals(b) and a.height > 0


def test_minhash_finds_near_duplicate_texts():
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(3000)]
    docs = [" ".join(rng.choice(vocab) for _ in range(15)) for _ in range(300)]
    near = [" ".join(d.split()[:7] + d.split()[8:]) for d in docs[:50]]
    sigs = MinHasher(128, 5).signatures(docs + near)
    from inheritlab.corruptors.dedup import cluster_minhash

    uf = cluster_minhash(sigs, threshold=0.6, bands=32)
    found = sum(uf.find(i) == uf.find(300 + i) for i in range(50))
    false = sum(uf.find(i) == uf.find(j) for i in range(300) for j in range(i + 1, 300))
    assert found >= 47 and false == 0


def test_dedup_param_errors():
    with pytest.raises(SpecError, match="bands"):
        build_chain([{"type": "dedup", "method": "minhash", "num_perm": 100, "bands": 32}], study_seed=0,
                    num_classes=None, class_names=None)
    with pytest.raises(SpecError, match="compares images"):
        build_chain([{"type": "dedup", "method": "phash", "field": "caption"}], study_seed=0, num_classes=None,
                    class_names=None)


# ----------------------------------------------------------------------------------- planned chains

PLANNED = [
    {"type": "duplicate", "level": 0.1, "repeats": 3},
    {"type": "dedup", "method": "exact"},
    {"type": "contamination", "level": 0.2, "repeats": 2},
    {"type": "caption_noise", "level": 0.3, "mode": "swap"},
    {"type": "rebalance", "mode": "cap", "cap": 80},
]


@pytest.fixture(scope="module")
def planned(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("planned")
    condition_data(world.splits["train"], PLANNED, study_seed=SEED, out_dir=out, num_classes=world.num_classes,
                   class_names=world.class_names)
    ref, chain = _stream(world, PLANNED, out)
    return out, {s["__key__"]: (s["caption"], s["label"]) for s in ref}, chain


@settings(max_examples=4, deadline=None)
@given(order=st.permutations(range(5)), workers=st.sampled_from([1, 2, 4]))
def test_planned_chain_same_for_any_worker_split_and_order(world, planned, order, workers):
    plan_dir, ref, ref_chain = planned
    shards = [world.splits["train"][i] for i in order]
    merged: dict[str, tuple] = {}
    totals = {"in": 0, "out": 0, "added": 0, "dropped_total": 0}
    for w in range(workers):
        part = split_shards(shards, rank=w, world_size=workers)
        out, chain = _stream(world, PLANNED, plan_dir, part) if part else ([], None)
        merged.update({s["__key__"]: (s["caption"], s["label"]) for s in out})
        if chain is not None:
            assert chain.balanced()
            for k in totals:
                totals[k] += chain.counters()["duplicate"][k]
    assert merged == ref
    ref_dup = ref_chain.counters()["duplicate"]
    assert totals == {k: ref_dup[k] for k in totals}


def test_graded_removers_nest(world, tmp_path):
    dropped = []
    for level in (0.3, 0.7, 1.0):
        specs = [{"type": "duplicate", "level": 0.3, "repeats": 2}, {"type": "dedup", "method": "exact", "level": level}]
        _, manifest = _run(world, specs, tmp_path / f"d{level}")
        dropped.append(set(manifest.filter(pl.col("action") == "drop:duplicate")["key"]))
    assert dropped[0] < dropped[1] < dropped[2]
    assert 0.15 < len(dropped[0]) / len(dropped[2]) < 0.45


def test_injected_items_match_a_decoded_stream(world, tmp_path):
    # The trainer decodes before the chain: injected test items must arrive decoded too.
    specs = [{"type": "contamination", "level": 0.3}, {"type": "duplicate", "level": 0.2, "mode": "near"}]
    _run(world, specs, tmp_path)
    chain = build_chain(specs, study_seed=SEED, num_classes=5, class_names=world.class_names, plan_dir=tmp_path)
    out = list(chain.apply(iter_samples(world.splits["train"][:2], decode=True)))
    assert any("leaked_from" in s["meta"] for s in out) and any("dup_of" in s["meta"] for s in out)
    assert all(isinstance(s["image"], Image.Image) and s["image"].mode == "RGB" for s in out)
