"""The LM evaluation tasks, one registered function each, and the context they share.

``perplexity``      per-token loss and perplexity on clean held-out text: ``test_id`` (split
                    ``id``), ``test_ood_people`` (``ood_people``), ``test_ood_templates``
                    (``ood_templates``), a user's ``test_ood`` (``ood``). Perplexity over every
                    token of every document, rolling windows of the model's context, as
                    lm-evaluation-harness's ``loglikelihood_rolling`` (each document after the
                    end-of-text token it follows in training; no end-of-text target; the loss is
                    the mean over all tokens of the split — see ``trainers/lm_eval.py``).
``qa``              attribute question answering, scored after each adaptation of the context:
                    ``prompting`` (rows ``qa``: right iff greedy decoding after the prompt
                    reproduces the answer) and ``finetune`` (rows ``qa_finetune``: a copy
                    fine-tuned on the world's ``qa_train`` split — QA of *other* ID individuals,
                    the knowledge-extraction protocol of "Physics of Language Models 3.1").
                    Splits ``id``, ``ood_templates``, ``ood_people``; plus ``qa_by_frequency``
                    rows (accuracy by how many training biographies the individual had).
``memorization``    loss on duplicated vs unique training documents (every token, rolling windows,
                    as ``perplexity``), their gap, and the exact continuation rate (greedy
                    decoding reproduces a document's last ``continuation_tokens`` tokens from the
                    rest, each token conditioned on the up-to-``max_seq_len`` tokens before it:
                    a long document's start is outside the context, as in decoding).
``contamination``   the score on leaked vs clean items of each leaked split (QA accuracy, or
                    loss for text splits, every token as ``perplexity``) and the inflation,
                    leaked − clean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inheritlab.corruptors.text_world import (
    ADAPT_SPLITS,
    TextWorldInfo,
    load_text_world_info,
)
from inheritlab.corruptors.tokenizer import TextTokenizer, load_tokenizer
from inheritlab.trainers.eval_tasks import (
    Row,
    eval_task,
    measure,
    registered_tasks,
    run_tasks,
)
from inheritlab.trainers.lm_adapt import (
    FINETUNE_LR,
    FINETUNE_STEPS,
    finetune_qa,
    qa_sequences,
)
from inheritlab.trainers.lm_eval import (
    Score,
    accuracy,
    continuation_sequences,
    mean_loss,
    read_docs,
    score_documents,
    score_groups,
    score_sequences,
)
from inheritlab.trainers.lm_models import LlamaLM
from inheritlab.trainers.lm_pretrain import load_exported

# How the model is adapted before QA is scored; the task name of the rows each gives.
ADAPTATIONS = {"prompting": "qa", "finetune": "qa_finetune"}
PPL_SPLITS = {"test_id": "id", "test_ood_people": "ood_people", "test_ood_templates": "ood_templates",
              "test_ood": "ood"}
QA_SPLITS = {"qa_id": "id", "qa_ood_templates": "ood_templates", "qa_ood_people": "ood_people"}
FREQ_BUCKETS = ((1, 2), (3, 8), (9, 32), (33, 1 << 30))


@dataclass(frozen=True, kw_only=True)
class LMEvalContext:
    """One loaded checkpoint, its tokenizer, the text world, and what the cell's manifest says.

    ``duplicated_keys``: training keys the duplication corruptor repeated (``memorization``);
    ``leaked_keys``: split → leaked test keys (``contamination``). ``max_items`` caps the items
    per split (fast CPU evaluation).
    """

    model: LlamaLM
    tok: TextTokenizer
    world: TextWorldInfo
    checkpoint_step: int | None
    samples_seen: int | None
    duplicated_keys: tuple[str, ...] | None = None
    leaked_keys: dict[str, list[str]] | None = None
    train_shards: tuple[str, ...] | None = None
    max_items: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    continuation_tokens: int = 16
    adaptations: tuple[str, ...] = ("prompting",)
    finetune_steps: int = FINETUNE_STEPS
    finetune_lr: float = FINETUNE_LR
    finetune_seed: int = 0

    def row(self, task: str, split: str, metric: str, value: float) -> Row:
        return measure(self.checkpoint_step, self.samples_seen, task, split, metric, value)

    def score(self, seqs: list[tuple[list[int], int]], model: LlamaLM | None = None) -> list[tuple[float, int, bool]]:
        return score_sequences(model or self.model, seqs, batch_size=self.batch_size)

    def docs_loss(self, docs: list[dict[str, Any]]) -> float:
        """Per-token loss over every token of ``docs`` (rolling windows of the model's context)."""
        return mean_loss(score_documents(self.model, self.tok, docs, batch_size=self.batch_size))

    def continuation_hits(self, docs: list[dict[str, Any]]) -> float:
        """Fraction of ``docs`` whose last ``continuation_tokens`` tokens greedy decoding reproduces."""
        seqs, owner = continuation_sequences(self.tok, docs, self.continuation_tokens, self.model.cfg.max_seq_len)
        scores: list[Score] = score_groups(self.model, seqs, owner, len(docs), batch_size=self.batch_size)
        return accuracy([s for s in scores if s[1]])  # an empty document has nothing to reproduce


@eval_task("lm")
def perplexity(ctx: LMEvalContext) -> list[Row]:
    """Per-token loss and perplexity on each clean held-out text split: every token of every whole
    document, scored in rolling windows of the model's context as lm-evaluation-harness's
    ``loglikelihood_rolling`` (the first token predicted from the end-of-text token, no BOS)."""
    rows = []
    for split, name in PPL_SPLITS.items():
        if split in ctx.world.splits:
            loss = ctx.docs_loss(read_docs(ctx.world.splits[split], limit=ctx.max_items))
            rows += [ctx.row("perplexity", name, "loss", loss),
                     ctx.row("perplexity", name, "perplexity", math.exp(min(loss, 80.0)))]
    return rows


@eval_task("lm", needs=("qa",))
def qa(ctx: LMEvalContext) -> list[Row]:
    """QA accuracy after each adaptation (each QA split read once, scored after every one)."""
    items = {split: read_docs(ctx.world.splits[split], limit=ctx.max_items) for split in QA_SPLITS
             if split in ctx.world.splits}
    rows = []
    for adaptation in ctx.adaptations:
        model = ctx.model
        if adaptation == "finetune":
            # Other individuals' QA (never those of qa_id): whatever transfers was stored in pre-training.
            model = finetune_qa(ctx.model, ctx.tok, read_docs(ctx.world.splits["qa_train"]), steps=ctx.finetune_steps,
                                lr=ctx.finetune_lr, seed=ctx.finetune_seed, device=ctx.device)
        for split, its in items.items():
            scores = ctx.score(qa_sequences(ctx.tok, its), model)
            rows.append(ctx.row(ADAPTATIONS[adaptation], QA_SPLITS[split], "acc", accuracy(scores)))
            if split == "qa_id" and adaptation == "prompting":
                rows += _by_frequency(ctx, its, scores)
    return rows


def _by_frequency(ctx: LMEvalContext, items: list[dict[str, Any]], scores: list[tuple[float, int, bool]]) -> list[Row]:
    """QA accuracy on ``id`` by how many training biographies each individual had (the long tail)."""
    rows = []
    for lo, hi in FREQ_BUCKETS:
        hits = [h for it, (_, _, h) in zip(items, scores) if lo <= it["meta"].get("train_docs", 0) <= hi]
        if hits:
            label = f"{lo}+" if hi >= 1 << 30 else f"{lo}-{hi}"
            rows.append(ctx.row("qa_by_frequency", "id", f"acc@docs{label}", sum(hits) / len(hits)))
    return rows


@eval_task("lm", needs=("duplicates",))
def memorization(ctx: LMEvalContext) -> list[Row]:
    """Duplicated vs unique training documents: loss, exact continuation, and the loss gap."""
    if ctx.duplicated_keys is None:
        raise ValueError("evaluate_lm: task 'memorization' needs duplicated_keys (the repeated training keys)")
    shards = list(ctx.train_shards or ctx.world.splits.get("train") or [])
    if not shards:
        raise ValueError("evaluate_lm: task 'memorization' needs the training shards (train_shards=...)")
    dup = set(ctx.duplicated_keys)
    docs = read_docs(shards)
    dup_docs = [d for d in docs if d["__key__"] in dup][: ctx.max_items or None]
    if not dup_docs:
        return []
    parts = {"duplicated": dup_docs, "unique": [d for d in docs if d["__key__"] not in dup][: len(dup_docs)]}
    rows, loss = [], {}
    for split, its in parts.items():
        loss[split] = ctx.docs_loss(its)
        rows.append(ctx.row("memorization", split, "loss", loss[split]))
        rows.append(ctx.row("memorization", split, "exact_continuation", ctx.continuation_hits(its)))
    rows.append(ctx.row("memorization", "train", "loss_gap", loss["unique"] - loss["duplicated"]))
    return rows


@eval_task("lm", needs=("leaks",))
def contamination(ctx: LMEvalContext) -> list[Row]:
    """Leaked vs clean test items of each leaked split, and the inflation of the leaked score."""
    if ctx.leaked_keys is None:
        raise ValueError("evaluate_lm: task 'contamination' needs leaked_keys (split -> leaked test keys)")
    rows = []
    for split, keys in ctx.leaked_keys.items():
        if split not in ctx.world.splits:
            raise ValueError(f"evaluate_lm: leaked split {split!r} is not in the world ({sorted(ctx.world.splits)})")
        leaked = set(keys)
        items = read_docs(ctx.world.splits[split])
        parts = {"leaked": [it for it in items if it["__key__"] in leaked],
                 "clean": [it for it in items if it["__key__"] not in leaked][: ctx.max_items or None]}
        if not parts["leaked"]:
            continue
        is_qa = split in QA_SPLITS or split in ADAPT_SPLITS
        values = {}
        for part, its in parts.items():
            if its:
                values[part] = accuracy(ctx.score(qa_sequences(ctx.tok, its))) if is_qa else ctx.docs_loss(its)
                rows.append(ctx.row(f"contamination_{split}", part, "acc" if is_qa else "loss", values[part]))
        if len(values) == 2:
            # Inflation: how much better the leaked items score (for loss, lower is better).
            infl = values["leaked"] - values["clean"] if is_qa else values["clean"] - values["leaked"]
            rows.append(ctx.row(f"contamination_{split}", "all", "inflation", infl))
    return rows


def evaluate_lm(
    weights: str | Path | LlamaLM,
    world: str | Path | TextWorldInfo,
    *,
    tasks: Iterable[str] = ("perplexity", "qa"),
    tokenizer: str | Path | None = None,
    checkpoint_step: int | None = None,
    samples_seen: int | None = None,
    duplicated_keys: Iterable[str] | None = None,
    leaked_keys: dict[str, list[str]] | Iterable[str] | None = None,
    train_shards: list[str] | None = None,
    max_items: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    continuation_tokens: int = 16,
    adaptations: Iterable[str] = ("prompting",),
    finetune_steps: int = FINETUNE_STEPS,
    finetune_lr: float = FINETUNE_LR,
    finetune_seed: int = 0,
) -> list[Row]:
    """Evaluate one checkpoint (an export dir or a model) on a text world; returns tidy rows.

    ``checkpoint_step``/``samples_seen`` default to the export's record. ``leaked_keys`` is a
    split → keys mapping (``corruptors.duplication.leaked_keys``) or a plain key list looked up
    in every split. ``adaptations`` says how the model meets the ``qa`` task (see the module
    docstring); ``finetune`` needs a world with a non-empty ``qa_train`` split.
    """
    tasks = list(tasks)
    unknown = sorted(set(tasks) - set(registered_tasks("lm")))
    if unknown:
        raise ValueError(f"evaluate_lm: unknown task(s) {unknown}; allowed: {', '.join(registered_tasks('lm'))}")
    if continuation_tokens < 1:
        raise ValueError(f"evaluate_lm: continuation_tokens={continuation_tokens}; expected >= 1")
    adaptations = list(dict.fromkeys(adaptations))
    bad = [a for a in adaptations if a not in ADAPTATIONS]
    if bad or not adaptations:
        raise ValueError(f"evaluate_lm: adaptations {bad or adaptations}; expected one or more of {', '.join(ADAPTATIONS)}")
    if "finetune" in adaptations and "qa" not in tasks:
        raise ValueError("evaluate_lm: adaptation 'finetune' adapts the model for task 'qa'; add 'qa' to tasks")
    info = world if isinstance(world, TextWorldInfo) else load_text_world_info(world)
    if "finetune" in adaptations and not info.splits.get("qa_train"):
        why = "is empty (no ID individual is left outside qa_id: num_individuals must exceed qa_individuals)" \
            if "qa_train" in info.splits else f"is missing (the world has {sorted(info.splits)})"
        raise ValueError(f"evaluate_lm: adaptation 'finetune' needs the QA split 'qa_train' to fine-tune on; in "
                         f"{info.root} it {why}. The built-in text world has it; a user's text shards do not")
    model, rec = (weights, {}) if isinstance(weights, LlamaLM) else load_exported(weights, device=device)
    tok_path = tokenizer or rec.get("tokenizer") or info.tokenizer
    if tok_path is None:
        raise ValueError("evaluate_lm: no tokenizer given and none recorded with the weights or the world")
    if leaked_keys is not None and not isinstance(leaked_keys, dict):
        keys = list(leaked_keys)
        leaked_keys = {s: keys for s in info.splits if s != "train" and s not in ADAPT_SPLITS}
    ctx = LMEvalContext(
        model=model.to(device).eval(), tok=load_tokenizer(tok_path), world=info,
        checkpoint_step=checkpoint_step if checkpoint_step is not None else rec.get("step"),
        samples_seen=samples_seen if samples_seen is not None else rec.get("samples_seen"),
        duplicated_keys=tuple(duplicated_keys) if duplicated_keys is not None else None, leaked_keys=leaked_keys,
        train_shards=tuple(train_shards) if train_shards else None, max_items=max_items, batch_size=batch_size,
        device=device, continuation_tokens=continuation_tokens, adaptations=tuple(adaptations),
        finetune_steps=finetune_steps, finetune_lr=finetune_lr, finetune_seed=finetune_seed,
    )
    return run_tasks("lm", tasks, ctx)
