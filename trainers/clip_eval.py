"""The measurements behind the CLIP evaluation tasks: embeddings of a split, zero-shot
classification, a linear probe, retrieval recall and the feature spectrum.

The tasks themselves (``trainers/clip_tasks.py``) are small functions over these. Labels
always come from the clean splits on disk: the bias under study lives only in the training
stream, so downstream numbers measure what the model inherited from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.eval_tasks import chunks


@dataclass
class SplitFeatures:
    image: torch.Tensor      # [N, d] L2-normalised image embeddings
    text: torch.Tensor       # [M, d] L2-normalised caption embeddings (empty when a sample has none)
    labels: torch.Tensor     # [N] int64 (-1 when the shards carry none)
    captions: list[str]      # [M] the captions embedded
    # [M] the image each caption belongs to; ``None``: one caption per image, in image order.
    text_owner: torch.Tensor | None = None


@torch.no_grad()
def encode_split(model: Any, transform: Any, tokenizer: Any, shards: list[str], *, device: torch.device,
                 batch_size: int = 256, limit: int | None = None, with_text: bool = True,
                 label_key: str | None = None, bad_sample_ceiling: float | int = 0,
                 stats: Any = None, caption_lines: bool = False) -> SplitFeatures:
    """Embed every sample of ``shards`` (the first ``limit`` if given), images and captions,
    one batch at a time (decoded images are never all held at once).

    Captions are optional (classification sets carry labels only): when any sample has none,
    ``text`` is empty. ``caption_lines``: a caption holds several, one per line (retrieval sets
    in the CLIP_benchmark layout); each line is embedded, ``text_owner`` saying whose it is.
    Bad samples are skipped and counted in ``stats``, the ceiling judged on the whole read.
    """
    from inheritlab.corruptors.shards import ReadStats, check_ceiling, iter_samples

    stats = stats if stats is not None else ReadStats()
    imgs: list[torch.Tensor] = []
    txts: list[torch.Tensor] = []
    labels: list[int] = []
    captions: list[str] = []
    owner: list[int] = []
    text_ok = with_text

    def flush(chunk: list[dict[str, Any]]) -> None:
        nonlocal text_ok
        x = torch.stack([transform(s["image"]) for s in chunk]).to(device)
        imgs.append(model.encode_image(x, normalize=True).float().cpu())
        first = len(labels)
        labels.extend(int(s.get("label", -1)) for s in chunk)
        text_ok = text_ok and all(s.get("caption") for s in chunk)
        if not text_ok:
            return
        new: list[str] = []
        for i, s in enumerate(chunk):
            lines = [ln.strip() for ln in s["caption"].splitlines() if ln.strip()] if caption_lines else [s["caption"]]
            new.extend(lines)
            owner.extend([first + i] * len(lines))
        captions.extend(new)
        for part in chunks(new, batch_size):
            txts.append(model.encode_text(tokenizer(part).to(device), normalize=True).float().cpu())

    chunk: list[dict[str, Any]] = []
    for s in iter_samples(shards, decode=True, kind="picture", label_key=label_key,
                          bad_sample_ceiling=bad_sample_ceiling, stats=stats):
        chunk.append(s)
        if len(chunk) == batch_size:
            flush(chunk)
            chunk = []
        if limit is not None and len(labels) + len(chunk) >= limit:
            break
    if chunk:
        flush(chunk)
    if limit is not None:
        check_ceiling(stats, bad_sample_ceiling)  # a read stopped early is judged on what it read
    if not labels:
        raise SpecError(f"evaluation split {shards[:3]}{'...' if len(shards) > 3 else ''} holds no samples")
    if not text_ok:
        return SplitFeatures(image=torch.cat(imgs), text=torch.empty(0), labels=torch.tensor(labels, dtype=torch.long),
                             captions=[])
    return SplitFeatures(image=torch.cat(imgs), text=torch.cat(txts), labels=torch.tensor(labels, dtype=torch.long),
                         captions=captions, text_owner=torch.tensor(owner) if caption_lines else None)


@torch.no_grad()
def class_embeddings(model: Any, tokenizer: Any, class_names: list[str], templates: list[str],
                     device: torch.device) -> torch.Tensor:
    """[C, d] prompt-ensemble class embeddings: mean of normalised template embeddings, renormalised."""
    from inheritlab.corruptors.classes import fill_template

    rows = []
    for name in class_names:
        t = tokenizer([fill_template(tpl, name) for tpl in templates]).to(device)
        e = model.encode_text(t, normalize=True).float().mean(0)
        rows.append(e / e.norm())
    return torch.stack(rows).cpu()


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The classification metrics DataComp reports: top-1 and top-5 accuracy (top-5 only with
    at least 5 classes) and mean per-class recall (the mean over the classes present of the
    fraction of their samples predicted right — what balanced accuracy is)."""
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise SpecError(f"labels must lie in [0, {logits.shape[1]}) — the number of class names; "
                        f"got labels from {int(labels.min())} to {int(labels.max())}")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    out = {"acc1": float((top[:, 0] == labels).double().mean())}
    if logits.shape[1] >= 5:
        out["acc5"] = float((top == labels[:, None]).any(1).double().mean())
    hit = (top[:, 0] == labels).double()
    present = labels.unique()
    out["mean_per_class_recall"] = float(torch.stack([hit[labels == c].mean() for c in present]).mean())
    return out


def multi_caption_recall(f: SplitFeatures, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval recall@k with several captions per image (CLIP_benchmark / DataComp):
    ``image_retrieval_recall@k`` — the fraction of captions whose image is in their top k
    images; ``text_retrieval_recall@k`` — the fraction of images with any of their captions in
    their top k captions."""
    owner = f.text_owner if f.text_owner is not None else torch.arange(f.text.shape[0])
    sim = f.text @ f.image.T                                        # [M captions, N images]
    out: dict[str, float] = {}
    for k in ks:
        top_i = sim.topk(min(k, sim.shape[1]), dim=1).indices       # images for each caption
        out[f"image_retrieval_recall@{k}"] = float((top_i == owner[:, None]).any(1).double().mean())
        top_t = sim.T.topk(min(k, sim.shape[0]), dim=1).indices     # captions for each image
        hits = owner[top_t] == torch.arange(sim.shape[1])[:, None]
        out[f"text_retrieval_recall@{k}"] = float(hits.any(1).double().mean())
    return out


@dataclass(frozen=True)
class LinearProbe:
    """A fitted multinomial logistic regression on standardised image features.

    Kept as an object (not only its accuracies) so adaptations that need more than top-1
    (mean per-class recall, few-shot draws) score the same fitted probe through
    :meth:`logits` instead of refitting or copying the solver.
    """

    mu: torch.Tensor     # [d] train feature mean
    sd: torch.Tensor     # [d] train feature standard deviation (+1e-6)
    w: torch.Tensor      # [d, C] float64
    b: torch.Tensor      # [C] float64

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """[N, C] float64 class scores of image features [N, d], standardised with the train statistics."""
        return ((image - self.mu) / self.sd).double() @ self.w + self.b


def train_linear_probe(train: SplitFeatures, num_classes: int, *, l2: float = 1e-3,
                       max_iter: int = 200) -> LinearProbe:
    """Multinomial logistic regression on frozen image features, full-batch L-BFGS from zero.

    Deterministic (no sampling; zero init), so the seed only enters through the train subset.
    Features are standardised with the train statistics.
    """
    mu, sd = train.image.mean(0), train.image.std(0) + 1e-6
    x = ((train.image - mu) / sd).double()
    y = train.labels
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mu=mu, sd=sd, w=w.detach(), b=b.detach())


def fit_linear_probe(train: SplitFeatures, tests: dict[str, SplitFeatures], num_classes: int, *,
                 l2: float = 1e-3, max_iter: int = 200) -> dict[str, float]:
    """Top-1 accuracy per test split of :func:`train_linear_probe` fitted on ``train``."""
    probe = train_linear_probe(train, num_classes, l2=l2, max_iter=max_iter)
    out = {}
    with torch.no_grad():
        for split, f in tests.items():
            out[split] = float((probe.logits(f.image).argmax(1) == f.labels).float().mean())
    return out


def retrieval_recall(f: SplitFeatures, ks: tuple[int, ...] = (1, 5)) -> dict[str, dict[int, float]]:
    """Image→text and text→image recall@k over the paired split.

    Built-in captions repeat (the same template and attributes give the same string), and no
    model can tell identical strings apart, so a hit is any retrieved item whose caption text
    equals the query's own caption.
    """
    ids = {c: i for i, c in enumerate(dict.fromkeys(f.captions))}
    cap = torch.tensor([ids[c] for c in f.captions])
    sim = f.image @ f.text.T                     # [N images, N captions]
    out: dict[str, dict[int, float]] = {"i2t": {}, "t2i": {}}
    kmax = min(max(ks), sim.shape[1])
    top_t = sim.topk(kmax, dim=1).indices        # captions for each image
    top_i = sim.T.topk(kmax, dim=1).indices      # images for each caption
    for k in ks:
        kk = min(k, kmax)
        out["i2t"][k] = float((cap[top_t[:, :kk]] == cap[:, None]).any(1).float().mean())
        out["t2i"][k] = float((cap[top_i[:, :kk]] == cap[:, None]).any(1).float().mean())
    return out


def probe_subset(total: int, n: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of ``n`` of ``total`` samples drawn without replacement on the linear
    probe's seed path (``None``: keep all, there are no more than ``n``). Every downstream
    adaptation trains on this subset, so their numbers differ only by method."""
    import numpy as np

    from inheritlab.infra.seeds import derive_seed32

    if total <= n:
        return None
    rng = np.random.default_rng(derive_seed32(seed, "linear-probe-subset"))
    return torch.from_numpy(np.sort(rng.choice(total, size=n, replace=False)))


def spectrum_diagnostics(features: torch.Tensor) -> dict[str, float]:
    """Singular-value entropy (of σ/Σσ, natural log) and σ₁/Σσ of a feature matrix [N, d].

    A collapsed representation concentrates its spectrum: entropy falls, the top ratio rises.
    """
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum()
    entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return {"sv_entropy": entropy, "sv_top_ratio": float(p[0]), "sv_entropy_norm": entropy / math.log(len(s))}
