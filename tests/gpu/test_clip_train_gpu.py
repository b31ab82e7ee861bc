"""CLIP pre-training on one GPU: DeepSpeed bf16 at ZeRO-2 (FusedAdam, towers compiled in the engine)
and at stage 0 (our fused step, the whole forward compiled outside the engine's hooks and replayed
as CUDA graphs), the Triton loss, resume, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("compile_", ["no", "yes"])
@pytest.mark.parametrize("stage", [2, 0])
def test_bf16_trains_resumes_and_exports(tmp_path: Path, compile_: str, stage: int) -> None:
    import open_clip

    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig, export_weights, train_clip

    world = write_image_world(ImageWorldConfig(seed=0, train_size=1024, test_id_size=64, test_ood_size=64,
                                               samples_per_shard=256), tmp_path / "world")
    base = dict(rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(tmp_path / "cell"),
                samples_seen=12 * 128, batch_size=128, ckpt_every=6, log_every=1, zero_stage=stage,
                loss_impl="triton", loader_workers=2, compile=compile_)
    first = train_clip(ClipTrainConfig(**base, stop_after_steps=6))
    assert first.precision == "bf16" and first.steps == 6
    done = train_clip(ClipTrainConfig(**base))
    assert done.resumed_from == 6 and done.steps == 12
    # cuda_graphs: auto graphs the compiled stage-0 step, and Inductor recorded every graph.
    graphed = compile_ == "yes" and stage == 0
    how = done.extra["step"]
    assert (how["compiled"], how["cuda_graphs"], how["graph_skips"]) == (compile_ == "yes", graphed, 0)
    assert how["feed"]["batches"] == 6  # this process's steps, each fed and timed
    losses = [v for _, v in done.loss_curve]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns
    model = open_clip.create_model("clip-tiny", pretrained=export_weights(done.final_export)).cuda().eval()
    with torch.no_grad():
        f = model.encode_image(torch.rand(2, 3, 32, 32, device="cuda"), normalize=True)
    assert torch.allclose(f.norm(dim=-1), torch.ones(2, device="cuda"), atol=1e-3)


def test_cuda_graphs_train_as_the_plain_compiled_step(tmp_path: Path) -> None:
    """Replaying the compiled step as CUDA graphs must not change what is trained: the graphs'
    buffers hold each step's features and gradients, and a buffer reused too early (a gradient
    still in use, an output of the previous step) would show as a different loss curve."""
    from inheritlab.corruptors.world import ImageWorldConfig, write_image_world
    from inheritlab.trainers.clip_pretrain import ClipTrainConfig, train_clip

    world = write_image_world(ImageWorldConfig(seed=0, train_size=1024, test_id_size=64, test_ood_size=64,
                                               samples_per_shard=256), tmp_path / "world")
    curves = {}
    for graphs in ("no", "yes"):
        done = train_clip(ClipTrainConfig(
            rung="clip-tiny", train_shards=tuple(world.splits["train"]), cell_dir=str(tmp_path / f"cell-{graphs}"),
            samples_seen=10 * 128, batch_size=128, ckpt_every=10, log_every=1, zero_stage=0, loss_impl="triton",
            loader_workers=2, compile="yes", cuda_graphs=graphs))
        assert done.extra["step"]["cuda_graphs"] == (graphs == "yes") and done.extra["step"]["graph_skips"] == 0
        curves[graphs] = torch.tensor([v for _, v in done.loss_curve])
    assert len(curves["yes"]) == 10
    torch.testing.assert_close(curves["yes"], curves["no"], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("pinned", [False, True])
def test_nvjpeg_decodes_a_batch_as_the_loader_does(pinned: bool) -> None:
    """The device decode (image_decode: device) against the loader's PIL decode of the same
    bytes: the same shape and order, each pixel within nvJPEG's IDCT rounding; the bytes joined
    in page-locked memory or not."""
    import io

    import numpy as np
    from PIL import Image

    from inheritlab.trainers.image_feed import decode_rows

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 64)
    rows, expected = [], []
    for i in range(24):
        smooth = np.stack([*np.meshgrid(x, x), np.full((64, 64), 8.0 * i)], -1)
        pixels = np.clip(smooth + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=85, subsampling=i % 3)
        rows.append(("s.tar", f"{i}.jpg", buf.getvalue()))
        expected.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    out = decode_rows(rows, torch.device("cuda", 0), pinned=pinned)
    assert out.is_cuda and out.shape == (24, 64, 64, 3) and out.dtype == torch.uint8
    diff = (out.cpu().int() - torch.from_numpy(np.stack(expected)).int()).abs()
    # Chroma upsampling and IDCT rounding differ by a few levels at most on average; an image out
    # of place (each differs from its neighbours by 8 levels of blue) or garbage is far above that.
    per_image = diff.float().mean(dim=(1, 2, 3))
    assert float(per_image.max()) < 2.0, per_image.tolist()
