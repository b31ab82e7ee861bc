"""Launch one cell's pre-training (CLIP or LM) as Ray Train workers (Ray Train v2 TorchTrainer).

Ray Train sets up torch.distributed across the workers (gloo on CPU, NCCL on GPU) and restarts
them after a crash (``max_failures``); each restart resumes from the cell's last committed
checkpoint, so a retry never repeats finished steps. The caller has already called
``ray.init`` (locally or against a cluster).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.errors import CheckpointError
from inheritlab.trainers.clip_pretrain import SUMMARY, ClipTrainConfig

LM_SUMMARY = "lm_train_summary.json"


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train

    if config["kind"] == "lm":
        from inheritlab.trainers.lm_pretrain import LMTrainConfig, lm_exports_on_disk, train_lm

        lm_cfg = LMTrainConfig.from_dict(config["cfg"])
        summary = train_lm(lm_cfg)
        if ray.train.get_context().get_world_rank() == 0:
            # Exports of earlier attempts count too: a resumed run only adds the later ones.
            summary["exports"] = lm_exports_on_disk(lm_cfg.cell_dir)
            atomic_write_json(Path(lm_cfg.cell_dir) / "ckpt" / LM_SUMMARY, summary)
    else:
        from inheritlab.trainers.clip_pretrain import train_clip

        summary = train_clip(ClipTrainConfig.from_dict(config["cfg"]))
    # ray.train.report is a barrier: every rank reports, exactly once.
    ray.train.report({"steps": summary["steps"], "samples_seen": summary["samples_seen"],
                      "final_loss": summary["final_loss"]})


def _fit(kind: str, cfg_dict: dict[str, Any], cell: Path, *, num_workers: int, use_gpu: bool,
         cpus_per_worker: float, storage_path: str, max_failures: int) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Explicit per-field: GPU runs request whole GPUs, CPU runs only CPUs.
    resources: dict[str, float] = {"CPU": float(cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = 1.0
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"kind": kind, "cfg": cfg_dict},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{kind}-{cell.name}-{int(time.time())}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _summary(path: Path, cell: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: training finished but wrote no summary (is {cell} on shared storage?)")
    return read_json(path)


def launch_clip_training(
    cfg: ClipTrainConfig,
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float = 1.0,
    storage_path: str,
    max_failures: int = 1,
) -> dict[str, Any]:
    """Train ``cfg`` on ``num_workers`` Ray Train workers; returns the trainer's summary
    (see :func:`inheritlab.trainers.clip_pretrain.train_clip`). ``storage_path`` must be shared
    storage on a multi-node cluster, as must ``cfg.cell_dir``."""
    cell = Path(cfg.cell_dir)
    _fit("clip", {**cfg.to_dict(), "use_gpu": use_gpu}, cell, num_workers=num_workers, use_gpu=use_gpu,
         cpus_per_worker=cpus_per_worker, storage_path=storage_path, max_failures=max_failures)
    return _summary(cell / "ckpt" / SUMMARY, cell)


def launch_lm_training(
    cfg: Any,
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float = 1.0,
    storage_path: str,
    max_failures: int = 1,
) -> dict[str, Any]:
    """As :func:`launch_clip_training`, for an ``LMTrainConfig``; the summary's ``exports`` lists
    every weight export in the cell (``[{path, step, samples_seen, tokens_seen, tokenizer}]``)."""
    cell = Path(cfg.cell_dir)
    _fit("lm", {**cfg.to_dict(), "device": "cuda" if use_gpu else "cpu"}, cell, num_workers=num_workers,
         use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, storage_path=storage_path, max_failures=max_failures)
    return _summary(cell / "ckpt" / LM_SUMMARY, cell)
