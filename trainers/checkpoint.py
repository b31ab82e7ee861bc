"""One checkpoint manager for every trainer: commit, resume, prune, export, the finished-run shortcut.

A cell's ``ckpt/`` directory::

    step_<N>/              DeepSpeed checkpoint of step N (sharded per rank under ZeRO)
    latest.json            the commit pointer: a checkpoint counts only once this names it; it
                           records the SHA-256 and size of every file of that checkpoint
    export/step_<N>/       full weights for evaluation, ``export.json`` inside; the directory is
                           built under a temp name and renamed, so it exists only when whole
    train_summary.json     written last, when training finished: a relaunch returns it as is

A commit is DeepSpeed's ``save_checkpoint`` on every rank, a barrier, then rank 0 moves the
pointer and prunes older checkpoints. A resume reads the pointer, checks that this run has the
same *shape* as the one that wrote it (ranks, batch, parameter layout: ZeRO shards and the
per-rank data stream only line up again then) and loads it. What an export holds is the
modality's business (open_clip weights, safetensors); where it lives and how it is committed is
decided here, once.

DeepSpeed checkpoints are pickles, and loading one can run any code it names. So a commit
records the SHA-256 and size of every file of the step's directory in the pointer, and a resume
loads nothing until every rank has checked the directory against that record: a changed,
missing or added file (a planted pickle) is refused with a :class:`CheckpointError` naming it.
This guards against files changed or planted after the commit, not against someone who can
rewrite the pointer as well: a run directory is trusted code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import CheckpointError

LATEST = "latest.json"
SUMMARY = "train_summary.json"
EXPORTS = "export"
EXPORT_RECORD = "export.json"
FILES = "files"  # the pointer's record of the checkpoint's files: relative path -> {"sha256", "size"}
_CHUNK = 1 << 20  # hash in 1 MiB reads: a multi-GB optimizer shard never sits in memory whole
_TAG = re.compile(r"step_\d+")


@dataclass(frozen=True, kw_only=True)
class Export:
    """One weight export: its directory and where in training it was taken."""

    step: int
    samples_seen: int
    path: str
    meta: dict[str, Any] = field(default_factory=dict)  # what the modality records (rung, tokenizer...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class TrainSummary:
    """What a training run did; the same type for every modality.

    ``samples_seen`` counts samples (CLIP pairs, LM packed sequences); ``flops_per_sample`` is
    the training cost of one (forward + backward). ``exports`` lists every export of the cell,
    earlier attempts' included. ``data_check`` says whether the trainer's corruptor counters
    matched the cell's data-condition stage (see ``trainers.data_check``). Modality-specific
    figures (tokens, the LM batch plan) go in ``extra``.
    """

    rung: str
    steps: int
    total_steps: int
    samples_seen: int
    global_batch: int
    world_size: int
    precision: str
    zero_stage: int
    params: int
    flops_per_sample: float
    train_seconds: float
    samples_per_s: float | None
    samples_per_s_steady: float | None = None
    final_loss: float | None
    loss_curve: tuple[tuple[int, float], ...] = ()
    epochs: int | None = None
    repeats: float | None = None
    exports: tuple[Export, ...] = ()
    resumed_from: int | None = None
    data_check: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One form whatever built it (a live run, or JSON): summaries compare equal.
        object.__setattr__(self, "loss_curve", tuple((int(s), float(v)) for s, v in self.loss_curve))
        object.__setattr__(self, "exports", tuple(e if isinstance(e, Export) else Export(**e) for e in self.exports))
        # Rows of the results table carry params and FLOPs: a zero here would be a silent lie.
        if self.params <= 0 or self.flops_per_sample <= 0:
            raise CheckpointError(
                f"train summary of {self.rung}: params={self.params}, flops_per_sample={self.flops_per_sample}; "
                "both must be positive"
            )

    @property
    def finished(self) -> bool:
        return self.steps >= self.total_steps

    @property
    def flops(self) -> float:
        """Training FLOPs up to the last step."""
        return self.flops_per_sample * self.samples_seen

    @property
    def final_export(self) -> Export:
        if not self.exports:
            raise CheckpointError(f"train summary of {self.rung}: no export was written")
        return self.exports[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "train summary") -> "TrainSummary":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(f"{where}: unknown field(s) {unknown}; written by another version of the trainer")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"{where}: {exc}") from None


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class CheckpointManager:
    """Commits, resumes, prunes and exports the checkpoints of one cell (every rank holds one).

    ``shape`` is what a resume must match — ``global_batch``, ``param_layout`` and whatever
    else fixes the data stream (the number of data slots, the LM's sequence length). The
    number of ranks (``world_size``) may differ: ZeRO-1/2 optimizer state is re-split. Both are
    recorded in every commit pointer.
    """

    def __init__(self, ckpt_dir: str | Path, *, keep: int, shape: Mapping[str, Any], world_size: int = 1) -> None:
        if keep < 1:
            raise CheckpointError(f"keep_checkpoints: got {keep}; expected >= 1")
        self.dir = Path(ckpt_dir)
        self.keep = keep
        self.shape = dict(shape)
        self.world_size = world_size

    # -- resume ------------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        """The commit pointer, or ``None`` when nothing was committed yet."""
        return read_latest(self.dir)

    def _check_shape(self, ptr: dict[str, Any]) -> None:
        tag = ptr["tag"]
        for key, want in self.shape.items():
            if key != "param_layout" and key in ptr and ptr[key] != want:
                raise CheckpointError(
                    f"{self.dir / LATEST}: checkpoint {tag} was written with {key}={ptr[key]}, this run has "
                    f"{key}={want}; ZeRO shards and the per-rank data stream only line up again with the same "
                    "value (resuming would not continue the data stream at the right sample): resume with the "
                    "same value or start a new cell"
                )
        layout = ptr.get("param_layout", 1)  # pointers written before layouts were recorded
        if "param_layout" in self.shape and layout != self.shape["param_layout"]:
            raise CheckpointError(
                f"{self.dir / LATEST}: checkpoint {tag} has parameter layout {layout}, this code uses "
                f"{self.shape['param_layout']}; its optimizer state would load into the wrong parameters: start a new cell"
            )

    def resume(self, engine: Any) -> dict[str, Any] | None:
        """Load the last committed checkpoint into ``engine``; its client state, or ``None``.

        The checkpoint may have been written by another number of ranks (ZeRO stages 0–2): the
        optimizer's partitions of every old rank are merged and re-split for this run's ranks.
        """
        ptr = self.latest()
        if ptr is None:
            return None
        self._check_shape(ptr)
        # Every rank checks the files itself, right before its own load: no rank unpickles a
        # file on another rank's word, and a refusal stops each of them alike.
        verify_checkpoint(self.dir, ptr)
        saved_world = int(ptr.get("world_size", self.world_size))
        stage = int(engine.zero_optimization_stage())
        if stage not in (1, 2):
            if stage == 3 and saved_world != self.world_size:
                raise CheckpointError(
                    f"{self.dir / ptr['tag']}: a ZeRO-3 checkpoint of {saved_world} ranks cannot resume on "
                    f"{self.world_size}: resume with {saved_world} workers, or use zero_stage 1 or 2"
                )
            path, client = engine.load_checkpoint(str(self.dir), tag=ptr["tag"], load_module_strict=True)
        else:
            # Module and LR schedule from DeepSpeed; the optimizer's partitions through its elastic
            # path, which merges every saved rank's partition and takes this rank's share.
            path, client = engine.load_checkpoint(str(self.dir), tag=ptr["tag"], load_module_strict=True,
                                                  load_optimizer_states=False)
            if path is not None:
                _load_zero_partitions(engine, self.dir / ptr["tag"], saved_world)
        if path is None or client is None:
            raise CheckpointError(f"{self.dir / ptr['tag']}: DeepSpeed could not load this committed checkpoint")
        return dict(client)

    # -- commit ------------------------------------------------------------------------------

    def commit(self, engine: Any, *, step: int, samples_seen: int, state: Mapping[str, Any]) -> None:
        """Save on every rank, then (rank 0) move the pointer and prune; every rank calls it."""
        tag = f"step_{step}"
        client = {"step": step, "samples_seen": samples_seen, **state}
        if _rank() == 0:
            self._clear_uncommitted(tag)
        _barrier()  # no rank writes into the directory before it is cleared
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client, save_latest=False)
        _barrier()
        if _rank() == 0:
            # After the barrier every rank's files are written (and, on the shared storage a run
            # directory must be on, visible here): the record covers all of them.
            files = record_files(self.dir / tag)
            atomic_write_json(self.dir / LATEST, {"tag": tag, "step": step, "samples_seen": samples_seen,
                                                  **self.shape, "world_size": self.world_size,
                                                  "committed_at": time.time(), FILES: files})
            self._prune(current=tag)
        _barrier()

    def _clear_uncommitted(self, tag: str) -> None:
        """Remove what an interrupted attempt left under ``tag``: the commit records every file
        of the directory, so it must hold only what this save writes (no stale rank's shard, no
        file put there before the save)."""
        tag_dir = self.dir / tag
        pointer = self.dir / LATEST
        committed = read_json(pointer).get("tag") if pointer.is_file() else None
        if tag_dir.exists() and tag != committed:
            shutil.rmtree(tag_dir)

    def _prune(self, current: str) -> None:
        tags = sorted((p for p in self.dir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
        for old in tags[: -self.keep]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[str]:
        """Tags of the DeepSpeed checkpoints on disk, oldest first."""
        return [p.name for p in sorted(self.dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1])) if p.is_dir()]

    # -- export ------------------------------------------------------------------------------

    def export(self, *, step: int, samples_seen: int, write: Callable[[Path], None],
               meta: Mapping[str, Any] | None = None) -> Export:
        """Rank 0 calls ``write(tmp_dir)`` and the directory is renamed into place; every rank
        calls this (after any collective gather of the weights) and gets the same record."""
        dest = self.dir / EXPORTS / f"step_{step}"
        rec = Export(step=step, samples_seen=samples_seen, path=str(dest), meta=dict(meta or {}))
        if _rank() == 0:
            with atomic_dir(dest) as tmp:
                write(tmp)
                atomic_write_json(tmp / EXPORT_RECORD, rec.to_dict())
        _barrier()
        return rec

    def exports(self) -> list[Export]:
        """Every whole export of the cell, by step (earlier attempts' included)."""
        out = []
        for d in (self.dir / EXPORTS).glob("step_*"):
            if (d / EXPORT_RECORD).is_file():
                out.append(Export(**{**read_json(d / EXPORT_RECORD), "path": str(d)}))
        return sorted(out, key=lambda e: e.step)

    # -- finish ------------------------------------------------------------------------------

    def finished(self, total_steps: int) -> TrainSummary | None:
        """The summary of a run that already trained ``total_steps`` steps (and whose final
        export is whole), or ``None``: a relaunch of a finished cell trains nothing."""
        p = self.dir / SUMMARY
        if not p.is_file():
            return None
        s = TrainSummary.from_dict(read_json(p), where=str(p))
        if s.steps != total_steps or not s.exports or not Path(s.final_export.path).is_dir():
            return None
        return s

    def finish(self, summary: TrainSummary) -> None:
        """Rank 0 writes the summary of a finished run (the finished-run shortcut reads it)."""
        if _rank() == 0 and summary.finished:
            atomic_write_json(self.dir / SUMMARY, summary.to_dict())
        _barrier()


def _load_zero_partitions(engine: Any, tag_dir: Path, saved_world: int) -> None:
    """Load the ZeRO-1/2 optimizer partitions of ``saved_world`` ranks into this run's engine.

    DeepSpeed's engine refuses a checkpoint of another data-parallel size outright, though its
    ZeRO optimizer can merge and re-split "elastic" checkpoints (the format our engine config
    asks for). Two gaps are filled here: a torch optimizer keeps its step per parameter, not in
    the param group where the elastic path looks for it (the per-parameter step is restored all
    the same); and the elastic path restores moments but not the param groups' learning rate,
    which is set from the restored schedule before the next step uses it.
    """
    import torch

    # DeepSpeed names a bf16 run's partitions bf16_zero_pp_rank_*; the run's precision is the saved one's.
    prefix = "bf16_" if engine.bfloat16_enabled() else ""
    files = [tag_dir / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(saved_world)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{tag_dir}: written by {saved_world} ranks but missing {missing[:3]}")
    states = []
    for f in files:
        sd = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        sd.setdefault("base_optimizer_state_step", 0)
        states.append(sd)
    # The elastic path merges the saved partitions in order and cuts this run's share, but reads
    # "its own" saved entry by rank: more ranks than were saved get empty partitions to find
    # (the merge is unchanged by them).
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    states += [_empty_partition(states[0]) for _ in range(world - len(states))]
    engine.optimizer.load_state_dict(state_dict_list=states, load_optimizer_states=True, load_from_fp32_weights=True)
    groups = engine.optimizer.optimizer.param_groups
    for group, lr in zip(groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr


def _empty_partition(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ZeRO partition entry holding no elements (same global state, empty tensors)."""
    import torch

    out = dict(saved)
    fp32 = saved["single_partition_of_fp32_groups"]
    out["single_partition_of_fp32_groups"] = [t.new_empty(0) for t in fp32]
    groups = []
    for part, group in zip(fp32, saved["base_optimizer_state"]):
        groups.append({k: v.new_empty(0) if torch.is_tensor(v) and v.shape == part.shape else v
                       for k, v in group.items()})
    out["base_optimizer_state"] = groups
    return out


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _scan(tag_dir: Path) -> tuple[dict[str, int], list[str]]:
    """The regular files under ``tag_dir`` (relative POSIX path -> size) and everything else
    there that is not a directory (symlinks, sockets...). Symlinks are never followed: a link
    would let a file outside the checkpoint stand in for one inside it."""
    files: dict[str, int] = {}
    others: list[str] = []
    stack = [tag_dir]
    while stack:
        here = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(tag_dir).as_posix()
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    others.append(rel)
    return files, sorted(others)


def record_files(tag_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The commit record of a checkpoint directory: every file's relative path -> SHA-256 and size."""
    tag_dir = Path(tag_dir)
    files, others = _scan(tag_dir)
    if others:
        raise CheckpointError(f"{tag_dir / others[0]}: not a regular file; a checkpoint holds only the files "
                              "DeepSpeed wrote, so this one cannot be committed")
    if not files:
        raise CheckpointError(f"{tag_dir}: DeepSpeed wrote no files; nothing to commit")
    return {rel: {"sha256": file_sha256(tag_dir / rel), "size": size} for rel, size in sorted(files.items())}


def verify_checkpoint(ckpt_dir: str | Path, ptr: Mapping[str, Any]) -> None:
    """Check the checkpoint ``ptr`` names against the files its commit recorded; raise a
    :class:`CheckpointError` naming the first offending file (and up to four more) otherwise.

    Every recorded file must be there with its size and SHA-256, and nothing else may be: a file
    added after the commit is how a planted pickle would get in. Sizes and the listing are checked
    before anything is hashed, so a tampered directory is refused without reading it.
    """
    root = Path(ckpt_dir)
    pointer = root / LATEST
    tag = str(ptr["tag"])
    if not _TAG.fullmatch(tag):
        raise CheckpointError(f"{pointer}: names checkpoint {tag!r}; expected step_<N>")
    tag_dir = root / tag
    record = ptr.get(FILES)
    if not isinstance(record, Mapping) or not record:
        raise CheckpointError(
            f"{pointer}: checkpoint {tag} was committed in an older format, without the SHA-256 of its files, so "
            f"it cannot be checked before it is loaded (loading a checkpoint unpickles it, which can run code): "
            f"start the cell over by deleting {root}"
        )
    on_disk, others = _scan(tag_dir)
    problems = [f"{tag_dir / rel}: unexpected file, not a regular one (a symlink?) and not among the files recorded "
                "at commit" for rel in others]
    problems += [f"{tag_dir / rel}: unexpected file, not among the files recorded at commit"
                 for rel in sorted(set(on_disk) - set(record))]
    problems += [f"{tag_dir / rel}: missing; it was recorded at commit" for rel in sorted(set(record) - set(on_disk))]
    for rel in sorted(set(record) & set(on_disk)):
        if on_disk[rel] != record[rel].get("size"):
            problems.append(f"{tag_dir / rel}: size {on_disk[rel]} bytes, {record[rel].get('size')} recorded at commit")
    if not problems:  # hash only a directory whose listing and sizes already match
        for rel in sorted(record):
            got, want = file_sha256(tag_dir / rel), record[rel].get("sha256")
            if got != want:
                problems.append(f"{tag_dir / rel}: SHA-256 digest mismatch (now {got}, recorded at commit {want})")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(
            "; ".join(problems[:5]) + more + f". Refusing to load checkpoint {tag}: its files are not the ones "
            f"committed, and loading a checkpoint unpickles it, which can run code. If you did not change them "
            f"yourself, treat the run directory as compromised; start the cell over by deleting {root}"
        )


def read_latest(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """The commit pointer of ``ckpt_dir``, or ``None``; a pointer to a missing checkpoint is an error."""
    p = Path(ckpt_dir) / LATEST
    if not p.is_file():
        return None
    ptr = read_json(p)
    if not (Path(ckpt_dir) / ptr["tag"]).is_dir():
        raise CheckpointError(f"{p} names checkpoint {ptr['tag']!r}, but {Path(ckpt_dir) / ptr['tag']} does not exist")
    return dict(ptr)


def committed_step(ckpt_dir: str | Path) -> int | None:
    """The step of the last committed checkpoint in ``ckpt_dir`` — for saying where a cell
    stands; ``None`` when there is none or its pointer cannot be read (loading goes through
    :func:`read_latest` and its checks instead)."""
    try:
        return int(read_json(Path(ckpt_dir) / LATEST)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_summary(ckpt_dir: str | Path) -> TrainSummary:
    """The summary a finished training run left in ``ckpt_dir`` (what a launcher returns)."""
    p = Path(ckpt_dir) / SUMMARY
    if not p.is_file():
        raise CheckpointError(f"{p}: training finished but wrote no summary (is {Path(ckpt_dir).parent} on shared storage?)")
    return TrainSummary.from_dict(read_json(p), where=str(p))
