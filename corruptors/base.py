"""The corruptor contract: parameters, decisions, counters, manifest rows, plans.

A corruptor is one step of the data stream (datatrove style): it takes one sample and emits
0, 1 or k samples, keeping its own counters. Every decision is drawn from
``u = H(study_seed, name, key)`` and friends — never from stream position — so shard order,
worker count and batch boundaries cannot change it, and "corrupt iff u < level" nests levels.

A corruptor that needs a global view (exact counts, a caption bank, dedup) is *planned*: a
map over each shard (parallel), a reduce into a small polars table saved as parquet, then the
same per-sample step driven by the loaded plan. The map sees the stream as it reaches this
corruptor (after the earlier corruptors), so plans compose.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from inheritlab.infra.errors import SpecError, did_you_mean
from inheritlab.infra.hashing import stable_uniform_fn

Sample = dict[str, Any]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(-[0-9]+)?$")


# ----------------------------------------------------------------------------------- parameters


@dataclass(frozen=True, kw_only=True)
class Param:
    """One corruptor parameter: its kind, bounds and default (``required`` if no default)."""

    kind: str  # "float" | "int" | "choice" | "str" | "bool" | "list" | "dict"
    doc: str
    default: Any = None
    required: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] = ()

    def allowed(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind in ("float", "int"):
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            return f"{'a number' if self.kind == 'float' else 'an integer'} in [{lo}, {hi}]"
        return {"str": "a string", "bool": "true or false", "list": "a list", "dict": "a mapping"}[self.kind]

    def check(self, value: Any, where: str) -> Any:
        ok = True
        if self.kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                value = float(value)
        elif self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind == "choice":
            ok = value in self.choices
        elif self.kind == "str":
            ok = isinstance(value, str)
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "list":
            ok = isinstance(value, (list, tuple))
        elif self.kind == "dict":
            ok = isinstance(value, dict)
        if ok and self.kind in ("float", "int"):
            ok = (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
        if not ok:
            hint = did_you_mean(value, self.choices) if self.kind == "choice" else ""
            raise SpecError(f"{where}: got {value!r}{hint}; expected {self.allowed()} ({self.doc})")
        return value


LEVEL = Param(kind="float", lo=0.0, hi=1.0, required=True, doc="fraction of samples corrupted")
COUNT = Param(
    kind="choice", choices=("bernoulli", "exact"), default="bernoulli",
    doc="bernoulli: corrupt iff u < level; exact: the round(level*N) samples of smallest u (needs a plan pass)",
)
NAME = Param(kind="str", default=None, doc="name of this step; seeds its decisions (defaults to the type)")


# ----------------------------------------------------------------------------------- corruptor


class Corruptor:
    """Base class. Subclasses set ``type_name`` and ``PARAMS`` and implement :meth:`process`."""

    type_name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}
    #: Whether the step needs decoded images (the data-condition stage then decodes).
    needs_decode: ClassVar[bool] = False

    @classmethod
    def validate(cls, params: dict[str, Any], where: str) -> None:
        """Cross-field checks beyond each parameter's own (raise :class:`SpecError`)."""

    def __init__(
        self,
        *,
        name: str,
        params: dict[str, Any],
        study_seed: int,
        num_classes: int | None,
        class_names: list[str] | None,
        sources: dict[str, list[str]] | None = None,
    ) -> None:
        self.name = name
        self.sources = dict(sources or {})
        self.params = params
        self.study_seed = int(study_seed)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.n_in = 0
        self.n_out = 0
        self.n_added = 0
        self.n_touched = 0
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # passed through untouched for a reason
        # Details stay dicts until manifest(): JSON-encoding in the stream would cost per sample.
        self._rows: dict[str, list[Any]] = {"key": [], "action": [], "detail": []}
        self._plan: pl.DataFrame | None = None
        # Hash the (seed, name) prefix once: per-sample decisions are the hot loop.
        self._u = stable_uniform_fn(self.study_seed, self.name)

    # -- decisions ---------------------------------------------------------------------------

    def u(self, key: str, *tag: Any) -> float:
        """The per-sample uniform of DESIGN.md: depends on (study seed, name, key) only."""
        return self._u(key, *tag)

    def pick(self, key: str, n: int, *tag: Any) -> int:
        """A per-sample integer in [0, n), independent of :meth:`u` (different tag)."""
        return min(int(self._u(key, "pick", *tag) * n), n - 1)

    @property
    def needs_labels(self) -> bool:
        """Whether the step reads sample labels (a check before training asks every shard)."""
        return False

    # -- planning ----------------------------------------------------------------------------

    @property
    def planned(self) -> bool:
        """Whether a plan pass must run before :meth:`process` (see module docstring); steps that
        always plan set ``planned = True`` on the class."""
        return False

    def plan_map(self, samples: Any) -> Any:
        """Summarise one shard's samples (as they reach this step) into a picklable partial."""
        raise NotImplementedError

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        """Combine the shard partials (in any order) into the plan table."""
        raise NotImplementedError

    def load_plan(self, plan: pl.DataFrame) -> None:
        self._plan = plan

    def require_plan(self) -> pl.DataFrame:
        if self._plan is None:
            raise SpecError(
                f"corruptor {self.name!r} is planned but has no plan: run the data-condition stage "
                f"(condition_data) and pass its directory as build_chain(plan_dir=...)"
            )
        return self._plan

    # -- the step ----------------------------------------------------------------------------

    def process(self, sample: Sample) -> list[Sample]:
        raise NotImplementedError

    def record(self, key: str, action: str, **detail: Any) -> None:
        self._rows["key"].append(key)
        self._rows["action"].append(action)
        self._rows["detail"].append(detail)

    def touch(self, key: str, action: str, **detail: Any) -> None:
        """Count and record a sample that was changed in place."""
        self.n_touched += 1
        self.record(key, action, **detail)

    def drop(self, key: str, reason: str, *, record: bool = True, **detail: Any) -> list[Sample]:
        self.dropped[reason] += 1
        if record:
            self.record(key, f"drop:{reason}", **detail)
        return []

    def added(self, key: str, n: int, action: str, **detail: Any) -> None:
        self.n_added += n
        self.record(key, action, copies=n, **detail)

    def artifacts(self) -> dict[str, Any]:
        """Extra JSON files (name → object) the data-condition stage writes for this step."""
        return {}

    def counters(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "params": dict(self.params),
            "in": self.n_in,
            "out": self.n_out,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "added": self.n_added,
            "touched": self.n_touched,
            "skipped": dict(sorted(self.skipped.items())),
        }

    def manifest(self) -> pl.DataFrame:
        n = len(self._rows["key"])
        return pl.DataFrame(
            {
                "key": self._rows["key"],
                "corruptor": [self.name] * n,
                "type": [self.type_name] * n,
                "action": self._rows["action"],
                "detail": [json.dumps(d, sort_keys=True, default=str) for d in self._rows["detail"]],
            },
            schema={"key": pl.Utf8, "corruptor": pl.Utf8, "type": pl.Utf8, "action": pl.Utf8, "detail": pl.Utf8},
        )


def text_field(sample: Sample) -> str:
    """The sample's text field: ``text`` for text samples, ``caption`` for image–caption pairs."""
    return "text" if "text" in sample else "caption"


def copy_sample(sample: Sample) -> Sample:
    """A shallow copy with its own ``meta``: a step never mutates its caller's dict."""
    out = dict(sample)
    out["meta"] = dict(sample.get("meta") or {})
    return out


# ----------------------------------------------------------------------------------- registry

REGISTRY: dict[str, type[Corruptor]] = {}


def register(cls: type[Corruptor]) -> type[Corruptor]:
    """Class decorator: make a corruptor type available to study specs."""
    if not cls.type_name or cls.type_name in REGISTRY:
        raise ValueError(f"corruptor type {cls.type_name!r} is empty or registered twice")
    REGISTRY[cls.type_name] = cls
    return cls


def check_params(cls: type[Corruptor], spec: dict[str, Any], where: str) -> dict[str, Any]:
    """Validated parameters (defaults filled) of one spec; errors name ``where.field``."""
    params: dict[str, Any] = {}
    allowed = dict(cls.PARAMS)
    allowed.setdefault("name", NAME)
    for key in spec:
        if key == "type":
            continue
        if key not in allowed:
            raise SpecError(
                f"{where}.{key}: unknown parameter for corruptor {cls.type_name!r}{did_you_mean(key, allowed)}; allowed: "
                + ", ".join(sorted(allowed))
            )
    for key, p in allowed.items():
        if key in spec and spec[key] is not None:
            params[key] = p.check(spec[key], f"{where}.{key}")
        elif p.required:
            raise SpecError(f"{where}.{key}: required parameter of corruptor {cls.type_name!r} is missing ({p.allowed()}: {p.doc})")
        else:
            params[key] = p.default
    name = params.pop("name", None)
    if name is not None and not _NAME_RE.match(name):
        raise SpecError(f"{where}.name: got {name!r}; expected lower-case letters, digits and '_'")
    if name is not None:
        params["name"] = name
    cls.validate(params, where)
    return params
