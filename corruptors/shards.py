"""Shard I/O: list, read, split and write WebDataset tar shards.

A sample is a plain ``dict``::

    {"__key__": str, "__shard__": str, "image": PIL.Image (RGB) | bytes,
     "caption": str, "label": int (-1 when unknown), "meta": dict}

Reading is done with :mod:`tarfile` rather than the webdataset pipeline so that every problem
can name its shard *and* member: a truncated tar, a zero-byte member, an undecodable image, a
sample without caption, or a key that contains a dot (webdataset would silently split such a
sample in two). A bad sample either raises :class:`ShardError` (ceiling 0, the default) or is
skipped and counted in :class:`ReadStats`; passing the ceiling raises
:class:`BadSampleCeilingError`. Nothing is ever dropped silently.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_open
from inheritlab.infra.errors import BadSampleCeilingError, ShardError

Sample = dict[str, Any]

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
TEXT_EXTS = ("txt",)
KNOWN_EXTS = frozenset(IMAGE_EXTS + TEXT_EXTS + ("cls", "json"))
# Stable tar headers: the same samples always give the same shard bytes.
_MTIME = 0


# ----------------------------------------------------------------------------------- listing


def _expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000009}`` ranges and ``{a,b}`` lists (webdataset brace syntax)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo)
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    out: list[str] = []
    for opt in options:
        out.extend(_expand_braces(pattern[: m.start()] + opt + pattern[m.end() :]))
    return out


def list_shards(path: str | os.PathLike[str]) -> list[str]:
    """Sorted shard paths of a directory of ``.tar`` files, a glob, or a brace pattern.

    A missing directory, a pattern matching nothing or a directory without ``.tar`` files raises
    :class:`ShardError` naming the path: a study must never train on an empty stream.
    """
    p = str(path)
    if "{" in p:
        shards = _expand_braces(p)
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise ShardError(p, None, f"{len(missing)} shard(s) of the pattern do not exist, e.g. {missing[0]}")
        return shards
    if any(c in p for c in "*?["):
        shards = sorted(glob.glob(p))
        if not shards:
            raise ShardError(p, None, "the pattern matches no file")
        return shards
    root = Path(p)
    if root.is_file():
        return [str(root)]
    if not root.exists():
        raise ShardError(p, None, "shard directory does not exist")
    if not root.is_dir():
        raise ShardError(p, None, "is neither a .tar file nor a directory of .tar shards")
    shards = sorted(str(q) for q in root.iterdir() if q.name.endswith(".tar") and q.is_file())
    if not shards:
        raise ShardError(p, None, "directory holds no .tar shards")
    return shards


def split_shards(
    shards: Iterable[str], *, rank: int, world_size: int, worker_id: int = 0, num_workers: int = 1
) -> list[str]:
    """The shards one loader worker of one DDP rank reads: round-robin over sorted shards.

    Slot ``rank * num_workers + worker_id`` of ``world_size * num_workers`` takes every
    slot-th shard. Sorting first makes the split independent of listing order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
    if num_workers < 1 or not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id {worker_id} must lie in [0, num_workers={num_workers})")
    ordered = sorted(shards)
    slots = world_size * num_workers
    slot = rank * num_workers + worker_id
    return ordered[slot::slots]


# ----------------------------------------------------------------------------------- reading


@dataclass
class ReadStats:
    """What a read saw: samples yielded and skipped (by reason), with the last few problems.

    Pass one to :func:`iter_samples` to read the counts after (or during) the stream.
    """

    samples: int = 0
    shards: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "shards": self.shards,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": self.skipped_total,
            "problems": list(self.problems),
        }


class _BadSample(Exception):
    def __init__(self, reason: str, member: str, problem: str) -> None:
        super().__init__(problem)
        self.reason, self.member, self.problem = reason, member, problem


def _split_name(name: str) -> tuple[str, str]:
    """``dir/key.ext`` → (``dir/key``, ``ext``) with the webdataset rule: ext starts at the first dot."""
    base = name.rsplit("/", 1)
    fname = base[-1]
    if "." not in fname:
        return name, ""
    stem, ext = fname.split(".", 1)
    key = stem if len(base) == 1 else f"{base[0]}/{stem}"
    return key, ext


def _decode_image(data: bytes, member: str, min_size: int | None = None) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if min_size is not None and im.format == "JPEG":
                # JPEG decodes at 1/2, 1/4 or 1/8 scale for a fraction of the work (DCT scaling);
                # draft keeps both sides >= min_size, so the shortest side still covers the target.
                im.draft("RGB", (min_size, min_size))
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types for bad bytes
        # PIL names the in-memory buffer by its address: dropped, so a message is the same on every read.
        text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
        raise _BadSample("undecodable_image", member, f"image does not decode ({type(exc).__name__}: {text})") from None


KINDS = ("image", "labeled", "picture", "text", "any")


def _build_sample(shard: str, key: str, parts: dict[str, tuple[str, bytes]], decode: bool, kind: str,
                  label_key: str | None = None) -> Sample:
    """Turn the members of one key into a sample, or raise :class:`_BadSample`.

    ``parts`` is keyed by the lower-cased extension (``.JPG`` is a JPEG); members keep their
    own names in every message.
    """
    if key.startswith("/") or ".." in key.split("/"):
        # Nothing is ever extracted, but a key is a name others may join to a path (exports,
        # a user's own tools): one that could climb out of a directory is refused, and counted.
        member = next(iter(parts.values()))[0]
        raise _BadSample("unsafe_member_name", member,
                         f"member name {member!r} is absolute or climbs with '..'; sample keys must be relative names")
    for ext, (member, data) in parts.items():
        if "." in ext and ext.rsplit(".", 1)[-1] in KNOWN_EXTS:
            raise _BadSample(
                "dotted_key", member, f"key contains a dot ({member!r}); webdataset would split this sample"
            )
        if len(data) == 0:
            raise _BadSample("empty_member", member, "zero-byte member")
    names = ", ".join(repr(m) for m, _ in parts.values())
    img_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    meta: dict[str, Any] = {}
    if "json" in parts:
        member, data = parts["json"]
        try:
            meta = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadSample("bad_json", member, f"metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise _BadSample("bad_json", member, f"metadata must be a JSON object, got {type(meta).__name__}")
    text_key = "text" if kind == "text" else "caption"
    caption: str | None = None
    if "txt" in parts:
        member, data = parts["txt"]
        try:
            caption = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _BadSample(f"bad_{text_key}", member, f"{text_key} is not UTF-8") from None
    elif kind in ("image", "text"):
        raise _BadSample(f"missing_{text_key}", f"{key}.txt", f"sample has no .txt {text_key} (members: {names})")
    if kind in ("image", "labeled", "picture") and img_ext is None:
        raise _BadSample("missing_image", next(iter(parts.values()))[0],
                         f"sample {key!r} has no image (.jpg, .jpeg, .png, .webp; members: {names})")
    label = _label(parts, meta, label_key)
    if kind == "labeled" and label < 0:
        where = f".cls or the .json key {label_key!r}" if label_key else ".cls"
        raise _BadSample("missing_label", next(iter(parts.values()))[0],
                         f"sample {key!r} has no label ({where}; members: {names})")
    sample: Sample = {"__key__": key, "__shard__": shard, text_key: caption if caption is not None else "",
                      "label": label, "meta": meta}
    if img_ext is not None and kind != "text":
        member, data = parts[img_ext]
        sample["image"] = _decode_image(data, member) if decode else data
        sample["image_ext"] = img_ext
        sample["image_member"] = member
    return sample


def _label(parts: dict[str, tuple[str, bytes]], meta: dict[str, Any], label_key: str | None) -> int:
    """The sample's integer class: its ``.cls`` member, else ``meta[label_key]``, else -1."""
    if "cls" in parts:
        member, data = parts["cls"]
        try:
            return int(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise _BadSample("bad_label", member, f"label is not an integer: {data[:20]!r}") from None
    if label_key and label_key in meta:
        value = meta[label_key]
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
            raise _BadSample("bad_label", f"{meta.get('key', '?')}.json",
                             f"label {label_key!r} is not an integer: {value!r}")
        return int(value)
    return -1


def _iter_tar_groups(shard: str) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """Consecutive members grouped by key, streaming (one sample in memory at a time)."""
    last_member = None
    key: str | None = None
    parts: dict[str, tuple[str, bytes]] = {}
    end = 0
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                last_member = info.name
                k, ext = _split_name(info.name)
                ext = ext.lower()  # .JPG, .Png: the same formats
                fh = tar.extractfile(info)
                data = fh.read() if fh is not None else b""
                if k != key:
                    if key is not None:
                        yield key, parts
                    key, parts = k, {}
                parts[ext] = (info.name, data)
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        where = f"after member {last_member!r}" if last_member else "at the start"
        raise ShardError(shard, last_member, f"unreadable or truncated tar {where} ({type(exc).__name__}: {exc})") from None
    # The last sample is only complete once the archive is known to end here.
    _check_end_marker(shard, end, last_member)
    if key is not None:
        yield key, parts


def _check_end_marker(shard: str, end: int, last_member: str | None) -> None:
    """A tar cut at a member boundary (or holding a garbage header) reads as a short archive
    without complaint; only the end-of-archive marker (two zero blocks) proves it is whole."""
    with open(shard, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            return  # compressed: the decompressor already caught truncation
        fh.seek(end)
        marker = fh.read(1024)
    if marker != bytes(1024):
        what = "no end-of-archive marker" if len(marker) < 1024 else "garbage where a header or the end marker belongs"
        raise ShardError(shard, last_member, f"truncated or corrupt tar: {what} after member {last_member!r}")


def check_ceiling(stats: ReadStats, ceiling: float | int) -> None:
    """Raise :class:`BadSampleCeilingError` when ``stats`` skipped more than ``ceiling`` allows
    (a fraction of everything read, or a count)."""
    n_bad = stats.skipped_total
    if n_bad == 0:
        return
    if isinstance(ceiling, float):
        # A fraction is judged on whole shards (and the end of the stream), not on the first
        # few samples, where one bad sample would be a large fraction.
        seen = stats.samples + n_bad
        if n_bad > ceiling * seen:
            raise BadSampleCeilingError(
                f"{n_bad} of {seen} samples skipped as bad ({n_bad / seen:.2%} > ceiling {ceiling:.2%}); "
                f"by reason {dict(stats.skipped)}; last problems: {stats.problems[-3:]}"
            )
    elif n_bad > int(ceiling):
        raise BadSampleCeilingError(
            f"{n_bad} samples skipped as bad (> ceiling {int(ceiling)}); by reason "
            f"{dict(stats.skipped)}; last problems: {stats.problems[-3:]}"
        )


def _skip(stats: ReadStats, shard: str, bad: _BadSample, ceiling: float | int) -> None:
    """Count one bad sample (or raise, under a ceiling of 0). Fraction ceilings are judged at
    shard ends by the reader; a count ceiling at once."""
    if ceiling == 0:
        raise ShardError(shard, bad.member, bad.problem)
    stats.skipped[bad.reason] += 1
    if len(stats.problems) < 100:
        stats.problems.append(f"{shard} member {bad.member!r}: {bad.problem}")
    if not isinstance(ceiling, float):
        check_ceiling(stats, ceiling)


def image_member(sample: Sample) -> str:
    """The tar member a sample's image came from, for messages (as read, or rebuilt from its key)."""
    return sample.get("image_member") or f"{str(sample['__key__']).rsplit('/', 1)[-1]}.{sample.get('image_ext', 'png')}"


def decode_sample_image(sample: Sample, *, stats: ReadStats, bad_sample_ceiling: float | int = 0,
                        min_size: int | None = None) -> Sample | None:
    """Decode the image of a sample read with ``decode=False``; ``None`` when it does not decode.
    ``min_size``: the image will be used at this size; a large JPEG may then decode reduced
    (never below ``min_size`` on either side).

    Streams that select samples on keys and metadata first decode only what they keep. A bad
    image is then counted in ``stats`` like any bad sample read (it no longer counts as a good
    one), under the same ceiling; the ``stats`` of the reader that yielded the sample judge
    fraction ceilings at its next shard end.
    """
    if not isinstance(sample.get("image"), (bytes, bytearray)):
        return sample
    member = image_member(sample)
    try:
        image = _decode_image(bytes(sample["image"]), member, min_size)
    except _BadSample as bad:
        _skip(stats, str(sample.get("__shard__", "?")), bad, bad_sample_ceiling)
        stats.samples -= 1
        return None
    return {**sample, "image": image}


def iter_samples(
    shards: Iterable[str] | str,
    *,
    decode: bool = True,
    bad_sample_ceiling: float | int = 0,
    stats: ReadStats | None = None,
    kind: str = "image",
    label_key: str | None = None,
) -> Iterator[Sample]:
    """Stream samples from shards in the given order.

    ``decode=False`` leaves images as raw bytes (the data-condition stage never needs pixels).
    ``bad_sample_ceiling``: ``0`` raises :class:`ShardError` at the first bad sample; an int
    ``n >= 1`` skips and counts up to ``n`` bad samples (failing at the ``n+1``-th); a float in
    ``(0, 1]`` allows that fraction of the whole read, judged when the read is complete (so bad
    samples clustered in one shard do not fail a split whose overall fraction is under it;
    ``1.0`` never fails). A truncated or unreadable tar always raises: how many samples it lost
    is unknowable. Skips are counted by reason in ``stats``.

    ``kind``: ``"image"`` (image–caption pairs; a sample without image or caption is bad),
    ``"labeled"`` (an image and a label, the caption optional: classification sets in the
    CLIP_benchmark/DataComp layout), ``"picture"`` (an image; caption and label optional: an
    evaluation split whose tasks say what they need), ``"text"`` (``{"__key__", "text", "label", "meta"}`` from
    ``.txt``; images ignored) or ``"any"`` (the image is optional: e.g. contamination sources).
    Labels come from a ``.cls`` member, else from the ``.json`` member's ``label_key`` field.
    Member extensions match case-insensitively.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(shards, (str, os.PathLike)):
        shards = list_shards(shards)
    if isinstance(bad_sample_ceiling, bool) or bad_sample_ceiling < 0:
        raise ValueError(f"bad_sample_ceiling must be >= 0, got {bad_sample_ceiling!r}")
    st = stats if stats is not None else ReadStats()
    for shard in shards:
        shard = str(shard)
        if not os.path.isfile(shard):
            raise ShardError(shard, None, "shard file does not exist")
        if os.path.getsize(shard) == 0:
            raise ShardError(shard, None, "zero-byte shard file")
        for key, parts in _iter_tar_groups(shard):
            try:
                sample = _build_sample(shard, key, parts, decode, kind, label_key)
            except _BadSample as bad:
                _skip(st, shard, bad, bad_sample_ceiling)
                continue
            st.samples += 1
            yield sample
        st.shards += 1
    check_ceiling(st, bad_sample_ceiling)


def first_samples(shards: Iterable[str] | str, *, kind: str = "image", label_key: str | None = None,
                  decode: bool = True) -> Iterator[Sample]:
    """The first sample of every shard, read strictly: what a quick check before training looks
    at (every file opens, members have the expected form, labels and images decode)."""
    if isinstance(shards, (str, os.PathLike)):
        shards = list_shards(shards)
    for shard in shards:
        shard = str(shard)
        if not os.path.isfile(shard):
            raise ShardError(shard, None, "shard file does not exist")
        for key, parts in _iter_tar_groups(shard):
            try:
                yield _build_sample(shard, key, parts, decode, kind, label_key)
            except _BadSample as bad:
                raise ShardError(shard, bad.member, bad.problem) from None
            break


# ----------------------------------------------------------------------------------- writing


def _image_bytes(sample: Sample) -> tuple[str, bytes] | None:
    img = sample.get("image")
    if img is None:
        return None
    if isinstance(img, (bytes, bytearray)):
        ext = sample.get("image_ext") or _sniff_ext(bytes(img))
        return ext, bytes(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "png", buf.getvalue()


def _sniff_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample (``key.png``, ``key.txt``, ``key.cls``, ``key.json``)."""
    key = str(sample["__key__"])
    if "." in key.rsplit("/", 1)[-1]:
        raise ValueError(f"sample key {key!r} contains a dot; webdataset would split it")
    out: list[tuple[str, bytes]] = []
    img = _image_bytes(sample)
    if img is not None:
        out.append((f"{key}.{img[0]}", img[1]))
    if sample.get("caption"):  # a captionless (classification) sample stays captionless
        out.append((f"{key}.txt", str(sample["caption"]).encode("utf-8")))
    if "text" in sample:
        out.append((f"{key}.txt", str(sample["text"]).encode("utf-8")))
    label = sample.get("label", -1)
    if label is not None and int(label) >= 0:
        out.append((f"{key}.cls", str(int(label)).encode("ascii")))
    meta = sample.get("meta") or {}
    out.append((f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")))
    return out


def write_shards(
    samples: Iterable[Sample], out_dir: str | os.PathLike[str], *, samples_per_shard: int, prefix: str = "shard"
) -> list[Path]:
    """Write samples as ``{prefix}-000000.tar`` ... under ``out_dir``; each shard atomically.

    Tar headers are fixed (mtime 0, no owner), so equal samples give byte-identical shards.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch: list[Sample] = []

    def flush() -> None:
        path = out / f"{prefix}-{len(paths):06d}.tar"
        with atomic_open(path, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for s in batch:
                    for name, data in sample_members(s):
                        _add_member(tar, name, data)
        paths.append(path)
        batch.clear()

    for s in samples:
        batch.append(s)
        if len(batch) >= samples_per_shard:
            flush()
    if batch:
        flush()
    return paths
