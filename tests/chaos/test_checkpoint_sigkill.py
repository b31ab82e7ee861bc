"""SIGKILL during checkpoint commits: the last committed step is always whole and is what resumes.

A child process commits checkpoints one after another through the real
:class:`CheckpointManager` (the engine's save is a stand-in writing a few MB per step with
``torch.save``, as DeepSpeed does: in place, not atomically) and is killed at a random moment —
inside a save, between the save and the pointer, inside the pointer write or the pruning —
fifteen times, each round continuing the same checkpoint directory. After every kill the commit
pointer must name the last step reported committed (or the next one, killed after its pointer
moved), that step's directory must still exist (pruning never removes it) and pass its SHA-256
check, and a resume must load exactly that step. A torn save is never what a resume loads.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from inheritlab.trainers.checkpoint import CheckpointManager, read_latest, verify_checkpoint

pytestmark = pytest.mark.chaos

ROUNDS = 15

ENGINE_SRC = """
from pathlib import Path
import torch

ELEMENTS = 1 << 19  # 2 MiB of float32 a file

class Engine:
    def __init__(self, step=0):
        self.step = step
        self.loaded = None

    def zero_optimization_stage(self):
        return 0

    def save_checkpoint(self, save_dir, *, tag, client_state, save_latest):
        d = Path(save_dir) / tag
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"module": torch.full((ELEMENTS,), float(self.step)), "client": client_state},
                   d / "mp_rank_00_model_states.pt")
        torch.save({"exp_avg": torch.full((ELEMENTS,), -float(self.step))}, d / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        return True

    def load_checkpoint(self, load_dir, *, tag, **_):
        d = Path(load_dir) / tag
        model = torch.load(d / "mp_rank_00_model_states.pt", weights_only=False)
        optim = torch.load(d / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
        self.loaded = (model["module"], optim["exp_avg"])
        return str(d), model["client"]
"""

WRITER = """
import sys
from inheritlab.trainers.checkpoint import CheckpointManager
exec(sys.argv[3])
ckpt = CheckpointManager(sys.argv[1], keep=2, shape={"global_batch": 8})
step = int(sys.argv[2])
print("ready", flush=True)
while True:
    ckpt.commit(Engine(step), step=step, samples_seen=8 * step, state={"loader": {"0": {"taken": step}}})
    print(step, flush=True)
    step += 1
"""

_ns: dict[str, Any] = {}
exec(ENGINE_SRC, _ns)
Engine = _ns["Engine"]


def test_a_kill_during_commits_always_resumes_the_last_committed_step(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    rng = random.Random(10)
    committed = 0
    after_pointer = 0
    for r in range(ROUNDS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ckpt_dir), str(committed + 1), ENGINE_SRC],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = [int(x) for x in proc.stdout.read().split()]
        proc.stdout.close()
        last = done[-1] if done else committed
        ptr = read_latest(ckpt_dir)
        if ptr is None:
            assert last == 0, f"round {r}: the pointer is gone after step {last} was committed"
            continue
        # The pointer names the last step reported committed, or the next one when the kill came
        # after its pointer moved but before the report.
        assert ptr["step"] in (last, last + 1), f"round {r}: pointer at {ptr['step']}, last committed {last}"
        after_pointer += ptr["step"] == last + 1
        verify_checkpoint(ckpt_dir, ptr)  # whole: every file as recorded, nothing torn or added
        engine = Engine()
        client = CheckpointManager(ckpt_dir, keep=2, shape={"global_batch": 8}).resume(engine)
        assert client is not None and client["step"] == ptr["step"] and client["loader"] == {"0": {"taken": ptr["step"]}}
        model, optim = engine.loaded
        assert torch.equal(model, torch.full_like(model, float(ptr["step"])))
        assert torch.equal(optim, torch.full_like(optim, -float(ptr["step"])))
        # Pruning kept the committed step (and at most one other whole one, plus what a killed
        # save or prune left, which the next commit of that tag clears).
        assert (ckpt_dir / ptr["tag"]).is_dir()
        committed = ptr["step"]
    assert committed >= ROUNDS // 2, f"only {committed} commits in {ROUNDS} rounds: the kills came too early"
