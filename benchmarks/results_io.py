"""Writing benchmark records: one place for the JSON layout every benchmark script shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_record(out: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``out`` as indented JSON (parent directories created) and echo it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    path.write_text(text + "\n")
    print(text)
