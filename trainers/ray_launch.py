"""Launch one cell's pre-training as Ray Train workers (Ray Train v2 TorchTrainer), any modality.

Ray Train sets up torch.distributed across the workers (gloo on CPU, NCCL on GPU) and restarts
them after a crash (``max_failures``); each restart resumes from the cell's last committed
checkpoint, so a retry never repeats finished steps. Every worker runs the modality's own
``train``; the summary rank 0 leaves in the cell's ``ckpt/`` is what the launch returns. The
caller has already called ``ray.init`` (locally or against a cluster).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inheritlab.trainers.checkpoint import TrainSummary, read_summary
from inheritlab.trainers.train_config import BaseTrainConfig


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    from inheritlab.trainers.modality import get_modality

    modality = get_modality(config["modality"])
    summary = modality.train(modality.config_from_dict(config["cfg"]))
    # ray.train.report is a barrier: every rank reports, exactly once.
    ray.train.report({"steps": summary.steps, "samples_seen": summary.samples_seen, "final_loss": summary.final_loss})


def launch_training(
    modality: str,
    cfg: BaseTrainConfig,
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float = 1.0,
    storage_path: str,
    max_failures: int = 1,
) -> TrainSummary:
    """Train ``cfg`` (a config of ``modality``) on ``num_workers`` Ray Train workers; returns its
    summary. ``storage_path`` must be shared storage on a multi-node cluster, as must
    ``cfg.cell_dir``."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cell = Path(cfg.cell_dir)
    # Explicit per-field: GPU runs request whole GPUs, CPU runs only CPUs.
    resources: dict[str, float] = {"CPU": float(cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = 1.0
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"modality": modality, "cfg": {**cfg.to_dict(), "device": "cuda" if use_gpu else "cpu"}},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{modality}-{cell.name}-{int(time.time())}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return read_summary(cell / "ckpt")
