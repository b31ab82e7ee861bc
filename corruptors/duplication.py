"""Duplication and contamination: corruptors that add samples to the stream.

``duplicate`` repeats a fraction of the pool (Hernandez et al. 2022: repeated fraction ×
repetition count); ``contamination`` injects copies of downstream test items and records which
leaked, so evaluation can report leaked and clean test items apart. Added samples carry new
keys (``<key>_dup<j>``, ``<test key>_leak<j>``, never a dot) and are counted as ``added``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

from inheritlab.corruptors.augment import near_image, near_text
from inheritlab.corruptors.base import COUNT, LEVEL, Param, Sample, copy_sample, register, text_field
from inheritlab.corruptors.noise import LevelCorruptor
from inheritlab.corruptors.shards import iter_samples, list_shards, sample_members
from inheritlab.infra.atomic import read_json
from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import stable_rng

MODE = Param(kind="choice", choices=("exact", "near"), default="exact",
             doc="exact: byte-identical copies; near: perturbed copies (image shifted/jittered, text with a word dropped)")


def _near_copy(sample: Sample, rng: np.random.Generator) -> Sample:
    out = copy_sample(sample)
    if out.get("image") is not None:
        was_bytes = isinstance(out["image"], (bytes, bytearray))
        out["image"] = near_image(out["image"], rng)
        if was_bytes:
            # near_image re-encodes bytes as PNG: the member name must say so (a .jpg of PNG data
            # confuses any tool that trusts the extension).
            out["image_ext"] = "png"
            out.pop("image_member", None)
    else:
        field = text_field(out)
        out[field] = near_text(str(out.get(field, "")), rng)
    return out


@register
class Duplicate(LevelCorruptor):
    """A fraction ``level`` of samples appears ``repeats`` times in total (``repeats - 1`` copies
    right after the original). Nested: the repeated set at 0.1 is inside the set at 0.2."""

    type_name = "duplicate"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "repeats": Param(kind="int", lo=2, hi=100_000, default=2, doc="total occurrences of a repeated sample"),
        "mode": MODE,
    }

    def process(self, sample: Sample) -> list[Sample]:
        if not self.selected(sample):
            return [sample]
        key = sample["__key__"]
        out = [sample]
        near = self.params["mode"] == "near"
        for j in range(1, int(self.params["repeats"])):
            copy = _near_copy(sample, stable_rng(self.study_seed, self.name, key, j)) if near else copy_sample(sample)
            copy["__key__"] = f"{key}_dup{j}"
            copy["meta"]["dup_of"] = key
            copy["meta"]["dup_index"] = j
            out.append(copy)
        self.added(key, len(out) - 1, "duplicate", mode=self.params["mode"])
        return out


def _resolve_source(source: str, sources: dict[str, list[str]], where: str) -> list[str]:
    if source in sources:
        return list(sources[source])
    if Path(source).exists() or any(c in source for c in "*{"):
        return list_shards(source)
    known = ", ".join(sorted(sources)) or "none were given"
    raise SpecError(
        f"{where}.source: got {source!r}; expected a split name of the data ({known}) or a shard directory/pattern"
    )


@register
class Contamination(LevelCorruptor):
    """Inject a fraction ``level`` of a test split's items into the pre-training stream.

    Which test items leak is the nested coin over *test* keys, so the leaked set at 0.1 is
    inside the set at 0.2. A plan reads the test split, picks the leaked items, and attaches
    each to a host training sample (smallest host hash first, order-free); the stream emits
    ``repeats`` copies (``near``: perturbed) right after the host. The plan carries the test
    items themselves, so the trainer needs no access to the test split. ``leaked-<name>.json``
    lists the leaked test keys for evaluation.
    """

    type_name = "contamination"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "source": Param(kind="str", default="test_id", doc="the test split (name or shard path) items leak from"),
        "repeats": Param(kind="int", lo=1, hi=100_000, default=1, doc="copies of each leaked item injected"),
        "mode": MODE,
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._hosts: dict[str, list[Sample]] = {}
        self._leaked: list[str] = []
        self._n_source: int | None = None

    planned = True  # type: ignore[assignment]  (a constant here; the base class decides per spec)

    def _source_shards(self) -> list[str]:
        return _resolve_source(str(self.params["source"]), self.sources, f"corruptor {self.name!r}")

    def _source_items(self) -> list[Sample]:
        items = list(iter_samples(self._source_shards(), decode=False, kind="any"))
        self._n_source = len(items)
        return items

    def _leaked_items(self, items: list[Sample]) -> list[Sample]:
        scored = sorted((self.coin_u(s["__key__"]), s["__key__"], i) for i, s in enumerate(items))
        if self.params["count"] == "exact":
            chosen = scored[: int(round(self.level() * len(items)))]
        else:
            chosen = [x for x in scored if x[0] < self.level()]
        return [items[i] for _, _, i in chosen]

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        if self._n_source is None:
            self._n_source = sum(1 for _ in iter_samples(self._source_shards(), decode=False, kind="any"))
        n = self._n_source
        # Hosts: the n training keys of smallest host hash (enough for every possible leak).
        scored = sorted((self.u(s["__key__"], "host"), s["__key__"]) for s in samples)
        return scored[:n]

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        items = self._source_items()
        leaked = self._leaked_items(items)
        hosts = [k for _, k in sorted(h for p in partials for h in p)][: len(leaked)]
        if len(hosts) < len(leaked):
            raise SpecError(
                f"corruptor {self.name!r}: {len(leaked)} test items to leak but only {len(hosts)} training samples"
            )
        rows: dict[str, list[Any]] = {"host": [], "test_key": [], "members": []}
        for host, item in zip(hosts, leaked):
            rows["host"].append(host)
            rows["test_key"].append(item["__key__"])
            # The item travels as its tar members (bytes), exactly as it sits in the test shard.
            members = {name.split(".", 1)[1]: data for name, data in sample_members(item)}
            rows["members"].append(json.dumps({k: v.hex() for k, v in members.items()}))
        return pl.DataFrame(rows, schema={"host": pl.Utf8, "test_key": pl.Utf8, "members": pl.Utf8})

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan)
        self._hosts = {}
        self._leaked = plan["test_key"].to_list()
        for host, test_key, members in zip(plan["host"], plan["test_key"], plan["members"]):
            parts = {k: bytes.fromhex(v) for k, v in json.loads(members).items()}
            self._hosts.setdefault(host, []).append(_from_members(test_key, parts))

    def process(self, sample: Sample) -> list[Sample]:
        self.require_plan()
        items = self._hosts.get(sample["__key__"])
        if not items:
            return [sample]
        out = [sample]
        near = self.params["mode"] == "near"
        for item in items:
            for j in range(int(self.params["repeats"])):
                rng = stable_rng(self.study_seed, self.name, item["__key__"], j)
                copy = _near_copy(item, rng) if near else copy_sample(item)
                _match_image_form(copy, sample)
                copy["__key__"] = f"{item['__key__']}_leak{j}"
                copy["__shard__"] = sample.get("__shard__", "")
                copy["meta"]["leaked_from"] = item["__key__"]
                copy["meta"]["leak_source"] = self.params["source"]
                out.append(copy)
            self.added(item["__key__"], int(self.params["repeats"]), "inject", host=sample["__key__"])
        return out

    def artifacts(self) -> dict[str, Any]:
        if self._plan is None:
            return {}
        return {f"leaked-{self.name}.json": {"source": self.params["source"], "keys": sorted(self._leaked)}}


def _match_image_form(item: Sample, like: Sample) -> None:
    """Decode an injected item's image when the stream it joins carries decoded images (the
    trainer decodes before the chain); plans store encoded bytes."""
    img, host = item.get("image"), like.get("image")
    if isinstance(img, (bytes, bytearray)) and host is not None and not isinstance(host, (bytes, bytearray)):
        from PIL import Image

        with Image.open(io.BytesIO(bytes(img))) as im:
            item["image"] = im.convert("RGB")


def _from_members(key: str, parts: dict[str, bytes]) -> Sample:
    """A raw (undecoded) sample from its member bytes, as the shard reader would give it."""
    sample: Sample = {"__key__": key, "__shard__": "", "label": -1, "meta": {}}
    for ext in ("png", "jpg", "jpeg", "webp"):
        if ext in parts:
            sample["image"], sample["image_ext"] = parts[ext], ext
            break
    text = parts.get("txt", b"").decode("utf-8")
    sample["caption" if "image" in sample else "text"] = text
    if "cls" in parts:
        sample["label"] = int(parts["cls"].decode("ascii"))
    if "json" in parts:
        sample["meta"] = json.loads(parts["json"].decode("utf-8"))
    return sample


def leaked_keys(data_dir: str | Path) -> dict[str, list[str]]:
    """Test keys leaked into a cell's training stream, by source split (from ``leaked-*.json``).

    Evaluation splits a test set into ``leaked`` and ``clean`` with this.
    """
    out: dict[str, list[str]] = {}
    for path in sorted(Path(data_dir).glob("leaked-*.json")):
        rec = read_json(path)
        out.setdefault(str(rec["source"]), []).extend(rec["keys"])
    return {k: sorted(set(v)) for k, v in out.items()}
