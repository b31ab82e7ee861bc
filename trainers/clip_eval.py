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
    text: torch.Tensor       # [N, d] L2-normalised caption embeddings
    labels: torch.Tensor     # [N] int64 (-1 when the shards carry none)
    captions: list[str]


@torch.no_grad()
def encode_split(model: Any, transform: Any, tokenizer: Any, shards: list[str], *, device: torch.device,
                 batch_size: int = 256, limit: int | None = None, with_text: bool = True) -> SplitFeatures:
    """Embed every sample of ``shards`` (the first ``limit`` if given), images and captions."""
    from inheritlab.corruptors.shards import iter_samples

    samples = []
    for s in iter_samples(shards, decode=True):
        samples.append(s)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise SpecError(f"evaluation split {shards} holds no samples")
    imgs, txts = [], []
    for chunk in chunks(samples, batch_size):
        x = torch.stack([transform(s["image"]) for s in chunk]).to(device)
        imgs.append(model.encode_image(x, normalize=True).float().cpu())
        if with_text:
            t = tokenizer([s["caption"] for s in chunk]).to(device)
            txts.append(model.encode_text(t, normalize=True).float().cpu())
    image = torch.cat(imgs)
    text = torch.cat(txts) if with_text else torch.empty(0)
    labels = torch.tensor([int(s.get("label", -1)) for s in samples], dtype=torch.long)
    return SplitFeatures(image=image, text=text, labels=labels, captions=[s["caption"] for s in samples])


@torch.no_grad()
def class_embeddings(model: Any, tokenizer: Any, class_names: list[str], templates: list[str],
                     device: torch.device) -> torch.Tensor:
    """[C, d] prompt-ensemble class embeddings: mean of normalised template embeddings, renormalised."""
    rows = []
    for name in class_names:
        t = tokenizer([tpl.format(name) for tpl in templates]).to(device)
        e = model.encode_text(t, normalize=True).float().mean(0)
        rows.append(e / e.norm())
    return torch.stack(rows).cpu()


def zero_shot_acc(features: SplitFeatures, classes: torch.Tensor) -> float:
    pred = (features.image @ classes.T).argmax(1)
    return float((pred == features.labels).float().mean())


def fit_linear_probe(train: SplitFeatures, tests: dict[str, SplitFeatures], num_classes: int, *,
                 l2: float = 1e-3, max_iter: int = 200) -> dict[str, float]:
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
    out = {}
    with torch.no_grad():
        for split, f in tests.items():
            logits = ((f.image - mu) / sd).double() @ w + b
            out[split] = float((logits.argmax(1) == f.labels).float().mean())
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


def spectrum_diagnostics(features: torch.Tensor) -> dict[str, float]:
    """Singular-value entropy (of σ/Σσ, natural log) and σ₁/Σσ of a feature matrix [N, d].

    A collapsed representation concentrates its spectrum: entropy falls, the top ratio rises.
    """
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum()
    entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return {"sv_entropy": entropy, "sv_top_ratio": float(p[0]), "sv_entropy_norm": entropy / math.log(len(s))}
