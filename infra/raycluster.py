"""Ray helpers: connect to (or start) a cluster and describe what it offers.

``address=None`` starts a local Ray on this machine (the laptop default); ``"auto"`` joins the
cluster this node belongs to (on a head node); ``"ray://head:10001"`` connects a client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    cpus: float
    gpus: float
    nodes: int


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    namespace: str = "inheritlab",
    runtime_env: dict[str, Any] | None = None,
) -> ClusterInfo:
    """Connect to Ray once per process and report the cluster's resources.

    ``num_cpus``/``num_gpus`` only apply to a local start; ``num_gpus`` on a CPU machine
    declares logical GPUs, which is how GPU placement logic is tested without GPUs.
    """
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "namespace": namespace,
            "ignore_reinit_error": True,
            "log_to_driver": True,
            "configure_logging": False,
        }
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        if address:
            kwargs["address"] = address
        else:
            kwargs["include_dashboard"] = False
            kwargs["num_cpus"] = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
            if num_gpus is not None:
                kwargs["num_gpus"] = num_gpus
        ray.init(**kwargs)
    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    return ClusterInfo(
        address=str(getattr(ctx, "gcs_address", address or "local")),
        cpus=float(res.get("CPU", 0.0)),
        gpus=float(res.get("GPU", 0.0)),
        nodes=len([n for n in ray.nodes() if n.get("Alive")]),
    )
