"""A resume loads only the files its commit recorded: SHA-256 and size of every file, nothing more.

Most tests drive :class:`CheckpointManager` with a stand-in engine that saves with ``torch.save``
and loads the way the least careful loader would — every file of the step directory, with
``weights_only=False`` — so a planted pickle *would* run if the check let it through. One test
runs the same round trip through a real DeepSpeed (ZeRO-2, gloo) engine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from inheritlab.infra.atomic import atomic_write_json, read_json
from inheritlab.infra.errors import CheckpointError
from inheritlab.trainers.checkpoint import FILES, LATEST, CheckpointManager

MODEL = "mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class StandInEngine:
    """The engine calls the manager makes, at ZeRO stage 0; it records what it unpickled."""

    def __init__(self) -> None:
        self.weights = {"w": torch.arange(12.0).reshape(3, 4)}
        self.loaded: list[str] = []

    def zero_optimization_stage(self) -> int:
        return 0

    def save_checkpoint(self, save_dir: str, *, tag: str, client_state: dict[str, Any], save_latest: bool) -> bool:
        d = Path(save_dir) / tag
        (d / "extra").mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.weights, "client": client_state}, d / MODEL)
        torch.save({"optimizer_state_dict": {"step": 1}}, d / OPTIM)
        torch.save({"rng": torch.zeros(3)}, d / "extra" / "rng.pt")  # a file below the top level too
        return True

    def load_checkpoint(self, load_dir: str, *, tag: str, **_: Any) -> tuple[str, dict[str, Any]]:
        d = Path(load_dir) / tag
        client: dict[str, Any] = {}
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            obj = torch.load(f, map_location="cpu", weights_only=False)
            self.loaded.append(f.relative_to(d).as_posix())
            if f.name == MODEL:
                client = obj["client"]
        return str(d), client


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _committed(tmp_path: Path, steps: tuple[int, ...] = (2, 4)) -> tuple[CheckpointManager, Path]:
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=1, shape={"global_batch": 8})
    engine = StandInEngine()
    for step in steps:
        ckpt.commit(engine, step=step, samples_seen=8 * step, state={"loss_curve": [[step, 1.0]]})
    return ckpt, tmp_path / "ckpt" / f"step_{steps[-1]}"


def _resume_refused(ckpt: CheckpointManager, match: str) -> StandInEngine:
    engine = StandInEngine()
    with pytest.raises(CheckpointError, match=match):
        ckpt.resume(engine)
    assert engine.loaded == []  # refused before anything was unpickled
    return engine


def test_a_commit_records_every_file_and_resumes(tmp_path: Path) -> None:
    ckpt, step_dir = _committed(tmp_path)
    ptr = read_json(tmp_path / "ckpt" / LATEST)
    assert ptr["tag"] == "step_4" and sorted(ptr[FILES]) == sorted([MODEL, OPTIM, "extra/rng.pt"])
    for rel, rec in ptr[FILES].items():
        data = (step_dir / rel).read_bytes()
        assert rec == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    engine = StandInEngine()
    client = ckpt.resume(engine)
    assert client is not None and client["step"] == 4 and client["loss_curve"] == [[4, 1.0]]
    assert sorted(engine.loaded) == sorted(ptr[FILES])


def test_a_flipped_byte_is_refused_naming_the_file(tmp_path: Path) -> None:
    ckpt, step_dir = _committed(tmp_path)
    f = step_dir / OPTIM
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the digest can tell
    f.write_bytes(bytes(data))
    _resume_refused(ckpt, rf"{re.escape(str(f))}: SHA-256 digest mismatch")


def test_a_planted_pickle_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    ckpt, step_dir = _committed(tmp_path)
    marker = tmp_path / "payload-ran"
    # The planted file is a working exploit: loading a copy of it creates its marker.
    torch.save(_Payload(tmp_path / "control-ran"), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert (tmp_path / "control-ran").exists()

    for planted in (step_dir / "evil.pt", step_dir / "extra" / "evil.pt"):
        torch.save(_Payload(marker), planted)
        _resume_refused(ckpt, rf"{re.escape(str(planted))}: unexpected file")
        assert not marker.exists()
        planted.unlink()
    assert ckpt.resume(StandInEngine())["step"] == 4  # whole again once the planted file is gone


def test_a_symlink_in_place_of_a_file_is_refused(tmp_path: Path) -> None:
    # Even to identical bytes: a link lets a file outside the checkpoint stand in for one inside.
    ckpt, step_dir = _committed(tmp_path)
    outside = tmp_path / "outside.pt"
    shutil.move(step_dir / MODEL, outside)
    os.symlink(outside, step_dir / MODEL)
    _resume_refused(ckpt, rf"{re.escape(str(step_dir / MODEL))}: unexpected file, not a regular")


def test_a_deleted_or_resized_file_is_refused(tmp_path: Path) -> None:
    ckpt, step_dir = _committed(tmp_path)
    size = (step_dir / OPTIM).stat().st_size
    with open(step_dir / OPTIM, "ab") as fh:
        fh.write(b"\0")
    _resume_refused(ckpt, rf"{re.escape(str(step_dir / OPTIM))}: size {size + 1} bytes, {size} recorded at commit")
    (step_dir / "extra" / "rng.pt").unlink()
    _resume_refused(ckpt, rf"{re.escape(str(step_dir / 'extra' / 'rng.pt'))}: missing")


def test_a_commit_without_a_record_is_refused_as_an_older_format(tmp_path: Path) -> None:
    ckpt, _ = _committed(tmp_path)
    pointer = tmp_path / "ckpt" / LATEST
    atomic_write_json(pointer, {k: v for k, v in read_json(pointer).items() if k != FILES})
    _resume_refused(ckpt, rf"{re.escape(str(pointer))}: checkpoint step_4 was committed in an older format.*"
                          rf"start the cell over by deleting {re.escape(str(tmp_path / 'ckpt'))}")


def test_what_an_interrupted_attempt_left_is_not_committed(tmp_path: Path) -> None:
    # A step directory the pointer does not name is a crashed save's (or someone's) leftover:
    # the next save of that step starts from an empty directory, so the record holds only its files.
    ckpt, _ = _committed(tmp_path, steps=(2,))
    leftover = tmp_path / "ckpt" / "step_4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    leftover.parent.mkdir()
    torch.save(_Payload(tmp_path / "payload-ran"), leftover)
    ckpt.commit(StandInEngine(), step=4, samples_seen=32, state={})
    assert not leftover.exists() and leftover.name not in read_json(tmp_path / "ckpt" / LATEST)[FILES]
    assert ckpt.resume(StandInEngine())["step"] == 4 and not (tmp_path / "payload-ran").exists()


def test_a_deepspeed_checkpoint_round_trip(tmp_path: Path) -> None:
    """ZeRO-2 on CPU: the record covers DeepSpeed's own files, and the real resume path verifies."""
    from inheritlab.trainers.engine import EngineConfig, build_engine, init_distributed

    init_distributed(use_gpu=False)

    def engine() -> Any:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        return build_engine(model, EngineConfig(micro_batch_per_rank=2, world_size=1, zero_stage=2))[0]

    trained = engine()
    loss = trained(torch.ones(2, 8)).square().mean()
    trained.backward(loss)
    trained.step()
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=1, shape={"global_batch": 2})
    ckpt.commit(trained, step=1, samples_seen=2, state={"note": "x"})
    files = read_json(tmp_path / "ckpt" / LATEST)[FILES]
    on_disk = {p.relative_to(tmp_path / "ckpt" / "step_1").as_posix()
               for p in (tmp_path / "ckpt" / "step_1").rglob("*") if p.is_file()}
    assert set(files) == on_disk and MODEL in files and OPTIM in files

    fresh = engine()
    assert ckpt.resume(fresh)["note"] == "x"
    for a, b in zip(trained.module.parameters(), fresh.module.parameters()):
        assert torch.equal(a, b)
    torch.save(_Payload(tmp_path / "payload-ran"), tmp_path / "ckpt" / "step_1" / "extra_states.pt")
    with pytest.raises(CheckpointError, match="extra_states.pt: unexpected file"):
        ckpt.resume(engine())
    assert not (tmp_path / "payload-ran").exists()
