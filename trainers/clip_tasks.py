"""The CLIP evaluation tasks, one registered function each, and the context they share.

``evaluate_clip`` loads one exported checkpoint, builds a :class:`ClipEvalContext` (embeddings
of each evaluation split are computed once, on first use, and shared by every task) and runs
the requested tasks from the registry. Splits: ``id`` (``test_id``) and ``ood`` (``test_ood``)
when the data has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from inheritlab.infra.errors import SpecError
from inheritlab.trainers.clip_eval import (
    SplitFeatures,
    class_embeddings,
    encode_split,
    fit_linear_probe,
    retrieval_recall,
    classification_scores,
    multi_caption_recall,
    probe_subset,
    spectrum_diagnostics,
)
from inheritlab.trainers import clip_adapt
from inheritlab.trainers.eval_tasks import Row, eval_task, measure, run_tasks

EVAL_SPLITS = {"id": "test_id", "ood": "test_ood"}


@dataclass
class ClipEvalContext:
    """One loaded checkpoint and the data it is evaluated on.

    ``world`` is a ``corruptors.world.WorldInfo`` (splits, class names, prompt templates).
    """

    built: Any                       # trainers.clip_models.BuiltClip, weights loaded, in eval mode
    world: Any
    seed: int
    device: torch.device
    checkpoint_step: int
    samples_seen: int
    probe_train_size: int = 2000
    batch_size: int = 256
    label_key: str | None = None
    bad_sample_ceiling: float | int = 0
    suites: list[Any] = field(default_factory=list)          # corruptors.suites.SuiteTask of eval.suites
    suite_split: str = "test"
    few_shot_k: tuple[int, ...] = (1, 2, 4, 8, 16)
    few_shot_draws: int = 3
    read: dict[str, Any] = field(default_factory=dict)       # split → ReadStats of what was read
    _features: dict[str, SplitFeatures] | None = field(default=None, repr=False)
    _probe_train: SplitFeatures | None = field(default=None, repr=False)

    def row(self, task: str, split: str, metric: str, value: float) -> Row:
        return measure(self.checkpoint_step, self.samples_seen, task, split, metric, value)

    def class_names(self, task: str) -> list[str]:
        """The class names a classification task needs; an error naming the task without them."""
        names = list(self.world.class_names)
        if not names or len(names) != self.world.num_classes:
            raise SpecError(f"evaluation task {task!r} needs class names, and the data under {self.world.root} has "
                            "none: put a classnames.txt (one name per line, in label order) there, or name one in "
                            "data.shards.classnames (docs/data.md)")
        return names

    def features(self) -> dict[str, SplitFeatures]:
        """Image and caption embeddings of each evaluation split the data has (computed once)."""
        if self._features is None:
            self._features = {name: self.encode(name, shards) for name, split in EVAL_SPLITS.items()
                              if (shards := self.world.splits.get(split))}
        return self._features

    def encode(self, name: str, shards: list[str], **kw: Any) -> SplitFeatures:
        """Embed a split, its bad samples counted under ``read[name]`` (the study's ceiling)."""
        from inheritlab.corruptors.shards import ReadStats

        stats = self.read.setdefault(name, ReadStats())
        return encode_split(self.built.model, self.built.transform, self.built.tokenizer, shards, device=self.device,
                            batch_size=self.batch_size, label_key=self.label_key,
                            bad_sample_ceiling=self.bad_sample_ceiling, stats=stats, **kw)

    def probe_train(self) -> SplitFeatures:
        """Image features of a seeded subset of ``probe_train_size`` clean train samples, drawn
        from the first 4× that many of the train split so a large pool is never read whole.
        Computed once: every adaptation on frozen features trains on the same samples, so they
        differ only by method."""
        if self._probe_train is None:
            self._probe_train = self._draw_probe_train()
        return self._probe_train

    def _draw_probe_train(self) -> SplitFeatures:
        n = self.probe_train_size
        full = self.encode("train", list(self.world.splits["train"]), with_text=False, limit=4 * n)
        idx = probe_subset(len(full.labels), n, self.seed)
        if idx is None:
            return full
        return SplitFeatures(image=full.image[idx], text=torch.empty(0), labels=full.labels[idx], captions=[])


def labelled(task: str, split: str, f: SplitFeatures) -> SplitFeatures:
    """``f`` when every sample has a label; else an error naming the task, the split and how to
    supply labels (a ``.cls`` member, or ``data.shards.label_key``)."""
    missing = int((f.labels < 0).sum())
    if missing:
        raise SpecError(f"evaluation task {task!r}: {missing} of {len(f.labels)} samples of split {split!r} have no "
                        "label (a .cls member, or the .json key named by data.shards.label_key)")
    return f


@eval_task("clip", needs=("class_names",))
def zeroshot(ctx: ClipEvalContext) -> list[Row]:
    """Zero-shot classification with the prompt-ensemble class embeddings: ``acc1``, ``acc5``
    (with at least 5 classes) and ``mean_per_class_recall`` (the metric under imbalance)."""
    classes = class_embeddings(ctx.built.model, ctx.built.tokenizer, ctx.class_names("zeroshot"),
                               list(ctx.world.prompt_templates), ctx.device)
    return [ctx.row("zeroshot", split, metric, v) for split, f in ctx.features().items()
            for metric, v in classification_scores(labelled("zeroshot", split, f).image @ classes.T, f.labels).items()]


@eval_task("clip", needs=("class_names",))
def linear_probe(ctx: ClipEvalContext) -> list[Row]:
    """A logistic-regression probe on frozen image features of clean train samples (``acc1``)."""
    tests = {split: labelled("linear_probe", split, f) for split, f in ctx.features().items()}
    accs = fit_linear_probe(labelled("linear_probe", "train", ctx.probe_train()), tests,
                            len(ctx.class_names("linear_probe")))
    return [ctx.row("linear_probe", split, "acc1", acc) for split, acc in accs.items()]


def _adapted_rows(ctx: ClipEvalContext, task: str, scores: dict[str, dict[str, float]],
                  spectrum: dict[str, dict[str, float]] | None = None, **extra: Any) -> list[Row]:
    """Rows of one adaptation: per split its classification metrics and, when it changed the
    features, their spectrum after adaptation (``diagnostics`` holds the frozen one)."""
    return [{**ctx.row(task, split, metric, v), **extra} for split in scores
            for metric, v in {**scores[split], **(spectrum or {}).get(split, {})}.items()]


def _frozen(ctx: ClipEvalContext, task: str) -> tuple[SplitFeatures, dict[str, SplitFeatures], int]:
    """The labelled train subset, the labelled test splits and the class count a frozen-feature
    adaptation needs."""
    num_classes = len(ctx.class_names(task))
    tests = {split: labelled(task, split, f) for split, f in ctx.features().items()}
    return labelled(task, "train", ctx.probe_train()), tests, num_classes


@eval_task("clip", needs=("class_names",))
def few_shot(ctx: ClipEvalContext) -> list[Row]:
    """The linear probe on ``k`` clean samples per class (``eval.few_shot_k``), over
    ``eval.few_shot_draws`` seeded draws: rows ``few_shot_k<k>``, one per draw with its
    ``draw_seed`` (a cell's value is the mean over its draws)."""
    train, tests, num_classes = _frozen(ctx, "few_shot")
    rows: list[Row] = []
    for k in ctx.few_shot_k:
        for d in clip_adapt.few_shot_draws(train, tests, num_classes, k=k, draws=ctx.few_shot_draws, seed=ctx.seed):
            rows += _adapted_rows(ctx, f"few_shot_k{k}", d.scores, draw_seed=d.draw_seed)
    return rows


@eval_task("clip", needs=("class_names",))
def nmtune(ctx: ClipEvalContext) -> list[Row]:
    """NMTune (black-box mitigation): an MLP over the frozen features with the paper's
    regularisers, and beside it the same MLP without them (``mlp_tune``), so the regularisers'
    share of any gain is visible. Accuracy and the transformed features' spectrum per split."""
    train, tests, num_classes = _frozen(ctx, "nmtune")
    rows: list[Row] = []
    for task, cfg in (("nmtune", clip_adapt.NMTuneConfig()), ("mlp_tune", clip_adapt.NMTuneConfig().mlp_tuning())):
        r = clip_adapt.nmtune(train, tests, num_classes, seed=ctx.seed, config=cfg)
        rows += _adapted_rows(ctx, task, r.scores, r.spectrum_after)
    return rows


def _tuned(ctx: ClipEvalContext, method: str) -> list[Row]:
    from inheritlab.trainers.clip_finetune import FinetuneConfig, evaluate_finetune

    r = evaluate_finetune(ctx, FinetuneConfig(method=method, train_size=ctx.probe_train_size), task=method)
    return _adapted_rows(ctx, method if method == "lora" else "finetune", r.scores, r.spectrum)


@eval_task("clip", needs=("class_names",))
def finetune(ctx: ClipEvalContext) -> list[Row]:
    """The whole image tower fine-tuned (small learning rate) on clean train samples, its head
    starting from the zero-shot classifier; accuracy and the adapted features' spectrum."""
    return _tuned(ctx, "full")


@eval_task("clip", needs=("class_names",))
def lora(ctx: ClipEvalContext) -> list[Row]:
    """Low-rank adapters (LoRA, peft) on the image tower's attention and MLP, and the head,
    trained on clean train samples; the pre-trained weights stay frozen."""
    return _tuned(ctx, "lora")


@eval_task("clip")
def retrieval(ctx: ClipEvalContext) -> list[Row]:
    """Image→text and text→image recall@1 and @5 on the ID split (tasks ``retrieval_i2t``/``_t2i``)."""
    feats = ctx.features()
    if "id" not in feats:
        return []
    if not feats["id"].captions:
        raise SpecError("evaluation task 'retrieval' needs captions in the test_id split (a .txt or .caption member "
                        "per sample); leave it out of eval.tasks for a classification-only split")
    return [ctx.row(f"retrieval_{direction}", "id", f"recall@{k}", v)
            for direction, by_k in retrieval_recall(feats["id"]).items() for k, v in by_k.items()]


@eval_task("clip")
def diagnostics(ctx: ClipEvalContext) -> list[Row]:
    """The image features' singular-value entropy and top-singular-value ratio, per split."""
    return [ctx.row("diagnostics", split, metric, v)
            for split, f in ctx.features().items() for metric, v in spectrum_diagnostics(f.image).items()]


@eval_task("clip")
def suites(ctx: ClipEvalContext) -> list[Row]:
    """Every task of ``eval.suites`` (CLIP_benchmark / DataComp layout), scored as DataComp
    reports it: classification ``acc1``, ``acc5``, ``mean_per_class_recall`` (zero-shot with the
    task's class names and templates); retrieval ``image_retrieval_recall@k`` and
    ``text_retrieval_recall@k`` (k = 1, 5, 10). Task ``suite/<name>``, split the suite's."""
    if not ctx.suites:
        raise SpecError("evaluation task 'suites' needs eval.suites (a root and its tasks)")
    rows = []
    for t in ctx.suites:
        name = f"suite/{t.name}"
        if t.kind == "retrieval":
            f = ctx.encode(name, list(t.shards), caption_lines=True)
            if not f.captions:
                raise SpecError(f"{t.root}: a retrieval task, and its samples carry no captions (.txt, one per line)")
            scores = multi_caption_recall(f)
        else:
            f = labelled(name, ctx.suite_split, ctx.encode(name, list(t.shards), with_text=False))
            classes = class_embeddings(ctx.built.model, ctx.built.tokenizer, list(t.class_names), list(t.templates),
                                       ctx.device)
            scores = classification_scores(f.image @ classes.T, f.labels)
        rows += [ctx.row(name, ctx.suite_split, metric, v) for metric, v in scores.items()]
    return rows


def evaluate_clip(
    weights_path: str,
    rung: str,
    world_info: Any,
    *,
    tasks: tuple[str, ...] | list[str] = ("zeroshot", "linear_probe", "retrieval"),
    seed: int = 0,
    checkpoint_step: int = 0,
    samples_seen: int = 0,
    probe_train_size: int = 2000,
    batch_size: int = 256,
    device: str | None = None,
    label_key: str | None = None,
    bad_sample_ceiling: float | int = 0,
    suites: list[Any] | None = None,
    suite_split: str = "test",
    read_log: str | None = None,
    few_shot_k: tuple[int, ...] = (1, 2, 4, 8, 16),
    few_shot_draws: int = 3,
) -> list[Row]:
    """Evaluate the open_clip weights at ``weights_path`` on the world's splits; tidy rows.

    ``world_info`` is a ``corruptors.world.WorldInfo`` (splits train/test_id/test_ood, class
    names and prompt templates); ``suites`` the opened tasks of ``eval.suites``
    (``corruptors.suites.SuiteTask``). Bad samples are skipped under ``bad_sample_ceiling`` (a
    fraction of each split read) and counted by split and reason in ``read_log`` (JSON).
    """
    from inheritlab.infra.atomic import atomic_write_json
    from inheritlab.trainers.clip_models import build_clip

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    built = build_clip(rung, pretrained=weights_path)
    built.model.to(dev).eval()
    ctx = ClipEvalContext(built=built, world=world_info, seed=seed, device=dev, checkpoint_step=checkpoint_step,
                          samples_seen=samples_seen, probe_train_size=probe_train_size, batch_size=batch_size,
                          label_key=label_key, bad_sample_ceiling=bad_sample_ceiling, suites=list(suites or []),
                          suite_split=suite_split, few_shot_k=tuple(few_shot_k), few_shot_draws=few_shot_draws)
    rows = run_tasks("clip", list(tasks), ctx)
    if read_log:
        atomic_write_json(read_log, {split: st.to_dict() for split, st in ctx.read.items()})
    return rows
