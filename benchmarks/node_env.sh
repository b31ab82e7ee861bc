# Sourced by gpu_checks.sh and multigpu_checks.sh on a bare GPU node (torch and triton installed,
# not this package): sets $repo, installs the wheels in ./.whl to a private target (never over
# the node's own torch), makes the package's folders importable as one namespace, and defines
# run NAME LIMIT CMD..., which logs to $log (set by the caller) and shows the tail.
# shellcheck shell=bash
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# PYTHONFAULTHANDLER with timeout -s ABRT: a run that overruns its limit prints every thread's stack.
# --foreground sends the signal to the command alone, not to its loader workers: fifteen processes
# dumping at once interleave into unreadable text. Run python directly, not under bash -c.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONFAULTHANDLER=1
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$repo"/.whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p /tmp/pkg/inheritlab && touch /tmp/pkg/inheritlab/__init__.py
for d in flows corruptors trainers kernels analysis infra; do ln -sfn "$repo/$d" "/tmp/pkg/inheritlab/$d"; done
export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}

run() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "${log:?set log before calling run}"
  (cd "$repo" && timeout --foreground -s ABRT -k 15 "$limit" "$@") 2>&1 | tee -a "$log" | tail -25
  echo "=== $name exit ${PIPESTATUS[0]}" | tee -a "$log"
}
