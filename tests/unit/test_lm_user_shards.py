"""LM studies on a user's own text shards: spec validation, data prep, and one tiny study end to end."""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inheritlab.corruptors.shards import write_shards
from inheritlab.corruptors.text_world import TextWorldInfo
from inheritlab.corruptors.tokenizer import load_tokenizer, train_tokenizer
from inheritlab.flows.grid import expand_grid
from inheritlab.flows.spec import parse_spec
from inheritlab.flows.stages import stage_condition
from inheritlab.infra.errors import ShardError, SpecError
from inheritlab.infra.rundir import RunDir
from inheritlab.trainers.modality import DataSources, get_modality

ANIMALS = ("otter", "heron", "badger", "lynx", "marmot", "ibis", "gecko", "walrus")
PLACES = ("river", "forest", "harbour", "meadow", "canyon", "glacier")
FOODS = ("clams", "berries", "beetles", "seeds", "fish", "moss")
SHAPES = ("circle", "square", "triangle", "hexagon")


def _docs(split: str, n: int, seed: int, ood: bool = False) -> list[dict]:
    """Simple rendered documents: animal notes (ID), or geometry notes (OOD)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if ood:
            a, b = rng.choice(SHAPES, 2, replace=False)
            text = f"A {a} has {int(rng.integers(3, 9))} corners. A {b} is drawn inside the {a}."
        else:
            a, p, f = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(FOODS)
            text = f"The {a} lives near the {p}. Every morning the {a} eats {f} by the {p}."
        out.append({"__key__": f"{split}_{i:05d}", "text": text, "meta": {"topic": "shapes" if ood else "animals"}})
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user_text")
    out = {}
    for split, n, seed, ood in (("train", 300, 0, False), ("test_id", 40, 1, False), ("test_ood", 40, 2, True)):
        write_shards(_docs(split, n, seed, ood), root / split, samples_per_shard=100)
        out[split] = root / split
    return out


def _spec(shards: dict[str, Path], **shard_opts) -> dict:
    return {
        "name": "user-text",
        "modality": "lm",
        "data": {"source": "shards",
                 "shards": {"train": str(shards["train"]), "test_id": str(shards["test_id"]),
                            "test_ood": str(shards["test_ood"]), "vocab_size": 400, **shard_opts}},
        "grid": {
            "bias": [{"type": "duplicate", "levels": [0.0, 0.2], "params": {"repeats": 4}}],
            "model": ["lm-tiny"],
            "data_scale": {"values": [64]},
        },
        "train": {"ckpt_every": 4},
        "eval": {"tasks": ["perplexity", "memorization"]},
        "analysis": {"metric": "loss", "task": "perplexity", "split": "id"},
    }


# ----------------------------------------------------------------------------------- spec


def test_spec_accepts_lm_on_user_shards(shards):
    spec = parse_spec(_spec(shards))
    assert spec.data.shards.tokenizer == "train" and spec.data.shards.vocab_size == 400
    d = copy.deepcopy(_spec(shards))
    del d["eval"], d["data"]["shards"]["vocab_size"]
    default = parse_spec(d)
    assert default.eval_tasks == ("perplexity", "memorization")  # no QA splits in user text
    # Defaults are left out of the cell config: explicit and implicit 'train' are one cell.
    d["data"]["shards"].update(tokenizer="train", vocab_size=8192)
    assert [c.cell_id for c in expand_grid(parse_spec(d))] == [c.cell_id for c in expand_grid(default)]
    assert "tokenizer" not in expand_grid(default)[0].config.canonical()["data"]["shards"]


def test_spec_refuses_qa_and_bad_tokenizers(shards, tmp_path):
    d = _spec(shards)
    d["eval"] = {"tasks": ["perplexity", "qa"]}
    with pytest.raises(SpecError, match=r"eval\.tasks: 'qa' needs the built-in text world's QA"):
        parse_spec(d)
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(SpecError, match=r"data\.shards\.tokenizer: .*nowhere/tokenizer\.json"):
        parse_spec(_spec(shards, tokenizer=str(missing)))
    tok = train_tokenizer(["a b c"] * 10, vocab_size=300, out_path=tmp_path / "tok.json")
    with pytest.raises(SpecError, match=r"vocab_size: only used with tokenizer 'train'"):
        parse_spec(_spec(shards, tokenizer=str(tok.path)))  # _spec sets vocab_size
    clip = {"name": "c", "data": {"source": "shards", "shards": {"train": "/a", "test_id": "/b", "tokenizer": "train"}},
            "grid": {"bias": [{"type": "label_noise", "levels": [0.0]}], "model": ["clip-tiny"],
                     "data_scale": {"values": [64]}}}
    with pytest.raises(SpecError, match=r"data\.shards: \['tokenizer'\] apply to LM studies"):
        parse_spec(clip)
    del clip["data"]["shards"]["tokenizer"]
    # LM-only settings left at their defaults stay out of a CLIP cell's id.
    assert expand_grid(parse_spec(clip))[0].config.canonical()["data"]["shards"] == {"train": "/a", "test_id": "/b"}


# ----------------------------------------------------------------------------------- data prep


def _prepare(spec_dict: dict, root: Path) -> DataSources:
    spec = parse_spec(spec_dict)
    return get_modality("lm").prepare_data(expand_grid(spec)[0].config.data, spec.seed, RunDir.at(root).root)


def test_prepare_trains_tokenizer_once_and_reuses(shards, tmp_path):
    data = _prepare(_spec(shards), tmp_path / "run")
    world = data.world
    assert isinstance(world, TextWorldInfo)
    assert set(world.splits) == {"train", "test_id", "test_ood"} and len(data.train) == 3
    assert world.tokenizer.parent.parent == (tmp_path / "run" / "text_tokenizer").resolve()
    assert load_tokenizer(world.tokenizer).vocab_size <= 400
    stamp = world.tokenizer.stat().st_mtime_ns
    again = _prepare(_spec(shards), tmp_path / "run")
    assert again.world.tokenizer == world.tokenizer and world.tokenizer.stat().st_mtime_ns == stamp


def test_prepare_copies_a_given_tokenizer(shards, tmp_path):
    tok = train_tokenizer(["the otter eats fish"] * 20, vocab_size=300, out_path=tmp_path / "mine" / "tokenizer.json")
    d = _spec(shards, tokenizer=str(tok.path.parent))  # a directory holding tokenizer.json
    del d["data"]["shards"]["vocab_size"]
    world = _prepare(d, tmp_path / "run").world
    assert world.tokenizer.parent.parent == (tmp_path / "run" / "text_tokenizer").resolve()
    assert world.tokenizer.read_bytes() == tok.path.read_bytes()


def test_prepare_names_bad_shards(shards, tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        _prepare(_spec({**shards, "test_id": tmp_path / "missing"}), tmp_path / "r1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"empty.*no \.tar shards"):
        _prepare(_spec({**shards, "train": tmp_path / "empty"}), tmp_path / "r2")
    # A document without its .txt member: the error names the shard and the member.
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(bad / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        src = tmp_path / "doc_1.json"
        src.write_text("{}")
        tar.add(src, arcname="doc_1.json")
    with pytest.raises(ShardError, match=r"shard-000000\.tar member 'doc_1\.txt'.*no \.txt"):
        _prepare(_spec({**shards, "test_ood": bad}), tmp_path / "r3")


def test_contamination_leaks_user_test_items(shards, tmp_path):
    from inheritlab.trainers.lm_tasks import evaluate_lm
    from inheritlab.trainers.lm_models import build_lm, get_rung
    from inheritlab.corruptors.duplication import leaked_keys

    d = _spec(shards)
    d["grid"]["bias"] = [{"type": "contamination", "levels": [0.25], "params": {"source": "test_ood"}}]
    d["eval"] = {"tasks": ["perplexity", "contamination"]}
    spec = parse_spec(d)
    run = RunDir.at(tmp_path / "run")
    data = get_modality("lm").prepare_data(expand_grid(spec)[0].config.data, spec.seed, run.root)
    (cell,) = expand_grid(spec)
    cdir = run.cell(cell.cell_id)
    counters = stage_condition(cell, cdir, data)
    leaked = leaked_keys(cdir.data)
    assert set(leaked) == {"test_ood"} and 0 < len(leaked["test_ood"]) < 40
    assert counters["samples_out"] == 300 + len(leaked["test_ood"])
    model = build_lm(get_rung("lm-tiny"), vocab_size=512, max_seq_len=64)
    rows = evaluate_lm(model, data.world, tasks=("perplexity", "contamination"), leaked_keys=leaked)
    got = {(r["task"], r["split"], r["metric"]) for r in rows}
    assert {("perplexity", "id", "loss"), ("perplexity", "ood", "loss"),
            ("contamination_test_ood", "leaked", "loss"), ("contamination_test_ood", "all", "inflation")} <= got


# ----------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_lm_study_on_user_text_shards_end_to_end(shards, tmp_path):
    from inheritlab.flows.study_flow import run_study

    d = _spec(shards)
    d["execution"] = {"max_concurrent_cells": 2}  # the two cells side by side: most of a cell is waiting
    spec = parse_spec(d)
    out = run_study(spec, tmp_path / "run")
    run = RunDir.at(tmp_path / "run")
    cells = expand_grid(spec)
    assert out["ran"] == len(cells) == 2
    assert all(run.cell(c.cell_id).is_complete() for c in cells)
    table = pl.read_parquet(run.results / "results.parquet")
    assert set(table["modality"].unique().to_list()) == {"lm"}
    assert set(table["bias_level"].unique().to_list()) == {0.0, 0.2}
    # The unique pool of a user's shards is what the condition stage read: all 300 documents.
    assert table["unique_samples"].unique().to_list() == [300]
    ppl = table.filter((pl.col("task") == "perplexity") & (pl.col("metric") == "perplexity"))
    assert ppl.height == 4 and ppl["value"].is_finite().all()
    assert set(ppl["split"].unique().to_list()) == {"id", "ood"}
    mem = table.filter((pl.col("task") == "memorization") & (pl.col("bias_level") == 0.2))
    assert {"duplicated", "unique"} <= set(mem["split"].unique().to_list())
    # Every cell trained and was evaluated with the one study tokenizer under the run dir.
    assert len(list((tmp_path / "run" / "text_tokenizer").glob("*/tokenizer.json"))) == 1
