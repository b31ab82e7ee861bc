"""Downstream evaluation of an LM checkpoint: tidy rows for the results table.

Tasks (each yields rows ``{checkpoint_step, samples_seen, task, split, metric, value}``):

``perplexity``      per-token loss and perplexity on clean held-out text: ``test_id`` (split
                    ``id``), ``test_ood_people`` (``ood_people``), ``test_ood_templates``
                    (``ood_templates``).
``qa``              attribute question answering by prompting: the item is right iff greedy
                    decoding after the prompt reproduces the answer's tokens. Computed with
                    teacher forcing (the argmax at every answer position is the answer token),
                    which is the same event and costs one forward pass per batch. Splits ``id``,
                    ``ood_templates``, ``ood_people``; plus ``qa_by_frequency`` rows (accuracy
                    by how many training biographies the individual had: the long tail).
``qa_finetune``     the same QA splits and metric (``acc``) after the ``finetune`` adaptation: a
                    copy of the model fine-tuned on the world's ``qa_train`` split (QA of *other*
                    ID individuals, :func:`~inheritlab.trainers.lm_adapt.finetune_qa`) — the
                    knowledge-extraction protocol of "Physics of Language Models 3.1". Asked for
                    with task ``qa`` and ``adaptations=("finetune", ...)``; ``prompting`` (the
                    default adaptation) gives the ``qa`` rows.
``memorization``    given the duplicated training keys: loss on duplicated vs unique training
                    documents, their gap, and the exact continuation rate (greedy decoding
                    reproduces a document's last ``continuation_tokens`` tokens from the rest).
``contamination``   given leaked test keys: the score on leaked vs clean items of each leaked
                    split (QA accuracy, or loss for text splits) and the inflation, leaked − clean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from inheritlab.corruptors.shards import iter_samples
from inheritlab.corruptors.text_world import ADAPT_SPLITS, TextWorldInfo, load_text_world_info
from inheritlab.corruptors.tokenizer import TextTokenizer, load_tokenizer
from inheritlab.trainers.lm_adapt import FINETUNE_LR, FINETUNE_STEPS, finetune_qa, qa_sequences, target_batch
from inheritlab.trainers.lm_models import IGNORE_INDEX, LlamaLM
from inheritlab.trainers.lm_pretrain import load_exported

TASKS = ("perplexity", "qa", "memorization", "contamination")
# How the model is adapted before QA is scored; the task name of the rows each gives.
ADAPTATIONS = {"prompting": "qa", "finetune": "qa_finetune"}
PPL_SPLITS = {"test_id": "id", "test_ood_people": "ood_people", "test_ood_templates": "ood_templates",
              "test_ood": "ood"}
QA_SPLITS = {"qa_id": "id", "qa_ood_templates": "ood_templates", "qa_ood_people": "ood_people"}
FREQ_BUCKETS = ((1, 2), (3, 8), (9, 32), (33, 1 << 30))


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def _score(model: LlamaLM, seqs: list[tuple[list[int], int]], *, batch_size: int) -> list[tuple[float, int, bool]]:
    """For each (tokens, start): summed loss and count of the targets from ``start`` on, and
    whether every one of them is the argmax (what greedy decoding would produce)."""
    device = model.embed_tokens.weight.device
    out: list[tuple[float, int, bool]] = []
    for chunk in _batches(seqs, batch_size):
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


def _row(step: int | None, seen: int | None, task: str, split: str, metric: str, value: float) -> dict[str, Any]:
    return {"checkpoint_step": int(step or 0), "samples_seen": int(seen or 0), "task": task, "split": split,
            "metric": metric, "value": float(value)}


def _docs(shards: list[str], keys: set[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    out = []
    for s in iter_samples(shards, kind="text"):
        if keys is None or s["__key__"] in keys:
            out.append(s)
            if limit is not None and len(out) >= limit:
                break
    return out


def _doc_seqs(tok: TextTokenizer, docs: list[dict[str, Any]]) -> list[tuple[list[int], int]]:
    # A document follows an end-of-text token in training; the same context here.
    return [([tok.eos_id] + tok.encode(d["text"]) + [tok.eos_id], 1) for d in docs]


def _mean_loss(scores: list[tuple[float, int, bool]]) -> float:
    n = sum(c for _, c, _ in scores)
    return sum(s for s, _, _ in scores) / n if n else float("nan")


def duplicated_keys(data_dir: str | Path) -> list[str]:
    """Training keys the ``duplicate`` corruptor repeated in a cell (from its ``manifest.parquet``)."""
    import polars as pl

    path = Path(data_dir) / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run the data-condition stage of the cell first)")
    man = pl.read_parquet(path)
    return sorted(set(man.filter((pl.col("type") == "duplicate") & (pl.col("action") == "duplicate"))["key"].to_list()))


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
) -> list[dict[str, Any]]:
    """Evaluate one checkpoint (an export dir or a model) on a text world; returns tidy rows.

    ``checkpoint_step``/``samples_seen`` default to the export's record. ``duplicated_keys``
    (keys of training documents the duplication corruptor repeated) enables ``memorization``;
    ``leaked_keys`` (split → leaked test keys, as ``corruptors.duplication.leaked_keys`` gives,
    or a plain key list looked up in every split) enables ``contamination``.
    ``max_items`` caps the items per split (fast CPU evaluation).

    ``adaptations`` says how the model meets the ``qa`` task: ``prompting`` (rows ``qa``, as
    pre-trained) and/or ``finetune`` (rows ``qa_finetune``: a copy fine-tuned for
    ``finetune_steps`` steps at ``finetune_lr`` on the whole ``qa_train`` split, item order from
    ``finetune_seed``; the weights given are not changed). ``finetune`` needs a world with a
    non-empty ``qa_train`` split (the built-in text world).
    """
    tasks = list(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"evaluate_lm: unknown task(s) {bad}; allowed: {', '.join(TASKS)}")
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
    if isinstance(weights, LlamaLM):
        model, rec = weights, {}
    else:
        model, rec = load_exported(weights, device=device)
    model = model.to(device).eval()
    step = checkpoint_step if checkpoint_step is not None else rec.get("step")
    seen = samples_seen if samples_seen is not None else rec.get("samples_seen")
    tok_path = tokenizer or rec.get("tokenizer") or info.tokenizer
    if tok_path is None:
        raise ValueError("evaluate_lm: no tokenizer given and none recorded with the weights or the world")
    tok = load_tokenizer(tok_path)
    rows: list[dict[str, Any]] = []

    if "perplexity" in tasks:
        for split, name in PPL_SPLITS.items():
            if split not in info.splits:
                continue
            scores = _score(model, _doc_seqs(tok, _docs(info.splits[split], limit=max_items)), batch_size=batch_size)
            loss = _mean_loss(scores)
            rows += [_row(step, seen, "perplexity", name, "loss", loss),
                     _row(step, seen, "perplexity", name, "perplexity", math.exp(min(loss, 80.0)))]

    # Each QA split read once, scored after every adaptation.
    qa_items = {split: _docs(info.splits[split], limit=max_items) for split in QA_SPLITS
                if split in info.splits} if "qa" in tasks else {}
    for adaptation in adaptations if "qa" in tasks else []:
        task = ADAPTATIONS[adaptation]
        qa_model = model
        if adaptation == "finetune":
            # Other individuals' QA (never those of qa_id): whatever transfers was stored in pre-training.
            qa_model = finetune_qa(model, tok, _docs(info.splits["qa_train"]), steps=finetune_steps, lr=finetune_lr,
                                   seed=finetune_seed, device=device)
        for split, items in qa_items.items():
            name = QA_SPLITS[split]
            scores = _score(qa_model, qa_sequences(tok, items), batch_size=batch_size)
            rows.append(_row(step, seen, task, name, "acc", sum(h for *_, h in scores) / max(1, len(scores))))
            if name == "id" and adaptation == "prompting":
                for lo, hi in FREQ_BUCKETS:
                    hits = [h for it, (_, _, h) in zip(items, scores) if lo <= it["meta"].get("train_docs", 0) <= hi]
                    if hits:
                        label = f"{lo}+" if hi >= 1 << 30 else f"{lo}-{hi}"
                        rows.append(_row(step, seen, "qa_by_frequency", name, f"acc@docs{label}", sum(hits) / len(hits)))

    if "memorization" in tasks:
        if duplicated_keys is None:
            raise ValueError("evaluate_lm: task 'memorization' needs duplicated_keys (the repeated training keys)")
        shards = train_shards or info.splits.get("train")
        if not shards:
            raise ValueError("evaluate_lm: task 'memorization' needs the training shards (train_shards=...)")
        dup = set(duplicated_keys)
        all_docs = _docs(shards)
        dup_docs = [d for d in all_docs if d["__key__"] in dup][: max_items or None]
        uniq_docs = [d for d in all_docs if d["__key__"] not in dup][: max(1, len(dup_docs))]
        if dup_docs:
            gap_parts = {}
            for split, docs in (("duplicated", dup_docs), ("unique", uniq_docs)):
                loss = _mean_loss(_score(model, _doc_seqs(tok, docs), batch_size=batch_size))
                gap_parts[split] = loss
                rows.append(_row(step, seen, "memorization", split, "loss", loss))
                seqs = []
                for d in docs:
                    ids = [tok.eos_id] + tok.encode(d["text"])
                    seqs.append((ids, max(1, len(ids) - continuation_tokens)))  # the last k tokens from the rest
                exact = _score(model, seqs, batch_size=batch_size)
                rows.append(_row(step, seen, "memorization", split, "exact_continuation",
                                 sum(h for *_, h in exact) / len(exact)))
            rows.append(_row(step, seen, "memorization", "train", "loss_gap", gap_parts["unique"] - gap_parts["duplicated"]))

    if "contamination" in tasks:
        if leaked_keys is None:
            raise ValueError("evaluate_lm: task 'contamination' needs leaked_keys (split -> leaked test keys)")
        by_split = leaked_keys if isinstance(leaked_keys, dict) else {
            s: list(leaked_keys) for s in info.splits if s != "train" and s not in ADAPT_SPLITS}
        for split, keys in by_split.items():
            if split not in info.splits:
                raise ValueError(f"evaluate_lm: leaked split {split!r} is not in the world ({sorted(info.splits)})")
            leaked = set(keys)
            items = _docs(info.splits[split])
            parts = {"leaked": [it for it in items if it["__key__"] in leaked],
                     "clean": [it for it in items if it["__key__"] not in leaked][: max_items or None]}
            if not parts["leaked"]:
                continue
            is_qa = split in QA_SPLITS or split in ADAPT_SPLITS
            values = {}
            for part, its in parts.items():
                if not its:
                    continue
                if is_qa:
                    sc = _score(model, qa_sequences(tok, its), batch_size=batch_size)
                    values[part] = sum(h for *_, h in sc) / len(sc)
                else:
                    values[part] = _mean_loss(_score(model, _doc_seqs(tok, its), batch_size=batch_size))
                rows.append(_row(step, seen, f"contamination_{split}", part, "acc" if is_qa else "loss", values[part]))
            if len(values) == 2:
                # Inflation: how much better the leaked items score (for loss, lower is better).
                infl = values["leaked"] - values["clean"] if is_qa else values["clean"] - values["leaked"]
                rows.append(_row(step, seen, f"contamination_{split}", "all", "inflation", infl))
    return rows
