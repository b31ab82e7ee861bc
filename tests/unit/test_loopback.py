"""A local study exposes nothing beyond loopback.

``init_ray()`` without an address starts Ray on this machine; every TCP port that Ray (the GCS,
the raylet, the driver's, tasks' and actors' workers, the dashboard and runtime-env agents, the
autoscaler monitor, the dashboard head process) and the test process itself listen on must be on
127.0.0.1 (or ::1). The temporary Prefect server a study starts when no PREFECT_API_URL is set must
listen on 127.0.0.1 too. (torch.distributed's rendezvous store, opened by a training cell, is not
Ray's and is not started here.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from procs import free_port  # tests/procs.py

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# The Ray processes that must be up and listening before the check counts (matched on the command
# line; workers rename themselves "ray::..."). The dashboard agent's HTTP port is fixed (52365) and
# cannot be moved through ray.init: while another Ray on this machine holds it, that one listener is
# missing here (it binds the node IP, so 127.0.0.1, when it starts); everything it does open is checked.
EXPECTED = ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "autoscaler", "dashboard/dashboard.py")


PRE_EXISTING: set[tuple[int, str, int]] = set()


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import ray

    from inheritlab.infra.raycluster import init_ray

    # The autoscaler monitor's and dashboard head's metrics servers use fixed ports (44217, 44227);
    # free ones here, so a study running on this machine does not keep them from starting.
    monkeypatch.setenv("AUTOSCALER_METRIC_PORT", str(free_port()))
    monkeypatch.setenv("DASHBOARD_METRIC_PORT", str(free_port()))
    if ray.is_initialized():  # a runtime left by another test in this process: start our own
        ray.shutdown()
    # Sockets this process already listens on belong to earlier tests (a torch store of an
    # in-process training test, say), not to the Ray started here: the check leaves them out.
    PRE_EXISTING.clear()
    PRE_EXISTING.update((pid, ip, port) for pid, socks in _listening(set(_ray_processes())).items()
                        for ip, port in socks)
    init_ray(num_cpus=1)
    try:
        yield ray
    finally:
        ray.shutdown()


def _listening(pids: set[int]) -> dict[int, list[tuple[str, int]]]:
    """(ip, port) of every listening TCP socket of each process still alive."""
    out: dict[int, list[tuple[str, int]]] = {}
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        out[pid] = [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _ray_processes() -> dict[int, str]:
    """This process and everything it started (GCS, raylet, agents, workers): pid -> command line."""
    me = psutil.Process(os.getpid())
    procs = {me.pid: " ".join(me.cmdline())}
    for p in me.children(recursive=True):
        try:
            procs[p.pid] = " ".join(p.cmdline()).strip() or p.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return procs


def test_local_ray_listens_on_loopback_only(local_ray: Any) -> None:
    ray = local_ray

    @ray.remote(num_cpus=0)
    def where() -> int:
        return os.getpid()

    @ray.remote(num_cpus=0)
    class Holder:
        def where(self) -> int:
            return os.getpid()

    holder = Holder.remote()
    worker_pids = {ray.get(where.remote(), timeout=60), ray.get(holder.where.remote(), timeout=60)}

    node = next(n for n in ray.nodes() if n["Alive"])
    assert node["NodeManagerAddress"] == "127.0.0.1"
    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    known_ports = {gcs_port, int(node["NodeManagerPort"]), int(node["ObjectManagerPort"])}

    # The agents start beside the raylet and open their ports a moment later: wait until every
    # expected process and both workers listen, so the check below sees all of them.
    deadline = time.monotonic() + 20
    while True:
        procs = _ray_processes()
        listens = _listening(set(procs))
        seen_ports = {port for socks in listens.values() for _, port in socks}
        missing = [name for name in EXPECTED
                   if not any(name in cmd and listens.get(pid) for pid, cmd in procs.items())]
        missing += [f"worker {pid}" for pid in worker_pids if not listens.get(pid)]
        missing += [f"port {port}" for port in known_ports - seen_ports]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"not listening after 20 s: {missing}"
    assert worker_pids <= set(procs), "the task's and actor's workers are not children of this process"

    found = [(procs[pid].split(" --")[0].rsplit("/", 1)[-1][:40], ip, port)
             for pid, socks in sorted(listens.items()) for ip, port in socks if (pid, ip, port) not in PRE_EXISTING]
    print("\n".join(f"{name:40s} {ip}:{port}" for name, ip, port in found))
    exposed = [f for f in found if f[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_temporary_prefect_server_binds_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prefect starts it (no PREFECT_API_URL) as `python -m uvicorn ... --host 127.0.0.1`
    # (prefect/server/api/server.py, SubprocessASGIServer). Read the command instead of starting it.
    from prefect.server.api import server as prefect_server

    started: list[list[str]] = []
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda args, **kw: started.append(list(args)))
    srv = prefect_server.SubprocessASGIServer(port=8999)
    try:
        srv._run_uvicorn_command()
    finally:
        srv.stop()
    (args,) = started
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert srv.address.startswith("http://127.0.0.1:")


def test_a_training_process_rendezvous_opens_no_network_port(tmp_path: Any) -> None:
    """A lone training process (and ranks that share a node, trainers.ray_launch) meet through a
    file store: torch's TCP store would listen on every interface of the machine."""
    import subprocess
    import sys

    code = (
        "import os, json, psutil\n"
        "from inheritlab.trainers.engine import init_distributed\n"
        "init_distributed(use_gpu=False)\n"
        "import torch, torch.distributed as dist\n"
        "t = torch.ones(1); dist.all_reduce(t)\n"
        "socks = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections('tcp') if c.status == 'LISTEN']\n"
        "print(json.dumps({'socks': socks, 'sum': float(t)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=True)
    import json

    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["sum"] == 1.0
    exposed = [s for s in seen["socks"] if s[0] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
