"""Downstream adaptations of a frozen CLIP image encoder that only read its features.

Two protocols over :class:`~inheritlab.trainers.clip_eval.SplitFeatures`:

* :func:`few_shot_draws` — the linear probe fitted on ``k`` samples per class, over several
  seeded draws. Few-shot numbers are where what pre-training inherited shows most (the probe
  cannot relearn a feature from k samples), and the draw-to-draw spread is the uncertainty that
  must travel with them.
* :func:`nmtune` — NMTune (Chen, Wang, Shah, Tao, Wei, Xie, Sugiyama & Raj, "Understanding and
  Mitigating the Label Noise in Pre-training on Downstream Tasks", ICLR 2024): a small residual
  MLP reshapes the frozen features, trained jointly with a linear head under three regularisers
  on the transformed features — consistency with the pre-trained features, decorrelation
  (covariance), and a larger share of the dominant singular values. It is black-box: encoder
  weights are never read or changed, which is what a study of an inherited bias needs (the
  mitigation acts on what the model outputs, not on what it learnt). With every λ at 0 the same
  code is the paper's "MLP tuning" baseline, so the regularisers' effect is one ablation away.

Both are deterministic given ``seed``: every random choice comes from a ``torch.Generator``
seeded through the seed tree, never from the global RNG.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from inheritlab.infra.errors import SpecError
from inheritlab.infra.seeds import derive_seed32
from inheritlab.trainers.clip_eval import (
    SplitFeatures,
    classification_scores,
    spectrum_diagnostics,
    train_linear_probe,
)

# ---------------------------------------------------------------------------------------------
# Input checks shared by both protocols
# ---------------------------------------------------------------------------------------------


def _check_num_classes(what: str, num_classes: int) -> None:
    """A classifier needs at least two classes (and a real int: ``True`` is not a class count)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise SpecError(f"{what}: num_classes must be an integer >= 2, got {num_classes!r}")


def _check_split(what: str, split: str, f: SplitFeatures, num_classes: int, dim: int | None = None) -> None:
    """Reject features an adaptation would silently mis-train or mis-score on.

    Names the split and the field, because the caller holds several splits and the traceback
    alone does not say which one was bad.
    """
    where = f"{what}: split {split!r}"
    if f.image.ndim != 2:
        raise SpecError(f"{where}: image features must be a [N, d] matrix, got shape {tuple(f.image.shape)}")
    n = f.image.shape[0]
    if n == 0:
        raise SpecError(f"{where} holds no samples (image features of shape {tuple(f.image.shape)})")
    if not f.image.is_floating_point():
        raise SpecError(f"{where}: image features must be floating point, got {f.image.dtype}")
    if dim is not None and f.image.shape[1] != dim:
        raise SpecError(f"{where}: image features have dimension {f.image.shape[1]}, the train split has {dim}")
    if f.labels.ndim != 1 or f.labels.shape[0] != n:
        raise SpecError(f"{where}: labels must be a vector of {n} entries (one per image), "
                        f"got shape {tuple(f.labels.shape)}")
    if f.labels.is_floating_point() or f.labels.dtype == torch.bool:
        raise SpecError(f"{where}: labels must be integers, got {f.labels.dtype}")
    lo, hi = int(f.labels.min()), int(f.labels.max())
    if lo < 0 or hi >= num_classes:
        raise SpecError(f"{where}: labels must lie in [0, {num_classes}) (num_classes); "
                        f"got labels from {lo} to {hi} (-1 means the shards carry no label)")
    if not torch.isfinite(f.image).all():
        bad = int((~torch.isfinite(f.image)).any(1).sum())
        raise SpecError(f"{where}: {bad} of {n} image feature rows hold NaN or infinite values")


def _check_inputs(what: str, train: SplitFeatures, tests: dict[str, SplitFeatures], num_classes: int) -> None:
    _check_num_classes(what, num_classes)
    _check_split(what, "train", train, num_classes)
    for split, f in tests.items():
        _check_split(what, split, f, num_classes, dim=train.image.shape[1])


def _subset(f: SplitFeatures, idx: torch.Tensor) -> SplitFeatures:
    """The samples ``idx`` of ``f``, images and labels only (adaptations never read captions)."""
    return SplitFeatures(image=f.image[idx], text=torch.empty(0), labels=f.labels[idx], captions=[])


# ---------------------------------------------------------------------------------------------
# Few-shot linear probes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FewShotDraw:
    """One few-shot draw: which train samples the probe saw and how it scored.

    ``train_indices`` are kept (sorted) so a surprising draw can be traced to its samples;
    ``scores[split]`` is :func:`~inheritlab.trainers.clip_eval.classification_scores` of the
    probe on that test split (``acc1``, ``acc5`` with at least 5 classes, ``mean_per_class_recall``).
    """

    draw: int
    draw_seed: int
    k: int
    train_indices: tuple[int, ...]
    scores: dict[str, dict[str, float]]

    @property
    def acc1(self) -> dict[str, float]:
        """Top-1 accuracy per test split."""
        return {split: s["acc1"] for split, s in self.scores.items()}


def few_shot_indices(labels: torch.Tensor, num_classes: int, *, k: int, draw_seed: int) -> torch.Tensor:
    """Sorted indices of exactly ``k`` samples of every class, drawn without replacement.

    Each class is drawn from its own ascending index list with one generator stepped in class
    order, so the pick depends on the seed and the split's sample order only — not on how many
    draws are asked for, or which other ``k`` is used. A class with fewer than ``k`` samples is an
    error rather than a smaller draw: a "k-shot" number from fewer shots would be compared with
    real k-shot numbers in the tables.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    short = [(c, int(counts[c])) for c in range(num_classes) if counts[c] < k]
    if short:
        listed = ", ".join(f"class {c} has {n}" for c, n in short[:5]) + (" ..." if len(short) > 5 else "")
        raise SpecError(f"few-shot: k={k} samples per class asked for, but {len(short)} of {num_classes} classes "
                        f"have fewer in the train split: {listed}")
    g = torch.Generator().manual_seed(draw_seed)
    picks = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picks).sort().values


def few_shot_draws(train: SplitFeatures, tests: dict[str, SplitFeatures], num_classes: int, *,
                   k: int, draws: int, seed: int) -> list[FewShotDraw]:
    """The linear probe fitted on ``k`` samples per class, ``draws`` times.

    Draw ``d`` takes its samples with seed ``derive_seed32(seed, "few-shot", k, d)``: a draw's
    samples do not move when more draws are added, and each ``k`` has its own stream. The probe
    itself is deterministic (L-BFGS from zero), so the draw seed is the only randomness.
    """
    _check_inputs("few-shot", train, tests, num_classes)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SpecError(f"few-shot: k (samples per class) must be an integer >= 1, got {k!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise SpecError(f"few-shot: draws must be an integer >= 1, got {draws!r}")
    out = []
    for d in range(draws):
        draw_seed = derive_seed32(seed, "few-shot", k, d)
        idx = few_shot_indices(train.labels, num_classes, k=k, draw_seed=draw_seed)
        probe = train_linear_probe(_subset(train, idx), num_classes)
        with torch.no_grad():
            scores = {split: classification_scores(probe.logits(f.image), f.labels) for split, f in tests.items()}
        out.append(FewShotDraw(draw=d, draw_seed=draw_seed, k=k, train_indices=tuple(idx.tolist()), scores=scores))
    return out


# ---------------------------------------------------------------------------------------------
# NMTune
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NMTuneConfig:
    """Every hyper-parameter of :func:`nmtune`, with where its default comes from.

    The defaults are the ones the authors' release runs NMTune with for CLIP models (the
    ``src/nml_tune.py`` command in the README of github.com/Hhhhhhao/Noisy-Model-Learning, and
    the code it runs); "ours" marks the choices that release does not make for us.

    * ``hidden_ratio=4``, ``hidden_layers=1`` — the MLP is d → 4d → d: one hidden layer four times
      the feature width (``--mlp-after-ratio=4 --mlp-after-layers=1``). Each hidden layer is
      Linear → BatchNorm → ReLU (the release's MLP), the output layer Linear.
    * ``residual=True``, ``residual_scale_init=1.0`` — z = f + s ⊙ MLP(f) with a learnt per-channel
      scale s initialised to 1 (``--mlp-with-res=True --mlp-res-scale-init=1.0``). The residual
      starts the transform near the pre-trained features, which is what the consistency term
      also asks for.
    * ``lambda_mse=1.0`` — consistency: mean squared error between z/‖z‖ and f/‖f‖ (mean over
      samples and dimensions) (``--mse-loss-weight=1.0``).
    * ``lambda_cov=0.04`` — covariance: squared off-diagonal entries of the batch covariance of z,
      summed and divided by d (``--cov-loss-weight=0.04``); decorrelated channels spread the
      spectrum, raising singular-value entropy.
    * ``lambda_svd=0.001``, ``svd_top_k=5`` — dominant singular values: minus the mean of the
      ``k`` largest of σ/Σσ of the batch's z (``--svd-loss-weight=0.001``; the release averages the
      top 5). Pre-training noise was found to lower this share and hurt out-of-domain transfer.
    * ``lr=1e-3``, ``weight_decay=1e-4``, ``epochs=30``, ``batch_size=64`` — AdamW (the release's
      optimiser) with those values (``--lr=0.001 --wd=0.0001 --epochs=30 --batch-size=64``).
    * ``warmup_steps=0`` with a cosine decay of the learning rate to 0 over all steps — the
      release's schedule at its default warm-up length of 0.
    * ``standardize=True`` — ours: the release feeds the raw encoder output to the MLP; we
      standardise with the train mean and standard deviation first, as
      :func:`~inheritlab.trainers.clip_eval.train_linear_probe` does, so NMTune, MLP tuning and
      the probe are compared on one input, and the per-channel scale of an L2-normalised
      embedding (~1/√d) does not decide how strongly the covariance term bites. Consistency and
      the "before" spectrum are then measured on the standardised features (the identity
      transform leaves them unchanged). ``standardize=False`` feeds the features as given, as the
      release does (though ours arrive L2-normalised and the release's did not).

    The paper's weak/strong augmentation pair does not apply: there are no images here, only
    features (the release's CLIP command also turns it off, ``--use-weak-strong=False``).
    """

    hidden_ratio: int = 4
    hidden_layers: int = 1
    residual: bool = True
    residual_scale_init: float = 1.0
    lambda_mse: float = 1.0
    lambda_cov: float = 0.04
    lambda_svd: float = 0.001
    svd_top_k: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 64
    warmup_steps: int = 0
    standardize: bool = True

    def __post_init__(self) -> None:
        # Fail at construction, naming the field: a bad value found mid-training wastes the run.
        positive_ints = ("hidden_ratio", "epochs", "svd_top_k")
        for name in positive_ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"NMTuneConfig.{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            # BatchNorm in training mode needs two samples to estimate a variance.
            raise SpecError(f"NMTuneConfig.batch_size must be an integer >= 2, got {self.batch_size!r}")
        for name in ("hidden_layers", "warmup_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"NMTuneConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("lambda_mse", "lambda_cov", "lambda_svd", "weight_decay", "residual_scale_init"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SpecError(f"NMTuneConfig.{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) \
                or self.lr <= 0:
            raise SpecError(f"NMTuneConfig.lr must be a finite number > 0, got {self.lr!r}")

    def mlp_tuning(self) -> NMTuneConfig:
        """This config with every regulariser off: the paper's "MLP tuning" baseline, which
        differs from NMTune only by the three terms (same MLP, optimiser and schedule)."""
        return dataclasses.replace(self, lambda_mse=0.0, lambda_cov=0.0, lambda_svd=0.0)

    @property
    def regularised(self) -> bool:
        """Whether any of the three NMTune terms is on (``False``: MLP tuning)."""
        return bool(self.lambda_mse or self.lambda_cov or self.lambda_svd)


@dataclass(frozen=True)
class NMTuneResult:
    """What :func:`nmtune` measured.

    ``scores[split]``: classification_scores of the tuned head on the transformed test features.
    ``spectrum_after[split]`` / ``train_spectrum_after``: spectrum_diagnostics of z; the
    ``_before`` pair is of the features the MLP received (standardised when the config says so),
    so before and after differ only by the learnt transform. ``final_losses``: each loss term's
    mean over the last epoch (unweighted, only the terms switched on), to see which term the
    optimiser traded for which. ``train_terms``: all three terms (unweighted) evaluated once on the
    whole train set after training, switched on or not, so runs that differ in one λ can be
    compared on what that λ acts on.
    """

    seed: int
    config: NMTuneConfig
    scores: dict[str, dict[str, float]]
    spectrum_after: dict[str, dict[str, float]]
    train_spectrum_after: dict[str, float]
    spectrum_before: dict[str, dict[str, float]]
    train_spectrum_before: dict[str, float]
    final_losses: dict[str, float]
    train_terms: dict[str, float]

    @property
    def acc1(self) -> dict[str, float]:
        """Top-1 accuracy per test split."""
        return {split: s["acc1"] for split, s in self.scores.items()}


def _uniform_(t: torch.Tensor, bound: float, g: torch.Generator) -> None:
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=g)


class _FeatureMLP(torch.nn.Module):
    """h(f) = f + s ⊙ MLP(f) (or MLP(f) without the residual), hidden layers Linear→BN→ReLU.

    Parameters are drawn from ``g`` (PyTorch's Linear ranges, U(±1/√fan_in)) and never from the
    global RNG: two runs with one seed give the same weights whatever ran before, and the
    caller's own random stream is left where it was.
    """

    def __init__(self, dim: int, cfg: NMTuneConfig, g: torch.Generator) -> None:
        super().__init__()
        widths = [dim] + [dim * cfg.hidden_ratio] * cfg.hidden_layers + [dim]
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            lin = torch.nn.utils.skip_init(torch.nn.Linear, a, b)  # no draw from the global RNG
            _uniform_(lin.weight, 1 / math.sqrt(a), g)
            _uniform_(lin.bias, 1 / math.sqrt(a), g)
            layers.append(lin)
            if i < len(widths) - 2:
                layers += [torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
        self.mlp = torch.nn.Sequential(*layers)
        self.residual = cfg.residual
        self.scale = torch.nn.Parameter(torch.full((1, dim), float(cfg.residual_scale_init))) if cfg.residual else None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        out = self.mlp(f)
        return f + self.scale * out if self.scale is not None else out


def consistency_loss(z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the directions of z and f: the transform may rescale a
    feature but not turn it away from what pre-training put there."""
    return F.mse_loss(F.normalize(z, dim=1), F.normalize(f, dim=1))


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries of the batch covariance of z, divided by d.

    Correlated channels are what concentrates a spectrum; pushing them apart raises the
    singular-value entropy of the transformed features.
    """
    zc = z - z.mean(0)
    cov = zc.T @ zc / (z.shape[0] - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / z.shape[1]


def dominant_sv_loss(z: torch.Tensor, top_k: int) -> torch.Tensor:
    """Minus the mean of the ``top_k`` largest normalised singular values σ/Σσ of z.

    Minimising it gives the dominant directions a larger share of the spectrum (the share that
    pre-training noise was found to shrink).
    """
    s = torch.linalg.svdvals(z)
    p = s / s.sum()
    return -p[: min(top_k, p.shape[0])].mean()


def _batches(n: int, batch_size: int, g: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches. A last batch of one sample joins the one before it:
    BatchNorm cannot estimate a variance from a single sample, and dropping it would leave a
    sample unseen in every epoch where it lands last."""
    batches = list(torch.randperm(n, generator=g).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def _cosine_lr(step: int, total: int, cfg: NMTuneConfig) -> float:
    """Linear warm-up for ``warmup_steps``, then cosine decay from ``lr`` to 0 at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def _nmtune_modules(dim: int, num_classes: int, cfg: NMTuneConfig,
                    g: torch.Generator) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The feature MLP and the linear head, initialised from ``g`` only."""
    h = _FeatureMLP(dim, cfg, g)
    head = torch.nn.utils.skip_init(torch.nn.Linear, dim, num_classes)
    # The release's head: Kaiming-uniform weights (bound √(6/fan_in)), zero bias.
    _uniform_(head.weight, math.sqrt(6 / dim), g)
    with torch.no_grad():
        head.bias.zero_()
    return h, head


def _nmtune_train(h: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, cfg: NMTuneConfig,
                  g: torch.Generator) -> dict[str, float]:
    """Train ``h`` and ``head`` jointly on the NMTune loss; each switched-on term's mean over the
    last epoch. A diverged run is an error, not a row of NaN accuracies that look like a result."""
    n = x.shape[0]
    opt = torch.optim.AdamW(list(h.parameters()) + list(head.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Batch sizes do not depend on the shuffle: ceil(n / batch), less one when a lone last
    # sample is folded into the batch before it.
    steps_per_epoch = math.ceil(n / cfg.batch_size) - (1 if n > cfg.batch_size and n % cfg.batch_size == 1 else 0)
    total = cfg.epochs * steps_per_epoch
    weights = {"ce": 1.0, "mse": cfg.lambda_mse, "cov": cfg.lambda_cov, "svd": cfg.lambda_svd}
    step = 0
    last: dict[str, float] = {}
    h.train()
    for _ in range(cfg.epochs):
        sums = {"ce": 0.0, "mse": 0.0, "cov": 0.0, "svd": 0.0}
        batches = _batches(n, cfg.batch_size, g)
        for idx in batches:
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(step, total, cfg)
            fb = x[idx]
            z = h(fb)
            terms = {"ce": F.cross_entropy(head(z), y[idx])}
            # A term whose λ is 0 is not computed: MLP tuning then costs no SVD per step, and its
            # gradient cannot leak in through a 0·NaN from a degenerate batch spectrum.
            if cfg.lambda_mse:
                terms["mse"] = consistency_loss(z, fb)
            if cfg.lambda_cov:
                terms["cov"] = covariance_loss(z)
            if cfg.lambda_svd:
                terms["svd"] = dominant_sv_loss(z, cfg.svd_top_k)
            loss = sum(weights[k] * v for k, v in terms.items())
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            step += 1
            for k_, v in terms.items():
                sums[k_] += float(v.detach())
        last = {k_: v / len(batches) for k_, v in sums.items() if k_ == "ce" or weights[k_]}
    if not all(math.isfinite(v) for v in last.values()):
        raise SpecError(f"NMTune diverged (last-epoch losses {last}); lower NMTuneConfig.lr or the λ weights")
    return last


def nmtune(train: SplitFeatures, tests: dict[str, SplitFeatures], num_classes: int, *, seed: int,
           config: NMTuneConfig = NMTuneConfig()) -> NMTuneResult:
    """NMTune on frozen image features: train h and a linear head on ``train``, score ``tests``.

    Loss per batch: cross-entropy of the head on z = h(f), plus ``lambda_mse`` · consistency(z, f)
    + ``lambda_cov`` · covariance(z) + ``lambda_svd`` · dominant_sv(z). Only the features are read;
    ``train`` and ``tests`` are not modified. Parameters and the epoch shuffles come from one
    generator seeded with ``derive_seed32(seed, "nmtune")``, so the same seed, config and features
    give the same numbers. ``config.mlp_tuning()`` gives the unregularised baseline.

    Cost on CPU: the default d → 4d → d MLP is about 8·d² multiply-adds per sample and pass, and
    each step takes one SVD of a [64, d] batch. With the paper's 30 epochs, 2000 samples took
    about 3 s at d=64, 7 s at d=256 and 20 s at d=512 on one core; lower ``hidden_ratio`` or
    ``epochs`` where time matters more than the paper's setting.
    """
    _check_inputs("NMTune", train, tests, num_classes)
    n = train.image.shape[0]
    if n < 2:
        raise SpecError(f"NMTune: split 'train' holds {n} sample; BatchNorm and the batch covariance need at least 2")
    cfg = config
    g = torch.Generator().manual_seed(derive_seed32(seed, "nmtune"))

    x = train.image.float()
    if cfg.standardize:
        mu, sd = x.mean(0), x.std(0) + 1e-6
    else:
        mu, sd = torch.zeros(x.shape[1]), torch.ones(x.shape[1])

    def prep(image: torch.Tensor) -> torch.Tensor:
        return (image.float() - mu) / sd

    x = prep(x)
    h, head = _nmtune_modules(x.shape[1], num_classes, cfg, g)
    last = _nmtune_train(h, head, x, train.labels.long(), cfg, g)
    h.eval()
    head.eval()
    with torch.no_grad():
        z_train = h(x)
        scores: dict[str, dict[str, float]] = {}
        after: dict[str, dict[str, float]] = {}
        before: dict[str, dict[str, float]] = {}
        for split, f in tests.items():
            xf = prep(f.image)
            zf = h(xf)
            scores[split] = classification_scores(head(zf), f.labels)
            after[split] = spectrum_diagnostics(zf)
            before[split] = spectrum_diagnostics(xf)
    return NMTuneResult(seed=seed, config=cfg, scores=scores, spectrum_after=after,
                        train_spectrum_after=spectrum_diagnostics(z_train), spectrum_before=before,
                        train_spectrum_before=spectrum_diagnostics(x), final_losses=last,
                        train_terms={"mse": float(consistency_loss(z_train, x)), "cov": float(covariance_loss(z_train)),
                                     "svd": float(dominant_sv_loss(z_train, cfg.svd_top_k))})

