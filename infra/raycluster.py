"""Ray helpers: connect to (or start) a cluster, describe what it offers, reserve and release
resources, and check that every node sees the run directory.

``address=None`` starts a local Ray on this machine (the laptop default); ``"auto"`` joins the
cluster this node belongs to (on a head node); ``"ray://head:10001"`` connects a client.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inheritlab.infra.errors import ResourceError, SpecError


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    cpus: float
    gpus: float
    nodes: int
    node_list: tuple[NodeInfo, ...] = field(default=())

    def fits(self, bundle: dict[str, float]) -> bool:
        """Whether one bundle fits on some node."""
        return any(n.cpus >= bundle.get("CPU", 0) and n.gpus >= bundle.get("GPU", 0) for n in self.node_list)


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    namespace: str = "inheritlab",
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool = True,
) -> ClusterInfo:
    """Connect to Ray once per process and report the cluster's resources.

    ``num_cpus``/``num_gpus`` only apply to a local start; ``num_gpus`` on a CPU machine
    declares logical GPUs, which is how GPU placement logic is tested without GPUs.
    ``log_to_driver=False`` leaves the workers' stdout and stderr in Ray's session logs
    (:func:`session_log_dir`) instead of forwarding them to this process.
    """
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "namespace": namespace,
            "ignore_reinit_error": True,
            "log_to_driver": log_to_driver,
            "configure_logging": False,
        }
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        if address:
            # A cluster binds what its deploy files say (infra/deploy/); nothing is changed here.
            kwargs["address"] = address
            ray.init(**kwargs)
        else:
            kwargs.update(LOCAL_BIND)
            kwargs["num_cpus"] = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
            if num_gpus is not None:
                kwargs["num_gpus"] = num_gpus
            with _loopback_node():
                ray.init(**kwargs)
    return cluster_info()


# A local start (no address) listens on loopback only. Every Ray server picks its listen address
# from the node's IP: when that IP is loopback, the GCS, the raylet's node and object managers, each
# core worker (driver, tasks, actors), the dashboard agent (gRPC, HTTP, metrics export), the
# runtime-env agent and the autoscaler monitor's and dashboard head's metrics servers bind
# 127.0.0.1; otherwise most of them bind every interface. No dashboard is started.
LOCAL_BIND: dict[str, Any] = {
    "_node_ip_address": "127.0.0.1",
    "include_dashboard": False,
    "dashboard_host": "127.0.0.1",
}


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Let ``ray.init`` keep ``_node_ip_address="127.0.0.1"`` for the node it starts.

    Ray 2.60 replaces a loopback ``_node_ip_address`` by the machine's outward address
    (``ray._private.services.resolve_ip_for_localhost``), except where ``ENABLE_RAY_CLUSTER`` is off,
    as it is by default on macOS and Windows. It is switched off for the start only: once the node
    exists, Ray reads its address from the node, and a later cluster connection in this process sees
    Ray's default again. ``tests/unit/test_loopback.py`` checks the sockets this gives.
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def session_log_dir() -> str | None:
    """This node's Ray log directory (where workers' stdout/stderr go), when this process
    started or joined a node; ``None`` for a client connection or before ``ray.init``."""
    try:
        from ray._private import worker

        node = worker._global_node
        return str(node.get_logs_dir_path()) if node is not None else None
    except Exception:  # noqa: BLE001 - a private API: say nothing rather than fail a run over it
        return None


def cluster_info() -> ClusterInfo:
    """What the connected cluster offers now (alive nodes only)."""
    import ray

    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    nodes = tuple(
        NodeInfo(node_id=n["NodeID"], address=n.get("NodeManagerAddress", "?"),
                 cpus=float(n["Resources"].get("CPU", 0.0)), gpus=float(n["Resources"].get("GPU", 0.0)))
        for n in ray.nodes() if n.get("Alive")
    )
    return ClusterInfo(address=str(getattr(ctx, "gcs_address", "local")), cpus=float(res.get("CPU", 0.0)),
                       gpus=float(res.get("GPU", 0.0)), nodes=len(nodes), node_list=nodes)


def reserve(bundles: list[dict[str, float]], *, name: str) -> Any:
    """A placement group holding ``bundles`` (packed on as few nodes as will take them)."""
    from ray.util.placement_group import placement_group

    return placement_group([dict(b) for b in bundles], strategy="PACK", name=name)


def release(group: Any) -> None:
    """Give a placement group's resources back (a group already gone is fine)."""
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(group)
    except Exception:  # removed already, or the cluster is shutting down
        pass


def _probe(path: str, token: str) -> tuple[str, str, bool]:
    """On one node: (node id, address, whether ``path`` holds the driver's token)."""
    import ray

    p = Path(path)
    seen = p.is_file() and p.read_text(encoding="utf-8") == token
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), seen


def check_shared_dir(root: str | Path, *, timeout_s: float = 120.0) -> None:
    """Refuse a run directory that some node with resources cannot see.

    The driver writes a random token under ``root``; a task pinned to each node reads it back.
    On a real cluster ``root`` must be shared storage (NFS, Lustre, ...): checkpoints, plans and
    results written on one node are read on others.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe_dir = Path(root) / ".node-check"
    probe_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = probe_dir / f"{token}.txt"
    path.write_text(token, encoding="utf-8")
    try:
        nodes = [n for n in cluster_info().node_list if n.cpus > 0 or n.gpus > 0]
        probe = ray.remote(num_cpus=0)(_probe)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(
            str(path), token) for n in nodes]
        results = ray.get(refs, timeout=timeout_s)
    finally:
        path.unlink(missing_ok=True)
    blind = [(node, addr) for node, addr, seen in results if not seen]
    if blind:
        names = ", ".join(f"{addr} (node {node[:12]})" for node, addr in blind)
        raise SpecError(
            f"run directory {root} is not visible from {names}: put the run directory on storage every node "
            "mounts at the same path (NFS, Lustre, a cloud file system), e.g. --run-dir /shared/runs/<study>"
        )


def wait_for_resources(bundles: list[dict[str, float]], *, timeout_s: float, what: str) -> Any:
    """Reserve ``bundles`` and wait until they are placed; fail naming what was waited for."""
    import ray

    group = reserve(bundles, name=what)
    deadline = time.monotonic() + timeout_s
    try:
        ray.get(group.ready(), timeout=max(0.0, deadline - time.monotonic()))
    except ray.exceptions.GetTimeoutError:
        release(group)
        raise ResourceError(
            f"{what}: waited {timeout_s:.0f} s for {len(bundles)} bundle(s) of {dict(bundles[0])}; the cluster "
            f"has {ray.cluster_resources()}, free now {ray.available_resources()}"
        ) from None
    return group


def get(refs: Any, *, timeout_s: float | None = None) -> Any:
    """``ray.get``, but an application error raised in a task comes back as itself (its message,
    not Ray's wrapper and remote traceback), so the flow fails it once instead of retrying."""
    import ray

    from inheritlab.infra.errors import InheritlabError

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, InheritlabError):
            raise exc.cause from None
        raise


def local_machine() -> ClusterInfo:
    """This machine as a one-node cluster (what a local Ray would offer), without starting Ray."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        pass
    cpus = float(os.cpu_count() or 1)
    return ClusterInfo(address="local", cpus=cpus, gpus=float(gpus), nodes=1,
                       node_list=(NodeInfo(node_id="local", address="127.0.0.1", cpus=cpus, gpus=float(gpus)),))
