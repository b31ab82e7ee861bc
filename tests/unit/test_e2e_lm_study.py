"""A tiny LM duplication study end to end through the same flow, trainer engine and results table."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from inheritlab.flows.grid import expand_grid
from inheritlab.flows.spec import parse_spec
from inheritlab.flows.study_flow import run_study
from inheritlab.infra.rundir import RunDir

MICRO_LM = {
    "name": "micro-lm",
    "modality": "lm",
    "data": {"text_world": {"num_individuals": 60, "num_heldout_individuals": 10, "train_docs": 300,
                            "test_docs": 20, "qa_individuals": 10, "docs_per_shard": 100, "vocab_size": 512}},
    "grid": {
        "bias": [{"type": "duplicate", "levels": [0.0, 0.2], "params": {"repeats": 4}}],
        "model": ["lm-tiny"],
        "data_scale": {"values": [64, 128]},
    },
    "train": {"ckpt_every": 4, "eval_checkpoints": "all"},
    "eval": {"tasks": ["perplexity", "qa", "memorization"], "lm_adaptation": ["prompting", "finetune"],
             "finetune_steps": 20},
    "analysis": {"metric": "loss", "task": "perplexity", "split": "id"},
}


@pytest.mark.slow
def test_micro_lm_study_end_to_end(tmp_path: Path) -> None:
    spec = parse_spec(MICRO_LM)
    out = run_study(spec, tmp_path / "run")
    run = RunDir.at(tmp_path / "run")
    cells = expand_grid(spec)
    assert out["ran"] == len(cells) == 4
    table = pl.read_parquet(run.results / "results.parquet")
    assert set(table["modality"].unique().to_list()) == {"lm"}
    assert set(table["bias_level"].unique().to_list()) == {0.0, 0.2}
    ppl = table.filter((pl.col("task") == "perplexity") & (pl.col("metric") == "loss"))
    assert ppl.height >= 4 and ppl["value"].is_finite().all()
    # memorisation rows exist for the duplicated cells: duplicated docs vs unique ones
    mem = table.filter((pl.col("task") == "memorization") & (pl.col("bias_level") == 0.2))
    assert {"duplicated", "unique"} <= set(mem["split"].unique().to_list())
    assert (table["flops"] > 0).all() and (table["params"] > 0).all()
    # eval_checkpoints: all — every committed export is evaluated (batch 16: 4 and 8 steps, commits every 4)
    steps = table.filter(pl.col("task") == "perplexity").group_by("data_scale").agg(pl.col("checkpoint_step").unique())
    assert {r[0]: sorted(r[1]) for r in steps.iter_rows()} == {64.0: [4], 128.0: [4, 8]}
    # QA after both adaptations, on the same three splits, at each evaluated checkpoint
    for task in ("qa", "qa_finetune"):
        qa = table.filter((pl.col("task") == task) & (pl.col("metric") == "acc"))
        assert set(qa["split"].unique().to_list()) == {"id", "ood_templates", "ood_people"}, task
        assert qa.height == 3 * 6 and qa["value"].is_between(0.0, 1.0).all()
