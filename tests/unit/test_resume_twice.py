"""Stopped between checkpoints and resumed twice in a row: the same run, bit for bit.

One CLIP cell trains uninterrupted. The same cell elsewhere stops twice between two commits
(``stop_after_steps`` ends the process a step after a commit, so that step's work is lost, as in
a kill) and resumes each time from the last commit, with real loader worker processes and
another number of them on each leg. The final weights must be bit-identical (``torch.equal``),
the loss curve equal to the last bit, and every step must have trained on the same sample keys
(``trace_data``) — those of the steps that were trained twice, before and after a stop, too.
Any state a commit misses (optimizer moments, the LR schedule, a loader position, a random
stream: crops are on) shows up here as a difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from inheritlab.corruptors.world import ImageWorldConfig, WorldInfo, write_image_world
from inheritlab.infra.atomic import read_json
from inheritlab.trainers.clip_pretrain import ClipTrainConfig, export_weights, train_clip

STEPS = 10  # 256 samples / batch 32 = 8 steps an epoch: the run crosses into a second epoch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldInfo:
    return write_image_world(ImageWorldConfig(seed=4, num_classes=4, train_size=256, test_id_size=32, test_ood_size=32,
                                              samples_per_shard=32), tmp_path_factory.mktemp("world"))


def _cfg(world: WorldInfo, cell: Path, **kw: Any) -> ClipTrainConfig:
    base = dict(rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(cell), samples_seen=STEPS * 32,
                batch_size=32, ckpt_every=3, log_every=2, num_classes=world.num_classes,
                class_names=tuple(world.class_names), corruptors=({"type": "label_noise", "level": 0.3},),
                shuffle_buffer=32, trace_data=True, keep_checkpoints=1,
                augment="rrc")  # random crops, drawn per step from the seed tree, must resume too
    return ClipTrainConfig(**{**base, **kw})


def _trace(cell: Path) -> list[tuple[int, list[str]]]:
    return [(r["step"], r["keys"]) for r in map(json.loads, (cell / "data" / "trace-rank0.jsonl").read_text().splitlines())]


def test_two_stops_between_commits_then_resumes_are_bit_identical(world: WorldInfo, tmp_path: Path) -> None:
    full = train_clip(_cfg(world, tmp_path / "full", loader_workers=2))
    assert full.steps == STEPS and full.resumed_from is None

    hop = tmp_path / "hop"
    first = train_clip(_cfg(world, hop, loader_workers=2, stop_after_steps=4))  # commits 3, trains 4, stops
    assert first.steps == 4 and read_json(hop / "ckpt" / "latest.json")["step"] == 3
    second = train_clip(_cfg(world, hop, loader_workers=1, stop_after_steps=4))  # 4..7 again, commits 6
    assert second.resumed_from == 3 and second.steps == 7 and read_json(hop / "ckpt" / "latest.json")["step"] == 6
    last = train_clip(_cfg(world, hop, loader_workers=2))
    assert last.resumed_from == 6 and last.steps == STEPS and last.samples_seen == full.samples_seen

    # Weights: bit-identical, every tensor.
    a = torch.load(export_weights(full.final_export), map_location="cpu", weights_only=True)
    b = torch.load(export_weights(last.final_export), map_location="cpu", weights_only=True)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after two resumes, e.g. {differ[:3]}"
    # The loss curve: the same floats at the same steps. Points average two steps and checkpoints
    # fall every three, so each resume starts inside a window: the checkpoint carries the open
    # window (each rank's losses since the last point), and the resumed run closes it as the
    # uninterrupted one did.
    assert last.loss_curve == full.loss_curve
    assert [s for s, _ in last.loss_curve] == [*range(2, STEPS + 1, 2), *([STEPS] if STEPS % 2 else [])]
    assert last.data_check == full.data_check

    # The data: the same keys at every step; steps 4 and 7, trained twice, saw the same keys twice.
    want = dict(_trace(tmp_path / "full"))
    assert sorted(want) == list(range(1, STEPS + 1))
    seen = _trace(hop)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10]
    assert all(keys == want[s] for s, keys in seen)
    epoch = [k for s in range(1, 9) for k in want[s]]
    assert len(epoch) == len(set(epoch)) == 256  # one epoch: every sample once
