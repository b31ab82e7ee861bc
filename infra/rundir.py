"""The run-directory layout: where every artifact of a study lives.

```
RUN_DIR/
  study.json                    the validated spec, as run
  cells/<cell_id>/
    cell.json                   the cell's canonical config (its id is the hash of this)
    data/manifest.parquet       corruptor decisions: touched keys and what was done
    data/counters.json          corruptor counters (in = out + dropped - added)
    ckpt/step_<N>/              committed checkpoints (a directory exists only when whole)
    ckpt/latest.json            pointer to the last committed checkpoint
    eval/results.parquet        tidy rows: one per (task, split, metric)
    timings.json                wall time per stage
    _COMPLETE.json              written last, atomically: the only sign a cell is done
  results/                      cross-cell table, fits, plots, summary
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_write_json, read_json

COMPLETE_MARKER = "_COMPLETE.json"


@dataclass(frozen=True)
class CellDir:
    """Paths of one cell's artifacts."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "cell.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.root / "data" / "manifest.parquet"

    @property
    def counters(self) -> Path:
        return self.root / "data" / "counters.json"

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> Path:
        return self.root / "eval" / "results.parquet"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def complete(self) -> Path:
        return self.root / COMPLETE_MARKER

    def is_complete(self) -> bool:
        return self.complete.is_file()

    def mark_complete(self, summary: dict[str, Any]) -> None:
        """Write the completion marker — last, atomically; nothing else means done."""
        atomic_write_json(self.complete, summary)

    def read_complete(self) -> dict[str, Any]:
        return read_json(self.complete)


@dataclass(frozen=True)
class RunDir:
    """Paths of one study run."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> "RunDir":
        return cls(Path(path).expanduser().resolve())

    @property
    def study(self) -> Path:
        return self.root / "study.json"

    @property
    def cells_root(self) -> Path:
        return self.root / "cells"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def cell(self, cell_id: str) -> CellDir:
        return CellDir(self.cells_root / cell_id)

    def cells(self) -> list[CellDir]:
        if not self.cells_root.is_dir():
            return []
        return [CellDir(p) for p in sorted(self.cells_root.iterdir()) if p.is_dir()]

    def completed_cells(self) -> list[CellDir]:
        return [c for c in self.cells() if c.is_complete()]
