#!/usr/bin/env bash
# The several-GPU run of one node in one command (the part of it that needs no Ray on the node):
#
#   benchmarks/multigpu_checks.sh OUT_DIR [PARTS]      PARTS: comma list of tests,scaling (default both)
#
# tests:   tests/multigpu (torchrun, NCCL, bf16): CLIP train/resume/export on 2 GPUs; and every test
#          marked multigpu elsewhere (LM and CLIP: the 1-vs-2-rank curve, resume across rank counts).
# scaling: the CLIP ViT-B/32 cell (bench_clip_train.py: JPEG shards, label noise 0.2, checkpoints,
#          compiled, device JPEG decoding) and lm-125m (bench_lm_train.py, compiled, random ids and
#          packed text) on 1, 2, 4 and 8 GPUs of this node (those it has) under torchrun, the same
#          global batch per GPU; one JSON line per run in OUT_DIR. Scaling efficiency = throughput
#          on n GPUs / (n × throughput on 1), printed at the end.
#
# Ray Train is not used here: Ray's wheel is too large to carry to a bare GPU node, so the packed
# grid through the flow needs a node image with Ray (`inheritlab run` there). Wheels in ./.whl are
# installed as in gpu_checks.sh (node_env.sh). Keep NCCL's NVLink multicast off (the node's default).
set -uo pipefail
out=${1:?usage: multigpu_checks.sh OUT_DIR [PARTS]}
parts=${2:-tests,scaling}
mkdir -p "$out"
# shellcheck source=benchmarks/node_env.sh
source "$(dirname "$0")/node_env.sh"
export NCCL_NVLS_ENABLE=0
log="$out/multigpu_checks.log"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "GPUs: $gpus"; } 2>&1 | tee "$log"
[[ $parts == *tests* ]] && run multigpu-tests "${TESTS_TIMEOUT:-600}" python3 -m pytest tests/multigpu tests/unit/test_ranks.py -m multigpu -q -p no:cacheprovider -o addopts=""
if [[ $parts == *scaling* ]]; then
  steps=${SCALING_STEPS:-60}
  run clip-world 300 bash -c "cd benchmarks && python3 bench_clip_train.py --data jpeg --world /tmp/scale-data \
    --train-size 65536 --per-shard 1024 --cell /tmp/none --out /dev/null --make-world-only"
  for n in 1 2 4 8; do
    (( n > gpus )) && continue
    workers=$(( ($(nproc) / n) - 1 ))
    run "clip-${n}gpu" "${CLIP_TIMEOUT:-300}" bash -c "cd benchmarks && python3 -m torch.distributed.run --standalone \
      --nproc-per-node $n bench_clip_train.py --rung datacomp-small --data jpeg --world /tmp/scale-data \
      --train-size 65536 --per-shard 1024 --batch-size $(( 512 * n )) --steps $steps --ckpt-every $(( steps / 2 )) \
      --label-noise 0.2 --loader-workers $workers --compile yes --cell /tmp/scale-clip-$n --out $out/clip_scaling.jsonl"
    run "lm-${n}gpu" "${LM_TIMEOUT:-300}" python3 -m torch.distributed.run --standalone --nproc-per-node "$n" \
      benchmarks/bench_lm_train.py --out "$out/lm_scaling_${n}gpu.json" --modes compile --warmup 3 --steps 10 --data random
  done
  python3 - "$out" <<'EOF' | tee -a "$log"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
clip = [json.loads(l) for l in (out / "clip_scaling.jsonl").read_text().splitlines()] if (out / "clip_scaling.jsonl").is_file() else []
base = next((r["samples_per_s_steady"] for r in clip if r["gpus"] == 1), None)
for r in clip:
    eff = r["samples_per_s_steady"] / (r["gpus"] * base) if base and r["samples_per_s_steady"] else None
    print(f"clip {r['gpus']} GPU(s): {r['samples_per_s_steady']} samples/s steady, efficiency {eff}")
for p in sorted(out.glob("lm_scaling_*gpu.json")):
    print(p.name, json.loads(p.read_text()).get("comparison"))
EOF
fi
exit 0
