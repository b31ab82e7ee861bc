"""Two-step task prediction for LM cells: scale → loss → accuracy (Bhagia et al., 2024)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from inheritlab.analysis.task_prediction import fit_sigmoid, two_step_prediction
from inheritlab.infra.schema import RESULT_COLUMNS

SCALES = np.geomspace(1e5, 1e8, 7)
STEPS = (1, 2, 3, 4)  # evaluated checkpoints; the last is the cell's result


def _loss(seen: np.ndarray) -> np.ndarray:
    return 2.0 + 60.0 * seen ** -0.3


def _acc(loss: np.ndarray) -> np.ndarray:
    # chance 0.25; rises as the loss falls through 2.6
    return 0.25 + 0.6 / (1.0 + np.exp((loss - 2.6) / 0.12))


def _ladder(acc_of_loss=_acc, noise: float = 0.004, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Per checkpoint: the cell's scale, loss and accuracy (samples seen = scale · step / 4)."""
    rng = np.random.default_rng(seed)
    x = np.repeat(SCALES, len(STEPS))
    seen = x * np.tile(np.array(STEPS) / STEPS[-1], len(SCALES))
    loss = _loss(seen) * np.exp(rng.normal(0, noise, len(x)))
    acc = np.clip(acc_of_loss(loss) + rng.normal(0, noise, len(x)), 0, 1)
    final = seen == x
    return x[final], loss[final], acc[final], x, loss, acc


def test_sigmoid_recovers_its_shape() -> None:
    L = np.linspace(2.0, 3.5, 30)
    s = fit_sigmoid(L, _acc(L))
    assert s.L0 == pytest.approx(2.6, abs=0.01) and s.s == pytest.approx(0.12, rel=0.05)
    assert s.lo == pytest.approx(0.25, abs=0.01) and s.lo + s.span == pytest.approx(0.85, abs=0.01)


def test_predicts_the_largest_scale_from_the_smaller_ones() -> None:
    p = two_step_prediction("lm", *_ladder(), n_boot=100, seed=3)
    assert p.target_scale == SCALES[-1] and p.predicted is not None and p.actual is not None
    assert p.abs_error < 0.03 and p.loss_predicted == pytest.approx(p.loss_actual, rel=0.02)
    lo, hi = p.interval
    assert lo <= p.predicted <= hi
    assert p.step1 is not None and p.step1.boot.requested == 100 and p.step1.boot.seed == 3
    d = p.to_dict()
    assert d["step1"]["bootstrap"]["n_requested"] == 100 and d["step2"]["n_points"] == 6 * len(STEPS)


def test_a_task_without_the_shape_gets_a_note_not_a_number() -> None:
    flat = two_step_prediction("flat", *_ladder(lambda L: np.full_like(L, 0.25), noise=0.002))
    assert flat.predicted is None and "accuracy flat" in flat.note and flat.actual is not None
    rising = two_step_prediction("odd", *_ladder(lambda L: 0.2 + 0.2 * (L - 2.0)))  # better with *higher* loss
    assert rising.predicted is None and "does not fall as loss rises" in rising.note
    few = two_step_prediction("few", *(a[: 2 * len(STEPS)] if i > 2 else a[:2] for i, a in enumerate(_ladder())))
    assert few.predicted is None and "only 1 scale(s) below the target" in few.note


def test_report_predicts_lm_task_accuracy_through_the_loss() -> None:
    from inheritlab.analysis.render import render_json, render_markdown
    from inheritlab.analysis.report_data import compute_report

    rows = []
    rng = np.random.default_rng(0)
    for lvl, shift in ((0.0, 0.0), (0.2, 0.15)):  # bias raises the loss; accuracy follows through the loss
        for sc in SCALES:
            for step in STEPS:
                seen = sc * step / STEPS[-1]
                loss = float((_loss(np.array([seen]))[0] + shift) * np.exp(rng.normal(0, 0.004)))
                acc = float(np.clip(_acc(np.array([loss]))[0] + rng.normal(0, 0.004), 0, 1))
                base = {"study": "s", "cell_id": f"{lvl}-{sc:g}", "modality": "lm",
                        "bias_type": "none" if lvl == 0 else "token_noise", "bias_level": lvl, "model": "lm-tiny",
                        "data_scale": float(sc), "unique_samples": int(sc), "seed": 0, "params": 1000,
                        "checkpoint_step": step, "samples_seen": int(seen), "flops": 6e3 * seen}
                rows += [{**base, "task": "perplexity", "split": "id", "metric": "loss", "value": loss},
                         {**base, "task": "qa", "split": "id", "metric": "acc", "value": acc}]
    df = pl.DataFrame(rows).select(list(RESULT_COLUMNS))
    report = compute_report(df, metric="acc", task="qa", split="id", x="data_scale")
    assert [p.label for p in report.task_prediction] == ["token_noise, level 0", "token_noise, level 0.2"]
    for p in report.task_prediction:
        assert p.predicted is not None and p.abs_error < 0.05
    assert "Two-step task prediction" in render_markdown(report)
    assert render_json(report)["task_prediction"][0]["predicted"] == pytest.approx(report.task_prediction[0].predicted)
    # the loss itself is not predicted through itself; CLIP studies are not LM cells
    assert compute_report(df, metric="loss", task="perplexity", split="id").task_prediction == ()
