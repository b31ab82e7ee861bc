"""The corruptor chain and the data-condition stage of a cell.

A corruptor spec is a plain dict, ``{"type": "label_noise", "level": 0.2, "mode": "symmetric"}``.
:func:`validate_corruptor` checks one (the study spec calls it at load time);
:func:`build_chain` turns a list of them into a :class:`Chain` that applies them, in order, to a
stream of samples. :func:`condition_data` is the per-cell data stage: plan passes for planned
corruptors (Ray tasks per shard when Ray is up), then one streaming pass that writes the
manifest and counters. The trainer later builds the same chain with ``plan_dir`` and gets the
same decisions in its own stream, whatever its ranks and loader workers.
"""

from __future__ import annotations

import inspect
import io
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

# Importing the corruptor modules registers their types.
from inheritlab.corruptors import balance as _balance  # noqa: F401
from inheritlab.corruptors import dedup as _dedup  # noqa: F401
from inheritlab.corruptors import duplication as _duplication  # noqa: F401
from inheritlab.corruptors import noise as _noise  # noqa: F401
from inheritlab.corruptors import text as _text  # noqa: F401
from inheritlab.corruptors.base import REGISTRY, Corruptor, Sample, check_params
from inheritlab.corruptors.counters import ACCOUNTED, counter_mismatches, sum_counters  # noqa: F401 (re-exported)
from inheritlab.corruptors.shards import ReadStats, iter_samples, list_shards, write_shards
from inheritlab.infra.atomic import atomic_write_bytes, atomic_write_json
from inheritlab.infra.errors import SpecError, did_you_mean

MANIFEST_NAME = "manifest.parquet"
COUNTERS_NAME = "counters.json"
# A plan pass tolerates bad samples (skipping the same ones the stream pass will skip); the
# stream pass alone enforces the configured ceiling, once, over the whole stream.
_PLAN_PASS_CEILING = 1 << 62


def corruptor_types() -> list[str]:
    """Names of every registered corruptor type."""
    return sorted(REGISTRY)


def validate_corruptor(spec: dict[str, Any], where: str) -> None:
    """Check one corruptor spec; a :class:`SpecError` names ``where.field``, the value and what is allowed."""
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: expected a mapping with a 'type', got {type(spec).__name__}")
    typ = spec.get("type")
    if typ is None:
        raise SpecError(f"{where}.type: missing; allowed: {', '.join(corruptor_types())}")
    if typ not in REGISTRY:
        raise SpecError(f"{where}.type: got {typ!r}{did_you_mean(typ, corruptor_types())}; allowed: "
                        f"{', '.join(corruptor_types())}")
    check_params(REGISTRY[typ], spec, where)


def plan_path(plan_dir: str | Path, name: str) -> Path:
    """Where the plan of the step ``name`` lives."""
    return Path(plan_dir) / f"plan-{name}.parquet"


class Chain:
    """Corruptors applied in order to a sample stream; each keeps its counters and manifest rows."""

    def __init__(self, steps: list[Corruptor]) -> None:
        self.steps = steps

    @property
    def needs_decode(self) -> bool:
        return any(s.needs_decode for s in self.steps)

    @property
    def planned_steps(self) -> list[Corruptor]:
        return [s for s in self.steps if s.planned]

    def load_plans(self, plan_dir: str | Path, *, upto: int | None = None) -> None:
        """Load the plan of each planned step (before index ``upto``) from ``plan_dir``."""
        for step in self.steps[:upto]:
            if not step.planned:
                continue
            path = plan_path(plan_dir, step.name)
            if not path.is_file():
                raise SpecError(
                    f"corruptor {step.name!r} needs its plan {path}, which does not exist: "
                    "run the data-condition stage for this cell first"
                )
            step.load_plan(pl.read_parquet(path))

    def _run(self, samples: Iterable[Sample], steps: list[Corruptor]) -> Iterator[Sample]:
        for sample in samples:
            batch = [sample]
            for step in steps:
                step.n_in += len(batch)
                if len(batch) == 1:
                    nxt = step.process(batch[0])
                else:
                    nxt = [y for x in batch for y in step.process(x)]
                step.n_out += len(nxt)
                batch = nxt
                if not batch:
                    break
            yield from batch

    def apply(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """Stream ``samples`` through every step (0, 1 or k outputs per input)."""
        for step in self.planned_steps:
            step.require_plan()
        return self._run(samples, self.steps)

    def apply_prefix(self, samples: Iterable[Sample], upto: int) -> Iterator[Sample]:
        """Stream through the steps before index ``upto`` only (what step ``upto`` sees)."""
        return self._run(samples, self.steps[:upto])

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per step: in, out, dropped (by reason), added, touched, skipped (by reason)."""
        return {s.name: s.counters() for s in self.steps}

    def balanced(self) -> bool:
        """in = out + dropped − added for every step (DESIGN.md, "everything is accounted")."""
        return all(
            c["in"] == c["out"] + c["dropped_total"] - c["added"] for c in self.counters().values()
        )

    def manifest(self) -> pl.DataFrame:
        """One row per recorded decision: key, corruptor, type, action, detail (JSON)."""
        frames = [s.manifest() for s in self.steps]
        if not frames:
            return Corruptor(name="", params={}, study_seed=0, num_classes=None, class_names=None).manifest()
        return pl.concat(frames, how="vertical")


def build_chain(
    specs: list[dict[str, Any]],
    *,
    study_seed: int,
    num_classes: int | None,
    class_names: list[str] | None,
    plan_dir: str | Path | None = None,
    sources: dict[str, list[str]] | None = None,
) -> Chain:
    """Validate ``specs`` and build their chain; with ``plan_dir``, planned steps load their plans.

    A step's name (``name`` in its spec, else its type; ``-2``, ``-3`` appended on repeats)
    seeds its decisions, so the same spec decides the same way in every cell of a study.
    ``sources`` maps split names (``test_id``...) to shard lists for steps that read another
    split while planning (contamination); the trainer, which only loads plans, needs none.
    """
    steps: list[Corruptor] = []
    seen: Counter[str] = Counter()
    for i, spec in enumerate(specs):
        where = f"corruptors[{i}]"
        validate_corruptor(spec, where)
        cls = REGISTRY[spec["type"]]
        params = check_params(cls, spec, where)
        base = params.pop("name", None) or cls.type_name
        seen[base] += 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        steps.append(
            cls(name=name, params=params, study_seed=study_seed, num_classes=num_classes, class_names=class_names,
                sources=sources)
        )
    chain = Chain(steps)
    if plan_dir is not None:
        chain.load_plans(plan_dir)
    return chain


# ----------------------------------------------------------------------------------- condition


def _plan_shard(
    shard: str,
    specs: list[dict[str, Any]],
    study_seed: int,
    num_classes: int | None,
    class_names: list[str] | None,
    plan_dir: str,
    index: int,
    decode: bool,
    kind: str = "image",
    sources: dict[str, list[str]] | None = None,
    label_key: str | None = None,
) -> Any:
    """Map of step ``index``'s plan over one shard (runs in a Ray task or in-process)."""
    chain = build_chain(specs, study_seed=study_seed, num_classes=num_classes, class_names=class_names, sources=sources)
    chain.load_plans(plan_dir, upto=index)
    stream = iter_samples([shard], decode=decode, bad_sample_ceiling=_PLAN_PASS_CEILING, kind=kind, label_key=label_key)
    return chain.steps[index].plan_map(chain.apply_prefix(stream, index))


def _world_sources(shards: list[str]) -> dict[str, list[str]]:
    """Split name → shards of the world the train shards belong to (``<root>/train/x.tar``)."""
    if not shards:
        return {}
    root = Path(shards[0]).resolve().parent.parent
    if not (root / "world.json").is_file():
        return {}
    from inheritlab.corruptors.world import load_world_info

    return dict(load_world_info(root).splits)


def _ray_ready() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _map_shards(shards: list[str], args: tuple[Any, ...]) -> list[Any]:
    if _ray_ready():
        import ray

        task = ray.remote(num_cpus=1)(_plan_shard)
        return ray.get([task.remote(shard, *args) for shard in shards])
    return [_plan_shard(shard, *args) for shard in shards]


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


def condition_data(
    shards: str | Path | list[str],
    specs: list[dict[str, Any]],
    *,
    study_seed: int,
    out_dir: str | Path,
    num_classes: int | None,
    class_names: list[str] | None,
    bad_sample_ceiling: float | int = 0,
    sources: dict[str, list[str]] | None = None,
    kind: str = "image",
    label_key: str | None = None,
) -> dict[str, Any]:
    """The data-condition stage of one cell: plans, then one pass writing manifest and counters.

    Writes ``out_dir/plan-<step>.parquet`` for planned steps, ``out_dir/manifest.parquet`` and
    ``out_dir/counters.json`` (all atomically) and returns the counters::

        {"source": {samples, shards, skipped{reason}, ...}, "corruptors": {name: {...}},
         "samples_out": int, "labels_out": {label: n}, "balanced": bool}

    Images are not decoded unless a step needs pixels. ``sources`` (split name → shards) is
    what contamination reads test items from; when omitted it comes from the ``world.json``
    of the world the shards belong to, if any. ``kind="text"`` for text shards.
    """
    shard_list = list_shards(shards) if isinstance(shards, (str, Path)) else [str(s) for s in shards]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if sources is None:
        sources = _world_sources(shard_list)
    chain = build_chain(specs, study_seed=study_seed, num_classes=num_classes, class_names=class_names,
                        sources=sources)
    decode = chain.needs_decode
    for index, step in enumerate(chain.steps):
        if not step.planned:
            continue
        args = (specs, study_seed, num_classes, class_names, str(out), index, decode, kind, sources, label_key)
        partials = _map_shards(shard_list, args)
        plan = step.plan_reduce(partials)
        _write_parquet(plan, plan_path(out, step.name))
        step.load_plan(plan)
    stats = ReadStats()
    labels: Counter[int] = Counter()
    n_out = 0
    for sample in chain.apply(iter_samples(shard_list, decode=decode, bad_sample_ceiling=bad_sample_ceiling, stats=stats,
                                           kind=kind, label_key=label_key)):
        n_out += 1
        labels[int(sample.get("label", -1))] += 1
    counters = {
        "source": stats.to_dict(),
        "corruptors": chain.counters(),
        "samples_out": n_out,
        "labels_out": {str(k): v for k, v in sorted(labels.items())},
        "balanced": chain.balanced(),
    }
    for step in chain.steps:
        for fname, obj in step.artifacts().items():
            atomic_write_json(out / fname, obj)
    _write_parquet(chain.manifest(), out / MANIFEST_NAME)
    atomic_write_json(out / COUNTERS_NAME, counters)
    return counters


def materialize_condition(
    shards: str | Path | list[str],
    specs: list[dict[str, Any]],
    *,
    study_seed: int,
    plan_dir: str | Path,
    out_dir: str | Path,
    num_classes: int | None,
    class_names: list[str] | None,
    samples_per_shard: int = 1000,
    kind: str = "image",
) -> list[Path]:
    """Write a conditioned stream as new shards (optional: the default is to corrupt in the
    trainer's stream, since a study at scale cannot copy its data per level).

    Needs the plans of :func:`condition_data` in ``plan_dir``; images are copied as bytes.
    """
    shard_list = list_shards(shards) if isinstance(shards, (str, Path)) else [str(s) for s in shards]
    chain = build_chain(specs, study_seed=study_seed, num_classes=num_classes, class_names=class_names,
                        plan_dir=plan_dir)
    stream = chain.apply(iter_samples(shard_list, decode=chain.needs_decode, kind=kind))
    return write_shards(stream, out_dir, samples_per_shard=samples_per_shard)


def corruptor_reference() -> str:
    """Markdown reference of every corruptor type: what it does and its parameters."""
    lines = ["# Corruptors", ""]
    for name in corruptor_types():
        cls = REGISTRY[name]
        doc = inspect.cleandoc(cls.__doc__ or "")
        lines += [f"## `{name}`", "", doc, "", "| parameter | allowed | default | meaning |", "|---|---|---|---|"]
        for pname, p in cls.PARAMS.items():
            default = "required" if p.required else repr(p.default)
            lines.append(f"| `{pname}` | {p.allowed()} | {default} | {p.doc} |")
        lines.append("")
    return "\n".join(lines)
