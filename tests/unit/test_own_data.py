"""A user's own data, end to end short of training: img2dataset-style shards (written by
``corruptors/foreign.py``, not our writer) and a CLIP_benchmark-style suite, checked before any
training — each mistake a user makes refused in seconds, naming the field and what to supply —
and bad samples handled by one policy in every stage."""

from __future__ import annotations

import io
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from inheritlab.flows.preflight import check_data
from inheritlab.flows.spec import parse_spec
from inheritlab.infra.errors import BadSampleCeilingError, ShardError, SpecError


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory):
    from inheritlab.corruptors.foreign import write_foreign_data

    return write_foreign_data(tmp_path_factory.mktemp("foreign") / "data", seed=0)


@pytest.fixture()
def data(foreign, tmp_path: Path):
    """A private copy of the example data (a test may break it)."""
    root = tmp_path / "data"
    shutil.copytree(foreign.root, root)
    return root


def _spec(root: Path, **changes: Any) -> dict[str, Any]:
    from importlib import resources

    text = resources.files("inheritlab.flows").joinpath("examples", "own-data.yaml").read_text()
    spec = yaml.safe_load(text.replace("@ROOT@", str(root)))
    for path, value in changes.items():
        node = spec
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


def test_the_example_spec_passes_the_check(data: Path) -> None:
    spec = parse_spec(_spec(data))
    assert spec.eval_tasks == ("zeroshot", "linear_probe", "suites")
    assert check_data(spec) < 10.0


def _refused(spec: dict[str, Any]) -> tuple[str, float]:
    """The error a mistake gets — at spec load or at the data check — and how long it took."""
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as err:
        check_data(parse_spec(spec))
    return str(err.value), time.perf_counter() - t0


def _corrupt_first_image(shard: Path) -> str:
    """Rewrite ``shard`` with its first image's bytes cut short; the member's name."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    name = next(m.name for m, _ in members if m.name.lower().endswith((".jpg", ".webp", ".png")))
    with tarfile.open(shard, "w") as tar:
        for m, payload in members:
            payload = payload[:40] if m.name == name else payload
            m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    return name


MISTAKES = {
    # what the user did wrong → (how to make it, what the error must say)
    "no class names": (lambda root: (root / "classnames.txt").unlink(),
                       {}, ["classnames.txt", "zeroshot"]),
    "labels only in .json, no label_key": (lambda root: None, {"data.shards.label_key": None},
                                           ["data.shards.train", "label_key", "label_noise"]),
    "class names disagree": (lambda root: (root / "world.json").write_text('{"class_names": ["a", "b"]}'),
                             {}, ["world.json", "classnames.txt", "disagree"]),
    "suite task missing": (lambda root: shutil.rmtree(root / "suite" / "digits_inverted"),
                           {}, ["eval.suites.tasks", "digits_inverted"]),
    "suite without nshards.txt": (lambda root: (root / "suite" / "digits" / "test" / "nshards.txt").unlink(),
                                  {}, ["nshards.txt", "digits"]),
    "labels beyond the class names": (
        lambda root: (root / "classnames.txt").write_text("zero\none\ntwo\n"), {},
        ["outside the 3 class names", "classnames.txt"]),
    "retrieval on a captionless split": (lambda root: None, {"eval.tasks": ["zeroshot", "retrieval"]},
                                         ["data.shards.test_id", "retrieval", "caption"]),
    "an image that does not decode": (lambda root: _corrupt_first_image(root / "train" / "00001.tar"), {},
                                      ["data.shards.train", "00001.tar", "does not decode"]),
    "a train path that does not exist": (lambda root: shutil.rmtree(root / "train"), {},
                                         ["data.shards", str(Path("train"))]),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_is_refused_before_training_naming_what_to_supply(mistake: str, data: Path) -> None:
    make, changes, needles = MISTAKES[mistake]
    make(data)
    msg, seconds = _refused(_spec(data, **changes))
    for needle in needles:
        assert needle in msg, (mistake, needle, msg)
    assert seconds < 10.0, (mistake, seconds)


def test_a_minimal_world_json_and_brace_templates_work(data: Path) -> None:
    from inheritlab.corruptors.classes import class_info

    (data / "classnames.txt").unlink()
    (data / "world.json").write_text('{"class_names": ["zero", "one", "two", "three", "four", "five", "six", '
                                     '"seven", "eight", "nine"]}')  # no num_classes, no splits: enough
    info = class_info(data)
    assert info is not None and info.names[7] == "seven"
    assert all("{c}" in t for t in info.templates)  # CLIP_benchmark's templates file still applies
    check_data(parse_spec(_spec(data)))


def test_defaults_leave_out_what_the_data_cannot_serve_and_say_so(data: Path) -> None:
    from inheritlab.flows.preflight import left_out

    (data / "classnames.txt").unlink()
    spec = parse_spec(_spec(data, **{"eval.tasks": None, "grid.bias": [
        {"type": "caption_noise", "levels": [0.0, 0.2], "params": {"mode": "random"}}]}))
    assert "zeroshot" not in spec.eval_tasks and "suites" in spec.eval_tasks
    assert set(left_out(spec)) >= {"zeroshot", "linear_probe"}


# ----------------------------------------------------------------------------- bad samples


def test_evaluation_skips_and_counts_bad_samples_under_the_ceiling(data: Path) -> None:
    import torch
    from inheritlab.corruptors.shards import ReadStats
    from inheritlab.trainers.clip_eval import encode_split
    from inheritlab.trainers.clip_models import build_clip

    shard = data / "suite" / "digits" / "test" / "0.tar"
    member = _corrupt_first_image(shard)
    built = build_clip("clip-tiny", seed=0)
    shards = [str(p) for p in sorted((data / "suite" / "digits" / "test").glob("*.tar"))]
    stats = ReadStats()
    f = encode_split(built.model, built.transform, built.tokenizer, shards, device=torch.device("cpu"),
                     bad_sample_ceiling=0.01, stats=stats)
    assert stats.skipped == {"undecodable_image": 1} and len(f.labels) == 358
    assert member in stats.problems[0]
    with pytest.raises(ShardError, match=member.replace(".", r"\.")):  # strict: the first bad sample fails
        encode_split(built.model, built.transform, built.tokenizer, shards, device=torch.device("cpu"))


def test_training_judges_the_ceiling_over_the_whole_split() -> None:
    from inheritlab.trainers.data_check import check_stream, slot_ceiling

    def report(slot: int, samples: int, bad: int) -> dict[str, Any]:
        return {"slot": [slot, 0], "counters": {}, "read": {"samples": samples, "skipped": {"undecodable_image": bad}}}

    # Slot 0's shard holds every bad sample (3 of 30: 10 %); the split's fraction is 3 of 300.
    reports = [report(0, 27, 3)] + [report(i, 30, 0) for i in range(1, 10)]
    record = check_stream(None, reports, slots=10, ceiling=0.02)
    assert record["first_pass_read"] == {"samples": 297, "skipped": {"undecodable_image": 3}}
    with pytest.raises(BadSampleCeilingError, match="3 of 300"):
        check_stream(None, reports, slots=10, ceiling=0.005)
    assert slot_ceiling(0.02) == 1.0 and slot_ceiling(0) == 0  # slots count; strict stays strict


def test_a_training_stream_counts_undecodable_images(data: Path) -> None:
    from inheritlab.trainers.clip_data import StreamSpec, iter_epoch_samples

    member = _corrupt_first_image(data / "train" / "00000.tar")
    shards = tuple(str(p) for p in sorted((data / "train").glob("*.tar")))
    spec = StreamSpec(shards=shards, corruptors=(), study_seed=0, seed=0, num_classes=10, class_names=(),
                      plan_dir=None, slots=(0,), num_slots=1, chunk=64, bad_sample_ceiling=1.0, label_key="label")
    seen: dict[str, Any] = {}
    n = sum(1 for _ in iter_epoch_samples(spec, 0, 0, on_pass_end=lambda c, r: seen.update(r)))
    assert n == 1437 and seen["skipped"] == {"undecodable_image": 1} and member in seen["problems"][0]
