"""The check before training of a CLIP study's data: seconds at ``validate`` and at the start
of ``run``, instead of an error an hour into the study.

It opens every split of the user's shards and reads the first sample of each shard (every file
opens, images decode, members have the expected form), reads the class metadata, and checks
that the data offers what the study asks for: labels and class names for the classification
tasks and for the biases that read labels (label noise, label-concept imbalance), captions for
training and for retrieval, labels within the class names. The evaluation suites of
``eval.suites`` are checked the same way. Each error names the field or file and what to
supply (docs/data.md is the contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inheritlab.infra.cell import DataConfig, EvalConfig, SuitesConfig
from inheritlab.infra.errors import InheritlabError

# Which splits a task reads labels from (the probe also fits on train samples).
LABEL_SPLITS = {"zeroshot": ("test_id", "test_ood"), "linear_probe": ("train", "test_id", "test_ood")}
LABEL_HOW = "a .cls member per sample, or data.shards.label_key naming the key of the sample's .json that holds it"


def _first(shards: list[str], *, kind: str, label_key: str | None) -> list[dict[str, Any]]:
    from inheritlab.corruptors.shards import first_samples

    return list(first_samples(shards, kind=kind, label_key=label_key, decode=True))


def _label_problems(field: str, samples: list[dict[str, Any]], num_classes: int, source: str,
                    needed_by: Sequence[str] = ()) -> list[str]:
    """Samples without a label, or with one outside the class names."""
    out = []
    unlabelled = [s for s in samples if s["label"] < 0]
    if unlabelled:
        s = unlabelled[0]
        who = f" ({', '.join(needed_by)} read labels)" if needed_by else ""
        out.append(f"{field}: {len(unlabelled)} of {len(samples)} shards start with a sample without a label "
                   f"({s['__shard__']}, sample {s['__key__']!r}){who}; supply {LABEL_HOW}")
    outside = [s for s in samples if s["label"] >= num_classes > 0]
    if outside:
        s = outside[0]
        out.append(f"{field}: label {s['label']} of sample {s['__key__']!r} ({s['__shard__']}) is outside the "
                   f"{num_classes} class names of {source}")
    return out


def _check_shards(data: DataConfig, tasks: Sequence[str], label_splits: dict[str, list[str]]) -> list[str]:
    """Errors in the user's shards for these tasks; ``label_splits``: split → what reads its labels."""
    from inheritlab.corruptors.classes import CLASSNAMES, user_world

    assert data.shards is not None
    shards = data.shards
    try:
        world = user_world(shards.given(), classnames=shards.classnames, templates=shards.templates)
    except InheritlabError as exc:
        return [f"data.shards: {exc}"]
    errors: list[str] = []
    names = list(world.class_names)
    source = ", ".join(world.config.get("class_metadata", [])) or "the class metadata"
    if label_splits and not names:
        errors.append(f"data.shards: the tasks and biases asked for read labels, and there are no class names: put "
                      f"a {CLASSNAMES} at {world.root / CLASSNAMES} (one name per line, in label order) or name one "
                      "in data.shards.classnames")
    for split, files in world.splits.items():
        field = f"data.shards.{split}"
        try:
            first = _first(files, kind="picture", label_key=shards.label_key)
        except InheritlabError as exc:
            errors.append(f"{field}: {exc}")
            continue
        if split == "train" and (bare := [s for s in first if not s["caption"]]):
            errors.append(f"{field}: sample {bare[0]['__key__']!r} of {bare[0]['__shard__']} has no caption (a .txt "
                          "member); contrastive pre-training needs one per image")
        if split == "test_id" and "retrieval" in tasks and (bare := [s for s in first if not s["caption"]]):
            errors.append(f"{field}: task 'retrieval' needs captions, and sample {bare[0]['__key__']!r} of "
                          f"{bare[0]['__shard__']} has none (a .txt member); or leave 'retrieval' out of eval.tasks")
        if split in label_splits:
            errors += _label_problems(field, first, len(names), source, label_splits[split])
    return errors


def _check_biases(biases: Sequence[dict[str, Any]], names: list[str], study_seed: int) -> tuple[list[str], list[str]]:
    """Errors building each bias's corruptor against the data's classes; the biases that read labels."""
    from inheritlab.corruptors.chain import build_chain

    errors, labels = [], []
    for spec in biases:
        try:
            chain = build_chain([spec], study_seed=study_seed, num_classes=len(names) or None,
                                class_names=names or None)
        except InheritlabError as exc:
            errors.append(f"grid.bias ({spec['type']}): {exc}")
            continue
        if any(step.needs_labels for step in chain.steps):
            labels.append(f"bias {spec['type']}")
    return errors, labels


def _check_suites(suites: SuitesConfig) -> list[str]:
    from inheritlab.corruptors.suites import open_suite

    try:
        opened = open_suite(suites.root, suites.tasks, suites.split)
    except InheritlabError as exc:
        return [str(exc)]
    errors = []
    for t in opened:
        field = f"eval.suites.tasks: {t.name!r}"
        try:
            first = _first(list(t.shards), kind="image" if t.kind == "retrieval" else "labeled", label_key=None)
        except InheritlabError as exc:
            errors.append(f"{field}: {exc}")
            continue
        if t.kind == "classification":
            errors += _label_problems(field, first, len(t.class_names), str(t.root / "classnames.txt"))
    return errors


def check_clip_data(data: DataConfig, ev: EvalConfig, tasks: Sequence[str], biases: Sequence[dict[str, Any]], *,
                    study_seed: int) -> list[str]:
    """Every problem the data has for this study (empty: it can run)."""
    from inheritlab.corruptors.world import class_names_for

    label_splits: dict[str, list[str]] = {}
    for t in tasks:
        for split in LABEL_SPLITS.get(t, ()):
            label_splits.setdefault(split, []).append(f"task {t}")
    errors: list[str] = []
    if data.source == "shards":
        # Which biases read labels is known only once they are built against the class names:
        # build them first against the names the files give, then read the shards once.
        from inheritlab.corruptors.classes import class_info, metadata_dir

        assert data.shards is not None
        try:
            info = class_info(metadata_dir(data.shards.train), classnames=data.shards.classnames,
                              templates=data.shards.templates)
        except InheritlabError as exc:
            return [f"data.shards: {exc}"]
        names = list(info.names) if info else []
        bias_errors, bias_labels = _check_biases(biases, names, study_seed)
        if bias_labels:
            label_splits.setdefault("train", []).extend(bias_labels)
        shard_errors = _check_shards(data, tasks, label_splits)
        errors += shard_errors + bias_errors
    else:
        errors += _check_biases(biases, class_names_for(data.world.num_classes), study_seed)[0]
    if ev.suites is not None and "suites" in tasks:
        errors += _check_suites(ev.suites)
    return errors
