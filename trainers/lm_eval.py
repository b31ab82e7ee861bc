"""The measurements behind the LM evaluation tasks: scoring token sequences, reading documents.

One forward pass scores a batch: the summed loss of each sequence's targets from a start
position on, and whether every target is the argmax — what greedy decoding would produce
(teacher forcing gives the same event at the cost of one pass). The tasks
(``trainers/lm_tasks.py``) are small functions over these.

Documents are scored whole: perplexity over every token of every document, rolling windows of
the model's context, as lm-evaluation-harness's ``loglikelihood_rolling`` does (its
``get_rolling_token_windows`` with ``context_len=1`` and ``make_disjoint_window``). A document's
tokens follow the end-of-text token every document follows in training; they are cut into
disjoint windows of at most ``max_seq_len`` targets; the first window is conditioned on that
EOS, every later one on the tokens before its targets that fit in the model's context (the
window is the ``max_seq_len + 1`` tokens ending at its last target). Each window is one
``(tokens, start)`` sequence of :func:`score_sequences`, and the windows' losses and counts are
summed per document (:func:`score_documents`), so a document's count is its number of tokens.
No end-of-text target is appended (the harness scores none either), so our loss on the same
documents and tokenizer is the harness's token-level perplexity of an export loaded *without*
``add_bos_token`` (see ``tests/unit/test_lm_harness.py``).
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
    whether every one of them is the argmax (what greedy decoding would produce).

    A sequence longer than the model's context (``max_seq_len + 1`` tokens) loses the start of
    its context; one whose *targets* do not fit is refused rather than silently cut (score long
    documents with :func:`score_documents`). Sequences are batched by length (less padding);
    the scores come back in the order given.
    """
    max_len = model.cfg.max_seq_len + 1
    for tokens, start in seqs:
        if not 1 <= start < len(tokens) or len(tokens) - start > model.cfg.max_seq_len:
            raise ValueError(f"score_sequences: a sequence of {len(tokens)} tokens with targets from {start} on; "
                             f"expected 1 <= start < len and at most max_seq_len={model.cfg.max_seq_len} targets "
                             "(whole documents: score_documents scores them in rolling windows)")
    device = model.embed_tokens.weight.device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]), reverse=True)
    out: list[Score | None] = [None] * len(seqs)
    for idx in chunks(order, batch_size):
        inp, tgt = target_batch([seqs[i] for i in idx], max_len)
        inp, tgt = inp.to(device), tgt.to(device)
        logits = model.logits(inp).float()  # [B, T, V]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=IGNORE_INDEX,
                                                reduction="none")  # [B, T]
        mask = tgt != IGNORE_INDEX
        hit = (logits.argmax(-1) == tgt) | ~mask
        for j, i in enumerate(idx):
            out[i] = (float(nll[j][mask[j]].sum()), int(mask[j].sum()), bool(hit[j].all()))
    return out  # type: ignore[return-value]


def score_groups(model: LlamaLM, seqs: Sequence[tuple[list[int], int]], owner: Sequence[int], n: int, *,
                 batch_size: int) -> list[Score]:
    """Scores of ``seqs`` summed per owner ``0..n-1`` (loss and count added, argmax flags and-ed);
    an owner with no sequence scores ``(0.0, 0, True)``."""
    out: list[Score] = [(0.0, 0, True)] * n
    for o, (loss, count, hit) in zip(owner, score_sequences(model, seqs, batch_size=batch_size)):
        s, c, h = out[o]
        out[o] = (s + loss, c + count, h and hit)
    return out


def rolling_windows(tokens: Sequence[int], max_seq_len: int, *, prefix: int) -> list[tuple[list[int], int]]:
    """Every token of ``tokens`` as a target exactly once, in ``(tokens, start)`` windows that fit a
    context of ``max_seq_len``: lm-evaluation-harness's rolling windows (``context_len=1``).

    The first window is ``prefix`` + the first ``max_seq_len`` tokens (all targets); each later one
    predicts the next up to ``max_seq_len`` tokens and is the ``max_seq_len + 1`` tokens ending at
    its last target, so its context is whatever precedes its targets in the model's context.
    """
    if max_seq_len < 1:
        raise ValueError(f"rolling_windows: max_seq_len={max_seq_len}; expected >= 1")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_seq_len, len(tokens))
    out = [([prefix] + tokens[:first], 1)]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_seq_len)
        end = done + n
        out.append((tokens[end - max_seq_len - 1 : end], max_seq_len + 1 - n))
        done = end
    return out


def continuation_windows(tokens: Sequence[int], k: int, max_seq_len: int) -> list[tuple[list[int], int]]:
    """The last ``k`` tokens of ``tokens`` as targets given the rest, each conditioned on the up-to
    ``max_seq_len`` tokens before it — what greedy decoding with that context sees
    (:meth:`LlamaLM.generate_greedy` slides its window the same way).

    ``tokens[0]`` is never a target (it is the end-of-text prefix). Targets whose whole prefix fits
    in the context share one window; each later one gets its own ``max_seq_len + 1``-token window.
    A sequence is reproduced by greedy decoding iff every window's targets are all the argmax.
    """
    if k < 1 or max_seq_len < 1:
        raise ValueError(f"continuation_windows: k={k}, max_seq_len={max_seq_len}; expected both >= 1")
    tokens = list(tokens)
    start = max(1, len(tokens) - k)
    if start >= len(tokens):
        return []
    out = []
    if start <= max_seq_len:  # targets at positions start..max_seq_len see their whole prefix
        out.append((tokens[: min(len(tokens), max_seq_len + 1)], start))
    for p in range(max(start, max_seq_len + 1), len(tokens)):
        out.append((tokens[p - max_seq_len : p + 1], max_seq_len))
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


def doc_sequences(tok: TextTokenizer, docs: list[dict[str, Any]], max_seq_len: int
                  ) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Whole documents as rolling windows (see the module docstring), each document's tokens after
    an end-of-text token as in training; returns the windows and the index of each one's document."""
    seqs: list[tuple[list[int], int]] = []
    owner: list[int] = []
    for i, d in enumerate(docs):
        windows = rolling_windows(tok.encode(d["text"]), max_seq_len, prefix=tok.eos_id)
        seqs += windows
        owner += [i] * len(windows)
    return seqs, owner


def score_documents(model: LlamaLM, tok: TextTokenizer, docs: list[dict[str, Any]], *, batch_size: int) -> list[Score]:
    """Per document: summed loss of every one of its tokens (rolling windows of the model's
    context), their count, and whether all are the argmax."""
    seqs, owner = doc_sequences(tok, docs, model.cfg.max_seq_len)
    return score_groups(model, seqs, owner, len(docs), batch_size=batch_size)


def continuation_sequences(tok: TextTokenizer, docs: list[dict[str, Any]], k: int, max_seq_len: int
                           ) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Each document's last ``k`` tokens given the rest (after an end-of-text token), as
    :func:`continuation_windows`; returns the windows and the index of each one's document."""
    seqs: list[tuple[list[int], int]] = []
    owner: list[int] = []
    for i, d in enumerate(docs):
        windows = continuation_windows([tok.eos_id] + tok.encode(d["text"]), k, max_seq_len)
        seqs += windows
        owner += [i] * len(windows)
    return seqs, owner


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
