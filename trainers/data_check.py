"""Check a trainer's data stream against the cell's data-condition stage.

The data-condition stage counts what the corruptor chain did over one pass of the training
shards (``data/counters.json``). The trainer rebuilds the same chain in its own stream, split
over ranks and loader workers — the *slots* — which between them read every shard once per
pass. Each slot reports its chain counters at the end of its first pass; summed over all slots
they must equal the recorded ones, step by step and counter by counter. A mismatch means the
model trained on other data than the cell's manifest says (a changed shard, a plan of another
config), so it fails the run, naming the counters that differ.

A run shorter than one pass cannot be checked in full; the summary then says how many slots
completed one.

Bad samples follow one policy in every stage: the study's ceiling is a fraction of the whole
split. The condition stage judges it over the whole train split as it reads; a training slot
reads only its share, so slots skip and count (:func:`slot_ceiling`) and the ceiling is judged
here over all slots' first passes — undecodable images, which only training decodes, included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import read_json
from inheritlab.infra.errors import DataAccountingError

COUNTERS_FILE = "counters.json"


def pass_report(slot: tuple[int, int], counters: dict[str, Any], read: dict[str, Any]) -> dict[str, Any]:
    """What one slot (rank, loader worker) reports after its first pass: chain and read counters."""
    return {"slot": list(slot), "counters": counters,
            "read": {"samples": read["samples"], "skipped": read["skipped"], "problems": read["problems"][:3]}}


def slot_ceiling(ceiling: float | int) -> float | int:
    """The ceiling one data slot reads under: strict stays strict (``0``); otherwise the slot
    skips and counts (``1.0``), and :func:`check_stream` judges the study's ceiling over the
    whole split — bad samples clustered in one slot's shards do not fail a split under it."""
    return 0 if ceiling == 0 else 1.0


def check_stream(plan_dir: str | None, reports: list[dict[str, Any]], *, slots: int,
                 ceiling: float | int = 1.0) -> dict[str, Any]:
    """Compare the slots' first-pass counters with the cell's ``counters.json``, and judge the
    bad-sample ``ceiling`` over everything the slots' first passes read.

    ``reports`` holds at most one report per slot (rank × loader worker); ``slots`` is how many
    there are. Returns the check's record for the train summary; raises
    :class:`DataAccountingError` on a mismatch and ``BadSampleCeilingError`` past the ceiling.
    """
    from inheritlab.corruptors.counters import counter_mismatches, sum_counters
    from inheritlab.corruptors.shards import ReadStats, check_ceiling

    by_slot = {tuple(r["slot"]): r for r in reports}
    read = {"samples": sum(r["read"]["samples"] for r in by_slot.values()), "skipped": {}}
    for r in by_slot.values():
        for reason, n in r["read"]["skipped"].items():
            read["skipped"][reason] = read["skipped"].get(reason, 0) + n
    total = ReadStats(samples=read["samples"])
    total.skipped.update(read["skipped"])
    total.problems.extend(p for r in by_slot.values() for p in r["read"].get("problems", [])[:3])
    check_ceiling(total, ceiling)
    record: dict[str, Any] = {"slots": slots, "slots_reported": len(by_slot), "first_pass_read": read}
    path = Path(plan_dir) / COUNTERS_FILE if plan_dir else None
    if path is None or not path.is_file():
        return {**record, "status": "not checked: the cell has no data-condition counters"}
    if len(by_slot) < slots:
        return {**record, "status": f"not checked: {len(by_slot)} of {slots} data slots completed a first pass"}
    expected = read_json(path)
    got = sum_counters(r["counters"] for r in by_slot.values())
    problems = counter_mismatches(expected["corruptors"], got)
    if problems:
        raise DataAccountingError(
            f"the trainer's data stream does not match the cell's data-condition stage ({path}): "
            + "; ".join(problems[:6])
            + f". The trainer read {read['samples']} samples in its first pass (skipped {read['skipped']}); "
            f"the condition stage read {expected['source']['samples']} (skipped {expected['source']['skipped']}). "
            "Were the shards changed after conditioning? Remove the cell's data/ directory to condition it again"
        )
    return {**record, "status": "matched"}


class StreamChecker:
    """Collects this rank's first-pass reports during training; :meth:`finish` checks them all.

    ``finish`` is a collective (every rank calls it, and every rank raises on a mismatch, so
    no rank is left waiting in a barrier).
    """

    def __init__(self, *, plan_dir: str | None, slots: int, ceiling: float | int = 1.0) -> None:
        self.plan_dir = plan_dir
        self.slots = slots
        self.ceiling = ceiling
        self._reports: dict[tuple[int, ...], dict[str, Any]] = {}

    def collect(self, report: dict[str, Any] | None) -> None:
        if report is not None:
            self._reports[tuple(report["slot"])] = report

    def finish(self) -> dict[str, Any]:
        from inheritlab.trainers.engine import all_gather

        reports = [r for part in all_gather(list(self._reports.values())) for r in part]
        return check_stream(self.plan_dir, reports, slots=self.slots, ceiling=self.ceiling)
