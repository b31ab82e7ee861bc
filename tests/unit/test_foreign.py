"""The foreign-layout digits data set: img2dataset train shards + a CLIP_benchmark-style suite.

Checks the layout other tools write, that our reader and the plain ``webdataset`` pipeline
CLIP_benchmark uses both read it, that train and test hold disjoint digits (recovered from
the written pixels, not from our own bookkeeping), determinism, and atomic, idempotent writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from inheritlab.corruptors import foreign
from inheritlab.corruptors.foreign import (
    CLASS_NAMES,
    MARKER,
    SUITE_TASKS,
    ForeignData,
    split_indices,
    write_foreign_data,
)
from inheritlab.corruptors.shards import ReadStats, iter_samples
from inheritlab.infra.errors import ShardError


@pytest.fixture(scope="module")
def fd(tmp_path_factory: pytest.TempPathFactory) -> ForeignData:
    return write_foreign_data(tmp_path_factory.mktemp("foreign") / "digits", seed=0)


def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _wds(task_dir: Path, *fields: str) -> list[tuple]:
    """Read a suite task the way CLIP_benchmark's build_wds_dataset does."""
    n = int((task_dir / "test" / "nshards.txt").read_text())
    pattern = f"{task_dir}/test/{{0..{n - 1}}}.tar"
    return list(wds.WebDataset(pattern, shardshuffle=False).decode("pil").to_tuple(*fields))


# ----------------------------------------------------------------------------------- layout


def test_train_is_img2dataset_layout(fd: ForeignData) -> None:
    tars = sorted(fd.train_dir.glob("*.tar"))
    assert [p.name for p in tars] == [f"{i:05d}.tar" for i in range(fd.train_shards)] and fd.train_shards >= 2
    exts: set[str] = set()
    n_samples = n_failed = 0
    for shard, tar_path in enumerate(tars):
        raw = tar_path.read_bytes()
        assert raw[257:265] == b"ustar\x0000", "USTAR headers"
        members = _tar_members(tar_path)
        keys = [name.split(".", 1)[0] for name, _ in members]
        # Members grouped by key (adjacent), keys ascending, img2dataset-style numbers with no dots.
        groups = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert groups == sorted(set(keys)) and len(groups) == len(set(groups))
        assert all(k.isdigit() and len(k) == 8 and int(k) // 1000 == shard for k in groups)
        by_key: dict[str, dict[str, bytes]] = {}
        for name, data in members:
            key, ext = name.split(".", 1)
            by_key.setdefault(key, {})[ext] = data
        for key, parts in by_key.items():
            assert "cls" not in parts, "labels live in the .json, not in a .cls member"
            img_ext = {"jpg", "webp"} & set(parts)
            assert len(img_ext) == 1 and set(parts) == img_ext | {"txt", "json"}
            ext = img_ext.pop()
            exts.add(ext)
            meta = json.loads(parts["json"])
            assert meta["key"] == key and meta["status"] == "success" and meta["error_message"] is None
            assert meta["url"].startswith("https://") and meta["caption"] == parts["txt"].decode()
            assert isinstance(meta["label"], int) and 0 <= meta["label"] < 10
            assert (meta["width"], meta["height"]) == (fd.image_size, fd.image_size)
            assert meta["sha256"] == hashlib.sha256(parts[ext]).hexdigest()
            assert {"original_width", "original_height"} <= set(meta)
            with Image.open(io.BytesIO(parts[ext])) as im:
                assert im.format == {"jpg": "JPEG", "webp": "WEBP"}[ext] and im.mode == "RGB"
        # The parquet holds every input row (failed downloads too); the stats count them.
        rows = pq.read_table(fd.train_dir / f"{shard:05d}.parquet").to_pylist()
        stats = json.loads((fd.train_dir / f"{shard:05d}_stats.json").read_text())
        ok = [r for r in rows if r["status"] == "success"]
        failed = [r for r in rows if r["status"] == "failed_to_download"]
        assert len(ok) + len(failed) == len(rows) == stats["count"]
        assert stats["successes"] == len(ok) == len(by_key) and stats["failed_to_download"] == len(failed)
        assert sum(stats["status_dict"].values()) == stats["count"]
        assert {r["key"] for r in ok} == set(by_key) and not {r["key"] for r in failed} & set(by_key)
        assert all(r["error_message"] and r["sha256"] is None for r in failed)
        n_samples += len(by_key)
        n_failed += len(failed)
    assert exts == {"jpg", "webp"}
    assert n_samples == fd.train_samples == round(foreign.N_DIGITS * 0.8) and n_failed == fd.failed_rows > 0


def test_suite_is_clip_benchmark_layout(fd: ForeignData) -> None:
    names = fd.classnames_file.read_text().splitlines()
    templates = fd.templates_file.read_text().splitlines()
    assert names == list(CLASS_NAMES) == list(fd.class_names) and fd.num_classes == 10
    assert 4 <= len(templates) <= 6 and all("{c}" in t for t in templates)
    assert fd.suite_tasks == SUITE_TASKS and sorted(p.name for p in fd.suite_root.iterdir()) == sorted(SUITE_TASKS)
    n_test = foreign.N_DIGITS - fd.train_samples
    for task in SUITE_TASKS:
        d = fd.task_dir(task)
        n = int((d / "test" / "nshards.txt").read_text())
        assert sorted(p.name for p in (d / "test").glob("*.tar")) == sorted(f"{i}.tar" for i in range(n)) and n >= 2
        exts = {name.split(".", 1)[1] for i in range(n) for name, _ in _tar_members(d / "test" / f"{i}.tar")}
        assert fd.test_samples[task] == n_test
        if task == "digits_captions":
            assert (d / "dataset_type.txt").read_text().strip() == "retrieval"
            assert exts == {"webp", "txt"}
        else:
            assert not (d / "dataset_type.txt").exists()  # optional: CLIP_benchmark assumes classification
            assert (d / "classnames.txt").read_text() == fd.classnames_file.read_text()
            assert (d / "zeroshot_classification_templates.txt").read_text() == fd.templates_file.read_text()
            assert exts == {"webp", "png", "cls"}, "classification: images + labels, no captions"
    assert (fd.root / MARKER).is_file()
    with pytest.raises(KeyError, match="unknown suite task"):
        fd.task_dir("mnist")


# ----------------------------------------------------------------------------------- readers


def test_our_reader_reads_the_train_shards(fd: ForeignData) -> None:
    stats = ReadStats()
    samples = list(iter_samples(fd.train_dir, decode=True, stats=stats))
    assert len(samples) == fd.train_samples and stats.skipped_total == 0
    for s in samples:
        assert s["image"].mode == "RGB" and s["image"].size == (fd.image_size, fd.image_size)
        label = s["meta"]["label"]
        assert isinstance(label, int) and s["caption"] == s["meta"]["caption"]
        assert CLASS_NAMES[label] in s["caption"] or str(label) in s["caption"]
    assert {s["image_ext"] for s in samples} == {"jpg", "webp"}
    assert sorted({s["meta"]["label"] for s in samples}) == list(range(10))


def test_clip_benchmark_style_reading(fd: ForeignData) -> None:
    digits = _wds(fd.task_dir("digits"), "webp;png", "cls")
    inverted = _wds(fd.task_dir("digits_inverted"), "webp;png", "cls")
    assert len(digits) == len(inverted) == fd.test_samples["digits"]
    assert all(isinstance(im, Image.Image) and isinstance(c, int) and 0 <= c < 10 for im, c in digits)
    assert sorted({c for _, c in digits}) == list(range(10))
    assert [c for _, c in digits] == [c for _, c in inverted]
    # The OOD task is the same images colour-inverted (up to lossy-encoding error).
    a = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) for im, _ in digits])
    b = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) for im, _ in inverted])
    assert np.abs((255.0 - b) - a).mean() < 4.0 and a.mean() < 100 < b.mean()  # dark bg → light bg
    retrieval = _wds(fd.task_dir("digits_captions"), "webp", "txt")
    assert len(retrieval) == fd.test_samples["digits_captions"]
    for (im, text), (_, c) in zip(retrieval, digits):
        lines = text.splitlines()
        assert len(lines) == 2 and lines[0] != lines[1] and isinstance(im, Image.Image)
        assert all(CLASS_NAMES[c] in line or str(c) in line for line in lines)


# ----------------------------------------------------------------------------------- split


def _normalised(vectors: np.ndarray) -> np.ndarray:
    v = vectors.reshape(len(vectors), -1).astype(np.float64)
    v -= v.mean(axis=1, keepdims=True)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _match_sources(images: list[Image.Image], invert: bool = False) -> np.ndarray:
    """Index into load_digits of each written image: nearest by correlation to the digits
    upscaled the same way (colour jitter and brightness are normalised away)."""
    digits, _ = foreign._load_digits()
    ref = _normalised(np.stack([np.asarray(Image.fromarray(d).resize((32, 32), Image.Resampling.BICUBIC))
                                for d in digits]))
    grey = np.stack([np.asarray(im.convert("L"), dtype=np.float64) for im in images])
    feats = _normalised(255.0 - grey if invert else grey)
    return (feats @ ref.T).argmax(axis=1)


def test_train_and_test_hold_disjoint_digits(fd: ForeignData) -> None:
    _, all_labels = foreign._load_digits()
    train = list(iter_samples(fd.train_dir, decode=True))
    test = _wds(fd.task_dir("digits"), "webp;png", "cls")
    inverted = _wds(fd.task_dir("digits_inverted"), "webp;png", "cls")
    src_train = _match_sources([s["image"] for s in train])
    src_test = _match_sources([im for im, _ in test])
    src_inv = _match_sources([im for im, _ in inverted], invert=True)
    train_idx, test_idx = split_indices(foreign.N_DIGITS, seed=0, train_fraction=0.8)
    # Every written image is recovered as a distinct digit, with the label it was written with.
    assert len(set(src_train)) == len(train) and len(set(src_test)) == len(test)
    assert list(all_labels[src_train]) == [s["meta"]["label"] for s in train]
    assert list(all_labels[src_test]) == [c for _, c in test]
    assert set(src_train) == set(train_idx) and set(src_test) == set(test_idx)
    assert not set(src_train) & set(src_test) and len(set(src_train) | set(src_test)) == foreign.N_DIGITS
    assert list(src_inv) == list(src_test)
    assert not {s["__key__"] for s in train} & {s["__key__"] for s in iter_samples(
        sorted(fd.task_dir("digits_captions").glob("test/*.tar")), decode=False)}


# ----------------------------------------------------------------------------------- determinism, atomicity


def test_same_seed_same_bytes_other_seed_other_split(fd: ForeignData, tmp_path: Path) -> None:
    again = write_foreign_data(tmp_path / "again", seed=0)
    assert _digest(again.root) == _digest(fd.root) and len(_digest(fd.root)) > 20
    assert again == ForeignData(**{**fd.__dict__, "root": again.root, "train_dir": again.train_dir,
                                   "classnames_file": again.classnames_file, "templates_file": again.templates_file,
                                   "suite_root": again.suite_root})
    other = write_foreign_data(tmp_path / "other", seed=1)
    _, a_test = split_indices(foreign.N_DIGITS, seed=0, train_fraction=0.8)
    b_train, b_test = split_indices(foreign.N_DIGITS, seed=1, train_fraction=0.8)
    assert set(a_test) != set(b_test) and not set(b_train) & set(b_test)
    labels0 = [c for _, c in _wds(fd.task_dir("digits"), "webp;png", "cls")]
    labels1 = [c for _, c in _wds(other.task_dir("digits"), "webp;png", "cls")]
    assert labels0 != labels1
    assert _digest(other.root)["train/00000.tar"] != _digest(fd.root)["train/00000.tar"]


def test_reuse_and_replace_own_directory(tmp_path: Path) -> None:
    root = tmp_path / "data"
    first = write_foreign_data(root, seed=3, image_size=16, train_fraction=0.5)
    stamp = (root / MARKER).stat().st_mtime_ns, (root / "train" / "00000.tar").stat().st_ino
    assert write_foreign_data(root, seed=3, image_size=16, train_fraction=0.5) == first
    assert ((root / MARKER).stat().st_mtime_ns, (root / "train" / "00000.tar").stat().st_ino) == stamp
    assert first.train_samples == round(foreign.N_DIGITS * 0.5)
    # Our own directory written with other arguments is replaced whole, leaving nothing behind.
    second = write_foreign_data(root, seed=4, image_size=16, train_fraction=0.5)
    assert second.seed == 4 and json.loads((root / MARKER).read_text())["args"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refuses_a_directory_that_is_not_ours(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    (theirs / "train").mkdir(parents=True)
    (theirs / "train" / "00000.tar").write_bytes(b"their data")
    with pytest.raises(ShardError, match="not written by write_foreign_data.*refusing"):
        write_foreign_data(theirs)
    assert (theirs / "train" / "00000.tar").read_bytes() == b"their data"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ShardError, match="not a directory"):
        write_foreign_data(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_foreign_data(empty, image_size=8).train_dir.is_dir()  # an empty dir is fine


def test_crash_leaves_no_directory_and_stale_temps_are_cleaned(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the suite")

    monkeypatch.setattr(foreign, "_write_suite", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_foreign_data(root, image_size=8)
    assert list(tmp_path.iterdir()) == []  # no half directory, under the final name or a temp one
    monkeypatch.undo()

    # A SIGKILLed writer leaves its temp dir: a dead writer's is removed, a live one's kept.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".tmp-data.{host}.{dead.pid}.dead0000"
    live = tmp_path / f".tmp-data.{host}.{os.getpid()}.live0000"
    for d in (stale, live):
        (d / "train").mkdir(parents=True)
        (d / "train" / "00000.tar").write_bytes(b"half")
    out = write_foreign_data(root, image_size=8)
    assert not stale.exists() and live.exists()
    assert (root / MARKER).is_file() and out.train_samples == round(foreign.N_DIGITS * 0.8)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="image_size"):
        write_foreign_data("/nonexistent/never-written", image_size=4)
    for frac in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="train_fraction"):
            write_foreign_data("/nonexistent/never-written", train_fraction=frac)
    assert not Path("/nonexistent").exists()
