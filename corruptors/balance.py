"""Imbalance injection and rebalancing over concepts.

A sample's concept comes from its label (``concepts: label``), from matching its caption or
text against a concept list (``concepts: caption``; the class names by default, MetaCLIP
style), or from a metadata field (``concepts: meta:topic``, for text topics).

``imbalance`` resamples the pool to a long tail: concept of rank r keeps a fraction
``keep_r`` with ``keep_0 = 1`` and ``keep_0 / keep_last = ratio = max_ratio ** level`` (level
0 = untouched, 1 = the full ratio). Keep iff u < keep_r, so raising the level only removes.
``rebalance`` undoes a long tail: MetaCLIP's per-concept cap (a concept seen n_c times keeps
each sample with probability min(1, cap / n_c)) or inverse-frequency resampling (each sample
appears ``(N / C) / n_c`` times in expectation). Its counts come from a plan pass.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable

import numpy as np
import polars as pl

from inheritlab.corruptors.base import Corruptor, Param, Sample, copy_sample, register, text_field
from inheritlab.corruptors.noise import ClassWords
from inheritlab.infra.errors import SpecError

CONCEPTS = Param(kind="str", default="label",
                 doc="where a sample's concept comes from: 'label', 'caption' (match concept_list) or 'meta:<field>'")
CONCEPT_LIST = Param(kind="list", default=None, doc="concepts matched in captions (default: the class names)")


def _check_concepts(params: dict[str, Any], where: str) -> None:
    c = params.get("concepts")
    if c not in ("label", "caption") and not (isinstance(c, str) and c.startswith("meta:") and len(c) > 5):
        raise SpecError(f"{where}.concepts: got {c!r}; expected 'label', 'caption' or 'meta:<field>'")


class _ConceptStep(Corruptor):
    """Shared concept lookup for the balance corruptors."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.mode_concepts = str(self.params["concepts"])
        names = self.params.get("concept_list") or self.class_names or []
        self.words = ClassWords([str(n) for n in names]) if names else None
        if self.mode_concepts == "caption" and self.words is None:
            raise SpecError(f"corruptor {self.name!r}: concepts 'caption' needs a concept_list or class names")
        if self.mode_concepts == "label" and not self.num_classes:
            raise SpecError(f"corruptor {self.name!r}: concepts 'label' needs labelled data (no class names found): a "
                            "classnames.txt beside the train split (or data.shards.classnames) and a label per "
                            "sample (.cls, or data.shards.label_key); docs/data.md")

    @property
    def needs_labels(self) -> bool:
        return self.mode_concepts == "label"

    def concept(self, sample: Sample) -> str | None:
        if self.mode_concepts == "label":
            label = int(sample.get("label", -1))
            return str(label) if label >= 0 else None
        if self.mode_concepts == "caption":
            assert self.words is not None
            idx = self.words.find(str(sample.get(text_field(sample), "")), -1)
            return self.words.names[idx] if idx >= 0 else None
        value = (sample.get("meta") or {}).get(self.mode_concepts[5:])
        return None if value is None else str(value)


@register
class Imbalance(_ConceptStep):
    """Resample the pool to a long tail (see module docstring). Dropped: reason ``imbalance``."""

    type_name = "imbalance"
    PARAMS = {
        "level": Param(kind="float", lo=0.0, hi=1.0, required=True, doc="strength: imbalance ratio = max_ratio ** level"),
        "max_ratio": Param(kind="float", lo=1.0, hi=1e6, default=100.0, doc="head/tail ratio at level 1"),
        "profile": Param(kind="choice", choices=("exp", "zipf"), default="exp",
                         doc="exp: keep_r = ratio^(-r/(C-1)); zipf: keep_r = (r+1)^(-a), a = log(ratio)/log(C)"),
        "concepts": CONCEPTS,
        "concept_list": CONCEPT_LIST,
        "order": Param(kind="list", default=None, doc="concepts from head to tail (default: label order / concept_list order)"),
    }

    @classmethod
    def validate(cls, params: dict[str, Any], where: str) -> None:
        _check_concepts(params, where)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if self.params.get("order") is not None:
            order = [str(c) for c in self.params["order"]]
        elif self.mode_concepts == "label":
            order = [str(i) for i in range(int(self.num_classes or 0))]
        elif self.words is not None:
            order = list(self.words.names)
        else:
            raise SpecError(f"corruptor {self.name!r}: concepts {self.mode_concepts!r} needs 'order' (head to tail)")
        ratio = float(self.params["max_ratio"]) ** float(self.params["level"])
        c = len(order)
        if self.params["profile"] == "exp":
            keep = [ratio ** (-r / max(c - 1, 1)) for r in range(c)]
        else:
            a = math.log(ratio) / math.log(c) if c > 1 else 0.0
            keep = [(r + 1) ** (-a) for r in range(c)]
        self.keep = dict(zip(order, keep))

    def process(self, sample: Sample) -> list[Sample]:
        concept = self.concept(sample)
        if concept is None or concept not in self.keep:
            self.skipped["no_concept"] += 1
            return [sample]
        if self.u(sample["__key__"]) < self.keep[concept]:
            return [sample]
        return self.drop(sample["__key__"], "imbalance", concept=concept)


@register
class Rebalance(_ConceptStep):
    """Undo a long tail: MetaCLIP per-concept cap, or inverse-frequency resampling (planned)."""

    type_name = "rebalance"
    PARAMS = {
        "level": Param(kind="float", lo=0.0, hi=1.0, default=1.0,
                       doc="strength: per-concept weights are raised to this power (0 = no change)"),
        "mode": Param(kind="choice", choices=("cap", "inverse"), default="cap",
                      doc="cap: keep min(1, cap/n_c); inverse: (N/C)/n_c copies in expectation"),
        "cap": Param(kind="int", lo=1, default=None, doc="MetaCLIP's t (default: the median concept count)"),
        "concepts": CONCEPTS,
        "concept_list": CONCEPT_LIST,
    }

    @classmethod
    def validate(cls, params: dict[str, Any], where: str) -> None:
        _check_concepts(params, where)
        if params.get("cap") is not None and params.get("mode") != "cap":
            raise SpecError(f"{where}.cap: only used with mode 'cap'")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.weight: dict[str, float] = {}

    planned = True  # type: ignore[assignment]  (a constant here; the base class decides per spec)

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        return Counter(c for c in (self.concept(s) for s in samples) if c is not None)

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        counts: Counter[str] = Counter()
        for p in partials:
            counts.update(p)
        concepts = sorted(counts)
        n = np.array([counts[c] for c in concepts], dtype=np.float64)
        if self.params["mode"] == "cap":
            # The median caps the head and leaves the tail whole (MetaCLIP's intent).
            cap = float(self.params["cap"] or (np.median(n) if n.size else 1))
            weight = np.minimum(1.0, cap / np.maximum(n, 1))
        else:
            weight = (n.sum() / max(len(concepts), 1)) / np.maximum(n, 1)
        weight = weight ** float(self.params["level"])
        return pl.DataFrame({"concept": concepts, "count": n.astype(np.int64), "weight": weight},
                            schema={"concept": pl.Utf8, "count": pl.Int64, "weight": pl.Float64})

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan)
        self.weight = dict(zip(plan["concept"].to_list(), plan["weight"].to_list()))

    def process(self, sample: Sample) -> list[Sample]:
        self.require_plan()
        key = sample["__key__"]
        concept = self.concept(sample)
        if concept is None or concept not in self.weight:
            self.skipped["no_concept"] += 1
            return [sample]
        w = self.weight[concept]
        # copies = floor(w) + [u < frac(w)]: expectation w, decided by the key alone.
        copies = int(math.floor(w)) + (1 if self.u(key) < w - math.floor(w) else 0)
        if copies == 0:
            return self.drop(key, "rebalance", concept=concept)
        out = [sample]
        for j in range(1, copies):
            c = copy_sample(sample)
            c["__key__"] = f"{key}_rb{j}"
            c["meta"]["dup_of"] = key
            out.append(c)
        if copies > 1:
            self.added(key, copies - 1, "upsample", concept=concept)
        return out
