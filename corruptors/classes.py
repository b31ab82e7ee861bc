"""Class names and prompt templates of a user's data: the files other tools write, or ours.

The class metadata of a data directory (beside ``data.shards.train`` — see
:func:`metadata_dir` — or a CLIP_benchmark task directory) is read from:

- ``classnames.txt`` — one class name per line, in label order (CLIP_benchmark, DataComp);
- ``zeroshot_classification_templates.txt`` — one prompt template per line, ``{c}`` standing for
  the class name (CLIP_benchmark);
- ``world.json`` — our metadata file: ``class_names`` (a list), optionally ``prompt_templates``
  (``{}`` or ``{c}`` for the class name).

**The rule when both are present:** their class names must agree, or it is an error naming both
files. Templates come from the templates file, else ``world.json``, else the built-in prompts.
Explicit paths (``data.shards.classnames``/``templates``) replace the directory lookup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inheritlab.corruptors.shards import list_shards
from inheritlab.corruptors.world import PROMPT_TEMPLATES, WorldInfo
from inheritlab.infra.atomic import read_json
from inheritlab.infra.errors import ShardError

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
METADATA = "world.json"


@dataclass(frozen=True)
class ClassInfo:
    """Class names in label order, prompt templates, and the files they came from."""

    names: tuple[str, ...]
    templates: tuple[str, ...]
    sources: tuple[str, ...]


def fill_template(template: str, name: str) -> str:
    """A prompt from a template: ``{c}`` (CLIP_benchmark) or ``{}`` (ours) is the class name."""
    if "{c}" in template:
        return template.replace("{c}", name)
    return template.replace("{}", name)


def _lines(path: Path, what: str) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardError(str(path), None, f"cannot read the {what} ({exc})") from None
    if not lines:
        raise ShardError(str(path), None, f"the {what} file is empty")
    return lines


def _checked_templates(templates: list[str], source: str) -> list[str]:
    for i, t in enumerate(templates, 1):
        if "{c}" not in t and "{}" not in t:
            raise ShardError(source, None, f"template {i} ({t!r}) has no {{c}} or {{}} for the class name")
    return templates


def _from_metadata(path: Path) -> tuple[list[str], list[str] | None]:
    data = read_json(path)
    names = data.get("class_names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ShardError(str(path), None, "'class_names' must be a non-empty list of class names (strings)")
    if data.get("num_classes", len(names)) != len(names):
        raise ShardError(str(path), None, f"'num_classes' is {data['num_classes']} but 'class_names' lists {len(names)}")
    templates = data.get("prompt_templates")
    return list(names), _checked_templates(list(templates), str(path)) if templates else None


def class_info(directory: str | os.PathLike[str], *, classnames: str | None = None,
               templates: str | None = None) -> ClassInfo | None:
    """The class metadata of ``directory`` by the rule above, or ``None`` when it has none."""
    d = Path(directory).expanduser()
    names_file = Path(classnames).expanduser() if classnames else d / CLASSNAMES
    tpl_file = Path(templates).expanduser() if templates else d / TEMPLATES
    meta_file = d / METADATA
    if classnames and not names_file.is_file():
        raise ShardError(str(names_file), None, "data.shards.classnames: no such file")
    if templates and not tpl_file.is_file():
        raise ShardError(str(tpl_file), None, "data.shards.templates: no such file")
    names: list[str] | None = None
    tpls: list[str] | None = None
    sources: list[str] = []
    if names_file.is_file():
        names = _lines(names_file, "class names")
        sources.append(str(names_file))
    if meta_file.is_file() and not classnames:
        meta_names, meta_tpls = _from_metadata(meta_file)
        if names is not None and meta_names != names:
            raise ShardError(str(meta_file), None, f"its class_names disagree with {names_file} (first difference: "
                             f"{next((a, b) for a, b in zip(meta_names + [None], names + [None]) if a != b)}); keep one "
                             "list, or make them equal")
        names = names or meta_names
        tpls = meta_tpls
        sources.append(str(meta_file))
    if names is None:
        return None
    if tpl_file.is_file():
        tpls = _checked_templates(_lines(tpl_file, "templates"), str(tpl_file))
        sources.append(str(tpl_file))
    return ClassInfo(names=tuple(names), templates=tuple(tpls or PROMPT_TEMPLATES), sources=tuple(sources))


def metadata_dir(train: str | os.PathLike[str]) -> Path:
    """Where the class metadata of a user's training data lives: the train directory itself
    when it holds ``classnames.txt`` or ``world.json``, else the directory above it (beside the
    train split). A brace pattern's directory is the one its shards are in."""
    p = Path(train).expanduser()
    pattern = p.suffix == ".tar" or any(c in p.name for c in "{*?[")
    d = p.parent if pattern and not p.is_dir() else p
    if any((d / f).is_file() for f in (CLASSNAMES, METADATA)):
        return d
    return d.parent


def user_world(shards: dict[str, str], *, classnames: str | None = None, templates: str | None = None) -> WorldInfo:
    """The :class:`WorldInfo` of a user's image shards (split name → dir or pattern), with the
    class metadata of :func:`metadata_dir` (no class names: ``num_classes`` 0)."""
    root = metadata_dir(shards["train"])
    splits = {split: list_shards(p) for split, p in shards.items() if p}
    info = class_info(root, classnames=classnames, templates=templates)
    if info is None:
        return WorldInfo(root=root, class_names=[], prompt_templates=list(PROMPT_TEMPLATES), splits=splits, num_classes=0)
    return WorldInfo(root=root, class_names=list(info.names), prompt_templates=list(info.templates), splits=splits,
                     num_classes=len(info.names), config={"class_metadata": list(info.sources)})
