"""Admission of a study's cells onto the cluster: every cell declares what it needs, and cells
start as the cluster's resources free up.

Each cell needs ``workers`` bundles of ``{CPU: cpus_per_worker, GPU: gpus_per_worker}`` (its
placement group, which also runs its data condition and evaluation). ``auto`` settings are
resolved against the cluster once per launch (:func:`resolve`). The policy is *largest first*:
cells are ordered by GPUs, then CPUs, then samples seen (a longest-processing-time heuristic,
which keeps the tail of a grid short) and each one is admitted as soon as the study's own ledger
says it fits in what the study does not hold yet; smaller cells fill the gaps a large one leaves.
Ray then places the reservation; one that cannot be placed within the stated bound (another
tenant holds the resources, a node was lost) fails naming what it waited for.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inheritlab.infra.cell import Cell
from inheritlab.infra.errors import ResourceError
from inheritlab.infra.raycluster import ClusterInfo

# Loader processes a GPU worker gets at most, whatever its CPUs (more only cost memory).
MAX_LOADER_WORKERS = 8


@dataclass(frozen=True)
class Demand:
    """What one cell holds while it runs."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        return [dict(bundle) for _ in range(self.workers)]

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


def demand_of(cell: Cell, use_gpu: bool) -> Demand:
    """The resources of a cell whose execution settings are resolved (no ``auto`` left)."""
    ex = cell.execution
    assert isinstance(ex.workers, int) and not isinstance(ex.cpus_per_worker, str), "resolve() the cell first"
    return Demand(workers=ex.workers, cpus_per_worker=float(ex.cpus_per_worker), gpus_per_worker=1.0 if use_gpu else 0.0)


def resolve(cells: list[Cell], cluster: ClusterInfo, *, use_gpu: bool) -> list[Cell]:
    """The cells with every ``auto`` execution setting decided for this cluster.

    GPU clusters: one GPU per worker; ``workers`` is 1, or the largest power of two of GPUs per
    cell that still lets every cell of the grid run at once (at most one node's GPUs);
    ``cpus_per_worker`` is a GPU node's CPUs per GPU; ``loader_workers`` all but one of those
    (at most 8). CPU clusters: one worker of one CPU per cell, loading in the training process.
    """
    from inheritlab.trainers.modality import get_modality
    from inheritlab.trainers.slots import data_slots

    gpu_nodes = [n for n in cluster.node_list if n.gpus >= 1]
    out = []
    for cell in cells:
        ex = cell.execution
        if use_gpu:
            per_node = max((int(n.gpus) for n in gpu_nodes), default=1)
            share = max(1, int(cluster.gpus // max(1, len(cells))))
            # A power of two that divides the cell's data slots (trainers.slots), at most a node.
            slots = data_slots(get_modality(cell.config.modality).global_batch(cell.config))
            workers = ex.workers if ex.workers != "auto" else min(slots, 2 ** int(math.log2(min(share, per_node))))
            cpus = ex.cpus_per_worker if ex.cpus_per_worker != "auto" else max(
                1.0, min((n.cpus // n.gpus for n in gpu_nodes), default=1.0))
            loaders = ex.loader_workers if ex.loader_workers != "auto" else int(min(MAX_LOADER_WORKERS, max(0, cpus - 1)))
        else:
            workers = ex.workers if ex.workers != "auto" else 1
            cpus = ex.cpus_per_worker if ex.cpus_per_worker != "auto" else 1.0
            loaders = ex.loader_workers if ex.loader_workers != "auto" else 0
        resolved = ex.model_copy(update={"workers": int(workers), "cpus_per_worker": float(cpus),
                                         "loader_workers": int(loaders)})
        out.append(Cell(config=cell.config, execution=resolved))
    return out


def check_fits(cells: list[Cell], cluster: ClusterInfo, *, use_gpu: bool) -> None:
    """Refuse cells that could never run on this cluster, naming the cell and what it asks for."""
    problems = []
    for cell in cells:
        d = demand_of(cell, use_gpu)
        if not cluster.fits(d.bundles[0]):
            problems.append(f"{cell.label}: one worker needs {d.bundles[0]}, and no node has that")
        elif d.cpus > cluster.cpus or d.gpus > cluster.gpus:
            problems.append(f"{cell.label}: {d.workers} worker(s) need {d.cpus:g} CPUs and {d.gpus:g} GPUs; "
                            f"the cluster has {cluster.cpus:g} and {cluster.gpus:g}")
    if problems:
        raise ResourceError("cells that cannot run on this cluster (train.workers, train.cpus_per_worker):\n  "
                            + "\n  ".join(problems))


def largest_first(cells: list[Cell], use_gpu: bool) -> list[Cell]:
    """The admission order: most GPUs, then most CPUs, then most samples seen first."""
    return sorted(cells, key=lambda c: (-demand_of(c, use_gpu).gpus, -demand_of(c, use_gpu).cpus,
                                        -c.config.samples_seen))


class PlacementLog:
    """``RUN_DIR/placement.jsonl``: one line per admission and release, for the record and for
    measuring how full the cluster was kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, event: str, cell: Cell, demand: Demand, **extra: Any) -> None:
        line = {"time": time.time(), "event": event, "cell": cell.cell_id, "label": cell.label,
                "workers": demand.workers, "cpus": demand.cpus, "gpus": demand.gpus, **extra}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")


def run_admitted(
    cells: list[Cell],
    cluster: ClusterInfo,
    run_one: Callable[[Cell], Any],
    *,
    use_gpu: bool,
    log: PlacementLog,
    claim: Callable[[Cell], str] = lambda cell: "mine",
    max_concurrent: int | None = None,
    poll_s: float = 2.0,
    stop: Callable[[], bool] = lambda: False,
) -> list[tuple[Cell, Any, BaseException | None]]:
    """Run ``run_one(cell)`` for every cell, each admitted when it fits the study's ledger.

    ``claim(cell)`` says whose the cell is: ``"mine"`` (this launch holds its lease), ``"busy"``
    (another launch trains it: checked again every ``poll_s``) or ``"done"`` (it completed).
    Returns (cell, result, error) per cell in completion order — ``result`` is ``"elsewhere"``
    for a cell another launch finished, ``"not admitted"`` for one still waiting when ``stop()``
    became true (nothing is admitted after that; the running cells are waited for); a failed
    cell does not stop the others. ``run_one`` reserves and releases the cell's own placement group.
    """
    waiting = largest_first(cells, use_gpu)
    free = {"CPU": cluster.cpus, "GPU": cluster.gpus}
    running: dict[Future[Any], tuple[Cell, Demand]] = {}
    results: list[tuple[Cell, Any, BaseException | None]] = []
    with ThreadPoolExecutor(max_workers=max(1, len(cells))) as pool:
        while waiting or running:
            if waiting and stop():
                results.extend((cell, "not admitted", None) for cell in waiting)
                waiting = []
            for cell in list(waiting):
                if max_concurrent is not None and len(running) >= max_concurrent:
                    break
                d = demand_of(cell, use_gpu)
                # Nothing running and it still does not fit: admit it anyway, its reservation's
                # bounded wait then says what it waited for.
                if not ((d.cpus <= free["CPU"] + 1e-9 and d.gpus <= free["GPU"] + 1e-9) or not running):
                    continue
                owner = claim(cell)
                if owner == "busy":
                    continue
                waiting.remove(cell)
                if owner == "done":
                    results.append((cell, "elsewhere", None))
                    continue
                free["CPU"] -= d.cpus
                free["GPU"] -= d.gpus
                log.write("admitted", cell, d)
                running[pool.submit(run_one, cell)] = (cell, d)
            if not running:
                if waiting:
                    time.sleep(poll_s)  # every cell left is another launch's: watch them
                continue
            done, _ = wait(list(running), timeout=poll_s if waiting else None, return_when=FIRST_COMPLETED)
            if not done:
                continue
            for fut in done:
                cell, d = running.pop(fut)
                free["CPU"] += d.cpus
                free["GPU"] += d.gpus
                error = fut.exception()
                log.write("released", cell, d, ok=error is None)
                results.append((cell, None if error else fut.result(), error))
    return results


def busy_profile(log_path: Path, resource: str = "gpus") -> list[tuple[float, float]]:
    """(time, resource held) after every event of a placement log: how full the study kept the
    cluster. ``resource`` is ``gpus`` or ``cpus``."""
    held, out = 0.0, []
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        held += rec[resource] if rec["event"] == "admitted" else -rec[resource]
        out.append((rec["time"], held))
    return out


def plan(cells: list[Cell], *, use_gpu: bool, gpu_tflops: float, cpu_gflops: float) -> list[dict[str, Any]]:
    """One row per cell: its resources and an estimate of its compute and device-hours.

    The estimate is the cell's training FLOPs (the rung's FLOPs per sample × samples seen) at a
    declared rate — ``gpu_tflops`` per GPU, or ``cpu_gflops`` per CPU worker — not a measurement.
    """
    from inheritlab.trainers.modality import get_modality

    rows = []
    for cell in largest_first(cells, use_gpu):
        d = demand_of(cell, use_gpu)
        flops = get_modality(cell.config.modality).flops_per_sample(cell.config) * cell.config.samples_seen
        rate = gpu_tflops * 1e12 if use_gpu else cpu_gflops * 1e9
        hours = flops / (rate * 3600.0)  # device-hours: the same whatever the number of workers
        rows.append({"cell": cell.cell_id, "label": cell.label, "workers": d.workers, "cpus": d.cpus, "gpus": d.gpus,
                     "flops": flops, "device_hours": hours, "wall_hours": hours / d.workers})
    return rows
