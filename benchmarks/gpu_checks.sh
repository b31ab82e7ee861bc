#!/usr/bin/env bash
# Every GPU check of the one-GPU run in one command, on a GPU node with torch (and triton)
# installed but not this package: the kernel and trainer GPU tests, then the benchmarks.
#
#   benchmarks/gpu_checks.sh OUT_DIR [PARTS]        PARTS: comma list of tests,step,e2e,lm,lmcheck (default all);
#                                                   decode, input, compiledbg, losssizes run only when named
#                                                   (STEP_PROFILE=1: kernel tables of the step rows)
#
# lm measures LM MFU at the recipe batch on random ids and on packed built-in-world text (one call, both).
# e2e trains ViT-B/32 (rung datacomp-small, batch 512) from img2dataset-style 256-px JPEG shards
# through label noise 0.2 with checkpoints on; it needs polars on the node (a 1.x wheel in .whl).
#
# GPU_TESTS (pytest node ids, default tests/gpu) and STEP_ROWS (bench_clip_step.py --rows) narrow a
# part when the device time is short.
# Python packages the node lacks may be given as wheels in ./.whl (installed to a private
# target, never over the node's own torch). Results: OUT_DIR/*.json and OUT_DIR/gpu_checks.log.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR [PARTS]}
parts=${2:-tests,step,e2e,lm,lmcheck}
mkdir -p "$out"
# shellcheck source=benchmarks/node_env.sh
source "$(dirname "$0")/node_env.sh"
log="$out/gpu_checks.log"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton, deepspeed, open_clip; print('torch', torch.__version__, 'triton', triton.__version__, 'deepspeed', deepspeed.__version__, 'open_clip', open_clip.__version__)"
} 2>&1 | tee "$log"
# shellcheck disable=SC2086  # GPU_TESTS is a list of node ids and options, split on purpose
[[ $parts == *tests* ]] && run gpu-tests "${TESTS_TIMEOUT:-420}" python3 -m pytest ${GPU_TESTS:-tests/gpu} -v -p no:cacheprovider -o addopts="" --durations=0
[[ $parts == *step* ]] && run clip-step "${STEP_TIMEOUT:-360}" python3 benchmarks/bench_clip_step.py --out "$out/clip_step.json" \
  ${STEP_ROWS:+--rows "$STEP_ROWS"} ${STEP_PROFILE:+--profile}
# e2e: the JPEG world is written first, in a process of its own, so that each training process's
# first_step_after_s (launch to first step) is the cell's own fixed cost: the first run meets cold
# compile caches, the second warm ones (a cold ViT-B/32 cell took 204-230 s to its first step on an
# H200, hence the limit). E2E_RUNS lists the runs in order, each DECODE:LOADER_WORKERS:CUDA_GRAPHS
# (image_decode, loader processes, cuda_graphs), with an optional fourth :SHARE (the share of images
# the loader workers decode under device decoding; default the trainer's); the default is what a
# cell gets on a 16-core one-GPU node (8 loader workers: flows.scheduler's rule) with each
# decoding. E2E_PROFILE=A:B writes a torch.profiler table of steps A+1..B beside the results. The world has as many shards as the batch
# has data slots (64 at 512) and more samples than the run trains on, as a real img2dataset world
# does: with fewer shards every loader worker reads every shard at each epoch start
# (trainers.slots.SharedEpochs), and a small world wraps its epoch inside the run.
e2e_world=(--data jpeg --world /tmp/e2e-data --train-size "${E2E_TRAIN_SIZE:-65536}" --per-shard 1024)
if [[ $parts == *e2e* ]]; then
  run e2e-world 300 python3 benchmarks/bench_clip_train.py "${e2e_world[@]}" --cell /tmp/e2e-none --out /dev/null --make-world-only
  n=0
  for spec in ${E2E_RUNS:-device:8:auto loader:8:auto}; do
    IFS=: read -r dec workers graphs share <<< "$spec"
    n=$((n + 1))  # a run may repeat an earlier one's settings (warm caches, the spread between runs)
    cell="/tmp/e2e-cell-$n-$dec-w$workers-graphs-$graphs${share:+-share$share}"
    run "e2e-jpeg-$dec-w$workers-graphs-$graphs${share:+-share$share}" "${E2E_TIMEOUT:-420}" python3 benchmarks/bench_clip_train.py "${e2e_world[@]}" \
      --rung datacomp-small --batch-size 512 --steps "${E2E_STEPS:-120}" --ckpt-every 40 --label-noise 0.2 \
      --loader-workers "$workers" --compile "${E2E_COMPILE:-yes}" --cuda-graphs "$graphs" \
      ${share:+--worker-decode-share "$share"} \
      ${E2E_PROFILE:+--profile-steps "$E2E_PROFILE"} --image-decode "$dec" --cell "$cell" --out "$out/clip_train_e2e.jsonl"
    # Written by the run as it goes: where a run that overran its limit had got to.
    cat "$cell/progress.json" "$cell/timeline.json" 2>/dev/null | tee -a "$log"; echo
  done
fi
# decode: device JPEG decoding in stages (benchmarks/probe_device_decode.py) on the e2e JPEG world
# (written first when absent: allow a minute for it).
# DECODE_STAGES narrows it (probe_device_decode.py --stages).
[[ $parts == *decode* ]] && run decode-probe "${DECODE_TIMEOUT:-260}" python3 benchmarks/probe_device_decode.py \
  --world /tmp/e2e-data --train-size "${E2E_TRAIN_SIZE:-65536}" --out "$out/device_decode.jsonl" \
  ${DECODE_STAGES:+--stages "$DECODE_STAGES"}
# losssizes: the fused CLIP loss against the reference at per-GPU batches 256..16384 (where the fused one pays).
[[ $parts == *losssizes* ]] && run loss-sizes 120 python3 benchmarks/probe_clip_loss_sizes.py --out "$out/clip_loss_sizes.json"
# lm: lm-125m at the recipe batch (16 x 16 micro-batches = 256 x 2048 tokens), compiled blocks, random ids and
# packed text of a built-in text world (through the trainer's loader, its worker processes) side by side on one
# engine; the record's "comparison" has both tokens/s and MFUs and their ratio. The world is built untimed in /tmp.
[[ $parts == *lm,* || $parts == *lm ]] && run lm-mfu "${LM_TIMEOUT:-480}" python3 benchmarks/bench_lm_train.py \
  --out "$out/lm_train.json" --modes compile --accum 16 --warmup 2 --steps 8 --profile --data both
[[ $parts == *lmcheck* ]] && run lm-trainer 420 python3 benchmarks/check_lm_trainer_gpu.py "$out/lm_trainer_gpu.json"
# input: the CLIP input pipeline alone (benchmarks/probe_clip_input.py), as train_clip builds it: loader workers
# 14,1,8,4 x label noise 0.2,0 at batch 512 (datacomp-small, 224 px), one sample's CPU stages, and the device side
# (H2D copy pageable vs pinned, device_images). It writes an 8192-image JPEG world first (one process, ~1-2 min).
[[ $parts == *input* ]] && run clip-input "${INPUT_TIMEOUT:-450}" python3 benchmarks/probe_clip_input.py \
  --out "$out/clip_input.json" --world /tmp/probe-world
# compiledbg: where compiling under stage 0 goes wrong. Each row in a process of its own with a time limit,
# recompiles and graph breaks logged, and every thread's Python stack dumped every 40 s (faulthandler).
if [[ $parts == *compiledbg* ]]; then
  for row in ${COMPILE_ROWS:-ours-compile bare-compile bare-wcompile direct-wcompile}; do
    echo "=== compile-debug $row ($(date -u +%H:%M:%S))" | tee -a "$log"
    (cd "$repo" && BENCH_STACKS_EVERY_S=40 TORCH_LOGS=recompiles,graph_breaks timeout "${COMPILE_TIMEOUT:-110}" \
      python3 benchmarks/bench_clip_step.py --out "$out/clip_step_$row.json" --rows "$row" > "$out/compile_$row.log" 2>&1)
    echo "=== compile-debug $row exit $?" | tee -a "$log"; grep -v "^\[rank0\]:V" "$out/compile_$row.log" | grep "^{" | tail -3 | tee -a "$log"
  done
fi
exit 0
