"""Feature-level CLIP adaptations: few-shot probe draws and NMTune, on synthetic features (CPU, seconds)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from inheritlab.infra.errors import SpecError
from inheritlab.infra.seeds import derive_seed32
from inheritlab.trainers.clip_adapt import (
    NMTuneConfig,
    few_shot_draws,
    few_shot_indices,
    nmtune,
)
from inheritlab.trainers.clip_eval import SplitFeatures, fit_linear_probe

C, D = 4, 32
# The paper's setting (30 epochs of batches of 64): 640 samples of 32 features train in well
# under a second on two cores.
CFG = NMTuneConfig()


def features(n: int, *, seed: int, noise: float, classes: int = C, dim: int = D) -> SplitFeatures:
    """L2-normalised features of ``classes`` Gaussian clusters, channels mixed so they are
    correlated (something for the covariance term to remove). Class means and the mixing are
    shared by every split; ``seed`` only draws the per-sample noise."""
    g = torch.Generator().manual_seed(7)
    means = torch.randn(classes, dim, generator=g)
    mix = torch.eye(dim) + torch.randn(dim, dim, generator=g) / dim ** 0.5
    y = torch.arange(n) % classes
    x = (means[y] + noise * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))) @ mix
    return SplitFeatures(image=x / x.norm(dim=1, keepdim=True), text=torch.empty(0), labels=y, captions=[])


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: these matrices are tiny, and two threads spinning on a shared
    two-core machine turn a half-second fit into half a minute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def easy() -> tuple[SplitFeatures, dict[str, SplitFeatures]]:
    return features(640, seed=1, noise=1.0), {"id": features(200, seed=2, noise=1.0)}


@pytest.fixture(scope="module")
def hard() -> tuple[SplitFeatures, dict[str, SplitFeatures]]:
    """Overlapping clusters: a probe that is right often, not always, so 'near the probe' means something."""
    return features(640, seed=3, noise=2.0), {"id": features(400, seed=4, noise=2.0)}


# --- few-shot draws ------------------------------------------------------------------------------


def test_few_shot_draws_are_deterministic_and_differ_across_draws(easy) -> None:  # type: ignore[no-untyped-def]
    train, tests = easy
    a = few_shot_draws(train, tests, C, k=3, draws=3, seed=11)
    b = few_shot_draws(train, tests, C, k=3, draws=3, seed=11)
    assert a == b
    assert [d.draw_seed for d in a] == [derive_seed32(11, "few-shot", 3, d) for d in range(3)]
    assert len({d.train_indices for d in a}) == 3, "each draw picks its own samples"
    other = few_shot_draws(train, tests, C, k=3, draws=1, seed=12)
    assert other[0].train_indices != a[0].train_indices, "another seed, other samples"
    # A draw does not move when more draws are asked for.
    assert few_shot_draws(train, tests, C, k=3, draws=1, seed=11)[0] == a[0]
    for d in a:
        assert set(d.scores["id"]) == {"acc1", "mean_per_class_recall"}  # 4 classes: no acc5
        assert 0.0 <= d.acc1["id"] <= 1.0


def test_few_shot_takes_exactly_k_per_class_and_scores_the_probe_on_them(easy) -> None:  # type: ignore[no-untyped-def]
    train, tests = easy
    for k in (1, 5):
        (draw,) = few_shot_draws(train, tests, C, k=k, draws=1, seed=0)
        idx = torch.tensor(draw.train_indices)
        assert len(set(draw.train_indices)) == k * C, "without replacement"
        assert torch.bincount(train.labels[idx], minlength=C).tolist() == [k] * C
        # The same samples through the plain probe give the same accuracy: one solver, not two.
        sub = SplitFeatures(image=train.image[idx], text=torch.empty(0), labels=train.labels[idx], captions=[])
        assert draw.acc1["id"] == pytest.approx(fit_linear_probe(sub, tests, C)["id"], abs=1e-6)


def test_few_shot_names_the_class_short_of_samples() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 3, 3])
    with pytest.raises(SpecError, match=r"k=3 .*1 of 4 classes.*class 2 has 1"):
        few_shot_indices(labels, C, k=3, draw_seed=0)
    f = SplitFeatures(image=torch.randn(10, D), text=torch.empty(0), labels=labels, captions=[])
    with pytest.raises(SpecError, match="class 2 has 1"):
        few_shot_draws(f, {}, C, k=3, draws=1, seed=0)
    with pytest.raises(SpecError, match="class 4 has 0"):
        few_shot_draws(f, {}, 5, k=1, draws=1, seed=0)
    with pytest.raises(SpecError, match="k .*>= 1, got 0"):
        few_shot_draws(f, {}, C, k=0, draws=1, seed=0)


# --- NMTune --------------------------------------------------------------------------------------


def test_nmtune_is_deterministic_for_a_seed(easy) -> None:  # type: ignore[no-untyped-def]
    train, tests = easy
    before = (train.image.clone(), tests["id"].image.clone())
    rng = torch.get_rng_state()
    a = nmtune(train, tests, C, seed=5, config=CFG)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG is neither read nor advanced"
    b = nmtune(train, tests, C, seed=5, config=CFG)
    assert a == b
    assert nmtune(train, tests, C, seed=6, config=CFG).final_losses != a.final_losses
    # Black-box: the features handed in are read, never changed.
    assert torch.equal(train.image, before[0]) and torch.equal(tests["id"].image, before[1])
    assert set(a.final_losses) == {"ce", "mse", "cov", "svd"}
    assert set(a.spectrum_after) == set(a.spectrum_before) == {"id"}


def test_nmtune_reaches_the_linear_probe_where_a_probe_works(hard) -> None:  # type: ignore[no-untyped-def]
    train, tests = hard
    probe = fit_linear_probe(train, tests, C)["id"]
    assert 0.6 < probe < 0.98, "the fixture should be learnable but not trivial"
    for cfg in (CFG, CFG.mlp_tuning()):
        res = nmtune(train, tests, C, seed=0, config=cfg)
        assert res.acc1["id"] >= probe - 0.05, (cfg, res.acc1, probe)


def test_covariance_term_decorrelates_the_transformed_features(easy) -> None:  # type: ignore[no-untyped-def]
    train, tests = easy
    off = nmtune(train, tests, C, seed=0, config=dataclasses.replace(CFG, lambda_cov=0.0))
    on = nmtune(train, tests, C, seed=0, config=dataclasses.replace(CFG, lambda_cov=1.0))
    assert "cov" not in off.final_losses and "cov" in on.final_losses
    assert on.train_terms["cov"] < 0.5 * off.train_terms["cov"], (on.train_terms, off.train_terms)
    assert on.train_spectrum_after["sv_entropy"] > off.train_spectrum_after["sv_entropy"] + 0.02
    assert on.spectrum_after["id"]["sv_entropy"] > off.spectrum_after["id"]["sv_entropy"] + 0.02


def test_dominant_singular_value_term_raises_the_top_ratio(easy) -> None:  # type: ignore[no-untyped-def]
    train, tests = easy
    off = nmtune(train, tests, C, seed=0, config=dataclasses.replace(CFG, lambda_svd=0.0))
    # λ=3 rather than the paper's 0.001: on 640 samples × 30 epochs the paper's weight moves the
    # spectrum by less than run-to-run noise; the test is that the term pushes the right way.
    on = nmtune(train, tests, C, seed=0, config=dataclasses.replace(CFG, lambda_svd=3.0))
    assert on.train_spectrum_after["sv_top_ratio"] > 1.5 * off.train_spectrum_after["sv_top_ratio"]
    assert on.spectrum_after["id"]["sv_top_ratio"] > 1.5 * off.spectrum_after["id"]["sv_top_ratio"]
    assert on.train_terms["svd"] < off.train_terms["svd"]


def test_mlp_tuning_is_nmtune_without_its_regularisers() -> None:
    cfg = NMTuneConfig()
    base = cfg.mlp_tuning()
    assert cfg.regularised and not base.regularised
    assert (base.lambda_mse, base.lambda_cov, base.lambda_svd) == (0.0, 0.0, 0.0)
    assert dataclasses.replace(base, lambda_mse=cfg.lambda_mse, lambda_cov=cfg.lambda_cov,
                               lambda_svd=cfg.lambda_svd) == cfg, "nothing else differs"


def test_bad_inputs_name_what_is_wrong(easy) -> None:  # type: ignore[no-untyped-def]
    train, tests = easy
    empty = SplitFeatures(image=torch.empty(0, D), text=torch.empty(0), labels=torch.empty(0, dtype=torch.long),
                          captions=[])
    with pytest.raises(SpecError, match="split 'train' holds no samples"):
        nmtune(empty, tests, C, seed=0, config=CFG)
    with pytest.raises(SpecError, match="split 'train' holds no samples"):
        few_shot_draws(empty, tests, C, k=1, draws=1, seed=0)
    bad = dataclasses.replace(tests["id"], labels=tests["id"].labels.clone())
    bad.labels[3] = C + 2
    with pytest.raises(SpecError, match=r"split 'ood': labels must lie in \[0, 4\).*from 0 to 6"):
        nmtune(train, {"id": tests["id"], "ood": bad}, C, seed=0, config=CFG)
    unlabelled = dataclasses.replace(train, labels=torch.full_like(train.labels, -1))
    with pytest.raises(SpecError, match="split 'train': labels must lie in .*-1 means"):
        few_shot_draws(unlabelled, tests, C, k=1, draws=1, seed=0)
    narrow = dataclasses.replace(tests["id"], image=tests["id"].image[:, :8])
    with pytest.raises(SpecError, match="split 'id': image features have dimension 8, the train split has 32"):
        nmtune(train, {"id": narrow}, C, seed=0, config=CFG)
    nan = dataclasses.replace(train, image=train.image.clone())
    nan.image[0, 0] = float("nan")
    with pytest.raises(SpecError, match="1 of 640 image feature rows hold NaN"):
        nmtune(nan, tests, C, seed=0, config=CFG)
    with pytest.raises(SpecError, match="num_classes must be an integer >= 2, got 1"):
        nmtune(train, tests, 1, seed=0, config=CFG)
    with pytest.raises(SpecError, match="NMTuneConfig.lambda_cov must be a finite number >= 0, got -1"):
        NMTuneConfig(lambda_cov=-1.0)
    with pytest.raises(SpecError, match="NMTuneConfig.batch_size must be an integer >= 2, got 1"):
        NMTuneConfig(batch_size=1)
    with pytest.raises(SpecError, match="NMTuneConfig.epochs must be an integer >= 1, got True"):
        NMTuneConfig(epochs=True)
