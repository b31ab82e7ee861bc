"""``inheritlab example own-data DIR``: a study on data in other tools' layouts, ready to run.

Writes ``DIR/data`` (img2dataset-style train shards and a CLIP_benchmark-style evaluation
suite, built offline from scikit-learn's handwritten digits: ``corruptors/foreign.py``) and
``DIR/own-data.yaml``, the shipped template with its paths filled in. Nothing of the data is
in our layout: it is the path a user with their own data takes (docs/data.md).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EXAMPLES = ("own-data",)


def write_example(name: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Write the example's data and spec under ``directory``; the spec's path."""
    from inheritlab.corruptors.foreign import write_foreign_data
    from inheritlab.infra.atomic import atomic_write_text
    from inheritlab.infra.errors import SpecError

    if name not in EXAMPLES:
        raise SpecError(f"no example {name!r}; examples: {list(EXAMPLES)}")
    out = Path(directory).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = write_foreign_data(out / "data", seed=seed)
    template = resources.files("inheritlab.flows").joinpath("examples", f"{name}.yaml").read_text(encoding="utf-8")
    spec = out / f"{name}.yaml"
    atomic_write_text(spec, template.replace("@ROOT@", str(data.root)))
    return spec
