"""Downstream adaptation of a pre-trained LM: fine-tuning on attribute QA.

The knowledge-extraction protocol of "Physics of Language Models, Part 3.1" (Allen-Zhu & Li):
a pre-trained model is fine-tuned on QA pairs of *some* individuals and tested on QA of *other*
individuals it saw only in pre-training. If the test accuracy rises, pre-training stored the
facts in a form the model can be taught to extract; if only the fine-tuned individuals are
answered, the facts were memorised as sentences, not as attributes of a person.

This module owns the sequence construction shared with :mod:`inheritlab.trainers.lm_evaluate`
(a QA item as prompt + answer tokens; a batch with targets on the answer only), so that what
fine-tuning optimises is exactly what evaluation scores. Plain PyTorch on purpose: a few
hundred small steps on one device, with nothing to checkpoint or shard.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from inheritlab.corruptors.tokenizer import TextTokenizer
from inheritlab.infra.seeds import derive_seed
from inheritlab.trainers.lm_models import IGNORE_INDEX, LlamaLM

# Sized for the CPU rungs: lm-tiny fine-tunes in a few seconds on two cores (see finetune_qa).
FINETUNE_STEPS = 100
FINETUNE_LR = 1e-3
FINETUNE_BATCH = 16


def qa_sequences(tok: TextTokenizer, items: Sequence[dict[str, Any]]) -> list[tuple[list[int], int]]:
    """Each QA item as ``(tokens, start)``: end-of-text + prompt + answer, the answer from ``start``."""
    seqs = []
    for it in items:
        prompt = [tok.eos_id] + tok.encode(it["meta"]["prompt"])
        # The prompt ends in a word and the answer starts with a space: a pre-token boundary, so
        # the two encodings concatenate to the encoding of the whole sentence.
        seqs.append((prompt + tok.encode(" " + it["meta"]["answer"]), len(prompt)))
    return seqs


def target_batch(seqs: Sequence[tuple[list[int], int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets [B, T] for ``(tokens, start)`` pairs; only ``tokens[start:]`` are targets.

    A sequence longer than ``max_len`` tokens keeps its last ``max_len`` (the answer stays);
    padding and the prompt are ``IGNORE_INDEX`` in the targets.
    """
    seqs = [(t[-max_len:], max(1, start - max(0, len(t) - max_len))) for t, start in seqs]
    T = max(len(t) for t, _ in seqs) - 1
    inp = torch.zeros(len(seqs), T, dtype=torch.long)
    tgt = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for i, (t, start) in enumerate(seqs):
        n = len(t) - 1
        inp[i, :n] = torch.tensor(t[:-1])
        tgt[i, start - 1 : n] = torch.tensor(t[start:])  # predict t[start:] from their prefixes
    return inp, tgt


def finetune_qa(
    model: LlamaLM,
    tok: TextTokenizer,
    items: Sequence[dict[str, Any]],
    *,
    steps: int = FINETUNE_STEPS,
    lr: float = FINETUNE_LR,
    batch_size: int = FINETUNE_BATCH,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LlamaLM:
    """A copy of ``model`` fine-tuned on QA ``items``; ``model`` itself is left untouched.

    AdamW (no weight decay, gradients clipped to norm 1) at a constant ``lr`` for ``steps``
    steps of ``batch_size`` items; the loss is the cross-entropy of the answer tokens given the
    prompt. Items are drawn in epochs, each a permutation from a generator seeded by the seed
    tree at ``seed``, so the same seed gives the same weights. The defaults take lm-tiny from
    near zero to most of the training items answered in about five seconds on two CPU cores.
    """
    if not items:
        raise ValueError("finetune_qa: no QA items to fine-tune on")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"finetune_qa: steps={steps}, batch_size={batch_size}, lr={lr}; expected steps >= 1, "
                         "batch_size >= 1 and lr > 0")
    seqs = qa_sequences(tok, items)
    tuned = copy.deepcopy(model).to(device).train()
    opt = torch.optim.AdamW(tuned.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(derive_seed(seed, "lm-finetune-qa", "order"))
    max_len = tuned.cfg.max_seq_len + 1
    order: list[int] = []
    for _ in range(steps):
        chosen = []
        while len(chosen) < min(batch_size, len(seqs)):
            if not order:
                order = torch.randperm(len(seqs), generator=gen).tolist()
            chosen.append(order.pop())
        inp, tgt = target_batch([seqs[i] for i in chosen], max_len)
        loss = tuned(inp.to(device), tgt.to(device))  # mean over answer tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        opt.step()
    return tuned.eval()
