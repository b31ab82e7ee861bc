"""The golden corruption manifest: the source samples, the chain, and the writer of the files.

``tests/unit/test_golden_manifest.py`` imports the definitions below and checks the
data-condition stage and the chain in 1, 2 and 4 loader worker processes against the files
this script wrote once (``golden_manifest.csv``, ``golden_stream.csv``,
``golden_counters.json``). Those files are the record of what the code decided; a change to
any decision (the hash, a corruptor's rule, the order of steps) shows up as a diff of them.

Regenerate only when a change of decisions is intended (and bump the cell code epoch with it)::

    python tests/data/make_golden_manifest.py
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST_CSV = HERE / "golden_manifest.csv"
STREAM_CSV = HERE / "golden_stream.csv"
COUNTERS_JSON = HERE / "golden_counters.json"

NAMES = ["circle", "square", "triangle", "cross", "ring"]
SEED = 20261202
N_SAMPLES = 240
PER_SHARD = 20  # 12 shards: every one of 4 loader workers reads 3
# Every kind of step: a pool cut (drops), duplication (adds), a planned caption bank, and an
# exact-count (planned) label flip that sees the copies the step before it added.
SPECS: list[dict[str, Any]] = [
    {"type": "subsample", "fraction": 0.85},
    {"type": "duplicate", "level": 0.1, "repeats": 2},
    {"type": "caption_noise", "level": 0.25, "mode": "random"},
    {"type": "label_noise", "level": 0.3, "count": "exact"},
]
# A valid 1x1 PNG: the chain never decodes it, but image–caption samples need an image member.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
MANIFEST_COLUMNS = ("key", "corruptor", "type", "action", "detail")
STREAM_COLUMNS = ("key", "label", "caption")


def samples() -> list[dict[str, Any]]:
    return [
        {"__key__": f"k{i:05d}", "caption": f"a red {NAMES[i % 5]} on a black background.", "label": i % 5,
         "meta": {}, "image": PNG, "image_ext": "png"}
        for i in range(N_SAMPLES)
    ]


def write_source(root: Path) -> list[str]:
    """The source shards (byte-identical on every call: tar headers are fixed)."""
    from inheritlab.corruptors.shards import write_shards

    return [str(p) for p in write_shards(samples(), root, samples_per_shard=PER_SHARD)]


def manifest_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Decisions as sorted tuples of strings: the order of discovery is not part of a decision."""
    return sorted(tuple(str(r[c]) for c in MANIFEST_COLUMNS) for r in rows)


def stream_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(r[c]) for c in STREAM_COLUMNS) for r in rows)


def read_csv(path: Path) -> list[tuple[str, ...]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)  # header
        return [tuple(row) for row in reader]


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def condition(shards: list[str], out_dir: Path) -> dict[str, Any]:
    from inheritlab.corruptors.chain import condition_data

    return condition_data(shards, SPECS, study_seed=SEED, out_dir=out_dir, num_classes=len(NAMES), class_names=NAMES)


def comparable_counters(counters: dict[str, Any]) -> dict[str, Any]:
    """The counters a pass over the stream fixes (JSON round trip: keys as strings)."""
    return json.loads(json.dumps({"corruptors": counters["corruptors"], "samples_out": counters["samples_out"],
                                  "labels_out": counters["labels_out"]}, sort_keys=True))


def main() -> int:
    import polars as pl

    from inheritlab.corruptors.chain import build_chain
    from inheritlab.corruptors.shards import iter_samples

    with tempfile.TemporaryDirectory() as tmp:
        shards = write_source(Path(tmp) / "src")
        counters = condition(shards, Path(tmp) / "cond")
        manifest = pl.read_parquet(Path(tmp) / "cond" / "manifest.parquet")
        chain = build_chain(SPECS, study_seed=SEED, num_classes=len(NAMES), class_names=NAMES,
                            plan_dir=Path(tmp) / "cond")
        out = [{"key": s["__key__"], "label": s["label"], "caption": s["caption"]}
               for s in chain.apply(iter_samples(shards, decode=False))]
    _write_csv(MANIFEST_CSV, MANIFEST_COLUMNS, manifest_rows(manifest.to_dicts()))
    _write_csv(STREAM_CSV, STREAM_COLUMNS, stream_rows(out))
    COUNTERS_JSON.write_text(json.dumps(comparable_counters(counters), indent=2, sort_keys=True) + "\n")
    print(f"{manifest.height} decisions, {len(out)} samples out -> {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
