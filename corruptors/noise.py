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

from inheritlab.corruptors.base import COUNT, LEVEL, Corruptor, Param, Sample, copy_sample, register, text_field
from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import stable_rng, stable_uniform_fn


class LevelCorruptor(Corruptor):
    """A corruptor whose per-sample decision is the nested coin ``score < level``.

    The score is ``u(key)`` (divided by a per-sample rate where a corruptor has one), so the
    selected set grows with the level and never reshuffles.
    """

    def level(self) -> float:
        return float(self.params["level"])

    def coin_u(self, key: str) -> float:
        return self.u(key)

    def score(self, sample: Sample) -> float:
        return self.coin_u(sample["__key__"])

    @property
    def planned(self) -> bool:
        return self.params.get("count") == "exact"

    def exact_k(self, n: int) -> int:
        """How many of ``n`` samples exact mode selects."""
        return int(round(self.level() * n))

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        return np.fromiter((self.score(s) for s in samples), dtype=np.float64)

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        us = np.sort(np.concatenate([np.asarray(p, dtype=np.float64) for p in partials] or [np.zeros(0)]))
        n = int(us.size)
        k = min(self.exact_k(n), n)
        # "selected iff score <= threshold": the k smallest (ties have probability ~2^-53).
        threshold = float(us[k - 1]) if k > 0 else -1.0
        if not np.isfinite(threshold):
            threshold = float(np.finfo(np.float64).max)
        return pl.DataFrame({"n": [n], "k": [k], "threshold": [threshold]})

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan)
        self.__dict__.pop("_threshold", None)

    def selected(self, sample: Sample) -> bool:
        score = self.score(sample)
        if self.params.get("count") == "exact":
            if "_threshold" not in self.__dict__:
                self._threshold = float(self.require_plan()["threshold"][0])
            return score <= self._threshold
        if "_level" not in self.__dict__:  # hot path: read the level once
            self._level = self.level()
        return score < self._level


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


class ClassWords:
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


def _class_index(value: Any, names: list[str] | None, k: int, where: str) -> int:
    """A class given by index or by name, checked against the data's classes."""
    if isinstance(value, str) and names and value in names:
        return names.index(value)
    try:
        idx = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: got {value!r}; expected a class index in [0, {k}) or one of {names}") from None
    if not 0 <= idx < k:
        raise SpecError(f"{where}: got {value!r}; expected a class index in [0, {k})")
    return idx


@register
class LabelNoise(LevelCorruptor):
    """Flip the label of a fraction ``level`` of samples; a flipped sample keeps its true label
    in ``meta["true_label"]`` (an unflipped one has none: its label is the truth).

    Modes (how the new label is drawn; which samples flip is always the nested coin):

    - ``symmetric``: a uniformly drawn other class.
    - ``asymmetric``: a confusable class, ``mapping`` ``{from: to}`` by index or class name
      (default: class c → c+1 mod K, the "pair flip" of the noisy-label literature). Classes
      not in the mapping never flip.
    - ``class_conditional``: class c flips iff u < level·``class_rates[c]``, to a class drawn
      from row c of ``transition`` (K×K non-negative weights; the diagonal is ignored; default
      uniform over the other classes).

    ``caption: sync`` (default) also rewrites the class word in the caption to the new class —
    for CLIP the caption *is* the label, so without it label noise would never reach the model;
    ``keep`` leaves the caption alone.
    """

    type_name = "label_noise"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "mode": Param(kind="choice", choices=("symmetric", "asymmetric", "class_conditional"), default="symmetric",
                      doc="how a flipped label is drawn"),
        "caption": Param(kind="choice", choices=("sync", "keep"), default="sync",
                         doc="rewrite the caption's class word to the new label, or keep the caption"),
        "mapping": Param(kind="dict", default=None, doc="asymmetric: {from_class: to_class}"),
        "class_rates": Param(kind="list", default=None, doc="class_conditional: per-class multipliers of level in [0, 1]"),
        "transition": Param(kind="list", default=None, doc="class_conditional: K x K weights of the flip targets"),
    }

    @classmethod
    def validate(cls, params: dict[str, Any], where: str) -> None:
        mode = params["mode"]
        for key, wanted in (("mapping", "asymmetric"), ("class_rates", "class_conditional"),
                            ("transition", "class_conditional")):
            if params.get(key) is not None and mode != wanted:
                raise SpecError(f"{where}.{key}: only used with mode {wanted!r} (mode is {mode!r})")
        rates = params.get("class_rates")
        if rates is not None and not all(isinstance(r, (int, float)) and 0 <= r <= 1 for r in rates):
            raise SpecError(f"{where}.class_rates: got {rates!r}; expected numbers in [0, 1]")
        rows = params.get("transition")
        if rows is not None and not all(
            isinstance(r, (list, tuple)) and all(isinstance(w, (int, float)) and w >= 0 for w in r) for r in rows
        ):
            raise SpecError(f"{where}.transition: got {rows!r}; expected a K x K list of non-negative weights")

    @property
    def needs_labels(self) -> bool:
        return True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        k = int(self.num_classes or 0)
        if k < 2:
            raise SpecError(
                f"corruptor {self.name!r}: label noise needs labelled data with >= 2 classes (got "
                f"{self.num_classes or 0} class names): a classnames.txt beside the train split (or "
                "data.shards.classnames) and a label per sample (.cls, or data.shards.label_key); docs/data.md"
            )
        self.words = ClassWords(self.class_names) if self.class_names else None
        where = f"corruptor {self.name!r}"
        mode = self.params["mode"]
        self.target_map: dict[int, int] = {}
        self.rates = np.ones(k)
        self.cdf = None
        if mode == "asymmetric":
            mapping = self.params.get("mapping")
            if mapping is None:
                self.target_map = {c: (c + 1) % k for c in range(k)}
            else:
                for a, b in mapping.items():
                    src = _class_index(a, self.class_names, k, f"{where}.mapping key")
                    self.target_map[src] = _class_index(b, self.class_names, k, f"{where}.mapping[{a!r}]")
        elif mode == "class_conditional":
            if self.params.get("class_rates") is not None:
                rates = list(self.params["class_rates"])
                if len(rates) != k:
                    raise SpecError(f"{where}.class_rates: got {len(rates)} rates; expected one per class ({k})")
                self.rates = np.asarray(rates, dtype=np.float64)
            w = np.ones((k, k))
            if self.params.get("transition") is not None:
                w = np.asarray(self.params["transition"], dtype=np.float64)
                if w.shape != (k, k):
                    raise SpecError(f"{where}.transition: got shape {w.shape}; expected ({k}, {k})")
            w = w.copy()
            np.fill_diagonal(w, 0.0)
            sums = w.sum(axis=1)
            bad = [c for c in range(k) if sums[c] <= 0 and self.rates[c] > 0]
            if bad:
                raise SpecError(f"{where}.transition: rows {bad} have no off-diagonal weight but a non-zero rate")
            self.cdf = np.cumsum(w / np.where(sums > 0, sums, 1)[:, None], axis=1)

    def score(self, sample: Sample) -> float:
        u = self.coin_u(sample["__key__"])
        if self.cdf is None:  # only class_conditional has per-class rates
            return u
        label = int(sample.get("label", -1))
        rate = float(self.rates[label]) if 0 <= label < len(self.rates) else 1.0
        return u / rate if rate > 0 else float("inf")

    def _target(self, key: str, label: int) -> int:
        mode, k = self.params["mode"], int(self.num_classes or 0)
        if mode == "symmetric":
            return _other_class(self, key, label, k)
        if mode == "asymmetric":
            return self.target_map.get(label, label)
        assert self.cdf is not None
        r = self.u(key, "target")
        return int(min(np.searchsorted(self.cdf[label], r, side="right"), k - 1))

    def process(self, sample: Sample) -> list[Sample]:
        key = sample["__key__"]
        label = int(sample.get("label", -1))
        if label < 0 or label >= int(self.num_classes or 0):
            self.skipped["no_label"] += 1
            return [sample]
        if not self.selected(sample):
            return [sample]
        new = self._target(key, label)
        if new == label:
            self.skipped["no_target"] += 1
            return [sample]
        out = copy_sample(sample)
        out["meta"].setdefault("true_label", label)
        out["label"] = new
        out["meta"]["label_noise"] = self.params["mode"]
        detail: dict[str, Any] = {"from": label, "to": new}
        if self.params["caption"] == "sync" and self.words is not None and "caption" in out:
            if self.words.by_class[label].search(out["caption"]):
                out["meta"].setdefault("true_caption", out["caption"])
                out["caption"] = self.words.substitute(out["caption"], label, new)
                detail["caption"] = True
        self.touch(key, "flip", **detail)
        return [out]


@register
class CaptionNoise(LevelCorruptor):
    """Corrupt the caption (or a text sample's text) of a fraction ``level`` of samples.

    The label is kept. Modes:

    - ``class_word``: substitute the class word with another class's (CLIP's label noise);
      captions naming no class pass untouched (counted as skipped ``no_class_word``).
    - ``swap``: the selected samples exchange captions among themselves (the YFCC15M mismatch
      protocol): a plan orders them by hash and each takes the next one's caption, so the
      caption multiset is unchanged and nobody keeps its own.
    - ``random``: replace by the caption of another sample drawn from a bank of ``bank_size``
      captions that a plan takes from the stream (smallest hash first: order-free).
    - ``word_drop``: drop a fraction ``rate`` of the words (at least one).
    - ``word_shuffle``: shuffle the words.
    """

    type_name = "caption_noise"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "mode": Param(kind="choice", choices=("class_word", "swap", "random", "word_drop", "word_shuffle"),
                      default="class_word", doc="how a caption is corrupted"),
        "bank_size": Param(kind="int", lo=2, hi=1_000_000, default=4096, doc="captions in the random-replacement bank"),
        "rate": Param(kind="float", lo=0.0, hi=1.0, default=0.3, doc="word_drop: fraction of words dropped"),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.words = ClassWords(self.class_names) if self.class_names else None
        if self.params["mode"] == "class_word" and (self.words is None or len(self.class_names or []) < 2):
            raise SpecError(f"corruptor {self.name!r}: mode 'class_word' needs >= 2 class names; the data source has none")
        self._bank: list[tuple[str, str]] = []
        self._swap: dict[str, tuple[str, str]] = {}

    @property
    def planned(self) -> bool:
        return self.params["mode"] in ("random", "swap") or self.params.get("count") == "exact"

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        mode, level = self.params["mode"], self.level()
        us, bank, swap = [], [], []
        for s in samples:
            key = s["__key__"]
            u = self.score(s)
            us.append(u)
            text = s.get(text_field(s), "")
            if mode == "random":
                bank.append((self.u(key, "bank"), key, text))
            elif mode == "swap" and (self.params["count"] == "exact" or u < level):
                swap.append((u, key, text))
        if mode == "random":
            bank = sorted(bank)[: int(self.params["bank_size"])]
        return {"u": np.asarray(us, dtype=np.float64), "bank": bank, "swap": swap}

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        thr = LevelCorruptor.plan_reduce(self, [p["u"] for p in partials])
        threshold = float(thr["threshold"][0])
        rows: dict[str, list[Any]] = {"kind": ["threshold"], "key": [""], "caption": [""], "source": [""],
                                      "n": [int(thr["n"][0])], "k": [int(thr["k"][0])], "threshold": [threshold]}

        def add(kind: str, key: str, caption: str, source: str) -> None:
            for col, val in (("kind", kind), ("key", key), ("caption", caption), ("source", source),
                             ("n", 0), ("k", 0), ("threshold", 0.0)):
                rows[col].append(val)

        for _, key, cap in sorted(b for p in partials for b in p["bank"])[: int(self.params["bank_size"])]:
            add("bank", key, cap, "")
        chosen = [x for p in partials for x in p["swap"]]
        if self.params["count"] == "exact":
            chosen = [x for x in chosen if x[0] <= threshold]
        # A derangement that depends on keys only: order by a hash, take the next one's caption.
        order = sorted(chosen, key=lambda x: (self.u(x[1], "perm"), x[1]))
        if len(order) >= 2:
            for i, (_, key, _) in enumerate(order):
                _, src_key, src_cap = order[(i + 1) % len(order)]
                add("swap", key, src_cap, src_key)
        return pl.DataFrame(rows, schema={"kind": pl.Utf8, "key": pl.Utf8, "caption": pl.Utf8, "source": pl.Utf8,
                                          "n": pl.Int64, "k": pl.Int64, "threshold": pl.Float64})

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan.filter(pl.col("kind") == "threshold"))
        bank = plan.filter(pl.col("kind") == "bank")
        self._bank = list(zip(bank["key"].to_list(), bank["caption"].to_list()))
        swap = plan.filter(pl.col("kind") == "swap")
        self._swap = {k: (c, s) for k, c, s in zip(swap["key"].to_list(), swap["caption"].to_list(),
                                                    swap["source"].to_list())}

    def _replace(self, sample: Sample, field: str, text: str, action: str, **detail: Any) -> list[Sample]:
        out = copy_sample(sample)
        out["meta"].setdefault(f"true_{field}", sample.get(field, ""))
        out[field] = text
        out["meta"]["caption_noise"] = action
        self.touch(sample["__key__"], action, **detail)
        return [out]

    def process(self, sample: Sample) -> list[Sample]:
        key, mode = sample["__key__"], self.params["mode"]
        field = text_field(sample)
        text = sample.get(field, "")
        if mode == "swap":
            self.require_plan()
            if key not in self._swap:
                return [sample]
            cap, src = self._swap[key]
            return self._replace(sample, field, cap, "swap", source=src)
        if not self.selected(sample):
            return [sample]
        if mode == "class_word":
            assert self.words is not None
            old = self.words.find(text, int(sample.get("label", -1)))
            if old < 0:
                self.skipped["no_class_word"] += 1
                return [sample]
            new = _other_class(self, key, old, len(self.words.names))
            return self._replace(sample, field, self.words.substitute(text, old, new), "class_word",
                                 **{"from": old, "to": new})
        if mode == "random":
            self.require_plan()
            if len(self._bank) < 2:
                self.skipped["bank_too_small"] += 1
                return [sample]
            i = self.pick(key, len(self._bank), "bank")
            if self._bank[i][0] == key:  # never "replace" a caption with itself
                i = (i + 1) % len(self._bank)
            return self._replace(sample, field, self._bank[i][1], "random_caption", source=self._bank[i][0])
        words = text.split()
        if len(words) < 2:
            self.skipped["too_short"] += 1
            return [sample]
        rng = stable_rng(self.study_seed, self.name, key, "words")
        if mode == "word_drop":
            n_drop = min(len(words) - 1, max(1, int(round(self.params["rate"] * len(words)))))
            drop = set(rng.choice(len(words), size=n_drop, replace=False).tolist())
            kept = [w for i, w in enumerate(words) if i not in drop]
            return self._replace(sample, field, " ".join(kept), "word_drop", dropped=n_drop)
        perm = rng.permutation(len(words))
        if (perm == np.arange(len(words))).all():
            perm = np.roll(perm, 1)
        return self._replace(sample, field, " ".join(words[i] for i in perm), "word_shuffle")


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
        if "_pool_u" not in self.__dict__:
            self._pool_u = stable_uniform_fn(self.study_seed, "pool")
        return self._pool_u(key)

    def process(self, sample: Sample) -> list[Sample]:
        if self.selected(sample):
            return [sample]
        return self.drop(sample["__key__"], "pool", record=False)
