"""Weight-level downstream adaptation of a CLIP checkpoint's image tower: full fine-tuning and LoRA.

The evaluation stage asks what pre-training left in the *weights*, not only in the frozen
features the linear probe sees: the image tower is adapted on a clean labelled downstream train
split and scored on the ID and OOD test splits. A bias that a little clean supervision undoes
was shallow; one that survives fine-tuning (or shows up as an ID/OOD gap after it) was inherited.

The classifier starts as the zero-shot one — the prompt-ensemble class embeddings scaled by the
model's logit scale, on L2-normalised image features — so fine-tuning starts from the zero-shot
solution, as robust fine-tuning work does (WiSE-FT, LP-FT, FLYP): a randomly initialised head
would first distort the pre-trained features while it is itself still wrong, and OOD accuracy is
what that distortion costs.

The caller's model is never touched: the image tower is deep-copied (the checkpoint is shared by
every task of one evaluation context); the text tower only embeds the class prompts, once, and
is neither copied nor trained. Plain
PyTorch on purpose, as in ``trainers/lm_adapt.py``: a few hundred small steps on one device,
with nothing to checkpoint or shard.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from inheritlab.infra.errors import SpecError
from inheritlab.infra.seeds import derive_seed, derive_seed32
from inheritlab.trainers.clip_eval import class_embeddings, classification_scores, probe_subset, spectrum_diagnostics

METHODS = ("full", "lora")

# The default lr as a fraction of the rung's pre-training lr, so one rule serves every rung. Full
# fine-tuning moves every weight and runs ~20× below it (clip-tiny 3e-3 → 1.5e-4; the ViT-B/32
# rungs 5e-4 → 2.5e-5, near WiSE-FT's 3e-5). LoRA's update starts at zero in a low-rank space
# and needs a larger step to move as far in the same budget.
LR_FRACTION = {"full": 1 / 20, "lora": 1 / 3}

# peft adapts nn.MultiheadAttention as one module (its in_proj and out_proj together); naming
# ``out_proj`` alone is a silent no-op, because MultiheadAttention reads ``out_proj.weight``
# directly and never calls ``out_proj.forward`` — the adapter would get no gradient at all.
_SILENT_TARGETS = {"out_proj": "attn"}

Split = tuple[torch.Tensor, torch.Tensor]   # (images [N, 3, H, W] float32, labels [N] int64)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """One downstream adaptation of the image tower.

    Defaults are sized for the CPU rungs (clip-tiny: 2000 images of 32×32 in a few seconds on one
    core) and stated in their scale-free form where a ViT-B/32 rung wants different numbers.
    """

    method: Literal["full", "lora"] = "full"
    # Few passes: the head starts at the zero-shot solution, so the tower only has to be nudged;
    # robust fine-tuning of ViT-B/32 runs ~10 epochs of ImageNet, far more steps than 5 here.
    epochs: int = 5
    # ``None``: the rung's pre-training lr × ``LR_FRACTION[method]`` (see :meth:`resolved_lr`).
    lr: float | None = None
    # Decoupled (AdamW), on matrices only (not gains, biases or the class token), as open_clip
    # and WiSE-FT do; under LoRA it shrinks the update B·A, i.e. towards the checkpoint's weights.
    weight_decay: float = 0.1
    # Linear warmup over this fraction of the steps, then cosine to zero: Adam's first moment
    # estimates are noisy, and full-size early steps would knock the tower off the zero-shot start.
    warmup: float = 0.1
    # 64 gives 32 steps per epoch on 2000 images (a CPU batch is cheap and more steps learn more
    # in few epochs); ViT-B/32 fine-tunes at 256–512 on a GPU.
    batch_size: int = 64
    # Downstream train samples: a seeded subset of the first 4× that many of the train split,
    # the linear probe's default size so the two compare on the same data.
    train_size: int = 2000
    grad_clip: float = 1.0              # as the rung recipes; a few large early gradients stay bounded
    eval_batch_size: int = 256          # scoring only (memory), not training
    # LoRA rank 4 keeps the adapters at ~7 % of clip-tiny's 64-wide tower; on ViT-B/32 (768 wide)
    # the same rank is < 1 % — few-shot CLIP LoRA work uses ranks of 2–16.
    lora_rank: int = 4
    lora_alpha: float = 8.0             # scaling alpha/rank = 2, the usual alpha = 2·rank
    # Light regularisation of the adapter input on the MLP layers (peft applies no dropout inside
    # the merged attention path); the downstream split is small.
    lora_dropout: float = 0.1
    # Module-name suffixes in open_clip's VisionTransformer: ``attn`` (nn.MultiheadAttention:
    # peft adapts its in_proj and out_proj together) and the MLP's ``c_fc`` and ``c_proj``.
    target_modules: tuple[str, ...] = ("attn", "c_fc", "c_proj")

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> SpecError:
            return SpecError(f"finetune.{name}: got {getattr(self, name)!r}; expected {expected}")

        if self.method not in METHODS:
            raise bad("method", f"one of {list(METHODS)}")
        for name in ("epochs", "batch_size", "train_size", "eval_batch_size", "lora_rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "an int >= 1")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a finite number > 0, or null for the rung's default")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        if not 0 <= self.warmup < 1:
            raise bad("warmup", "a fraction of the steps in [0, 1)")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise bad("grad_clip", "a finite number > 0")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise bad("lora_alpha", "a finite number > 0")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "a probability in [0, 1)")
        if (isinstance(self.target_modules, str) or not self.target_modules
                or not all(isinstance(t, str) and t for t in self.target_modules)):
            raise bad("target_modules", "a non-empty list of module names")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))  # a list from YAML stays hashable
        for t in self.target_modules:
            if t in _SILENT_TARGETS:
                raise SpecError(f"finetune.target_modules: {t!r} is read as a weight by nn.MultiheadAttention, never "
                                f"called, so a LoRA adapter on it would get no gradient; name {_SILENT_TARGETS[t]!r} "
                                "(the whole attention: its in_proj and out_proj)")

    def resolved_lr(self, rung_lr: float) -> float:
        """``lr``, or the rung's pre-training ``rung_lr`` × this method's ``LR_FRACTION``."""
        return float(self.lr) if self.lr is not None else float(rung_lr) * LR_FRACTION[self.method]


@dataclass
class FinetuneResult:
    """Scores of one adapted tower. ``scores`` / ``start_scores``: split → classification metrics
    after / before training (before = the zero-shot classifier on the same images); ``spectrum``:
    split → :func:`spectrum_diagnostics` of the adapted, normalised image features."""

    method: str
    scores: dict[str, dict[str, float]]
    start_scores: dict[str, dict[str, float]]
    spectrum: dict[str, dict[str, float]]
    trainable_params: int               # tower + head parameters the optimiser updated
    tower_params: int                   # every parameter of the original image tower
    train_samples: int
    steps: int
    lr: float
    epoch_loss: list[float]             # mean training cross-entropy of each epoch


class _Classifier(torch.nn.Module):
    """Image tower → L2-normalised features → linear head (the zero-shot geometry)."""

    def __init__(self, tower: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.tower = tower
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.tower(x).float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def load_split_images(transform: Any, shards: Sequence[str], *, limit: int | None = None,
                      label_key: str | None = None, bad_sample_ceiling: float | int = 0,
                      stats: Any = None) -> Split:
    """Decode and transform the samples of ``shards`` (the first ``limit``) once, into one
    tensor: fine-tuning runs several epochs over them and must not decode each time.

    Reads as :func:`~inheritlab.trainers.clip_eval.encode_split` does: bad samples are skipped
    and counted in ``stats`` (a ``ReadStats``), the ceiling judged on what was read. Images are
    float32 at the rung's size: ~12 KB each at 32 px, ~600 KB at 224 px (ViT-B/32), so a pool
    of 8000 is ~5 GB of host memory there.
    """
    from inheritlab.corruptors.shards import ReadStats, check_ceiling, iter_samples

    stats = stats if stats is not None else ReadStats()
    images: list[torch.Tensor] = []
    labels: list[int] = []
    if limit is None or limit > 0:
        for s in iter_samples(list(shards), decode=True, kind="picture", label_key=label_key,
                              bad_sample_ceiling=bad_sample_ceiling, stats=stats):
            images.append(transform(s["image"]))
            labels.append(int(s.get("label", -1)))
            if limit is not None and len(labels) >= limit:
                break
    if limit is not None:
        check_ceiling(stats, bad_sample_ceiling)  # a read stopped early is judged on what it read
    if not labels:
        raise SpecError(f"downstream split {list(shards)[:3]}{'...' if len(shards) > 3 else ''} holds no samples")
    return torch.stack(images).float(), torch.tensor(labels, dtype=torch.long)


def seeded_subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> Split:
    """``n`` samples drawn without replacement (in their original order) with the linear
    probe's seed path, or all of them when there are no more than ``n``."""
    idx = probe_subset(len(labels), n, seed)
    return (images, labels) if idx is None else (images[idx], labels[idx])


def _check_labels(split: str, labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) == 0:
        raise SpecError(f"finetune: split {split!r} has no samples")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise SpecError(f"finetune: split {split!r} has labels from {lo} to {hi}; expected every sample labelled "
                        f"in [0, {num_classes}) (a .cls member, or the .json key named by data.shards.label_key)")


def zero_shot_head(class_head_init: torch.Tensor, logit_scale: float) -> torch.nn.Linear:
    """A linear head whose logits on normalised features are the zero-shot logits: weight =
    ``logit_scale`` × the class embeddings [C, d], bias zero. Starting from the zero-shot
    solution's scale too (not only its direction) keeps the first cross-entropy gradients of
    the tower the size the pre-trained contrastive loss produced."""
    emb = class_head_init.detach().float()
    head = torch.nn.Linear(emb.shape[1], emb.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(emb * float(logit_scale))
        head.bias.zero_()
    return head


def _lora_tower(tower: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    """``tower`` (already a copy) with peft LoRA adapters on ``config.target_modules``.

    peft wraps the MLP's nn.Linear layers cleanly. nn.MultiheadAttention (``attn``) it adapts by
    merging ΔW = B·A into in_proj/out_proj before each forward and subtracting it after, so the
    frozen attention weights drift by float rounding (measured ~2e-7 after 200 steps on
    clip-tiny in float32) — numerically negligible, but not bit-exact.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # not a core dependency of every install; say how to get it
        raise ImportError("finetune method 'lora' needs the peft package (pip install 'peft>=0.14', the "
                          "first with nn.MultiheadAttention support)") from e

    names = [n for n, _ in tower.named_modules()]
    for t in config.target_modules:
        if not any(n == t or n.endswith("." + t) for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in tower.named_modules()
                             if isinstance(m, (torch.nn.Linear, torch.nn.MultiheadAttention))})
            raise SpecError(f"finetune.target_modules: {t!r} names no module of the image tower "
                            f"({type(tower).__name__}); adaptable: {leaves}")
    cfg = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                     target_modules=list(config.target_modules), bias="none")
    return get_peft_model(tower, cfg)


def _schedule(step: int, total: int, warmup: int) -> float:
    """The lr multiplier at ``step``: linear warmup to 1, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def _score(net: _Classifier, tests: Mapping[str, Split], batch_size: int,
           device: torch.device) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Classification scores and the feature spectrum of each test split."""
    net.eval()
    scores, spectra = {}, {}
    for split, (images, labels) in tests.items():
        feats = torch.cat([net.features(images[i : i + batch_size].to(device)).cpu()
                           for i in range(0, len(labels), batch_size)])
        scores[split] = classification_scores(net.head(feats.to(device)).float().cpu(), labels)
        spectra[split] = spectrum_diagnostics(feats)
    return scores, spectra


def adaptable_classifier(built: Any, class_head_init: torch.Tensor, config: FinetuneConfig) -> torch.nn.Module:
    """A copy of ``built``'s image tower (LoRA-wrapped for ``lora``) under a zero-shot head, with
    ``requires_grad`` set on exactly what ``config.method`` trains: everything for ``full``; the
    adapters and the head for ``lora``. Adapter init draws from the global RNG (seed it)."""
    tower = copy.deepcopy(built.model.visual).float()
    if config.method == "lora":
        tower = _lora_tower(tower, config)        # peft freezes the tower; the adapters train
    logit_scale = float(built.model.logit_scale.detach().exp().clamp(max=100.0))
    return _Classifier(tower, zero_shot_head(class_head_init, logit_scale))


def finetune_image_tower(
    built: Any,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    tests: Mapping[str, Split],
    class_head_init: torch.Tensor,
    num_classes: int,
    *,
    seed: int,
    config: FinetuneConfig = FinetuneConfig(),
    device: str | torch.device = "cpu",
) -> FinetuneResult:
    """Adapt a copy of ``built.model.visual`` (with a zero-shot-initialised head) on the train
    images and score it on each split of ``tests``; ``built`` itself is left untouched.

    ``class_head_init`` [C, d] are the normalised zero-shot class embeddings
    (:func:`~inheritlab.trainers.clip_eval.class_embeddings`). ``full`` trains every tower weight
    and the head; ``lora`` only peft LoRA adapters and the head. AdamW with a linear-warmup
    cosine schedule, gradients clipped; one epoch is a permutation of the train set from a
    generator on the seed tree (the same for both methods), and adapter init and dropout draw
    from a seeded, forked global RNG, so one seed gives the same numbers (on CPU) and the
    caller's RNG state is unchanged.
    """
    device = torch.device(device)
    _check_labels("train", train_labels, num_classes)
    if len(train_images) != len(train_labels):
        raise SpecError(f"finetune: {len(train_images)} train images but {len(train_labels)} labels")
    for split, (images, labels) in tests.items():
        _check_labels(split, labels, num_classes)
        if len(images) != len(labels):
            raise SpecError(f"finetune: split {split!r} has {len(images)} images but {len(labels)} labels")
    if tuple(class_head_init.shape) != (num_classes, int(built.model.visual.output_dim)):
        raise SpecError(f"finetune: class_head_init has shape {tuple(class_head_init.shape)}; expected "
                        f"({num_classes}, {built.model.visual.output_dim}) — one embedding per class")

    lr = config.resolved_lr(built.rung.lr)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed32(seed, "clip-finetune", config.method, "init"))
        net = adaptable_classifier(built, class_head_init, config).to(device)
        start_scores, _ = _score(net, tests, config.eval_batch_size, device)
        trainable = [p for p in net.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr)
        n = len(train_labels)
        total = config.epochs * math.ceil(n / config.batch_size)
        warmup = int(config.warmup * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warmup))
        order = torch.Generator().manual_seed(derive_seed(seed, "clip-finetune", "order"))
        epoch_loss: list[float] = []
        net.train()
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=order)
            summed = 0.0
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                loss = torch.nn.functional.cross_entropy(net(train_images[idx].to(device)), train_labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                opt.step()
                sched.step()
                summed += loss.item() * len(idx)
            epoch_loss.append(summed / n)
        scores, spectrum = _score(net, tests, config.eval_batch_size, device)
    return FinetuneResult(method=config.method, scores=scores, start_scores=start_scores, spectrum=spectrum,
                          trainable_params=sum(p.numel() for p in trainable),
                          tower_params=sum(p.numel() for p in built.model.visual.parameters()),
                          train_samples=n, steps=total, lr=lr, epoch_loss=epoch_loss)


def evaluate_finetune(ctx: Any, config: FinetuneConfig = FinetuneConfig(), *,
                      task: str = "finetune") -> FinetuneResult:
    """Fine-tune ``ctx``'s checkpoint (a ``clip_tasks.ClipEvalContext``) on a seeded subset of
    ``config.train_size`` clean train samples and score it on its ``id`` / ``ood`` splits.

    Reads are counted under ``ctx.read[f"{task}/{split}"]`` — a second read of a split the
    embedding tasks already read, so their counts are not doubled.
    """
    from inheritlab.corruptors.shards import ReadStats
    from inheritlab.trainers.clip_tasks import EVAL_SPLITS

    def load(split: str, shards: Sequence[str], limit: int | None = None) -> Split:
        return load_split_images(ctx.built.transform, shards, limit=limit, label_key=ctx.label_key,
                                 bad_sample_ceiling=ctx.bad_sample_ceiling,
                                 stats=ctx.read.setdefault(f"{task}/{split}", ReadStats()))

    names = ctx.class_names(task)
    if not ctx.world.splits.get("train"):
        raise SpecError(f"evaluation task {task!r} needs a train split (clean labelled samples) under {ctx.world.root}")
    images, labels = seeded_subset(*load("train", ctx.world.splits["train"], 4 * config.train_size),
                                   config.train_size, ctx.seed)
    tests = {name: load(name, shards) for name, split in EVAL_SPLITS.items() if (shards := ctx.world.splits.get(split))}
    head = class_embeddings(ctx.built.model, ctx.built.tokenizer, names, list(ctx.world.prompt_templates), ctx.device)
    return finetune_image_tower(ctx.built, images, labels, tests, head, len(names), seed=ctx.seed, config=config,
                                device=ctx.device)
