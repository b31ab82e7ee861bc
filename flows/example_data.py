"""``inheritlab example NAME DIR``: a study on data in other tools' layouts, ready to run.

Writes ``DIR/data`` (img2dataset-style train shards and a CLIP_benchmark-style evaluation
suite, built offline from real handwritten digits: ``corruptors/foreign.py``) and
``DIR/NAME.yaml``, the shipped template with its paths filled in. Nothing of the data is in our
layout: it is the path a user with their own data takes (docs/data.md).

- ``own-data``: scikit-learn's digits for training, held-out digits as the ID split and the
  same digits colour-inverted as the OOD split.
- ``real-digits``: the same training data and ID split, and real MNIST digits (another
  population of writers and scanners, the same ten classes) as the OOD split and a suite task.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

# MNIST digits in the real-digits example's OOD task: enough for a stable accuracy (about 100
# per class), few enough to write in about a second.
REAL_DIGITS_MNIST = 1000

# Each example's extra arguments to write_foreign_data (its data beyond the default digits).
_DATA_ARGS: dict[str, dict[str, Any]] = {
    "own-data": {},
    "real-digits": {"mnist": REAL_DIGITS_MNIST},
}
EXAMPLES = tuple(_DATA_ARGS)


def write_example(name: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Write the example's data and spec under ``directory``; the spec's path."""
    from inheritlab.corruptors.foreign import write_foreign_data
    from inheritlab.infra.atomic import atomic_write_text
    from inheritlab.infra.errors import SpecError

    if name not in EXAMPLES:
        raise SpecError(f"no example {name!r}; examples: {list(EXAMPLES)}")
    out = Path(directory).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = write_foreign_data(out / "data", seed=seed, **_DATA_ARGS[name])
    template = resources.files("inheritlab.flows").joinpath("examples", f"{name}.yaml").read_text(encoding="utf-8")
    spec = out / f"{name}.yaml"
    atomic_write_text(spec, template.replace("@ROOT@", str(data.root)))
    return spec
