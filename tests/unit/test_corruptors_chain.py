"""The corruptor chain: spec validation, nested and order-free decisions, counters, the cell stage."""

from __future__ import annotations

import json
import random
from collections import Counter

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inheritlab.corruptors.chain import build_chain, condition_data, validate_corruptor
from inheritlab.corruptors.shards import iter_samples, split_shards, write_shards
from inheritlab.infra.errors import SpecError

NAMES = ["circle", "square", "triangle", "cross", "ring"]
SEED = 11
# A valid 1x1 PNG: image–caption samples need an image member (it is never decoded here).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


def _samples(n: int = 240) -> list[dict]:
    return [
        {"__key__": f"k{i:05d}", "__shard__": "", "caption": f"a red {NAMES[i % 5]} on a black background.",
         "label": i % 5, "meta": {}, "image": PNG, "image_ext": "png"}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return [str(p) for p in write_shards(_samples(), root, samples_per_shard=30)]


def _chain(specs, plan_dir=None):
    return build_chain(specs, study_seed=SEED, num_classes=5, class_names=NAMES, plan_dir=plan_dir)


def _outcome(chain, samples) -> dict[str, tuple]:
    return {s["__key__"]: (s["caption"], s["label"]) for s in chain.apply(samples)}


# ----------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"type": "label_nois", "level": 0.1}, "grid.bias[0].type: got 'label_nois' (did you mean 'label_noise'?); allowed: caption_noise"),
        ({"level": 0.1}, "grid.bias[0].type: missing"),
        ({"type": "label_noise", "level": 1.5}, "grid.bias[0].level: got 1.5; expected a number in [0, 1]"),
        ({"type": "label_noise", "level": "high"}, "grid.bias[0].level: got 'high'"),
        ({"type": "label_noise"}, "grid.bias[0].level: required"),
        ({"type": "label_noise", "level": 0.1, "mode": "sideways"}, "grid.bias[0].mode: got 'sideways'; expected one of"),
        ({"type": "caption_noise", "level": 0.1, "colour": 1}, "grid.bias[0].colour: unknown parameter"),
        ({"type": "subsample", "fraction": 0.5, "size": 10}, "exactly one of fraction, size"),
        ({"type": "none", "level": 0.3}, "grid.bias[0].level: got 0.3"),
    ],
)
def test_validate_names_field_value_and_allowed(spec, needle):
    with pytest.raises(SpecError) as e:
        validate_corruptor(spec, "grid.bias[0]")
    assert needle in str(e.value)


def test_valid_specs_pass():
    for spec in [{"type": "label_noise", "level": 0.2, "mode": "symmetric"}, {"type": "none", "level": 0.0},
                 {"type": "caption_noise", "level": 0.5, "mode": "random", "count": "exact"},
                 {"type": "subsample", "fraction": 0.25}]:
        validate_corruptor(spec, "x")


def test_label_noise_needs_classes():
    with pytest.raises(SpecError, match=r"label noise needs labelled data with >= 2 classes .*classnames\.txt"):
        build_chain([{"type": "label_noise", "level": 0.1}], study_seed=0, num_classes=None, class_names=None)


# ----------------------------------------------------------------------------------- semantics


def test_label_noise_flips_to_other_class_keeps_truth_and_syncs_caption():
    chain = _chain([{"type": "label_noise", "level": 0.3}])
    src = {s["__key__"]: s for s in _samples()}
    flipped = 0
    for s in chain.apply(_samples()):
        true = src[s["__key__"]]["label"]
        assert s["meta"].get("true_label", s["label"]) == true
        if s["label"] != true:
            flipped += 1
            assert NAMES[s["label"]] in s["caption"] and NAMES[true] not in s["caption"]
            assert s["meta"]["true_caption"] == src[s["__key__"]]["caption"]
        else:
            assert s["caption"] == src[s["__key__"]]["caption"]
    assert 40 <= flipped <= 105 and chain.counters()["label_noise"]["touched"] == flipped
    assert all(src[k]["meta"] == {} for k in src)  # inputs are never mutated


def test_caption_class_word_keeps_label():
    chain = _chain([{"type": "caption_noise", "level": 1.0, "mode": "class_word"}])
    for s in chain.apply(_samples(20)):
        assert NAMES[s["label"]] not in s["caption"] and s["meta"]["caption_noise"] == "class_word"


def test_symmetric_targets_are_uniform():
    chain = _chain([{"type": "label_noise", "level": 1.0, "caption": "keep"}])
    samples = [{"__key__": f"u{i}", "caption": "x", "label": 0, "meta": {}} for i in range(4000)]
    got = Counter(s["label"] for s in chain.apply(samples))
    assert 0 not in got and all(850 < got[c] < 1150 for c in range(1, 5))


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0, 1), b=st.floats(0, 1), typ=st.sampled_from(["label_noise", "caption_noise"]))
def test_levels_nest_and_agree(a, b, typ):
    lo, hi = sorted((a, b))
    out_lo = _outcome(_chain([{"type": typ, "level": lo}]), _samples())
    out_hi = _outcome(_chain([{"type": typ, "level": hi}]), _samples())
    clean = _outcome(_chain([{"type": "none", "level": 0.0}]), _samples())
    touched_lo = {k for k in clean if out_lo[k] != clean[k]}
    touched_hi = {k for k in clean if out_hi[k] != clean[k]}
    assert touched_lo <= touched_hi
    assert all(out_lo[k] == out_hi[k] for k in touched_lo)  # corrupted the same way


@settings(max_examples=8, deadline=None)
@given(level=st.floats(0, 1), n=st.integers(0, 240))
def test_exact_mode_counts(level, n, tmp_path_factory):
    samples = _samples()[:n]
    root = tmp_path_factory.mktemp("exact")
    shards = [str(p) for p in write_shards(samples, root / "s", samples_per_shard=50)] if n else []
    specs = [{"type": "label_noise", "level": level, "count": "exact"}]
    if not shards:
        return  # an empty stream has nothing to count
    counters = condition_data(shards, specs, study_seed=SEED, out_dir=root / "c", num_classes=5, class_names=NAMES)
    assert counters["corruptors"]["label_noise"]["touched"] == round(level * n)
    assert counters["balanced"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order_seed=st.integers(0, 10_000), level=st.floats(0.05, 0.95), frac=st.floats(0.2, 1.0))
def test_same_decisions_one_vs_four_workers_and_shuffled_order(shards, order_seed, level, frac):
    specs = [{"type": "subsample", "fraction": frac}, {"type": "label_noise", "level": level},
             {"type": "caption_noise", "level": level / 2}]
    one = _chain(specs)
    ref = _outcome(one, iter_samples(shards, decode=False))
    shuffled = list(shards)
    random.Random(order_seed).shuffle(shuffled)
    merged: dict[str, tuple] = {}
    manifests = []
    for w in range(4):
        worker = _chain(specs)
        part = split_shards(shuffled, rank=w // 2, world_size=2, worker_id=w % 2, num_workers=2)
        random.Random(order_seed + w).shuffle(part)
        merged.update(_outcome(worker, iter_samples(part, decode=False)))
        manifests.append(worker.manifest())
    assert merged == ref
    cols = ["key", "corruptor", "action", "detail"]
    assert pl.concat(manifests).select(cols).sort(cols).equals(one.manifest().select(cols).sort(cols))


def test_pools_nest_across_fractions_and_ignore_bias_type():
    keep = {}
    for frac in (0.25, 0.5, 1.0):
        for typ in ("label_noise", "caption_noise"):
            chain = _chain([{"type": "subsample", "fraction": frac}, {"type": typ, "level": 0.1}])
            keep[(frac, typ)] = {s["__key__"] for s in chain.apply(_samples())}
        assert keep[(frac, "label_noise")] == keep[(frac, "caption_noise")]
    assert keep[(0.25, "label_noise")] <= keep[(0.5, "label_noise")] <= keep[(1.0, "label_noise")]
    assert len(keep[(1.0, "label_noise")]) == 240


@settings(max_examples=25, deadline=None)
@given(specs=st.lists(st.sampled_from([
    {"type": "subsample", "fraction": 0.6}, {"type": "label_noise", "level": 0.3},
    {"type": "caption_noise", "level": 0.4}, {"type": "none", "level": 0.0}]), min_size=1, max_size=4))
def test_counters_balance(specs):
    chain = _chain(specs)
    n = sum(1 for _ in chain.apply(_samples()))
    counters = chain.counters()
    assert chain.balanced()
    for c in counters.values():
        assert c["in"] == c["out"] + c["dropped_total"] - c["added"]
    assert list(counters.values())[-1]["out"] == n
    assert len(set(counters)) == len(specs)  # repeated types get distinct names


# ----------------------------------------------------------------------------------- the cell stage


def test_condition_data_writes_artifacts_and_trainer_reproduces(shards, tmp_path):
    specs = [{"type": "subsample", "size": 200}, {"type": "caption_noise", "level": 0.25, "mode": "random"},
             {"type": "label_noise", "level": 0.2, "count": "exact"}]
    counters = condition_data(shards, specs, study_seed=SEED, out_dir=tmp_path, num_classes=5, class_names=NAMES)
    assert counters["samples_out"] == 200 and counters["source"]["samples"] == 240 and counters["balanced"]
    assert counters["corruptors"]["subsample"]["dropped"] == {"pool": 40}
    assert counters["corruptors"]["label_noise"]["touched"] == 40
    assert json.loads((tmp_path / "counters.json").read_text()) == json.loads(json.dumps(counters))
    manifest = pl.read_parquet(tmp_path / "manifest.parquet")
    assert set(manifest["corruptor"]) == {"caption_noise", "label_noise"}
    assert sorted(p.name for p in tmp_path.glob("plan-*.parquet")) == [
        "plan-caption_noise.parquet", "plan-label_noise.parquet", "plan-subsample.parquet"]
    # The trainer: same chain from the plan dir, its own shard split, same decisions.
    trainer = build_chain(specs, study_seed=SEED, num_classes=5, class_names=NAMES, plan_dir=tmp_path)
    got = pl.concat([
        _chain_manifest(specs, tmp_path, split_shards(shards, rank=r, world_size=3)) for r in range(3)
    ])
    cols = ["key", "corruptor", "action", "detail"]
    assert got.select(cols).sort(cols).equals(manifest.select(cols).sort(cols))
    random_captions = manifest.filter(pl.col("action") == "random_caption")
    assert random_captions.height > 20
    assert trainer.steps[1].planned


def _chain_manifest(specs, plan_dir, part):
    chain = build_chain(specs, study_seed=SEED, num_classes=5, class_names=NAMES, plan_dir=plan_dir)
    for _ in chain.apply(iter_samples(part, decode=False)):
        pass
    return chain.manifest()


def test_planned_chain_without_plan_is_a_clear_error(shards, tmp_path):
    specs = [{"type": "label_noise", "level": 0.2, "count": "exact"}]
    with pytest.raises(SpecError, match="needs its plan"):
        build_chain(specs, study_seed=SEED, num_classes=5, class_names=NAMES, plan_dir=tmp_path)
    with pytest.raises(SpecError, match="has no plan"):
        _chain(specs).apply(_samples())


def test_materialize_condition_writes_the_conditioned_stream(shards, tmp_path):
    from inheritlab.corruptors.chain import corruptor_reference, materialize_condition

    specs = [{"type": "subsample", "size": 100}, {"type": "caption_noise", "level": 0.5, "mode": "swap"}]
    condition_data(shards, specs, study_seed=SEED, out_dir=tmp_path / "plan", num_classes=5, class_names=NAMES)
    paths = materialize_condition(shards, specs, study_seed=SEED, plan_dir=tmp_path / "plan", out_dir=tmp_path / "out",
                                  num_classes=5, class_names=NAMES, samples_per_shard=40)
    assert len(paths) == 3
    direct = _outcome(_chain(specs, tmp_path / "plan"), iter_samples(shards, decode=False))
    assert _outcome(_chain([{"type": "none", "level": 0.0}]), iter_samples([str(p) for p in paths])) == direct
    ref = corruptor_reference()
    assert all(f"## `{t}`" in ref for t in ("label_noise", "dedup", "contamination", "token_noise"))
