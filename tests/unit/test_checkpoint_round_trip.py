"""A checkpoint round trip through a real DeepSpeed engine (CPU, gloo) is bit-exact.

Trained three steps with a warmup–cosine schedule, committed, loaded into a fresh engine built
from another initialisation: the weights, Adam's moments and step counts, the schedule's
position and learning rates, and the data-position client state must all come back exactly —
and then two further steps on both engines must give the same weights to the last bit, which
nothing short of the whole training state restores. At ZeRO stage 0 (our own step, the CPU
default) and at stage 2 (DeepSpeed's partitioned optimizer, the elastic load path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from inheritlab.trainers.checkpoint import CheckpointManager

LOADER = {"0": {"epoch": 1, "taken": 17, "undecodable": 0, "first_pass": {"read": {"samples": 32}}},
          "1": {"epoch": 1, "taken": 16, "undecodable": 1, "first_pass": None}}


def _engine(stage: int, seed: int) -> Any:
    from inheritlab.trainers.engine import EngineConfig, build_engine

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    cfg = EngineConfig(micro_batch_per_rank=4, world_size=1, zero_stage=stage, warmup_steps=2, total_steps=8,
                       lr=1e-2)
    return build_engine(model, cfg)[0]


def _step(engine: Any, i: int) -> None:
    from inheritlab.trainers.engine import optimizer_step

    g = torch.Generator().manual_seed(100 + i)
    x, y = torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
    loss = torch.nn.functional.cross_entropy(engine(x), y)
    engine.backward(loss)
    optimizer_step(engine)


def _adam_state(engine: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the optimizer's state, flattened with its name (stage 0: torch AdamW)."""
    opt = engine.optimizer
    out = []
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            for k, v in sorted(opt.state[p].items()):
                out.append((f"g{gi}.p{pi}.{k}", torch.as_tensor(v).clone()))
    return out


@pytest.mark.parametrize("stage", [0, 2])
def test_round_trip_restores_the_whole_training_state_bit_exact(tmp_path: Path, stage: int) -> None:
    from inheritlab.trainers.engine import init_distributed

    init_distributed(use_gpu=False)
    trained = _engine(stage, seed=0)
    assert int(trained.zero_optimization_stage()) == stage
    for i in range(3):
        _step(trained, i)
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=1, shape={"global_batch": 4})
    ckpt.commit(trained, step=3, samples_seen=12, state={"loss_curve": [[3, 1.25]], "loader": LOADER})

    fresh = _engine(stage, seed=1)  # other initial weights: the load must overwrite all of them
    client = ckpt.resume(fresh)
    assert client is not None
    assert json.loads(json.dumps(client["loader"])) == LOADER and client["step"] == 3
    for (name, a), b in zip(trained.module.named_parameters(), fresh.module.parameters()):
        assert torch.equal(a, b), name
    assert fresh.lr_scheduler.state_dict()["last_epoch"] == trained.lr_scheduler.state_dict()["last_epoch"]
    assert fresh.lr_scheduler.get_last_lr() == trained.lr_scheduler.get_last_lr()
    assert [g["lr"] for g in fresh.optimizer.param_groups] == [g["lr"] for g in trained.optimizer.param_groups]
    if stage == 0:
        want, got = _adam_state(trained), _adam_state(fresh)
        assert [n for n, _ in got] == [n for n, _ in want] and want
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(want, got)), "Adam state differs after the load"

    # Two more steps each: the same weights to the last bit (warmup ends and the cosine starts
    # in between, so a schedule off by one step would show).
    for i in (3, 4):
        _step(trained, i)
        _step(fresh, i)
    for (name, a), b in zip(trained.module.named_parameters(), fresh.module.parameters()):
        assert torch.equal(a, b), f"{name} differs two steps after the resume"
