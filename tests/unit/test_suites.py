"""Evaluation suites from disk (CLIP_benchmark / DataComp layout) and our CLIP exports as the
other tools load them.

The parity test runs CLIP_benchmark's own command on a suite this test writes (img2dataset- and
CLIP_benchmark-style files from ``corruptors/foreign.py``, not our shard writer) and on the same
export our ``suites`` task scores: the metrics must be equal in fp32.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from inheritlab.corruptors.suites import open_suite
from inheritlab.infra.errors import SpecError

pytest.importorskip("clip_benchmark")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory):
    from inheritlab.corruptors.foreign import write_foreign_data

    return write_foreign_data(tmp_path_factory.mktemp("foreign") / "data", seed=0)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, foreign) -> Path:
    """A clip-tiny export in the layout the trainer writes, of a model that learned something:
    a few seconds of plain contrastive steps on the foreign train split (random weights predict
    one class for every image, which would make equal metrics a weak test)."""
    import torch
    from inheritlab.corruptors.shards import iter_samples
    from inheritlab.trainers.clip_models import build_clip
    from inheritlab.trainers.clip_pretrain import write_open_clip_files

    built = build_clip("clip-tiny", seed=0)
    samples = list(iter_samples(str(foreign.train_dir), label_key="label"))
    images = torch.stack([built.transform(s["image"]) for s in samples])
    texts = built.tokenizer([s["caption"] for s in samples])
    model = built.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):  # ~10 s on 2 cores; zero-shot acc1 ~0.7 on the held-out digits
        idx = torch.randperm(len(samples), generator=gen)[:256]
        img, txt, scale = model(images[idx], texts[idx])
        logits = scale * img @ txt.T
        target = torch.arange(len(idx))
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("export")
    write_open_clip_files(out, model.eval().state_dict(), built)
    return out


def test_open_suite_reads_the_layout(foreign) -> None:
    tasks = open_suite(foreign.suite_root, ["digits", "digits_captions"])
    by = {t.name: t for t in tasks}
    assert by["digits"].kind == "classification" and by["digits"].class_names[:2] == ("zero", "one")
    assert all("{c}" in t for t in by["digits"].templates)
    assert by["digits_captions"].kind == "retrieval" and not by["digits_captions"].class_names
    assert len(by["digits"].shards) == int((foreign.suite_root / "digits" / "test" / "nshards.txt").read_text())


def test_open_suite_names_what_is_missing_where(foreign, tmp_path: Path) -> None:
    root = tmp_path / "suite"
    shutil.copytree(foreign.suite_root, root)
    with pytest.raises(SpecError) as err:
        open_suite(root, ["cifar10"])
    assert str(root / "cifar10") in str(err.value) and "digits" in str(err.value)  # lists what is there
    (root / "digits" / "test" / "nshards.txt").unlink()
    (root / "digits_inverted" / "classnames.txt").unlink()
    with pytest.raises(SpecError) as err:
        open_suite(root, ["digits", "digits_inverted"])
    msg = str(err.value)  # both problems at once, each with the path expected
    assert str(root / "digits" / "test" / "nshards.txt") in msg
    assert str(root / "digits_inverted" / "classnames.txt") in msg
    (root / "digits" / "test" / "nshards.txt").write_text("9\n")
    with pytest.raises(SpecError, match="says 9 shard"):
        open_suite(root, ["digits"])


def _ours(export_dir: Path, foreign, tasks: list[str]) -> dict[str, dict[str, float]]:
    from inheritlab.corruptors.classes import user_world
    from inheritlab.trainers.clip_tasks import evaluate_clip

    world = user_world({"train": str(foreign.train_dir)})
    rows = evaluate_clip(str(export_dir / "open_clip_model.pt"), "clip-tiny", world, tasks=["suites"],
                         suites=open_suite(foreign.suite_root, tasks), device="cpu", batch_size=64)
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["task"].split("/", 1)[1], {})[r["metric"]] = r["value"]
    return out


# CLIP_benchmark 1.6.2's top-k ``accuracy`` calls float() on a one-element array, which numpy
# 2.4 refuses (TypeError). Under numpy >= 2.4 its command runs with that one function replaced
# by the same arithmetic summed to a scalar; everything else (data, transform, classifier,
# logits, balanced accuracy, retrieval) is CLIP_benchmark's own.
_CLI = """
import sys
import numpy
import clip_benchmark.metrics.zeroshot_classification as zc
if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 4):
    def accuracy(output, target, topk=(1,)):
        top = output.topk(max(topk), 1, True, True)[1].t()
        hit = top.eq(target.view(1, -1).expand_as(top))
        return [hit[:k].float().sum().item() / len(target) for k in topk]
    zc.accuracy = accuracy
from clip_benchmark.cli import main
sys.argv = ["clip_benchmark"] + sys.argv[1:]
main()
"""


def _clip_benchmark(export_dir: Path, foreign, tasks: list[str], task: str, out: Path) -> dict[str, dict[str, float]]:
    """CLIP_benchmark's own command, as the README shows it, in a process without our package."""
    cmd = [sys.executable, "-c", _CLI, "eval", "--model_type", "open_clip", "--task", task,
           "--model", f"local-dir:{export_dir}", "--pretrained", "", "--no_amp", "--num_workers", "0",
           "--batch_size", "64", "--recall_k", "1", "5", "10", "--dataset", *[f"wds/{t}" for t in tasks],
           "--dataset_root", f"{foreign.suite_root}/{{dataset}}", "--output", f"{out}/{{dataset}}.json", "--quiet"]
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {t: json.loads((out / f"{t}.json").read_text())["metrics"] for t in tasks}


def test_clip_benchmark_and_ours_agree_on_the_same_export(export_dir: Path, foreign, tmp_path: Path) -> None:
    tasks = ["digits", "digits_inverted", "digits_captions"]
    ours = _ours(export_dir, foreign, tasks)
    theirs = {**_clip_benchmark(export_dir, foreign, tasks[:2], "zeroshot_classification", tmp_path),
              **_clip_benchmark(export_dir, foreign, tasks[2:], "zeroshot_retrieval", tmp_path)}
    for task in ("digits", "digits_inverted"):
        assert set(ours[task]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert ours[task]["mean_per_class_recall"] != ours[task]["acc1"]  # the two metrics are told apart
        for metric, value in ours[task].items():
            assert value == pytest.approx(theirs[task][metric], abs=1e-9), (task, metric, value, theirs[task])
    for metric, value in ours["digits_captions"].items():
        # CLIP_benchmark averages retrieval hits in float32: equal counts (1/718 apart) within 1e-6.
        assert value == pytest.approx(theirs["digits_captions"][metric], abs=1e-6), (metric, theirs["digits_captions"])
    assert len(ours["digits_captions"]) == 6
    assert ours["digits"]["acc1"] > 0.4  # well above chance (0.1): predictions worth comparing
    print(json.dumps({"ours": ours, "clip_benchmark": theirs}, indent=1))


_LOAD = """
import sys, open_clip, torch
{imports}
m = open_clip.create_model({name!r}, pretrained={pretrained!r})
print(sum(float(p.double().sum()) for p in m.state_dict().values()))
"""


def test_open_clip_loads_an_export_with_and_without_our_package(export_dir: Path) -> None:
    import torch

    state = torch.load(export_dir / "open_clip_model.pt", map_location="cpu")
    expected = sum(float(p.double().sum()) for p in state.values())
    runs = {
        # Importing the module registers our rung names: nothing to call.
        "ours": dict(imports="import inheritlab.trainers.clip_models", name="clip-tiny",
                     pretrained=str(export_dir / "open_clip_model.pt")),
        # Without our package at all: the export directory describes itself.
        "local-dir": dict(imports="assert 'inheritlab' not in sys.modules", name=f"local-dir:{export_dir}",
                          pretrained=None),
    }
    for what, kw in runs.items():
        proc = subprocess.run([sys.executable, "-c", _LOAD.format(**kw)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": ""})
        assert proc.returncode == 0, (what, proc.stderr[-2000:])
        assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-12), what
