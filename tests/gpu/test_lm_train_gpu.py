"""LM pre-training on one GPU: the engine the rule picks (ZeRO stage 0, bf16 autocast, fused
AdamW), loader workers, a stop and a resume from the loader state, export, transformers load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_lm_trains_resumes_exports_and_loads_in_transformers(tmp_path: Path) -> None:
    from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world
    from inheritlab.trainers.lm_pretrain import LMTrainConfig, load_exported, train_lm

    world = write_text_world(TextWorldConfig(seed=0, num_individuals=100, num_heldout_individuals=20, train_docs=600,
                                             test_docs=40, vocab_size=512), tmp_path / "world")
    base = dict(rung="lm-mini", train_shards=world.splits["train"], tokenizer=str(world.tokenizer), steps=24,
                batch_size=16, seq_len=128, log_every=1, ckpt_every=8, device="cuda", loader_workers=2)
    full = train_lm(LMTrainConfig(**base, cell_dir=str(tmp_path / "full")))
    assert full.precision == "bf16" and full.zero_stage == 0 and full.steps == 24
    losses = [v for _, v in full.loss_curve]
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-3:]) < sum(losses[:3])
    train_lm(LMTrainConfig(**base, cell_dir=str(tmp_path / "cut"), stop_after_steps=12))
    resumed = train_lm(LMTrainConfig(**base, cell_dir=str(tmp_path / "cut")))
    assert resumed.resumed_from == 8 and resumed.steps == 24
    # Same data from the loader state, same step: the curves agree to bf16 noise.
    for (s, a), (_, b) in zip(full.loss_curve, resumed.loss_curve):
        assert abs(a - b) < 0.05 * abs(a), s
    model, _ = load_exported(resumed.final_export.path, device="cuda")
    assert sum(p.numel() for p in model.parameters()) > 0
    from transformers import AutoModelForCausalLM

    from inheritlab.trainers.hf_export import export_hf

    export_hf(resumed.final_export.path, tmp_path / "hf", tokenizer=world.tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").cuda()
    ids = torch.randint(0, 512, (2, 32), device="cuda")
    with torch.no_grad():  # the same logits as our model (fp32 on both sides)
        assert torch.allclose(hf(ids).logits.float(), model.eval().logits(ids).float(), atol=1e-2, rtol=1e-3)
