"""Admission: auto settings against a cluster, refusing what cannot run, the order, the bounded wait."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from inheritlab.flows.grid import expand_grid
from inheritlab.flows.scheduler import check_fits, demand_of, largest_first, plan, resolve
from inheritlab.flows.spec import parse_spec
from inheritlab.infra.errors import ResourceError
from inheritlab.infra.raycluster import ClusterInfo, NodeInfo

SPEC = {
    "name": "s",
    "grid": {"bias": [{"type": "label_noise", "levels": [0.0, 0.2]}], "model": ["clip-tiny"],
             "data_scale": {"values": [1000, 4000]}},
}


def _cluster(*nodes: tuple[float, float]) -> ClusterInfo:
    infos = tuple(NodeInfo(node_id=f"n{i}", address="10.0.0.1", cpus=c, gpus=g) for i, (c, g) in enumerate(nodes))
    return ClusterInfo(address="test", cpus=sum(n.cpus for n in infos), gpus=sum(n.gpus for n in infos),
                       nodes=len(infos), node_list=infos)


def test_auto_fills_an_eight_gpu_node() -> None:
    cells = expand_grid(parse_spec(copy.deepcopy(SPEC)))  # 4 cells
    node = _cluster((128, 8))
    got = resolve(cells, node, use_gpu=True)
    # 8 GPUs for 4 cells: two GPUs each, 16 CPUs per GPU, 8 loader processes (the cap).
    assert {(c.execution.workers, c.execution.cpus_per_worker, c.execution.loader_workers) for c in got} == {(2, 16.0, 8)}
    assert sum(demand_of(c, True).gpus for c in got) == 8
    # More cells than GPUs: one GPU each, admitted as GPUs free up.
    many = copy.deepcopy(SPEC)
    many["grid"]["seeds"] = [0, 1, 2, 3]
    assert {c.execution.workers for c in resolve(expand_grid(parse_spec(many)), node, use_gpu=True)} == {1}
    # A CPU machine: one worker of one CPU per cell, loading in the training process.
    cpu = resolve(cells, _cluster((2, 0)), use_gpu=False)
    assert {(c.execution.workers, c.execution.cpus_per_worker, c.execution.loader_workers) for c in cpu} == {(1, 1.0, 0)}


def test_what_cannot_run_is_refused_and_big_cells_go_first() -> None:
    spec = copy.deepcopy(SPEC)
    spec["train"] = {"workers": 4}
    cells = resolve(expand_grid(parse_spec(spec)), _cluster((64, 2), (64, 2)), use_gpu=True)
    with pytest.raises(ResourceError, match=r"4 worker\(s\) need 128 CPUs and 4 GPUs; the cluster has 64 and 2"):
        check_fits(cells, _cluster((64, 2)), use_gpu=True)
    spec["train"] = {"cpus_per_worker": 96}
    with pytest.raises(ResourceError, match="no node has that"):
        check_fits(resolve(expand_grid(parse_spec(spec)), _cluster((64, 8)), use_gpu=True), _cluster((64, 8)), use_gpu=True)
    order = largest_first(resolve(expand_grid(parse_spec(copy.deepcopy(SPEC))), _cluster((8, 0)), use_gpu=False),
                          use_gpu=False)
    assert [c.config.samples_seen for c in order] == [4000, 4000, 1000, 1000]
    rows = plan(order, use_gpu=False, gpu_tflops=400, cpu_gflops=20)
    assert rows[0]["flops"] == pytest.approx(4 * rows[-1]["flops"]) and rows[0]["device_hours"] > 0


@pytest.mark.slow
def test_a_cell_that_cannot_get_its_resources_fails_naming_them(tmp_path: Path) -> None:
    """Another tenant holds the only CPUs: the cell's bounded wait ends in an error, and nothing
    the study reserved is left behind."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    from inheritlab.flows.study_flow import run_study

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tenant = placement_group([{"CPU": 2.0}])
    ray.get(tenant.ready())
    try:
        spec = copy.deepcopy(SPEC)
        spec["grid"]["bias"][0]["levels"] = [0.0]
        spec["grid"]["data_scale"]["values"] = [32]
        spec["data"] = {"world": {"train_size": 64, "test_id_size": 16, "test_ood_size": 16, "samples_per_shard": 32}}
        spec["execution"] = {"placement_timeout_s": 5}
        with pytest.raises(Exception, match=r"waited 5 s for 1 bundle\(s\) of \{'CPU': 1.0\}"):
            run_study(parse_spec(spec), tmp_path / "run")
        states = {pg["state"] for pg_id, pg in placement_group_table().items() if pg_id != tenant.id.hex()}
        assert states <= {"REMOVED"}, states
    finally:
        remove_placement_group(tenant)
        ray.shutdown()
