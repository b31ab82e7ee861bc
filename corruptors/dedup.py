"""Deduplication as a planned stage: signatures per shard (parallel), clusters in the reduce.

Methods:

- ``exact``: a content hash of the field (image bytes, or normalised caption/text).
- ``minhash``: MinHash over character n-grams of the caption/text, banded LSH for candidates,
  then the signature agreement (the Jaccard estimate) must reach ``threshold``.
- ``phash``: a DCT perceptual hash of the image (64 bits), banded candidates, then Hamming
  distance at most ``max_distance``. Robust to re-encoding; weak on tiny synthetic images.
- ``embed``: an 8×8 RGB thumbnail (mean-centred, unit norm) as an image embedding; pairs
  within cosine distance ``max_cos_distance`` are duplicates. Exhaustive blocked matrix
  products in the reduce (fine to a few hundred thousand samples; beyond, shard the reduce).

Each cluster keeps one sample (smallest keep-hash, so the choice does not depend on order) and
the stream drops the rest with reason ``duplicate`` (with ``level < 1``, only a nested
fraction of them: a graded remover for a study axis). :func:`dedup_quality` scores the dropped
set against planted duplicate groups (precision / recall).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import polars as pl

from inheritlab.corruptors.base import Corruptor, Param, Sample, register, text_field
from inheritlab.infra.errors import SpecError
from inheritlab.infra.hashing import stable_rng

_MASK32 = np.uint64(0xFFFFFFFF)
_WS = re.compile(r"\s+")


# ----------------------------------------------------------------------------------- signatures


def normalise_text(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place: spread the bits before keeping 32 of them."""
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _batch_shingles(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """All texts' character n-gram hashes in one buffer pass: (hashes, start index of each text).

    A rolling FNV-style hash of the normalised UTF-8 bytes, mixed by :func:`_mix` and kept to 32
    bits (repeats kept: a minimum does not care).
    """
    encoded = []
    for t in texts:
        b = normalise_text(t).encode("utf-8")
        encoded.append(b + b"\0" * (n - len(b)) if len(b) < n else b)
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    m = buf.size - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * np.uint64(1099511628211) + buf[j : j + m]
    h = _mix(h) & _MASK32
    # Windows that start in text i and stay inside it: offset_i .. offset_i + len_i - n.
    counts = lengths - n + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx = np.repeat(offsets - starts, counts) + np.arange(int(counts.sum()))
    return h[idx], starts


class MinHasher:
    """MinHash signatures with ``num_perm`` multiply-shift hashes ``((a·x + b) mod 2^64) >> 32``.

    ``a`` is a random odd 64-bit multiplier (Dietzfelbinger's universal family): the wrap-around
    of uint64 arithmetic is the modulus, so the sweep is pure numpy with no overflow concerns.
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        rng = stable_rng("minhash", seed, num_perm)
        self.a = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
        self.num_perm, self.ngram = num_perm, ngram

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint64 signatures, computed in one vectorised sweep."""
        if not texts:
            return np.zeros((0, self.num_perm), dtype=np.uint64)
        x, starts = _batch_shingles(texts, self.ngram)
        out = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        # One permutation at a time: the working vector stays in cache (a (perm × shingle)
        # matrix would stream hundreds of MB through memory).
        shift = np.uint64(32)
        v = np.empty_like(x)
        with np.errstate(over="ignore"):
            for k in range(self.num_perm):
                np.multiply(x, self.a[k], out=v)
                v += self.b[k]
                v >>= shift
                out[:, k] = np.minimum.reduceat(v, starts)
        return out


def phash(image: Any) -> np.ndarray:
    """64-bit DCT perceptual hash (as 64 booleans) of a PIL image or encoded bytes."""
    from PIL import Image
    from scipy.fft import dctn

    im = Image.open(io.BytesIO(bytes(image))) if isinstance(image, (bytes, bytearray)) else image
    gray = np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64)
    low = dctn(gray, norm="ortho")[:8, :8].ravel()
    return low > np.median(low[1:])


def thumb_embedding(image: Any, side: int = 8) -> np.ndarray:
    """A side×side RGB box-filtered thumbnail, mean-centred and unit-normed (float32)."""
    from PIL import Image

    im = Image.open(io.BytesIO(bytes(image))) if isinstance(image, (bytes, bytearray)) else image
    v = np.asarray(im.convert("RGB").resize((side, side), Image.BOX), dtype=np.float32).ravel()
    v -= v.mean()
    return v / (np.linalg.norm(v) + 1e-9)


# ----------------------------------------------------------------------------------- clustering


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _band_candidates(bands: np.ndarray) -> Iterable[list[int]]:
    """Buckets (lists of row indices) of rows equal in some band; bands: (n, B, width).

    Each band's rows fold into one 64-bit hash; a sort finds the runs of equal hashes. Only
    runs longer than one leave numpy, so the cost is a few array passes per band.
    """
    n, n_bands, width = bands.shape
    rows = bands.astype(np.uint64, copy=False)
    for b in range(n_bands):
        h = np.full(n, np.uint64(0xCBF29CE484222325), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(width):
                h ^= rows[:, b, j]
                h *= np.uint64(0x100000001B3)
                h ^= h >> np.uint64(29)
        order = np.argsort(h, kind="stable")
        hs = h[order]
        cuts = np.flatnonzero(hs[1:] != hs[:-1]) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [n]])
        for s0, e0 in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            yield order[s0:e0].tolist()


def cluster_minhash(sigs: np.ndarray, *, threshold: float, bands: int) -> _UnionFind:
    n, p = sigs.shape
    if p % bands:
        raise SpecError(f"dedup: num_perm {p} is not divisible by bands {bands}")
    uf = _UnionFind(n)
    checked: set[tuple[int, int]] = set()
    for members in _band_candidates(sigs.reshape(n, bands, p // bands)):
        # Identical signatures join at once; distinct ones are verified pairwise (star-verified
        # against the first when a bucket is huge, to stay linear).
        distinct: dict[bytes, int] = {}
        for i in members:
            key = sigs[i].tobytes()
            if key in distinct:
                uf.union(distinct[key], i)
            else:
                distinct[key] = i
        reps = list(distinct.values())
        pairs = [(a, b) for x, a in enumerate(reps) for b in reps[x + 1 :]] if len(reps) <= 64 else [
            (reps[0], b) for b in reps[1:]]
        for a, b in pairs:
            if (a, b) in checked or uf.find(a) == uf.find(b):
                continue
            checked.add((a, b))
            if float(np.mean(sigs[a] == sigs[b])) >= threshold:
                uf.union(a, b)
    return uf


def cluster_bits(bits: np.ndarray, *, max_distance: int, bands: int = 8) -> _UnionFind:
    """Cluster bit vectors (n, 64) within Hamming ``max_distance`` (found if < ``bands``)."""
    n, width = bits.shape
    uf = _UnionFind(n)
    for members in _band_candidates(bits.reshape(n, bands, width // bands)):
        for x, a in enumerate(members):
            for b in members[x + 1 :]:
                if uf.find(a) != uf.find(b) and int(np.count_nonzero(bits[a] != bits[b])) <= max_distance:
                    uf.union(a, b)
    return uf


def cluster_embeddings(emb: np.ndarray, *, max_cos_distance: float, block: int = 2048) -> _UnionFind:
    """Join every pair with cosine distance <= ``max_cos_distance`` (blocked exhaustive search)."""
    n = emb.shape[0]
    uf = _UnionFind(n)
    floor = 1.0 - max_cos_distance
    for start in range(0, n, block):
        sims = emb[start : start + block] @ emb[start:].T  # (b, n - start)
        rows, cols = np.nonzero(sims >= floor)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i, j = start + r, start + c
            if j > i:
                uf.union(i, j)
    return uf


# ----------------------------------------------------------------------------------- the step


@register
class Dedup(Corruptor):
    """Remove duplicates (see module docstring). Dropped: reason ``duplicate``."""

    type_name = "dedup"
    PARAMS = {
        "level": Param(kind="float", lo=0.0, hi=1.0, default=1.0,
                       doc="fraction of detected duplicates removed (nested coin; 1 = all)"),
        "method": Param(kind="choice", choices=("exact", "minhash", "phash", "embed"), default="exact",
                        doc="content hash, MinHash LSH on text, perceptual hash or thumbnail embedding on images"),
        "field": Param(kind="choice", choices=("auto", "image", "caption", "text"), default="auto",
                       doc="what is compared (auto: image for exact/phash when present, else the text)"),
        "threshold": Param(kind="float", lo=0.0, hi=1.0, default=0.8, doc="minhash: Jaccard estimate to call a pair duplicate"),
        "num_perm": Param(kind="int", lo=16, hi=1024, default=128, doc="minhash: signature length"),
        "bands": Param(kind="int", lo=1, hi=1024, default=32, doc="minhash: LSH bands (num_perm must divide)"),
        "ngram": Param(kind="int", lo=1, hi=32, default=5, doc="minhash: character n-gram length"),
        "max_distance": Param(kind="int", lo=0, hi=7, default=6, doc="phash: max Hamming distance of 64 bits"),
        "max_cos_distance": Param(kind="float", lo=0.0, hi=1.0, default=0.04, doc="embed: max cosine distance"),
    }

    @classmethod
    def validate(cls, params: dict[str, Any], where: str) -> None:
        if params["method"] == "minhash" and params["num_perm"] % params["bands"]:
            raise SpecError(f"{where}.bands: got {params['bands']}; must divide num_perm ({params['num_perm']})")
        if params["method"] in ("phash", "embed") and params["field"] not in ("auto", "image"):
            raise SpecError(f"{where}.field: got {params['field']!r}; {params['method']} compares images")
        if params["method"] == "minhash" and params["field"] == "image":
            raise SpecError(f"{where}.field: got 'image'; minhash compares text")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._drop: dict[str, str] = {}

    planned = True  # type: ignore[assignment]  (a constant here; the base class decides per spec)

    def _field(self, sample: Sample) -> str:
        f = self.params["field"]
        if f != "auto":
            return f
        if self.params["method"] != "minhash" and sample.get("image") is not None:
            return "image"
        return text_field(sample)

    def plan_map(self, samples: Iterable[Sample]) -> Any:
        keys: list[str] = []
        method = self.params["method"]
        payload: list[Any] = []
        for s in samples:
            field = self._field(s)
            value = s.get(field)
            if value is None:
                self.skipped[f"no_{field}"] += 1
                continue
            keys.append(s["__key__"])
            payload.append(value)
        if method == "exact":
            sigs = [_content_digest(v) for v in payload]
        elif method == "minhash":
            sigs = MinHasher(self.params["num_perm"], self.params["ngram"]).signatures([str(v) for v in payload])
        elif method == "phash":
            sigs = np.array([phash(v) for v in payload], dtype=bool).reshape(-1, 64)
        else:
            sigs = np.array([thumb_embedding(v) for v in payload], dtype=np.float32).reshape(-1, 192)
        return {"keys": keys, "sigs": sigs}

    def plan_reduce(self, partials: list[Any]) -> pl.DataFrame:
        keys = [k for p in partials for k in p["keys"]]
        # Cluster in key order, not arrival order: the result must not depend on shard order.
        order = sorted(range(len(keys)), key=keys.__getitem__)
        keys = [keys[i] for i in order]
        method = self.params["method"]
        if method == "exact":
            digests = [d for p in partials for d in p["sigs"]]
            digests = [digests[i] for i in order]
            uf = _UnionFind(len(keys))
            first: dict[str, int] = {}
            for i, d in enumerate(digests):
                if d in first:
                    uf.union(first[d], i)
                else:
                    first[d] = i
        elif method == "minhash":
            sigs = np.concatenate([p["sigs"] for p in partials])[order] if keys else np.zeros((0, 1), np.uint64)
            uf = cluster_minhash(sigs, threshold=self.params["threshold"], bands=self.params["bands"])
        elif method == "phash":
            bits = np.concatenate([p["sigs"] for p in partials])[order] if keys else np.zeros((0, 64), bool)
            uf = cluster_bits(bits, max_distance=self.params["max_distance"])
        else:
            emb = np.concatenate([p["sigs"] for p in partials])[order] if keys else np.zeros((0, 192), np.float32)
            uf = cluster_embeddings(emb, max_cos_distance=self.params["max_cos_distance"])
        clusters: dict[int, list[int]] = defaultdict(list)
        for i in range(len(keys)):
            clusters[uf.find(i)].append(i)
        rows: dict[str, list[Any]] = {"key": [], "kept": [], "cluster_size": []}
        for members in clusters.values():
            if len(members) < 2:
                continue
            ranked = sorted(members, key=lambda i: (self.u(keys[i], "keep"), keys[i]))
            for i in ranked[1:]:
                rows["key"].append(keys[i])
                rows["kept"].append(keys[ranked[0]])
                rows["cluster_size"].append(len(members))
        return pl.DataFrame(rows, schema={"key": pl.Utf8, "kept": pl.Utf8, "cluster_size": pl.Int64}).sort("key")

    def load_plan(self, plan: pl.DataFrame) -> None:
        super().load_plan(plan)
        self._drop = dict(zip(plan["key"].to_list(), plan["kept"].to_list()))

    def process(self, sample: Sample) -> list[Sample]:
        self.require_plan()
        key = sample["__key__"]
        kept = self._drop.get(key)
        if kept is None:
            return [sample]
        if self.u(key) >= float(self.params["level"]):
            self.skipped["duplicate_kept_by_level"] += 1
            return [sample]
        return self.drop(key, "duplicate", kept=kept)


def _content_digest(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        data = normalise_text(value).encode("utf-8")
    else:  # a decoded image: hash its pixels
        data = np.asarray(value.convert("RGB")).tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def dedup_quality(dropped: Iterable[str], groups: Iterable[Iterable[str]]) -> dict[str, float]:
    """Precision and recall of a dedup's dropped keys against planted duplicate groups.

    A group (an original and its planted copies) of size g has g − 1 removable members; a
    dropped key is a true positive while its group still has more than one member left.
    """
    dropped_set = set(dropped)
    tp = 0
    removable = 0
    for g in groups:
        members = set(g)
        removable += len(members) - 1
        tp += min(len(members & dropped_set), len(members) - 1)
    precision = tp / len(dropped_set) if dropped_set else 1.0
    recall = tp / removable if removable else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "dropped": float(len(dropped_set)),
            "removable": float(removable)}
