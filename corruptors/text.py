"""Text samples: token-level noise and a small topic corpus for the text corruptors.

Text samples are ``{"__key__", "text", "label", "meta"}`` (read with
``iter_samples(..., kind="text")``). The other corruptors serve text too: ``duplicate``
(document duplication; ``near`` drops a word), ``imbalance`` with ``concepts: meta:topic``
(topic imbalance), ``contamination`` with a text test split (benchmark contamination),
``caption_noise`` (its word-level modes act on ``text``), ``dedup`` with ``minhash``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inheritlab.corruptors.base import LEVEL, COUNT, Param, Sample, copy_sample, register, text_field
from inheritlab.corruptors.noise import LevelCorruptor
from inheritlab.corruptors.shards import write_shards
from inheritlab.corruptors.world import WorldInfo, _class_counts, _info_from_json
from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import ShardError, SpecError
from inheritlab.infra.hashing import stable_rng

TOPIC_WORLD_FORMAT = 1
TOPICS = ("astronomy", "cooking", "football", "medicine", "music", "sailing", "finance", "gardening")
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "zu", "fi", "ho", "ba", "ge", "ny")
_COMMON = ("the", "a", "of", "and", "to", "in", "is", "that", "with", "for", "on", "was", "as", "by", "it")


@register
class TokenNoise(LevelCorruptor):
    """Corrupt a fraction ``rate`` of the tokens (whitespace words) of a fraction ``level`` of
    documents: ``replace`` (by another token of the same document), ``drop`` or ``swap``
    (exchange with the next token). At least one token per corrupted document."""

    type_name = "token_noise"
    PARAMS = {
        "level": LEVEL,
        "count": COUNT,
        "rate": Param(kind="float", lo=0.0, hi=1.0, default=0.1, doc="fraction of tokens corrupted in a document"),
        "op": Param(kind="choice", choices=("replace", "drop", "swap"), default="replace", doc="what happens to a token"),
    }

    def process(self, sample: Sample) -> list[Sample]:
        if not self.selected(sample):
            return [sample]
        key = sample["__key__"]
        field = text_field(sample)
        tokens = str(sample.get(field, "")).split()
        if len(tokens) < 2:
            self.skipped["too_short"] += 1
            return [sample]
        rng = stable_rng(self.study_seed, self.name, key, "tokens")
        n = min(len(tokens) - 1, max(1, int(round(self.params["rate"] * len(tokens)))))
        where = np.sort(rng.choice(len(tokens), size=n, replace=False))
        op = self.params["op"]
        if op == "drop":
            gone = set(where.tolist())
            tokens = [t for i, t in enumerate(tokens) if i not in gone]
        elif op == "replace":
            for i in where.tolist():
                tokens[i] = tokens[int(rng.integers(0, len(tokens)))]
        else:
            for i in where.tolist():
                j = min(i + 1, len(tokens) - 1)
                tokens[i], tokens[j] = tokens[j], tokens[i]
        out = copy_sample(sample)
        out["meta"].setdefault(f"true_{field}", sample.get(field, ""))
        out[field] = " ".join(tokens)
        out["meta"]["token_noise"] = op
        self.touch(key, f"token_{op}", tokens=int(n))
        return [out]


# ----------------------------------------------------------------------------------- topic world
# A deliberately small corpus with a topic per document: what topic imbalance, document
# duplication and text dedup are exercised on. The LM study world is text_world.py.


@dataclass(frozen=True, kw_only=True)
class TopicWorldConfig:
    """A procedural corpus: each topic has its own vocabulary mixed with common words, so
    topic is learnable and documents are distinct. ``imbalance``: Zipf exponent over topics."""

    seed: int = 0
    num_topics: int = 5
    train_size: int = 2000
    test_size: int = 200
    doc_words: int = 40
    samples_per_shard: int = 500
    imbalance: float = 0.0

    def __post_init__(self) -> None:
        if not 2 <= self.num_topics <= len(TOPICS):
            raise SpecError(f"topic_world.num_topics: got {self.num_topics}; allowed 2..{len(TOPICS)}")
        if self.doc_words < 4:
            raise SpecError(f"topic_world.doc_words: got {self.doc_words}; expected >= 4")


def _topic_vocab(topic: int, seed: int) -> list[str]:
    rng = stable_rng("topic-world-vocab", seed, topic)
    return ["".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))) for _ in range(60)] + [TOPICS[topic]]


def _text_split(cfg: TopicWorldConfig, split: str, n: int) -> list[dict[str, Any]]:
    rng = stable_rng("topic-world", TOPIC_WORLD_FORMAT, cfg.seed, split)
    k = cfg.num_topics
    labels = np.repeat(np.arange(k), _class_counts(n, k, cfg.imbalance if split == "train" else 0.0))
    labels = labels[rng.permutation(n)]
    vocabs = [_topic_vocab(t, cfg.seed) for t in range(k)]
    out = []
    for i in range(n):
        t = int(labels[i])
        topical = rng.random(cfg.doc_words) < 0.6
        words = [vocabs[t][int(rng.integers(0, len(vocabs[t])))] if m else _COMMON[int(rng.integers(0, len(_COMMON)))]
                 for m in topical]
        out.append({"__key__": f"{split}_{i:07d}", "text": " ".join(words), "label": t,
                    "meta": {"topic": TOPICS[t], "split": split}})
    return out


def write_topic_world(cfg: TopicWorldConfig, out_dir: str | os.PathLike[str]) -> WorldInfo:
    """Write ``train/`` and ``test/`` text shards plus ``world.json`` (atomic, reused if equal)."""
    root = Path(out_dir).expanduser().resolve()
    record = {"format": TOPIC_WORLD_FORMAT, "kind": "text", "config": asdict(cfg)}
    meta_path = root / "world.json"
    if meta_path.is_file():
        data = read_json(meta_path)
        if {k: data.get(k) for k in record} == record:
            return _info_from_json(root, data)
    elif root.is_dir() and any(root.iterdir()):
        raise ShardError(str(root), None, "directory is not empty and holds no world.json; refusing to overwrite")
    with atomic_dir(root) as tmp:
        rel = {}
        for split, n in (("train", cfg.train_size), ("test", cfg.test_size)):
            paths = write_shards(_text_split(cfg, split, n), tmp / split, samples_per_shard=cfg.samples_per_shard)
            rel[split] = [f"{split}/{p.name}" for p in paths]
        names = list(TOPICS[: cfg.num_topics])
        atomic_write_json(tmp / "world.json", {**record, "class_names": names, "num_classes": cfg.num_topics,
                                               "prompt_templates": ["{}"], "splits": rel})
    return _info_from_json(root, read_json(meta_path))
