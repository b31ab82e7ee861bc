"""Per-sample corruptors: label noise, caption noise, and the nested unique-data pool.

Each decides with the nested coin "corrupt iff u < level" (``count: bernoulli``), or, in
``count: exact`` mode, corrupts exactly the round(level·N) samples with the smallest u (a plan
pass finds the threshold). Either way the set at level 0.1 is inside the set at 0.2, and what a
corrupted sample becomes (its new label, its new caption) depends on its key alone, so a
sample corrupted at both levels is corrupted the same way.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np
import polars as pl

from inheritlab.corruptors.base import COUNT, LEVEL, Corruptor, Param, Sample, copy_sample, register
from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import stable_uniform


class LevelCorruptor(Corruptor):
    """A corruptor whose per-sample decision is the nested coin ``u < level``."""

    def level(self) -> float:
        return float(self.params["level"])

    def coin_u(self, key: str) -> float:
        return self.u(key)

    @property
    def planned(self) -> bool:
        return self.params.get("count") == "exact"

    def exact_k(self, n: int) -> int:
        """How many of ``n`` samples exact mode selects."""
        return int(round(self.level() * n))

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        return np.fromiter((self.coin_u(s["__key__"]) for s in samples), dtype=np.float64)

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        us = np.sort(np.concatenate([np.asarray(p, dtype=np.float64) for p in partials] or [np.zeros(0)]))
        n = int(us.size)
        k = min(self.exact_k(n), n)
        # "selected iff u <= threshold": the k smallest (u ties have probability ~2^-53).
        threshold = float(us[k - 1]) if k > 0 else -1.0
        return pl.DataFrame({"n": [n], "k": [k], "threshold": [threshold]})

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan)
        self.__dict__.pop("_threshold", None)

    def selected(self, key: str) -> bool:
        u = self.coin_u(key)
        if self.params.get("count") == "exact":
            if not hasattr(self, "_threshold"):
                self._threshold = float(self.require_plan()["threshold"][0])
            return u <= self._threshold
        return u < self.level()


@register
class NoCorruption(Corruptor):
    """The clean control: passes every sample through."""

    type_name = "none"
    PARAMS = {"level": Param(kind="float", lo=0.0, hi=0.0, default=0.0, doc="the clean control has level 0")}

    def process(self, sample: Sample) -> list[Sample]:
        return [sample]


def _word_pattern(words: list[str]) -> re.Pattern[str]:
    # Longest first, so "striped circle" wins over "circle"; word boundaries on both sides.
    alts = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alts})(?![\w-])", re.IGNORECASE)


class _ClassWords:
    """Finding and substituting class words in captions."""

    def __init__(self, class_names: list[str]) -> None:
        self.names = class_names
        self.index = {n.lower(): i for i, n in enumerate(class_names)}
        self.any_pattern = _word_pattern(class_names)
        self.by_class = [_word_pattern([n]) for n in class_names]

    def find(self, caption: str, label: int) -> int:
        """The class whose word the caption uses: the label's if present, else the first found."""
        if 0 <= label < len(self.names) and self.by_class[label].search(caption):
            return label
        m = self.any_pattern.search(caption)
        return self.index[m.group(1).lower()] if m else -1

    def substitute(self, caption: str, old: int, new: int) -> str:
        return self.by_class[old].sub(self.names[new], caption)


def _other_class(c: Corruptor, key: str, true: int, k: int) -> int:
    """A uniformly drawn class different from ``true`` (depends on the key only)."""
    j = c.pick(key, k - 1, "target")
    return j + 1 if j >= true else j


@register
class LabelNoise(LevelCorruptor):
    """Flip the label of a fraction ``level`` of samples; the true label stays in ``meta``.

    ``mode: symmetric`` flips to a uniformly drawn other class. ``caption: sync`` (default)
    also rewrites the class word in the caption to the new class — for CLIP the caption is the
    label, so without it label noise would never reach the model; ``keep`` leaves the caption.
    """

    type_name = "label_noise"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "mode": Param(kind="choice", choices=("symmetric",), default="symmetric", doc="how a flipped label is drawn"),
        "caption": Param(kind="choice", choices=("sync", "keep"), default="sync",
                         doc="rewrite the caption's class word to the new label, or keep the caption"),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if not self.num_classes or self.num_classes < 2:
            raise SpecError(
                f"corruptor {self.name!r}: label noise needs num_classes >= 2 (got {self.num_classes}); "
                "the data source has no class labels"
            )
        self.words = _ClassWords(self.class_names) if self.class_names else None

    def process(self, sample: Sample) -> list[Sample]:
        key = sample["__key__"]
        label = int(sample.get("label", -1))
        if label < 0 or label >= int(self.num_classes or 0):
            self.skipped["no_label"] += 1
            return [sample]
        out = copy_sample(sample)
        out["meta"].setdefault("true_label", label)
        if not self.selected(key):
            return [out]
        new = _other_class(self, key, label, int(self.num_classes or 0))
        out["label"] = new
        out["meta"]["label_noise"] = True
        detail: dict[str, Any] = {"from": label, "to": new}
        if self.params["caption"] == "sync" and self.words is not None:
            if self.words.by_class[label].search(out["caption"]):
                out["meta"].setdefault("true_caption", out["caption"])
                out["caption"] = self.words.substitute(out["caption"], label, new)
                detail["caption"] = True
        self.touch(key, "flip", **detail)
        return [out]


@register
class CaptionNoise(LevelCorruptor):
    """Corrupt the caption of a fraction ``level`` of samples (the label is kept).

    ``mode: class_word`` — substitute the class word with another class's (CLIP's label noise);
    samples whose caption names no class pass untouched (counted as skipped ``no_class_word``).
    ``mode: random`` — replace the caption by the caption of another sample, drawn from a bank
    of ``bank_size`` captions that a plan pass takes from the stream (smallest hash first, so
    the bank does not depend on shard order).
    """

    type_name = "caption_noise"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "mode": Param(kind="choice", choices=("class_word", "random"), default="class_word",
                      doc="how a caption is corrupted"),
        "bank_size": Param(kind="int", lo=2, hi=1_000_000, default=4096, doc="captions in the random-replacement bank"),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.words = _ClassWords(self.class_names) if self.class_names else None
        if self.params["mode"] == "class_word" and (self.words is None or len(self.class_names or []) < 2):
            raise SpecError(f"corruptor {self.name!r}: mode 'class_word' needs >= 2 class names; the data source has none")
        self._bank: list[tuple[str, str]] | None = None
        self._threshold_df: pl.DataFrame | None = None

    @property
    def planned(self) -> bool:
        return self.params["mode"] == "random" or self.params.get("count") == "exact"

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        items = [(s["__key__"], s["caption"]) for s in samples]
        us = np.array([self.coin_u(k) for k, _ in items], dtype=np.float64)
        bank: list[tuple[float, str, str]] = []
        if self.params["mode"] == "random":
            scored = sorted((stable_uniform(self.study_seed, self.name, k, "bank"), k, c) for k, c in items)
            bank = scored[: int(self.params["bank_size"])]
        return {"u": us, "bank": bank}

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        thr = LevelCorruptor.plan_reduce(self, [p["u"] for p in partials])
        bank = sorted(b for p in partials for b in p["bank"])[: int(self.params["bank_size"])]
        n = len(bank)
        return pl.DataFrame({
            "kind": ["threshold"] + ["bank"] * n,
            "key": [""] + [k for _, k, _ in bank],
            "caption": [""] + [c for _, _, c in bank],
            "n": [int(thr["n"][0])] + [0] * n,
            "k": [int(thr["k"][0])] + [0] * n,
            "threshold": [float(thr["threshold"][0])] + [0.0] * n,
        })

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan.filter(pl.col("kind") == "threshold"))
        bank = plan.filter(pl.col("kind") == "bank")
        self._bank = list(zip(bank["key"].to_list(), bank["caption"].to_list()))

    def process(self, sample: Sample) -> list[Sample]:
        key = sample["__key__"]
        if not self.selected(key):
            return [sample]
        caption = sample.get("caption", "")
        if self.params["mode"] == "class_word":
            assert self.words is not None
            old = self.words.find(caption, int(sample.get("label", -1)))
            if old < 0:
                self.skipped["no_class_word"] += 1
                return [sample]
            new = _other_class(self, key, old, len(self.words.names))
            out = copy_sample(sample)
            out["caption"] = self.words.substitute(caption, old, new)
            out["meta"].setdefault("true_caption", caption)
            out["meta"]["caption_noise"] = "class_word"
            self.touch(key, "class_word", **{"from": old, "to": new})
            return [out]
        self.require_plan()
        bank = self._bank or []
        if len(bank) < 2:
            self.skipped["bank_too_small"] += 1
            return [sample]
        i = self.pick(key, len(bank), "bank")
        if bank[i][0] == key:  # never "replace" a caption with itself
            i = (i + 1) % len(bank)
        out = copy_sample(sample)
        out["caption"] = bank[i][1]
        out["meta"].setdefault("true_caption", caption)
        out["meta"]["caption_noise"] = "random"
        self.touch(key, "random_caption", source=bank[i][0])
        return [out]


@register
class Subsample(LevelCorruptor):
    """Select the unique-data pool: keep a sample iff ``u(seed, "pool", key) < fraction``.

    Pools nest: the pool of fraction 0.25 is inside the pool of 0.5, for every bias type (the
    decision ignores the step's name). ``size: n`` keeps exactly the n samples of smallest u
    (a plan pass). Dropped samples count under reason ``pool``; they are not listed one by one
    in the manifest (the decision is the hash; listing them would copy the dataset's keys).
    """

    type_name = "subsample"
    PARAMS = {
        "fraction": Param(kind="float", lo=0.0, hi=1.0, default=None, doc="fraction of the pool kept"),
        "size": Param(kind="int", lo=0, default=None, doc="exact number of samples kept (plan pass)"),
        "level": Param(kind="float", lo=0.0, hi=1.0, default=None, doc="alias of fraction"),
    }

    @classmethod
    def validate(cls, params: dict[str, Any], where: str) -> None:
        given = [k for k in ("fraction", "size", "level") if params.get(k) is not None]
        if len(given) != 1:
            raise SpecError(f"{where}: give exactly one of fraction, size (got {', '.join(given) or 'none'})")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        p = self.params = dict(self.params)
        self.validate(p, f"corruptor {self.name!r}")
        if p.get("level") is not None:
            p["fraction"] = p.pop("level")
        p.pop("level", None)
        p["count"] = "exact" if p.get("size") is not None else "bernoulli"

    def level(self) -> float:
        return float(self.params["fraction"] if self.params.get("fraction") is not None else 1.0)

    def exact_k(self, n: int) -> int:
        return int(self.params["size"])

    def coin_u(self, key: str) -> float:
        return stable_uniform(self.study_seed, "pool", key)

    def process(self, sample: Sample) -> list[Sample]:
        if self.selected(sample["__key__"]):
            return [sample]
        return self.drop(sample["__key__"], "pool", record=False)
