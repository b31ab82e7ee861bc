"""Launch one cell's training on Ray: one actor per worker, in the cell's placement group.

The cell's placement group (reserved by the flow's scheduler when it admits the cell) holds one
bundle per worker. Each bundle gets a :class:`TrainWorker` actor; rank 0 picks the rendezvous
address, every actor sets the torch.distributed environment (gloo on CPU, NCCL on GPU) and runs
the modality's own ``train`` — the same function ``python -m`` and torchrun call.

Failures, one retry layer each:

- An application error in a worker (a bad sample, a bad config: ``InheritlabError``) is
  unwrapped from Ray's task error and raised as it is — once, never retried.
- A crash (a killed worker, a lost node) kills the other workers and starts them again from the
  cell's last committed checkpoint, up to ``max_failures`` times; the placement group puts lost
  bundles back on live nodes when the cluster has room. Past the budget it is a
  :class:`~inheritlab.infra.errors.WorkerCrash` (which the flow may retry).

The caller has already called ``ray.init`` (locally or against a cluster).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inheritlab.infra.errors import InheritlabError, ResourceError, SpecError, WorkerCrash
from inheritlab.trainers.checkpoint import TrainSummary
from inheritlab.trainers.engine import STORE_ENV
from inheritlab.trainers.train_config import BaseTrainConfig


@dataclass(frozen=True)
class Placement:
    """A cell's reserved resources: its placement group, one bundle per training worker."""

    group: Any                      # ray.util.placement_group.PlacementGroup
    bundles: tuple[dict[str, float], ...]
    wait_s: float = 600.0           # how long a (re)start may wait for the bundles to be placed

    @property
    def workers(self) -> int:
        return len(self.bundles)

    def strategy(self, bundle: int = -1, *, capture: bool = False) -> Any:
        """A Ray scheduling strategy running a task or actor inside this reservation."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=bundle,
                                                placement_group_capture_child_tasks=capture)

    def wait_ready(self, what: str) -> None:
        """Block until every bundle is placed on a live node, or fail naming what was waited for.

        After a node is lost, the group still lists the dead node's bundles until the cluster
        notices and places them elsewhere; workers started before then would die at once.
        """
        import ray

        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                ray.get(self.group.ready(), timeout=max(0.1, deadline - time.monotonic()))
                alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
                placed = ray.util.placement_group_table(self.group).get("bundles_to_node_id", {})
                if placed and set(placed.values()) <= alive:
                    return
            except ray.exceptions.GetTimeoutError:
                pass
            if time.monotonic() >= deadline:
                raise ResourceError(
                    f"{what}: waited {self.wait_s:.0f} s for {self.workers} bundle(s) of {dict(self.bundles[0])} on "
                    f"live nodes; the cluster has {ray.cluster_resources()}, free now {ray.available_resources()}"
                )
            time.sleep(1.0)


class TrainWorker:
    """One training rank, living in one bundle of the cell's placement group."""

    def endpoint(self) -> dict[str, Any]:
        """Where this worker runs, and a free port (rank 0's is the rendezvous)."""
        import socket

        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        return {"address": ray.util.get_node_ip_address(), "port": port, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    def train(self, modality: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        """Set the distributed environment, train, and report (node, summary on rank 0)."""
        import ray
        import torch.distributed as dist

        from inheritlab.trainers.caches import configure_caches
        from inheritlab.trainers.modality import get_modality

        os.environ.update(env)
        # As many compute threads as the bundle has CPUs: cells packed on one node must not
        # each spawn a thread per core of the whole machine.
        import torch

        torch.set_num_threads(max(1, int(float(env.get("CPUS", "1")))))
        mod = get_modality(modality)
        config = mod.config_from_dict({**cfg, "device": worker_device(cfg.get("device", "auto"))})
        configure_caches(Path(config.cell_dir).parent.parent, use_gpu=config.use_gpu)
        from inheritlab.kernels.dispatch import KernelUnavailableError

        try:
            summary = mod.train(config)
        except KernelUnavailableError as exc:
            # A kernel asked for (loss_impl) that cannot run here is a config error: fail once.
            raise SpecError(f"loss_impl: {exc}") from None
        if dist.is_initialized():
            dist.destroy_process_group()
        return {"node": ray.get_runtime_context().get_node_id(), "rank": int(env["RANK"]),
                "summary": summary.to_dict() if env["RANK"] == "0" else None}


def worker_device(device: str) -> str:
    """The device a Ray worker trains on: the one asked for, checked against what it was given.

    A worker Ray gave GPUs to must see CUDA — a GPU node whose driver is broken would otherwise
    train on its CPU, a hundred times slower, without saying so. The exception is a test node
    whose GPUs are declared logical (``INHERITLAB_LOGICAL_GPUS=1`` in its environment): there
    the GPUs only exercise placement, and training runs on the CPU.
    """
    import torch

    if device != "cuda" or torch.cuda.is_available():
        return device
    if os.environ.get("INHERITLAB_LOGICAL_GPUS") == "1":
        return "cpu"
    import ray

    raise ResourceError(f"this worker was given GPU(s) {ray.get_gpu_ids()} on node "
                        f"{ray.util.get_node_ip_address()}, but torch sees no CUDA device")


def launch_training(modality: str, cfg: BaseTrainConfig, placement: Placement, *, max_failures: int = 1,
                    log: Path | None = None) -> TrainSummary:
    """Train ``cfg`` on one worker per bundle of ``placement``; returns rank 0's summary.

    ``log`` (a JSON-lines file) records every attempt: start (workers, nodes, pids), outcome.
    """
    cell = Path(cfg.cell_dir)
    attempt = 0
    while True:
        placement.wait_ready(f"cell {cell.name}")
        outcome, nodes = _attempt(modality, cfg, placement, attempt, log)
        if isinstance(outcome, TrainSummary):
            return outcome
        _settle(nodes, timeout_s=placement.wait_s)
        attempt += 1
        if attempt > max_failures:
            raise WorkerCrash(f"cell {cell.name}: training workers crashed {attempt} time(s) (max_failures="
                              f"{max_failures}); last: {outcome}")


def _settle(nodes: list[str], *, timeout_s: float) -> None:
    """After a crash, wait until the cluster knows which of the workers' nodes are gone.

    A node that was lost is still listed alive (and still holds the cell's bundles) until the
    cluster's health checks give up on it; workers restarted there would die at once. A node
    that answers a task is alive (a worker process was killed, not its node).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ping = ray.remote(num_cpus=0)(lambda: True)
    for node in set(nodes):
        try:
            ray.get(ping.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(),
                    timeout=10)
            continue
        except Exception:  # unreachable: wait for the cluster to declare it dead
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(n["NodeID"] == node and n.get("Alive") for n in ray.nodes()):
            time.sleep(1.0)


def _attempt(modality: str, cfg: BaseTrainConfig, placement: Placement, attempt: int,
             log: Path | None) -> tuple[TrainSummary | str, list[str]]:
    """One start of the workers: (rank 0's summary when training ended, else why it crashed;
    the nodes the workers ran on).

    An application error is raised from here, after the workers are stopped.
    """
    import ray

    actor = ray.remote(TrainWorker)
    workers = [actor.options(num_cpus=b.get("CPU", 0), num_gpus=b.get("GPU", 0), max_restarts=0,
                             scheduling_strategy=placement.strategy(i)).remote()
               for i, b in enumerate(placement.bundles)]
    started = time.time()
    nodes: list[str] = []
    store: dict[str, str] = {}
    try:
        where = ray.get([w.endpoint.remote() for w in workers])
        nodes = [w["node"] for w in where]
        _log(log, {"attempt": attempt, "event": "started", "workers": where})
        world = len(workers)
        # Ranks all on one node meet through a file (a fresh one per attempt) rather than rank 0's
        # TCP store, which would listen on every interface of the node.
        if len(set(nodes)) == 1:
            store_file = Path(tempfile.gettempdir()) / f"inheritlab-dist-{Path(cfg.cell_dir).name}-{attempt}-{uuid.uuid4().hex[:8]}"
            store = {STORE_ENV: f"file://{store_file}"}
        refs = [w.train.remote(modality, cfg.to_dict(), {
            "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": where[0]["address"],
            "MASTER_PORT": str(where[0]["port"]), "CPUS": str(placement.bundles[r].get("CPU", 1)), **store})
            for r, w in enumerate(workers)]
        pending, results = list(refs), []
        while pending:
            # The first failure raises here, and the finally stops the other workers at once
            # (a dead peer would leave them blocked in a collective).
            done, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(done[0]))
        _log(log, {"attempt": attempt, "event": "finished", "workers": world,
                   "nodes": sorted({r["node"] for r in results}), "seconds": round(time.time() - started, 3)})
        return TrainSummary.from_dict(next(r["summary"] for r in results if r["rank"] == 0)), nodes
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, InheritlabError):
            _log(log, {"attempt": attempt, "event": "application_error", "error": str(cause)[:500]})
            raise cause from None
        _log(log, {"attempt": attempt, "event": "crashed", "error": f"{type(cause).__name__}: {cause}"[:500]})
        return f"{type(cause).__name__}: {cause}"[:1000], nodes
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        _log(log, {"attempt": attempt, "event": "crashed", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return f"{type(exc).__name__}: {exc}"[:1000], nodes
    finally:
        for w in workers:
            ray.kill(w, no_restart=True)
        if store:
            Path(store[STORE_ENV][len("file://"):]).unlink(missing_ok=True)


def _log(path: Path | None, record: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": time.time(), **record}) + "\n")


__all__ = ["Placement", "TrainWorker", "launch_training"]
