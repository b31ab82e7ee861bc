"""CLIP rung registry, open_clip round trip of exported weights, DeepSpeed config and schedule."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from inheritlab.infra.errors import SpecError
from inheritlab.trainers.clip_models import RUNGS, build_clip, count_params, flops_per_sample, get_rung
from inheritlab.trainers.engine import EngineConfig, param_groups, sanitize_cuda_arch_list, warmup_cosine


def test_rungs_carry_the_datacomp_recipes() -> None:
    small, xl = get_rung("datacomp-small"), get_rung("datacomp-xlarge")
    assert (small.open_clip_name, small.batch_size, small.lr, small.warmup_steps) == ("ViT-B-32", 4096, 5e-4, 500)
    assert get_rung("datacomp-large").open_clip_name == "ViT-B-16" and get_rung("datacomp-large").batch_size == 8192
    assert (xl.open_clip_name, xl.batch_size, xl.lr, xl.warmup_steps, xl.beta2) == ("ViT-L-14", 90112, 1e-3, 10_000, 0.95)
    assert {r.device for r in RUNGS.values()} == {"cpu", "gpu"}


def test_unknown_rung_names_the_known_ones() -> None:
    with pytest.raises(SpecError, match="clip-tiny"):
        get_rung("clip-huge")


def test_flops_grow_with_the_rung() -> None:
    tiny, mini, small, large = (flops_per_sample(n) for n in ("clip-tiny", "clip-mini", "datacomp-small", "datacomp-large"))
    assert 0 < tiny < mini < small < large
    # ViT-B/32 CLIP: ~7.4 GMACs forward per pair, so fwd+bwd ≈ 44 GFLOPs.
    assert 35e9 < small < 55e9


def test_exported_weights_load_through_open_clip(tmp_path: Path) -> None:
    import open_clip

    built = build_clip("clip-tiny", seed=3)
    assert count_params(built.model) > 0
    x = torch.rand(2, 3, 32, 32)
    t = built.tokenizer(["a red circle.", "a blue square."])
    assert t.shape == (2, 32)  # the tiny rung's context length
    path = tmp_path / "open_clip_model.pt"
    torch.save(built.model.state_dict(), path)
    os.link(path, tmp_path / "open_clip_pytorch_model.bin")  # as the trainer's export does
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": built.model_cfg}))
    by_name = open_clip.create_model("clip-tiny", pretrained=str(path)).eval()
    by_dir = open_clip.create_model(f"local-dir:{tmp_path}").eval()
    ref = built.model.eval()
    # Ours computes the patch embedding as a matmul (clip_models.PatchConv2d), plain open_clip as a
    # convolution: the same function in another summation order, so fp32 rounding apart.
    close = {"rtol": 1e-4, "atol": 1e-5}
    with torch.no_grad():
        want = ref.encode_image(x)
        assert torch.allclose(by_name.encode_image(x), want, **close)
        assert torch.allclose(by_dir.encode_image(x), want, **close)
        assert torch.allclose(by_name.encode_text(t), ref.encode_text(t))
    other = build_clip("clip-tiny", seed=4).model.eval()
    with torch.no_grad():
        assert not torch.allclose(other.encode_image(x), want)


@pytest.mark.parametrize(
    ("raw", "fixed"),
    [("9.0a", "9.0"), ("8.0;9.0a", "8.0;9.0"), ("9.0a+PTX", "9.0+PTX"), ("8.0 8.6", "8.0;8.6"), ("10.0a", "10.0")],
)
def test_cuda_arch_list_is_sanitised(monkeypatch: pytest.MonkeyPatch, raw: str, fixed: str) -> None:
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", raw)
    assert sanitize_cuda_arch_list() == fixed
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == fixed


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, warmup_steps=10, total_steps=110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5) and lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(0, warmup_steps=0, total_steps=1) == pytest.approx(1.0)
    assert not math.isnan(warmup_cosine(5, warmup_steps=0, total_steps=0))


def test_ds_config_cpu_fp32_vs_gpu_bf16() -> None:
    cpu = EngineConfig(micro_batch_per_rank=8, world_size=2, zero_stage=2).ds_config()
    assert cpu["train_batch_size"] == 16 and cpu["zero_optimization"]["stage"] == 2
    assert "optimizer" not in cpu and "bf16" not in cpu  # a torch AdamW is passed in on CPU
    gpu = EngineConfig(micro_batch_per_rank=8, world_size=1, zero_stage=3, precision="bf16", use_gpu=True,
                       lr=1e-3, betas=(0.9, 0.95)).ds_config()
    assert gpu["bf16"] == {"enabled": True} and gpu["optimizer"]["type"] == "AdamW"
    assert gpu["optimizer"]["params"]["betas"] == [0.9, 0.95]
    with pytest.raises(SpecError, match="needs a GPU"):
        EngineConfig(micro_batch_per_rank=8, world_size=1, precision="bf16")
    with pytest.raises(SpecError, match="zero_stage"):
        EngineConfig(micro_batch_per_rank=8, world_size=1, zero_stage=4)


def test_zero_stage_rule_and_the_stage_0_step() -> None:
    from inheritlab.trainers.engine import resolve_zero_stage

    gib = 2**30
    # ViT-B/32 (151 M parameters, 2.4 GB of state) on a GPU, a step per micro-batch: stage 0.
    assert resolve_zero_stage("auto", params=151_000_000, world=1, device_bytes=141 * gib, use_gpu=True) == 0
    # An LM rung accumulating 16 micro-batches a step keeps DeepSpeed's compiled ZeRO-2 path.
    assert resolve_zero_stage("auto", params=125_000_000, world=1, device_bytes=141 * gib, use_gpu=True,
                              grad_accum=16) == 2
    # Too big for one device: sharded; too big even for stage 2's share: stage 3.
    assert resolve_zero_stage("auto", params=2_000_000_000, world=8, device_bytes=80 * gib, use_gpu=True) == 2
    assert resolve_zero_stage("auto", params=30_000_000_000, world=8, device_bytes=80 * gib, use_gpu=True) == 3
    assert resolve_zero_stage("auto", params=1_000_000, world=2, device_bytes=8 * gib) == 0  # every CPU rung
    assert resolve_zero_stage(2, params=1_000_000, world=1, device_bytes=8 * gib) == 2       # asked for: kept
    # Stage 0 on a GPU: open_clip's own recipe (fp32 weights under bf16 autocast, torch's fused
    # AdamW), and DeepSpeed does not clip (optimizer_step clips with one multi-tensor norm).
    own = EngineConfig(micro_batch_per_rank=8, world_size=1, zero_stage=0, precision="bf16", use_gpu=True)
    cfg = own.ds_config()
    assert own.own_step and cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in cfg and "optimizer" not in cfg and cfg["gradient_clipping"] == 0.0
    fp16 = EngineConfig(micro_batch_per_rank=8, world_size=1, zero_stage=0, precision="fp16", use_gpu=True)
    assert not fp16.own_step and fp16.ds_config()["gradient_clipping"] == 1.0  # fp16's loss scaling stays DeepSpeed's


def test_optimizer_step_clips_with_one_multi_tensor_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    from inheritlab.trainers.engine import build_engine, init_distributed, optimizer_step

    init_distributed(use_gpu=False)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    engine, _, _ = build_engine(model, EngineConfig(micro_batch_per_rank=2, world_size=1, grad_clip=0.5,
                                                    total_steps=4))
    assert engine.zero_optimization_stage() == 0  # auto, on the CPU
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, **kw):  # type: ignore[no-untyped-def]
        params = list(params)
        norm = real(params, max_norm, **kw)
        after = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
        calls.append((len(params), max_norm, kw.get("foreach"), float(norm) > 0.5, float(after)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    loss = engine(torch.randn(2, 4)).pow(2).sum() * 1e4
    engine.backward(loss)
    optimizer_step(engine)
    # Once, over all 4 parameters, multi-tensor, and the step saw the clipped gradient.
    assert [c[:4] for c in calls] == [(4, 0.5, True, True)] and calls[0][4] == pytest.approx(0.5, rel=1e-3)


def test_stage_0_forward_outside_the_engine_trains_the_same_weights() -> None:
    """The compiled stage-0 step calls the module's forward directly (engine.step_forward), leaving
    DeepSpeed's forward hooks out; backward and step through the engine must not notice: the
    weights after a few steps equal those of the engine's own forward, bit for bit."""
    from inheritlab.trainers.engine import build_engine, init_distributed, optimizer_step, step_forward

    init_distributed(use_gpu=False)
    weights = []
    for direct in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
        start = model[0].weight.detach().clone()
        engine, _, _ = build_engine(model, EngineConfig(micro_batch_per_rank=4, world_size=1, grad_clip=1.0,
                                                        warmup_steps=1, total_steps=6))
        assert step_forward(engine, compile_model=False) is engine  # eager: the engine's own forward
        # The direct path, uncompiled here (what step_forward compiles on a GPU).
        forward = engine.module.forward if direct else engine
        data = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.randn(4, 4, generator=data)
            engine.backward(forward(x).pow(2).mean())
            optimizer_step(engine)
        weights.append([p.detach().clone() for p in engine.module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    assert not torch.equal(weights[0][0], start)  # it trained


def test_cuda_graphs_rule_names_what_stops_them() -> None:
    """``cuda_graphs: auto`` graphs only a step that can be graphed; ``yes`` on one that cannot is
    an error naming every reason; ``no`` never graphs."""
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig
    from inheritlab.trainers.engine import build_engine, cuda_graphs_for, init_distributed, step_forward

    init_distributed(use_gpu=False)
    engine, _, _ = build_engine(torch.nn.Linear(4, 1), EngineConfig(micro_batch_per_rank=2, world_size=1, total_steps=4))
    accum, _, _ = build_engine(torch.nn.Linear(4, 1), EngineConfig(micro_batch_per_rank=2, world_size=1, total_steps=4,
                                                                   grad_accum=2))
    assert engine.inheritlab_own_step  # stage 0 on the CPU: our own step, so only the device stops graphs
    assert not cuda_graphs_for("auto", compiled=True, engine=engine)
    assert not cuda_graphs_for("no", compiled=True, engine=engine)
    with pytest.raises(SpecError, match="not on a GPU") as err:
        cuda_graphs_for("yes", compiled=False, engine=accum)
    assert "not compiled" in str(err.value) and "2 micro-batches a step" in str(err.value)
    with pytest.raises(ValueError, match="own step"):
        step_forward(engine, compile_model=False, cuda_graphs=True)
    with pytest.raises(SpecError, match="cuda_graphs: got 'always'"):
        ClipTrainConfig(rung="clip-tiny", train_shards=("a.tar",), cell_dir="c", samples_seen=1, cuda_graphs="always")


def test_no_weight_decay_on_gains_biases_and_temperature() -> None:
    model = build_clip("clip-tiny", seed=0).model
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert any(names[id(p)] == "logit_scale" for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0


def test_flat_buffer_offsets_stay_16_byte_aligned() -> None:
    # DeepSpeed packs each group into one flat buffer in this order: every parameter that is a
    # whole number of 16-byte bf16 vectors must start on a 16-byte boundary (logit_scale, 1
    # element, used to shift every bias and norm gain after it).
    model = build_clip("clip-tiny", seed=0).model
    for group in param_groups(model, 0.1):
        offset = 0
        for p in group["params"]:
            if p.numel() % 8 == 0:
                assert offset % 8 == 0
            offset += p.numel()
        sizes = [p.numel() for p in group["params"]]
        assert sorted(sizes, key=lambda n: n % 8 != 0) == sizes
    assert sum(len(g["params"]) for g in param_groups(model, 0.1)) == len(list(model.parameters()))


def test_auto_compiles_gpu_rungs_on_a_gpu_at_every_stage_for_runs_that_repay_it() -> None:
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig
    from inheritlab.trainers.train_config import COMPILE_MIN_STEPS

    auto = ClipTrainConfig(rung="datacomp-small", train_shards=("a.tar",), cell_dir="c", samples_seen=1)
    for stage in (0, 2):
        assert auto.compiles(True, "gpu", stage, COMPILE_MIN_STEPS)
        assert not auto.compiles(True, "gpu", stage, COMPILE_MIN_STEPS - 1)  # a smoke run: eager
    assert not auto.compiles(False, "gpu", 0, 10**6) and not auto.compiles(True, "cpu", 0, 10**6)
    forced = ClipTrainConfig(rung="clip-tiny", train_shards=("a.tar",), cell_dir="c", samples_seen=1, compile="yes")
    assert forced.compiles(False, "cpu", 0, 1)
