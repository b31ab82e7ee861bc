"""A small procedural text corpus with a topic per document, for the text-corruptor tests.

Each topic has its own vocabulary mixed with common words, so topic is learnable and documents
are distinct: what topic imbalance, document duplication and text dedup are exercised on. (The
LM study world is ``corruptors/text_world.py``.)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inheritlab.corruptors.shards import write_shards
from inheritlab.corruptors.world import WorldInfo, class_counts, world_info_from_json
from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import ShardError
from inheritlab.infra.hashing import stable_rng

TOPIC_WORLD_FORMAT = 1
TOPICS = ("astronomy", "cooking", "football", "medicine", "music", "sailing", "finance", "gardening")
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "zu", "fi", "ho", "ba", "ge", "ny")
_COMMON = ("the", "a", "of", "and", "to", "in", "is", "that", "with", "for", "on", "was", "as", "by", "it")


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


def _topic_vocab(topic: int, seed: int) -> list[str]:
    rng = stable_rng("topic-world-vocab", seed, topic)
    return ["".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))) for _ in range(60)] + [TOPICS[topic]]


def _text_split(cfg: TopicWorldConfig, split: str, n: int) -> list[dict[str, Any]]:
    rng = stable_rng("topic-world", TOPIC_WORLD_FORMAT, cfg.seed, split)
    k = cfg.num_topics
    labels = np.repeat(np.arange(k), class_counts(n, k, cfg.imbalance if split == "train" else 0.0))
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
            return world_info_from_json(root, data)
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
    return world_info_from_json(root, read_json(meta_path))
