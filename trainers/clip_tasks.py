"""The CLIP evaluation tasks, one registered function each, and the context they share.

``evaluate_clip`` loads one exported checkpoint, builds a :class:`ClipEvalContext` (embeddings
of each evaluation split are computed once, on first use, and shared by every task) and runs
the requested tasks from the registry. Splits: ``id`` (``test_id``) and ``ood`` (``test_ood``)
when the data has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from inheritlab.infra.errors import SpecError
from inheritlab.infra.seeds import derive_seed32
from inheritlab.trainers.clip_eval import (
    SplitFeatures,
    class_embeddings,
    encode_split,
    fit_linear_probe,
    retrieval_recall,
    spectrum_diagnostics,
    zero_shot_acc,
)
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
    _features: dict[str, SplitFeatures] | None = field(default=None, repr=False)

    def row(self, task: str, split: str, metric: str, value: float) -> Row:
        return measure(self.checkpoint_step, self.samples_seen, task, split, metric, value)

    def class_names(self, task: str) -> list[str]:
        """The class names a classification task needs; an error naming the task without them."""
        names = list(self.world.class_names)
        if not names or len(names) != self.world.num_classes:
            raise SpecError(f"evaluation task {task!r} needs class names, and the data under {self.world.root} has "
                            "none (a world.json with class_names beside the train split supplies them)")
        return names

    def features(self) -> dict[str, SplitFeatures]:
        """Image and caption embeddings of each evaluation split the data has (computed once)."""
        if self._features is None:
            self._features = {
                name: encode_split(self.built.model, self.built.transform, self.built.tokenizer, shards,
                                   device=self.device, batch_size=self.batch_size)
                for name, split in EVAL_SPLITS.items() if (shards := self.world.splits.get(split))
            }
        return self._features

    def probe_train(self) -> SplitFeatures:
        """Image features of a seeded subset of ``probe_train_size`` clean train samples, drawn
        from the first 4× that many of the train split so a large pool is never read whole."""
        n = self.probe_train_size
        full = encode_split(self.built.model, self.built.transform, self.built.tokenizer,
                            list(self.world.splits["train"]), device=self.device, batch_size=self.batch_size,
                            with_text=False, limit=4 * n)
        if len(full.labels) <= n:
            return full
        rng = np.random.default_rng(derive_seed32(self.seed, "linear-probe-subset"))
        idx = torch.from_numpy(np.sort(rng.choice(len(full.labels), size=n, replace=False)))
        return SplitFeatures(image=full.image[idx], text=full.text, labels=full.labels[idx],
                             captions=[full.captions[i] for i in idx.tolist()])


@eval_task("clip", needs=("class_names",))
def zeroshot(ctx: ClipEvalContext) -> list[Row]:
    """Zero-shot top-1 accuracy with the prompt-ensemble class embeddings (``acc1``)."""
    classes = class_embeddings(ctx.built.model, ctx.built.tokenizer, ctx.class_names("zeroshot"),
                               list(ctx.world.prompt_templates), ctx.device)
    return [ctx.row("zeroshot", split, "acc1", zero_shot_acc(f, classes)) for split, f in ctx.features().items()]


@eval_task("clip", needs=("class_names",))
def linear_probe(ctx: ClipEvalContext) -> list[Row]:
    """A logistic-regression probe on frozen image features of clean train samples (``acc1``)."""
    accs = fit_linear_probe(ctx.probe_train(), ctx.features(), len(ctx.class_names("linear_probe")))
    return [ctx.row("linear_probe", split, "acc1", acc) for split, acc in accs.items()]


@eval_task("clip")
def retrieval(ctx: ClipEvalContext) -> list[Row]:
    """Image→text and text→image recall@1 and @5 on the ID split (tasks ``retrieval_i2t``/``_t2i``)."""
    feats = ctx.features()
    if "id" not in feats:
        return []
    return [ctx.row(f"retrieval_{direction}", "id", f"recall@{k}", v)
            for direction, by_k in retrieval_recall(feats["id"]).items() for k, v in by_k.items()]


@eval_task("clip")
def diagnostics(ctx: ClipEvalContext) -> list[Row]:
    """The image features' singular-value entropy and top-singular-value ratio, per split."""
    return [ctx.row("diagnostics", split, metric, v)
            for split, f in ctx.features().items() for metric, v in spectrum_diagnostics(f.image).items()]


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
) -> list[Row]:
    """Evaluate the open_clip weights at ``weights_path`` on the world's splits; tidy rows.

    ``world_info`` is a ``corruptors.world.WorldInfo`` (splits train/test_id/test_ood, class
    names and prompt templates).
    """
    from inheritlab.trainers.clip_models import build_clip

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    built = build_clip(rung, pretrained=weights_path)
    built.model.to(dev).eval()
    ctx = ClipEvalContext(built=built, world=world_info, seed=seed, device=dev, checkpoint_step=checkpoint_step,
                          samples_seen=samples_seen, probe_train_size=probe_train_size, batch_size=batch_size)
    return run_tasks("clip", list(tasks), ctx)
