"""The LM trainer's own GPU path, end to end: bf16 ZeRO-2, compiled vs eager blocks, export, evaluation.

    python benchmarks/check_lm_trainer_gpu.py OUT.json [--loss-seeds 1,2,3 [--seeds-only]]     (one GPU)

Trains lm-mini on a built-in text world from the same seed with compiled blocks (``"yes"``), eager
blocks (``"no"``, twice: the second shows the run-to-run spread) and eager blocks with the PyTorch
reference loss head instead of the fused Triton one (``"no_reference_loss"``), and evaluates each
final export (perplexity, QA) on the GPU, so the loss curves and metrics of the paths can be
compared. ``--loss-seeds`` adds, for each seed given, one eager run with each loss head (fused and
reference): how far apart the two land at step 150 across seeds, next to how far one seed's paths do.
Results: ``results/lm_trainer_gpu_<gpu>.json``.
"""
import argparse, json, time
from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world
from inheritlab.trainers.lm_pretrain import LMTrainConfig, train_lm
from inheritlab.trainers.lm_tasks import evaluate_lm

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--loss-seeds", default="", help="comma list of extra seeds for the fused-vs-reference loss runs")
ap.add_argument("--seeds-only", action="store_true", help="only the --loss-seeds runs")
args = ap.parse_args()
world = write_text_world(TextWorldConfig(seed=0, num_individuals=300, num_heldout_individuals=50, train_docs=3000,
                                         test_docs=100, qa_individuals=50, vocab_size=1024), "/tmp/tw")
out = {}
RUNS = [] if args.seeds_only else [("yes", "yes", "auto", 0), ("no", "no", "auto", 0), ("no_again", "no", "auto", 0),
                                   ("no_reference_loss", "no", "reference", 0)]
for seed in filter(None, args.loss_seeds.split(",")):
    RUNS += [(f"seed{seed}_no", "no", "auto", int(seed)), (f"seed{seed}_no_reference_loss", "no", "reference", int(seed))]
for mode, compile_, loss_impl, seed in RUNS:
    cfg = LMTrainConfig(rung="lm-mini", train_shards=world.splits["train"], tokenizer=str(world.tokenizer),
                        cell_dir=f"/tmp/cell_{mode}", steps=150, batch_size=32, seq_len=256, log_every=10,
                        compile=compile_, loss_impl=loss_impl, seed=seed, ckpt_every=75, device="cuda")
    t = time.time()
    summ = train_lm(cfg)
    wall = time.time() - t
    rows = evaluate_lm(summ.final_export.path, world, tasks=("perplexity", "qa"), device="cuda")
    out[mode] = {"wall_s": round(wall, 1), "tokens_per_s": round(summ.extra["tokens_per_s"]), "precision": summ.precision,
                 "loss_curve": list(summ.loss_curve[::3]), "final_loss": summ.final_loss,
                 "eval": {f"{r['task']}/{r['split']}/{r['metric']}": round(r["value"], 4) for r in rows}}
    print(mode, json.dumps(out[mode]), flush=True)
json.dump(out, open(args.out, "w"), indent=2)
