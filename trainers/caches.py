"""Compile caches shared by every process of a study, so a cell's fixed start-up is paid once.

Each worker process would otherwise JIT-build DeepSpeed's C++ ops, recompile Inductor graphs and
Triton kernels, and re-tune our kernels' launch configs. Pointing them all at one directory on
the run directory's shared storage makes the first cell of a study pay and the rest reuse.
Caches are keyed by the device and the versions that make a build or a tuning valid, so nodes
with different GPUs (or a CPU node) never load each other's artifacts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The environment variables each tool reads its cache location from, and our sub-directory.
CACHE_VARS = {
    "TORCH_EXTENSIONS_DIR": "torch_extensions",     # DeepSpeed's JIT-built ops
    "TRITON_CACHE_DIR": "triton",                   # compiled Triton kernels
    "TORCHINDUCTOR_CACHE_DIR": "inductor",          # torch.compile's generated code
    "INHERITLAB_KERNEL_CACHE_DIR": "kernel_configs",  # our kernels' tuned launch configs
}


def device_key(use_gpu: bool) -> str:
    """What a compiled artifact is valid for: the device model and the torch/CUDA versions."""
    import torch

    if use_gpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        device = f"{name}-sm{major}{minor}-cuda{torch.version.cuda}"
    else:
        device = "cpu"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{device}-torch{torch.__version__}")


def configure_caches(run_root: str | Path, *, use_gpu: bool) -> dict[str, str]:
    """Point this process's compile caches at ``run_root/.cache/<device key>/`` (set before the
    tools first read them); returns the variables set. A variable the user already set wins."""
    base = Path(run_root) / ".cache" / device_key(use_gpu)
    chosen = {}
    for var, sub in CACHE_VARS.items():
        if not os.environ.get(var):
            path = base / sub
            path.mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(path)
        chosen[var] = os.environ[var]
    return chosen


def skip_cpu_shm_op() -> None:
    """On CPU, DeepSpeed JIT-builds a shared-memory all-reduce op at start-up that only its
    inference path uses (training all-reduces through gloo). Marking it incompatible skips the
    build and its lock, which every cell's workers would otherwise contend for."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False
