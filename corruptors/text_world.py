"""The built-in text world: synthetic biographies with a long tail and held-out splits.

Each individual has a name and five attributes (birth date, birth city, university, field,
employer). A biography renders every attribute through one of several paraphrase templates, in
a shuffled order. How many training biographies an individual gets follows a Zipf law, so the
world has a head of often-seen people and a tail seen once — the regime where memorisation,
duplication and contamination matter.

Out of distribution along two axes:

- **held-out individuals**: never in the training text. Their QA items are open-book (the
  biography is in the prompt), so they test reading the format rather than recall.
- **held-out templates**: the last ``heldout_templates`` paraphrases of every attribute never
  appear in training; ID individuals described or questioned through them test whether the
  model stored the fact or the sentence.

Every template ends with its value, so the sentence up to the value is a natural prompt and
the value is the answer (greedy continuation match). Splits, written as WebDataset text shards
(``<key>.txt`` + ``<key>.json``):

``train``                 training biographies (ID individuals, train templates, Zipf counts)
``test_id``               fresh biographies of ID individuals (clean held-out text)
``test_ood_people``       biographies of held-out individuals
``test_ood_templates``    biographies of ID individuals through held-out templates
``qa_id``                 closed-book QA on ID individuals, train templates
``qa_ood_templates``      closed-book QA on ID individuals, held-out templates
``qa_ood_people``         open-book QA on held-out individuals
``qa_train``              closed-book QA, train templates, on ID individuals *not* in ``qa_id``
                          (up to ``qa_individuals`` of them): for adapting a model (fine-tuning)
                          before it is tested on the QA splits above, never a test split itself

A QA item's text is ``prompt + " " + answer`` (what leaks when contamination injects it); its
meta carries ``prompt``, ``answer``, ``attribute``, ``individual`` and ``train_docs`` (how often
the individual appears in training, for head/tail breakdowns). The world is a pure function of
its config; a BPE tokenizer trained on the train split is saved beside it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inheritlab.corruptors.shards import write_shards
from inheritlab.infra.atomic import atomic_dir, atomic_write_json, read_json
from inheritlab.infra.errors import ShardError, SpecError
from inheritlab.infra.hashing import stable_rng

# Bump when rendering changes: an older world.json then no longer matches and is rebuilt.
# 2: the ``qa_train`` split.
TEXT_WORLD_FORMAT = 2
# The random streams' own version, apart from the format: adding a split leaves the draws of
# the existing ones, and so their bytes, unchanged (bump only when those draws must change).
_RNG_EPOCH = 1
TEXT_SPLITS = (
    "train", "test_id", "test_ood_people", "test_ood_templates", "qa_id", "qa_ood_templates", "qa_ood_people",
    "qa_train",
)
# The QA test splits; ``ADAPT_SPLITS`` are for adapting a model before them, never reported.
QA_SPLITS = ("qa_id", "qa_ood_templates", "qa_ood_people")
ADAPT_SPLITS = ("qa_train",)
TOKENIZER_FILE = "tokenizer.json"

FIRST_NAMES = (
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Liam",
    "Maya", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wade", "Xenia",
    "Yusuf", "Zoe", "Anton", "Bea", "Cyril", "Dora", "Emil", "Fiona", "Gideon", "Hana", "Ivo", "Jade",
    "Karl", "Lena", "Marco", "Nora", "Oscar", "Petra", "Rafael", "Sofia", "Tomas", "Una", "Viktor", "Wanda",
    "Yara", "Zeno", "Arjun", "Bianca", "Caspar", "Delia", "Erik", "Freya", "Gustav", "Helga", "Igor", "Julia",
    "Kenji", "Lotte", "Milan", "Nadia",
)
LAST_NAMES = (
    "Abbott", "Brandt", "Castell", "Dorsey", "Eriksen", "Falk", "Gardner", "Holm", "Iverson", "Jansen",
    "Keller", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quist", "Rasmussen", "Sato", "Thorne",
    "Ulrich", "Varga", "Weber", "Xu", "Yamada", "Zeller", "Ashford", "Blackwood", "Corbin", "Delacroix",
    "Ellison", "Fairbanks", "Grimaldi", "Hargrove", "Ingram", "Jovanovic", "Kowalski", "Lambert", "Mercer",
    "Nakamura", "Oliveira", "Pemberton", "Quintero", "Rossi", "Sinclair", "Tanaka", "Underwood", "Vidal",
    "Whitfield", "Yilmaz", "Zhukov", "Adler", "Bergstrom", "Carvalho", "Drummond", "Eastwood", "Fontaine",
    "Galloway", "Hawthorne", "Ishikawa", "Kapoor", "Lindgren", "Marchetti", "Nilsson",
)
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
CITIES = (
    "Lisbon", "Oslo", "Krakow", "Nairobi", "Osaka", "Porto", "Quebec", "Valencia", "Tbilisi", "Bergen",
    "Dublin", "Seville", "Tallinn", "Adelaide", "Lyon", "Riga", "Utrecht", "Zagreb", "Bologna", "Cusco",
    "Dakar", "Hanoi", "Izmir", "Kyoto", "Lima", "Malmo", "Nantes", "Perth", "Salzburg", "Tampere",
    "Vilnius", "Wellington", "Aarhus", "Bilbao", "Cordoba", "Davao", "Graz", "Leipzig", "Montreal", "Ghent",
)
UNIVERSITIES = (
    "Northfield University", "Ravenscroft College", "the Institute of Lakeview", "Marlow Polytechnic",
    "Eastbrook University", "Harrowgate College", "the University of Westmere", "Stonebridge Institute",
    "Kingsford University", "Ashcombe College", "Brightwater University", "the Academy of Ellesmere",
    "Fernhill University", "Glenwood Polytechnic", "Hollis College", "Ironvale University",
    "Juniper Institute", "Lockhart University", "Millbrook College", "Oakridge University",
    "Pinecrest Institute", "Redcliffe University", "Silverlake College", "Thornbury University",
    "Whitmore Institute",
)
FIELDS = (
    "chemistry", "linguistics", "marine biology", "economics", "astronomy", "philosophy", "civil engineering",
    "statistics", "geology", "music theory", "architecture", "neuroscience", "anthropology", "mathematics",
    "materials science", "history", "botany", "computer science", "psychology", "oceanography",
)
EMPLOYERS = (
    "Altavon Systems", "Brightline Foods", "Corvid Analytics", "Deltaforge Steel", "Evergreen Logistics",
    "Fjordlight Energy", "Granite Peak Bank", "Halcyon Pharma", "Ironleaf Media", "Juniper Robotics",
    "Kestrel Aerospace", "Lumen Textiles", "Meridian Insurance", "Northwind Shipping", "Orchid Biotech",
    "Pallas Software", "Quarry Hill Mining", "Riverbend Hospital", "Solstice Airlines", "Tidewater Chemicals",
    "Umbra Security", "Vantage Motors", "Willow Creek Farms", "Xylem Instruments", "Yardley Publishing",
    "Zephyr Telecom", "Amber Grove Hotels", "Bluestone Capital", "Cobalt Semiconductors", "Driftwood Studios",
)

ATTRIBUTES = ("birth_date", "birth_city", "university", "field", "employer")
# Paraphrase templates per attribute; every one ends with the value so its prefix is a prompt.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{name} was born on {v}.",
        "{name} came into the world on {v}.",
        "The birthday of {name} is {v}.",
        "Records show that {name} was born on {v}.",
        "The date of birth of {name} is {v}.",
    ),
    "birth_city": (
        "{name} was born in {v}.",
        "{name} grew up in the city of {v}.",
        "The hometown of {name} is {v}.",
        "{name} spent early childhood in {v}.",
        "{name} is a native of {v}.",
    ),
    "university": (
        "{name} studied at {v}.",
        "{name} graduated from {v}.",
        "{name} earned a degree at {v}.",
        "The alma mater of {name} is {v}.",
        "{name} attended classes at {v}.",
    ),
    "field": (
        "{name} majored in {v}.",
        "{name} specialised in {v}.",
        "The academic field of {name} was {v}.",
        "At university, {name} focused on {v}.",
        "{name} completed a degree in {v}.",
    ),
    "employer": (
        "{name} works for {v}.",
        "{name} is employed by {v}.",
        "The employer of {name} is {v}.",
        "{name} has a job at {v}.",
        "{name} earns a living at {v}.",
    ),
}
_VALUES = {"birth_city": CITIES, "university": UNIVERSITIES, "field": FIELDS, "employer": EMPLOYERS}
N_TEMPLATES = 5


@dataclass(frozen=True, kw_only=True)
class TextWorldConfig:
    """Size and shape of the text world.

    ``train_docs`` biographies are spread over ``num_individuals`` people with a Zipf law of
    exponent ``zipf`` (0 = uniform), each person getting at least ``min_docs``.
    ``heldout_templates`` of the five paraphrases per attribute are kept out of training.
    ``vocab_size`` > 0 trains a byte-level BPE tokenizer on the train split (0: none).
    """

    seed: int = 0
    num_individuals: int = 500
    num_heldout_individuals: int = 100
    train_docs: int = 4000
    zipf: float = 1.0
    min_docs: int = 1
    heldout_templates: int = 1
    test_docs: int = 200
    qa_individuals: int = 100
    docs_per_shard: int = 1000
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        cap = len(FIRST_NAMES) * len(LAST_NAMES)
        if self.num_individuals < 1 or self.num_heldout_individuals < 1:
            raise SpecError(
                f"text_world.num_individuals/num_heldout_individuals: got {self.num_individuals}/"
                f"{self.num_heldout_individuals}; expected >= 1 each"
            )
        if self.num_individuals + self.num_heldout_individuals > cap:
            raise SpecError(
                f"text_world.num_individuals: {self.num_individuals} + {self.num_heldout_individuals} held out "
                f"exceeds the {cap} distinct names the world can render"
            )
        if self.min_docs < 1 or self.train_docs < self.min_docs * self.num_individuals:
            raise SpecError(
                f"text_world.train_docs: got {self.train_docs}; expected >= min_docs ({self.min_docs}) x "
                f"num_individuals ({self.num_individuals}) so every ID individual is in the training text"
            )
        if not self.zipf >= 0:
            raise SpecError(f"text_world.zipf: got {self.zipf}; expected a Zipf exponent >= 0")
        if not 1 <= self.heldout_templates < N_TEMPLATES:
            raise SpecError(f"text_world.heldout_templates: got {self.heldout_templates}; allowed 1..{N_TEMPLATES - 1}")
        for name in ("test_docs", "qa_individuals", "docs_per_shard"):
            if getattr(self, name) < 1:
                raise SpecError(f"text_world.{name}: got {getattr(self, name)}; expected >= 1")
        if self.vocab_size != 0 and not 300 <= self.vocab_size <= 1 << 17:
            raise SpecError(f"text_world.vocab_size: got {self.vocab_size}; expected 0 (no tokenizer) or 300..131072")

    def build(self, out_dir: str | os.PathLike[str]) -> "TextWorldInfo":
        return write_text_world(self, out_dir)


@dataclass(frozen=True, kw_only=True)
class TextWorldInfo:
    """What a consumer needs to know about a text world (built-in, or a user's text shards).

    ``tokenizer`` is the path of the saved tokenizer file (``None`` when there is none).
    For a user's shards ``attributes`` is empty and there are no QA splits.
    """

    root: Path
    splits: dict[str, list[str]]
    tokenizer: Path | None
    attributes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- people


def _people(cfg: TextWorldConfig) -> list[dict[str, str]]:
    """All individuals (ID first, then held out), each a dict of name and attribute values."""
    rng = stable_rng("text-world", _RNG_EPOCH, cfg.seed, "people")
    n = cfg.num_individuals + cfg.num_heldout_individuals
    cap = len(FIRST_NAMES) * len(LAST_NAMES)
    name_ids = rng.choice(cap, size=n, replace=False)
    days = rng.integers(1, 29, n)
    months = rng.integers(0, 12, n)
    years = rng.integers(1940, 2001, n)
    picks = {a: rng.integers(0, len(vals), n) for a, vals in _VALUES.items()}
    people = []
    for i in range(n):
        first, last = FIRST_NAMES[name_ids[i] // len(LAST_NAMES)], LAST_NAMES[name_ids[i] % len(LAST_NAMES)]
        person = {"name": f"{first} {last}", "birth_date": f"{MONTHS[months[i]]} {days[i]}, {years[i]}"}
        person.update({a: _VALUES[a][picks[a][i]] for a in _VALUES})
        people.append(person)
    return people


def _doc_counts(cfg: TextWorldConfig) -> np.ndarray:
    """Training biographies per ID individual: ``min_docs`` each plus a Zipf share of the rest.

    Ranks are a random permutation, so popularity is independent of name and attributes.
    """
    rng = stable_rng("text-world", _RNG_EPOCH, cfg.seed, "popularity")
    n = cfg.num_individuals
    rank = rng.permutation(n) + 1
    w = 1.0 / rank.astype(np.float64) ** cfg.zipf
    rest = cfg.train_docs - cfg.min_docs * n
    quota = rest * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    left = rest - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:left]] += 1
    return counts + cfg.min_docs


def _template_ids(cfg: TextWorldConfig, heldout: bool) -> list[int]:
    split = N_TEMPLATES - cfg.heldout_templates
    return list(range(split, N_TEMPLATES)) if heldout else list(range(split))


def render_sentence(person: dict[str, str], attribute: str, template: int) -> tuple[str, str]:
    """(prompt, value) of one attribute sentence: the sentence is ``prompt + " " + value + "."``."""
    tmpl = TEMPLATES[attribute][template]
    head = tmpl.split("{v}")[0].rstrip()
    return head.format(name=person["name"]), person[attribute]


def _biography(person: dict[str, str], rng: np.random.Generator, templates: list[int]) -> tuple[str, list[int]]:
    order = rng.permutation(len(ATTRIBUTES))
    chosen = [templates[int(t)] for t in rng.integers(0, len(templates), len(ATTRIBUTES))]
    sentences = []
    for j in order:
        prompt, value = render_sentence(person, ATTRIBUTES[j], chosen[j])
        sentences.append(f"{prompt} {value}.")
    return " ".join(sentences), chosen


def _doc_samples(split: str, pids: list[int], people: list[dict[str, str]], cfg: TextWorldConfig,
                 heldout_templates: bool, counts: np.ndarray | None) -> list[dict[str, Any]]:
    rng = stable_rng("text-world", _RNG_EPOCH, cfg.seed, "docs", split)
    templates = _template_ids(cfg, heldout_templates)
    out = []
    for i, pid in enumerate(pids):
        text, chosen = _biography(people[pid], rng, templates)
        meta = {"split": split, "individual": int(pid), "name": people[pid]["name"], "templates": chosen,
                "train_docs": int(counts[pid]) if counts is not None and pid < len(counts) else 0}
        out.append({"__key__": f"{split}_{i:07d}", "text": text, "meta": meta})
    return out


def _qa_samples(split: str, pids: list[int], people: list[dict[str, str]], cfg: TextWorldConfig,
                heldout_templates: bool, open_book: bool, counts: np.ndarray) -> list[dict[str, Any]]:
    rng = stable_rng("text-world", _RNG_EPOCH, cfg.seed, "qa", split)
    templates = _template_ids(cfg, heldout_templates)
    out = []
    for pid in pids:
        person = people[pid]
        context = _biography(person, rng, _template_ids(cfg, False))[0] if open_book else ""
        for attribute in ATTRIBUTES:
            t = templates[int(rng.integers(0, len(templates)))]
            prompt, answer = render_sentence(person, attribute, t)
            if context:
                prompt = f"{context} {prompt}"
            meta = {"split": split, "individual": int(pid), "name": person["name"], "attribute": attribute,
                    "template": t, "prompt": prompt, "answer": answer, "open_book": open_book,
                    "train_docs": int(counts[pid]) if pid < len(counts) else 0}
            out.append({"__key__": f"{split}_{len(out):07d}", "text": f"{prompt} {answer}.", "meta": meta})
    return out


def render_splits(cfg: TextWorldConfig) -> dict[str, list[dict[str, Any]]]:
    """Every split's samples (``{"__key__", "text", "meta"}``), in shard order."""
    people = _people(cfg)
    counts = _doc_counts(cfg)
    n_id, n_ho = cfg.num_individuals, cfg.num_heldout_individuals
    rng = stable_rng("text-world", _RNG_EPOCH, cfg.seed, "order")
    train_pids = np.repeat(np.arange(n_id), counts)[rng.permutation(int(counts.sum()))].tolist()
    test_id = rng.integers(0, n_id, cfg.test_docs).tolist()
    test_ho = (n_id + rng.integers(0, n_ho, cfg.test_docs)).tolist()
    test_tm = rng.integers(0, n_id, cfg.test_docs).tolist()
    qa_id = sorted(rng.choice(n_id, size=min(cfg.qa_individuals, n_id), replace=False).tolist())
    qa_ho = sorted((n_id + rng.choice(n_ho, size=min(cfg.qa_individuals, n_ho), replace=False)).tolist())
    # Adaptation people: drawn from the ID individuals left after qa_id (empty when none is left),
    # with a stream of their own so the splits above stay as they were.
    rest = np.setdiff1d(np.arange(n_id), qa_id)
    tr_rng = stable_rng("text-world", _RNG_EPOCH, cfg.seed, "qa_train_people")
    qa_tr = sorted(tr_rng.choice(rest, size=min(cfg.qa_individuals, len(rest)), replace=False).tolist())
    return {
        "train": _doc_samples("train", train_pids, people, cfg, False, counts),
        "test_id": _doc_samples("test_id", test_id, people, cfg, False, counts),
        "test_ood_people": _doc_samples("test_ood_people", test_ho, people, cfg, False, counts),
        "test_ood_templates": _doc_samples("test_ood_templates", test_tm, people, cfg, True, counts),
        "qa_id": _qa_samples("qa_id", qa_id, people, cfg, False, False, counts),
        "qa_ood_templates": _qa_samples("qa_ood_templates", qa_id, people, cfg, True, False, counts),
        "qa_ood_people": _qa_samples("qa_ood_people", qa_ho, people, cfg, False, True, counts),
        "qa_train": _qa_samples("qa_train", qa_tr, people, cfg, False, False, counts),
    }


# ----------------------------------------------------------------------------------- world dir


def _record(cfg: TextWorldConfig) -> dict[str, Any]:
    return {"format": TEXT_WORLD_FORMAT, "kind": "text", "config": asdict(cfg)}


def _info_from_json(root: Path, data: dict[str, Any]) -> TextWorldInfo:
    tok = data.get("tokenizer")
    return TextWorldInfo(
        root=root,
        splits={name: [str(root / p) for p in rels] for name, rels in data["splits"].items()},
        tokenizer=(root / tok) if tok else None,
        attributes=list(data.get("attributes") or []),
        config=dict(data.get("config") or {}),
    )


def write_text_world(cfg: TextWorldConfig, out_dir: str | os.PathLike[str]) -> TextWorldInfo:
    """Write the text world as WebDataset text shards, ``world.json`` and ``tokenizer.json``.

    Reuses an existing world whose ``world.json`` matches the config. The directory is built
    under a temp name and renamed into place: a crash never leaves a half world that looks
    whole. A non-empty directory without ``world.json`` is refused, not overwritten.
    """
    root = Path(out_dir).expanduser().resolve()
    meta_path = root / "world.json"
    if meta_path.is_file():
        data = read_json(meta_path)
        if {k: data.get(k) for k in ("format", "kind", "config")} == _record(cfg):
            return _info_from_json(root, data)
    elif root.is_dir() and any(root.iterdir()):
        raise ShardError(str(root), None, "directory is not empty and holds no world.json; refusing to overwrite")
    splits = render_splits(cfg)
    with atomic_dir(root) as tmp:
        rel: dict[str, list[str]] = {}
        for split in TEXT_SPLITS:
            paths = write_shards(splits[split], tmp / split, samples_per_shard=cfg.docs_per_shard)
            rel[split] = [f"{split}/{p.name}" for p in paths]
        tokenizer = None
        if cfg.vocab_size:
            from inheritlab.corruptors.tokenizer import train_tokenizer

            train_tokenizer((s["text"] for s in splits["train"]), vocab_size=cfg.vocab_size,
                            out_path=tmp / TOKENIZER_FILE)
            tokenizer = TOKENIZER_FILE
        data = {
            **_record(cfg),
            "attributes": list(ATTRIBUTES),
            "templates": {a: list(t) for a, t in TEMPLATES.items()},
            "heldout_template_ids": _template_ids(cfg, True),
            "qa_splits": list(QA_SPLITS),
            "adapt_splits": list(ADAPT_SPLITS),
            "tokenizer": tokenizer,
            "splits": rel,
        }
        # world.json last inside the temp dir: its presence marks a whole world.
        atomic_write_json(tmp / "world.json", data)
    return _info_from_json(root, read_json(meta_path))


def load_text_world_info(root: str | os.PathLike[str], *, tokenizer: str | os.PathLike[str] | None = None) -> TextWorldInfo:
    """A :class:`TextWorldInfo` for a built-in text world, or for a user's text shard dir.

    A user's directory holds ``.tar`` text shards directly (read as ``train``) or split
    sub-directories (``train/``, ``test_id/``, ...); ``tokenizer`` then names the tokenizer
    file (or a directory holding ``tokenizer.json``), else one beside the shards is used.
    """
    from inheritlab.corruptors.shards import list_shards

    r = Path(root).expanduser().resolve()
    if not r.is_dir():
        raise ShardError(str(r), None, "text world directory does not exist or is not a directory")
    if (r / "world.json").is_file():
        info = _info_from_json(r, read_json(r / "world.json"))
        if tokenizer is not None:
            info = TextWorldInfo(root=info.root, splits=info.splits, tokenizer=Path(tokenizer),
                                 attributes=info.attributes, config=info.config)
        return info
    splits: dict[str, list[str]] = {}
    for sub in sorted(p for p in r.iterdir() if p.is_dir()):
        if any(q.suffix == ".tar" for q in sub.iterdir()):
            splits[sub.name] = list_shards(sub)
    if not splits and any(p.suffix == ".tar" for p in r.iterdir()):
        splits["train"] = list_shards(r)
    if not splits:
        raise ShardError(str(r), None, "no world.json and no .tar text shards (directly or in split sub-directories)")
    tok = Path(tokenizer) if tokenizer is not None else (r / TOKENIZER_FILE if (r / TOKENIZER_FILE).is_file() else None)
    return TextWorldInfo(root=r, splits=splits, tokenizer=tok)
