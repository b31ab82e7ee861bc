"""The LM trainer's own GPU path, end to end: bf16 ZeRO-2, compiled vs eager blocks, export, evaluation.

    python benchmarks/check_lm_trainer_gpu.py OUT.json      (one GPU; RANK/WORLD_SIZE/MASTER_* set)

Trains lm-mini on a built-in text world twice from the same seed — ``compile="yes"`` and
``compile="no"`` — and evaluates each final export (perplexity, QA) on the GPU, so the loss curves
and metrics of the two paths can be compared. Results: ``results/lm_trainer_gpu_<gpu>.json``.
"""
import json, sys, time
import torch
from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world
from inheritlab.trainers.lm_pretrain import LMTrainConfig, train_lm
from inheritlab.trainers.lm_evaluate import evaluate_lm

world = write_text_world(TextWorldConfig(seed=0, num_individuals=300, num_heldout_individuals=50, train_docs=3000,
                                         test_docs=100, qa_individuals=50, vocab_size=1024), "/tmp/tw")
out = {}
for mode in ("yes", "no"):
    cfg = LMTrainConfig(rung="lm-mini", train_shards=world.splits["train"], tokenizer=str(world.tokenizer),
                        cell_dir=f"/tmp/cell_{mode}", steps=150, batch_size=32, seq_len=256, log_every=10,
                        compile=mode, ckpt_every=75, device="cuda")
    t = time.time()
    summ = train_lm(cfg)
    wall = time.time() - t
    rows = evaluate_lm(summ["exports"][-1]["path"], world, tasks=("perplexity", "qa"), device="cuda")
    out[mode] = {"wall_s": round(wall, 1), "tokens_per_s": round(summ["tokens_per_s"]), "precision": summ["precision"],
                 "loss_curve": summ["loss_curve"][::3], "final_loss": summ["final_loss"],
                 "eval": {f"{r['task']}/{r['split']}/{r['metric']}": round(r["value"], 4) for r in rows}}
    print(mode, json.dumps(out[mode]), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=2)
