"""Text samples: token-level noise.

Text samples are ``{"__key__", "text", "label", "meta"}`` (read with
``iter_samples(..., kind="text")``). The other corruptors serve text too: ``duplicate``
(document duplication; ``near`` drops a word), ``imbalance`` with ``concepts: meta:topic``
(topic imbalance), ``contamination`` with a text test split (benchmark contamination),
``caption_noise`` (its word-level modes act on ``text``), ``dedup`` with ``minhash``.
"""

from __future__ import annotations


import numpy as np

from inheritlab.corruptors.base import LEVEL, COUNT, Param, Sample, copy_sample, register, text_field
from inheritlab.corruptors.noise import LevelCorruptor
from inheritlab.infra.hashing import stable_rng


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
