"""The measurements behind the LM evaluation tasks: scoring token sequences, reading documents.

One forward pass scores a batch: the summed loss of each sequence's targets from a start
position on, and whether every target is the argmax — what greedy decoding would produce
(teacher forcing gives the same event at the cost of one pass). The tasks
(``trainers/lm_tasks.py``) are small functions over these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from inheritlab.corruptors.shards import iter_samples
from inheritlab.corruptors.tokenizer import TextTokenizer
from inheritlab.trainers.eval_tasks import chunks
from inheritlab.trainers.lm_adapt import target_batch
from inheritlab.trainers.lm_models import IGNORE_INDEX, LlamaLM

# (summed loss of the scored targets, their count, whether all are the argmax)
Score = tuple[float, int, bool]


@torch.no_grad()
def score_sequences(model: LlamaLM, seqs: Sequence[tuple[list[int], int]], *, batch_size: int) -> list[Score]:
    """For each (tokens, start): summed loss and count of the targets from ``start`` on, and
    whether every one of them is the argmax (what greedy decoding would produce)."""
    device = model.embed_tokens.weight.device
    out: list[Score] = []
    for chunk in chunks(list(seqs), batch_size):
        inp, tgt = target_batch(chunk, model.cfg.max_seq_len + 1)
        inp, tgt = inp.to(device), tgt.to(device)
        logits = model.logits(inp).float()  # [B, T, V]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=IGNORE_INDEX,
                                                reduction="none")  # [B, T]
        mask = tgt != IGNORE_INDEX
        hit = (logits.argmax(-1) == tgt) | ~mask
        for i in range(len(inp)):
            out.append((float(nll[i][mask[i]].sum()), int(mask[i].sum()), bool(hit[i].all())))
    return out


def read_docs(shards: list[str], keys: set[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The text samples of ``shards`` (only ``keys`` when given; the first ``limit``)."""
    out = []
    for s in iter_samples(shards, kind="text"):
        if keys is None or s["__key__"] in keys:
            out.append(s)
            if limit is not None and len(out) >= limit:
                break
    return out


def doc_sequences(tok: TextTokenizer, docs: list[dict[str, Any]]) -> list[tuple[list[int], int]]:
    """Whole documents to score, each after an end-of-text token as in training."""
    return [([tok.eos_id] + tok.encode(d["text"]) + [tok.eos_id], 1) for d in docs]


def mean_loss(scores: list[Score]) -> float:
    """Per-token loss over all scored targets."""
    n = sum(c for _, c, _ in scores)
    return sum(s for s, _, _ in scores) / n if n else float("nan")


def accuracy(scores: list[Score]) -> float:
    """Fraction of sequences whose every scored target is the argmax."""
    return sum(h for *_, h in scores) / max(1, len(scores))


def duplicated_keys(data_dir: str | Path) -> list[str]:
    """Training keys the ``duplicate`` corruptor repeated in a cell (from its ``manifest.parquet``)."""
    import polars as pl

    path = Path(data_dir) / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run the data-condition stage of the cell first)")
    man = pl.read_parquet(path)
    return sorted(set(man.filter((pl.col("type") == "duplicate") & (pl.col("action") == "duplicate"))["key"].to_list()))
