"""Tokenizers for the LM path: train a small byte-level BPE at data-prep time, load one offline.

The tokenizer is part of the data: it is trained once on the train split and saved as
``tokenizer.json`` beside the shards, so every cell of a study (and the exported Hugging Face
checkpoint) tokenises identically. Loading never touches the network: a path to a
``tokenizer.json``, a directory holding one, or the name of a tokenizer already in the local
Hugging Face cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from inheritlab.infra.atomic import atomic_write_text
from inheritlab.infra.errors import SpecError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)


class TextTokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with the ids the LM path needs.

    ``eos_id`` separates packed documents; ``bos_id``/``pad_id`` fall back to ``eos_id`` for
    foreign tokenizers that lack them (GPT-2 style vocabularies have only one special token).
    """

    def __init__(self, tok: "object", path: Path | None = None) -> None:
        self.tok = tok
        self.path = path
        eos = _first_id(tok, (EOS, "</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"))
        if eos is None:
            raise SpecError(f"tokenizer {path}: has no end-of-text token (looked for {EOS}, </s>, <|endoftext|>)")
        self.eos_id = eos
        self.bos_id = _first_id(tok, (BOS, "<s>", "<|begin_of_text|>", "<bos>"))
        self.pad_id = _first_id(tok, (PAD, "<pad>"))
        if self.bos_id is None:
            self.bos_id = eos
        if self.pad_id is None:
            self.pad_id = eos

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def token(self, idx: int) -> str:
        return str(self.tok.id_to_token(idx))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))


def _first_id(tok: "object", names: tuple[str, ...]) -> int | None:
    for name in names:
        idx = tok.token_to_id(name)
        if idx is not None:
            return int(idx)
    return None


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, out_path: str | os.PathLike[str]) -> TextTokenizer:
    """Train a byte-level BPE of ``vocab_size`` on ``texts`` and save it (atomically) at ``out_path``.

    Byte-level: any string round-trips, so user text never hits an unknown token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(out_path)
    atomic_write_text(path, tok.to_str())
    return TextTokenizer(tok, path)


def resolve_tokenizer_path(spec: str | os.PathLike[str]) -> Path:
    """The ``tokenizer.json`` a spec names: a file, a directory holding one, or a cached model name.

    Names resolve through the local Hugging Face cache only (no download); a name that is not
    cached is an error that says so.
    """
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return p / "tokenizer.json"
        raise SpecError(f"tokenizer: directory {p} holds no tokenizer.json")
    if p.is_absolute() or str(spec).startswith((".", "~")) or p.suffix == ".json":  # a path, not a name
        raise SpecError(f"tokenizer: {str(spec)!r} — no such file or directory; name a tokenizer.json file, a "
                        "directory holding one, or a tokenizer in the local Hugging Face cache (nothing is downloaded at run time)")
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(str(spec), "tokenizer.json")
    except Exception:  # not installed, or not a valid repo id: not a cached name either
        hit = None
    if isinstance(hit, str) and os.path.isfile(hit):
        return Path(hit)
    raise SpecError(
        f"tokenizer: {str(spec)!r} is neither a tokenizer.json file, a directory holding one, nor a "
        "tokenizer in the local Hugging Face cache (nothing is downloaded at run time)"
    )


def load_tokenizer(spec: str | os.PathLike[str]) -> TextTokenizer:
    """Load a tokenizer from a file, a directory or a locally cached name (see above)."""
    from tokenizers import Tokenizer

    path = resolve_tokenizer_path(spec)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise SpecError(f"tokenizer {path}: not a valid tokenizer.json ({exc})") from None
    return TextTokenizer(tok, path)


# Bump when how a study tokenizer is built changes: older ones then sit under another id.
STUDY_TOKENIZER_EPOCH = 1


def study_tokenizer(choice: str, *, vocab_size: int, train_shards: list[str], train_source: str, root: Path) -> Path:
    """A study's ``tokenizer.json``: trained on the train split (``choice == "train"``) or copied
    from the named one, once per study, under ``root/<id>/`` (id: the hash of the choice and
    its inputs), so every cell and export reads the same file and a re-launch reuses it.
    Built atomically; ``train_source`` is the user's train path as given (part of the id).
    """
    import hashlib
    from typing import Any

    from inheritlab.corruptors.shards import ReadStats, iter_samples
    from inheritlab.infra.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
    from inheritlab.infra.errors import ShardError
    from inheritlab.infra.hashing import config_id

    if choice == "train":
        source: dict[str, Any] = {"tokenizer": "train", "vocab_size": vocab_size, "train": train_source}
    else:
        path = resolve_tokenizer_path(choice)
        data = path.read_bytes()
        source = {"tokenizer": choice, "path": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    target = root / config_id(source, STUDY_TOKENIZER_EPOCH)
    if (target / "tokenizer.json").is_file():
        return target / "tokenizer.json"
    with atomic_dir(target) as tmp:
        if choice == "train":
            stats = ReadStats()
            # Bad samples are skipped here; the data-condition stage holds them to the ceiling.
            texts = (s["text"] for s in iter_samples(train_shards, kind="text", bad_sample_ceiling=1.0, stats=stats))
            train_tokenizer(texts, vocab_size=vocab_size, out_path=tmp / "tokenizer.json")
            if not stats.samples:
                raise ShardError(train_source, None, "data.shards.train: no readable text document to train the "
                                 f"tokenizer on (each sample needs a <key>.txt member); problems: {stats.problems[:3]}")
            source["train_docs"] = stats.samples
        else:
            atomic_write_bytes(tmp / "tokenizer.json", data)
            load_tokenizer(tmp / "tokenizer.json")  # a foreign tokenizer must at least have an end-of-text token
        atomic_write_json(tmp / "source.json", source)
    return target / "tokenizer.json"
