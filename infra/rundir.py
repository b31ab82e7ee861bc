"""The run-directory layout: where every artifact of a study lives.

```
RUN_DIR/
  study.json                    the validated spec, as run
  cells/<cell_id>/
    cell.json                   the cell's canonical config (its id is the hash of this)
    data/manifest.parquet       corruptor decisions: touched keys and what was done
    data/counters.json          corruptor counters (in = out + dropped - added)
    data/inputs.json            size and SHA-256 of each input shard the condition read
    ckpt/step_<N>/              committed checkpoints (a directory exists only when whole)
    ckpt/latest.json            pointer to the last committed checkpoint
    eval/results.parquet        tidy rows: one per (task, split, metric)
    timings.json                wall time per stage
    progress.json               while training: step, loss, samples/s (rank 0, every few seconds)
    stop.request                asks the running trainer to commit a checkpoint and stop
    failure.json                the stage and cause of the last failure (until the cell runs again)
    _COMPLETE.json              written last, atomically: the only sign a cell is done
  results/                      cross-cell table, fits, plots, summary
  launches/<launch id>.json     each launch's flow runs and heartbeat (a dead one's are marked Crashed)
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_write_json

COMPLETE_MARKER = "_COMPLETE.json"


class _Below:
    """A read-only path attribute: ``parts`` below the directory's ``root``."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, obj: Any, owner: type | None = None) -> Path:
        if obj is None:
            raise AttributeError(f"<root>/{'/'.join(self.parts)} is a path of an instance")
        return Path(obj.root).joinpath(*self.parts)


@dataclass(frozen=True)
class CellDir:
    """Paths of one cell's artifacts (the layout in the module docstring)."""

    root: Path

    config = _Below("cell.json")
    data = _Below("data")
    manifest = _Below("data", "manifest.parquet")
    counters = _Below("data", "counters.json")
    inputs = _Below("data", "inputs.json")
    ckpt = _Below("ckpt")
    eval = _Below("eval")
    results = _Below("eval", "results.parquet")
    timings = _Below("timings.json")
    progress = _Below("progress.json")
    stop_request = _Below("stop.request")
    failure = _Below("failure.json")
    complete = _Below(COMPLETE_MARKER)

    def is_complete(self) -> bool:
        return self.complete.is_file()

    def mark_complete(self, summary: dict[str, Any]) -> None:
        """Write the completion marker — last, atomically; nothing else means done."""
        atomic_write_json(self.complete, summary)


@dataclass(frozen=True)
class RunDir:
    """Paths of one study run."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> "RunDir":
        return cls(Path(path).expanduser().resolve())

    study = _Below("study.json")
    cells_root = _Below("cells")
    results = _Below("results")
    launches = _Below("launches")

    def cell(self, cell_id: str) -> CellDir:
        return CellDir(self.cells_root / cell_id)

    def cells(self) -> list[CellDir]:
        if not self.cells_root.is_dir():
            return []
        return [CellDir(p) for p in sorted(self.cells_root.iterdir()) if p.is_dir()]

    def completed_cells(self) -> list[CellDir]:
        return [c for c in self.cells() if c.is_complete()]
