"""The Triton kernels on the CPU interpreter (fp32) against fp64 references, over odd shapes.

TRITON_INTERPRET must be set before triton is first imported (its own library functions are
decorated then), and other modules — open_clip, DeepSpeed — import triton early. So the cases run
in a fresh process started with TRITON_INTERPRET=1 by ``test_interpreter_suite_in_fresh_process``;
in the parent process they are skipped, and the parent's kernels stay compiled (GPU tests in the
same session are unaffected). Shapes stay small: the interpreter executes every program in Python.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the Triton interpreter tests need triton installed")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import inheritlab.kernels.clip_loss as clip_mod  # noqa: E402
import inheritlab.kernels.linear_ce as lce_mod  # noqa: E402
import inheritlab.kernels.siglip as siglip_mod  # noqa: E402
from inheritlab.kernels import clip_contrastive_loss, linear_cross_entropy, siglip_loss  # noqa: E402

_IN_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_RUNNER = "test_interpreter_suite_in_fresh_process"


@pytest.fixture(autouse=True)
def _interpreter_process_only(request: pytest.FixtureRequest) -> None:
    if not _IN_INTERPRETER and request.node.originalname != _RUNNER:
        pytest.skip(f"runs inside {_RUNNER} (a TRITON_INTERPRET=1 process)")


def test_interpreter_suite_in_fresh_process() -> None:
    if _IN_INTERPRETER:
        pytest.skip("this is the interpreter process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of a against the reference b, in the max norm."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _features(b: int, d: int, aligned: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm pairs; ``aligned`` > 0 makes each text close to its image (large positive logits)."""
    g = torch.Generator().manual_seed(seed)
    i = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(aligned * i + torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return i, t


CONTRASTIVE_CASES = [
    # (B, d, scale, aligned): batch 1, sizes off the 16/32 blocks, huge and tiny logits
    (1, 8, 3.0, 0.0),
    (37, 20, 14.3, 0.0),
    (70, 33, 100.0, 1.0),
    (45, 16, 1e-3, 0.0),
]


@pytest.mark.parametrize(("b", "d", "scale", "aligned"), CONTRASTIVE_CASES)
def test_clip_matches_fp64_reference(b: int, d: int, scale: float, aligned: float) -> None:
    i, t = _features(b, d, aligned, seed=b)
    s = torch.tensor(scale, dtype=torch.float64)
    ref = [x.clone().requires_grad_() for x in (i, t, s)]
    tri = [x.float().clone().requires_grad_() for x in (i, t, s)]
    lr = clip_contrastive_loss(*ref, impl="reference")
    lt = clip_contrastive_loss(*tri, impl="triton")
    (lr * 1.7).backward()
    (lt * 1.7).backward()
    assert lt.dtype == torch.float32
    assert abs(lt.item() - lr.item()) <= 1e-5 * max(1.0, abs(lr.item()))
    for a, r in zip(tri, ref):
        assert _rel(a.grad, r.grad) < 1e-4


@pytest.mark.parametrize(("b", "d", "scale", "aligned"), CONTRASTIVE_CASES)
def test_siglip_matches_fp64_reference(b: int, d: int, scale: float, aligned: float) -> None:
    i, t = _features(b, d, aligned, seed=b + 1)
    s, bias = torch.tensor(scale, dtype=torch.float64), torch.tensor(-scale / 2, dtype=torch.float64)
    ref = [x.clone().requires_grad_() for x in (i, t, s, bias)]
    tri = [x.float().clone().requires_grad_() for x in (i, t, s, bias)]
    lr = siglip_loss(*ref, impl="reference")
    lt = siglip_loss(*tri, impl="triton")
    (lr * 0.6).backward()
    (lt * 0.6).backward()
    assert abs(lt.item() - lr.item()) <= 1e-5 * max(1.0, abs(lr.item()))
    for a, r in zip(tri, ref):
        assert _rel(a.grad, r.grad) < 1e-4


def test_clip_column_far_below_every_tile_takes_the_exact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Images in a narrow cone, text 0 pointing away from all of them: at scale 300 its whole
    # column sits ~500 nats below every tile's top logit, so the fast column sums (relative to
    # that top) flush it to zero; the check must notice and the exact kernel re-run.
    g = torch.Generator().manual_seed(5)
    axis = F.normalize(torch.ones(8, dtype=torch.float64), dim=0)
    i = F.normalize(3 * axis + 0.3 * torch.randn(40, 8, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(4 * i + 0.3 * torch.randn(40, 8, generator=g, dtype=torch.float64), dim=-1)
    t[0] = -axis
    s = torch.tensor(300.0, dtype=torch.float64)
    verdicts: list[bool] = []
    check = clip_mod._needs_exact
    monkeypatch.setattr(clip_mod, "_needs_exact", lambda r, c: verdicts.append(bool(check(r, c))) or check(r, c))
    ref = [x.clone().requires_grad_() for x in (i, t, s)]
    tri = [x.float().clone().requires_grad_() for x in (i, t, s)]
    lr = clip_contrastive_loss(*ref, impl="reference")
    lt = clip_contrastive_loss(*tri, impl="triton")
    lr.backward()
    lt.backward()
    assert verdicts == [True]  # the check saw the flushed column and the exact kernel re-ran
    assert abs(lt.item() - lr.item()) <= 1e-5 * max(1.0, abs(lr.item()))
    for a, r in zip(tri, ref):
        # dL/dscale is a small difference of O(1) terms at this scale: fp32 keeps ~1e-4 of it.
        assert _rel(a.grad, r.grad) < 3e-4
    # Without the check the fast sums would have lost column 0 (its log-sum-exp would be -inf).
    monkeypatch.setattr(clip_mod, "_needs_exact", lambda r, c: torch.zeros(1, dtype=torch.int32))
    fast = clip_contrastive_loss(*[x.detach() for x in tri], impl="triton")
    assert not torch.isfinite(fast) or abs(fast.item() - lr.item()) > 1.0


def test_clip_descriptor_and_pointer_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of 24 fp32 values (96 bytes) can be read through tensor descriptors; 33 (132 bytes)
    # cannot and must fall back to pointer loads. Where both apply they give the same numbers,
    # including over several backward chunks (a ragged last one) and with gather's offset.
    from inheritlab.kernels._tiles import use_tma

    monkeypatch.setattr(clip_mod, "CHUNK_BYTES", 64 * 150 * 4)
    i, t = _features(150, 24, 1.0, seed=9)
    assert use_tma(i.float(), t.float())
    assert not use_tma(*(x.float() for x in _features(20, 33, 1.0, seed=9)))
    grads = {}
    for tma in ("1", "0"):
        monkeypatch.setenv("INHERITLAB_KERNEL_TMA", tma)
        x = [i.float().clone().requires_grad_(), t.float().clone().requires_grad_(),
             torch.tensor(30.0, requires_grad=True)]
        loss = clip_contrastive_loss(*x, impl="triton")
        loss.backward()
        grads[tma] = [loss.detach()] + [a.grad for a in x]
    assert use_tma(i.float(), t.float()) is False  # the switch is read at each call
    for a, b in zip(grads["1"], grads["0"]):
        assert _rel(a, b) < 1e-6


def test_contrastive_backward_in_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 150 rows in chunks of 64: the fp32 accumulation of the key gradient across chunks.
    monkeypatch.setattr(clip_mod, "CHUNK_BYTES", 64 * 150 * 4)
    monkeypatch.setattr(siglip_mod, "CHUNK_BYTES", 64 * 150 * 4)
    i, t = _features(150, 24, 2.0, seed=3)
    s, bias = torch.tensor(20.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    for fn, extra in ((clip_contrastive_loss, ()), (siglip_loss, (bias,))):
        ref = [x.clone().requires_grad_() for x in (i, t, s, *extra)]
        tri = [x.float().clone().requires_grad_() for x in (i, t, s, *extra)]
        fn(*ref, impl="reference").backward()
        fn(*tri, impl="triton").backward()
        for a, r in zip(tri, ref):
            assert _rel(a.grad, r.grad) < 1e-4, fn.__name__


LCE_CASES = [
    # (N, H, V, smoothing, z_loss, reduction, bias, logit_mult, ignore_every)
    (1, 8, 17, 0.0, 0.0, "mean", False, 1.0, 0),
    (150, 24, 300, 0.0, 0.0, "mean", False, 1.0, 4),  # several chunks (CHUNK_BYTES patched)
    (150, 24, 300, 0.1, 1e-3, "sum", True, 1.0, 3),
    (70, 16, 999, 0.2, 1e-2, "none", True, 1.0, 5),
    (33, 16, 257, 0.0, 1e-4, "mean", False, 60.0, 2),  # huge logits (|x| ~ 100s)
    (33, 16, 257, 0.05, 0.0, "mean", True, 1e-4, 0),  # tiny logits (near-uniform softmax)
]


@pytest.mark.parametrize(("n", "h", "v", "eps", "z", "reduction", "bias", "mult", "ignore_every"), LCE_CASES)
def test_linear_ce_matches_fp64_reference(monkeypatch: pytest.MonkeyPatch, n: int, h: int, v: int, eps: float,
                                          z: float, reduction: str, bias: bool, mult: float, ignore_every: int) -> None:
    monkeypatch.setattr(lce_mod, "CHUNK_BYTES", 64 * v * 4)
    g = torch.Generator().manual_seed(n * v)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * mult / h**0.5
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        y[::ignore_every] = -100
    ins = [hid, w] + ([b] if bias else [])
    ref = [x.clone().requires_grad_() for x in ins]
    tri = [x.float().clone().requires_grad_() for x in ins]
    kw = dict(label_smoothing=eps, z_loss=z, reduction=reduction)
    lr = linear_cross_entropy(ref[0], ref[1], y, bias=ref[2] if bias else None, impl="reference", **kw)
    lt = linear_cross_entropy(tri[0], tri[1], y, bias=tri[2] if bias else None, impl="triton", **kw)
    assert lt.shape == lr.shape
    upstream = torch.rand(lr.shape, generator=g, dtype=torch.float64) + 0.5
    (lr * upstream).sum().backward()
    (lt * upstream.float()).sum().backward()
    assert _rel(lt, lr) < 1e-5
    for a, r in zip(tri, ref):
        assert _rel(a.grad, r.grad) < 1e-4


@pytest.mark.parametrize("upstream", [1.0, 0.25, 0.0])
def test_linear_ce_upstream_gradient_scales_in_place(upstream: float) -> None:
    # Gradients are made in the forward pass and scaled on the device by the upstream gradient:
    # 1 (loss.backward()) must leave them as they are, anything else must scale every one of them.
    g = torch.Generator().manual_seed(7)
    hid, w, b = (torch.randn(40, 8, generator=g), torch.randn(50, 8, generator=g), torch.randn(50, generator=g))
    y = torch.randint(0, 50, (40,), generator=g)
    grads = {}
    for impl in ("reference", "triton"):
        x = [t.clone().requires_grad_() for t in (hid, w, b)]
        loss = linear_cross_entropy(x[0], x[1], y, bias=x[2], impl=impl)
        loss.backward(torch.tensor(upstream))
        grads[impl] = [t.grad for t in x]
    for a, r in zip(grads["triton"], grads["reference"]):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-7)
    assert all(torch.count_nonzero(a) == 0 for a in grads["triton"]) == (upstream == 0.0)


def test_linear_ce_second_backward_is_an_error() -> None:
    hid, w = torch.randn(10, 8, requires_grad=True), torch.randn(20, 8, requires_grad=True)
    loss = linear_cross_entropy(hid, w, torch.randint(0, 20, (10,)), impl="triton")
    (2 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward pass"):
        loss.backward()


def test_linear_ce_all_ignored_and_int32_targets() -> None:
    hid = torch.randn(20, 8, requires_grad=True)
    w = torch.randn(40, 8, requires_grad=True)
    loss = linear_cross_entropy(hid, w, torch.full((20,), -100, dtype=torch.int32), impl="triton")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(hid.grad) == 0 and torch.count_nonzero(w.grad) == 0


def test_linear_ce_out_of_range_target_is_nan_not_silent() -> None:
    y = torch.tensor([1, 2, 99])
    loss = linear_cross_entropy(torch.randn(3, 8), torch.randn(10, 8), y, impl="triton")
    assert torch.isnan(loss)


def test_no_grad_forward_matches() -> None:
    hid, w = torch.randn(40, 8), torch.randn(50, 8)
    y = torch.randint(0, 50, (40,))
    with torch.no_grad():
        a = linear_cross_entropy(hid, w, y, impl="triton")
    assert torch.allclose(a, linear_cross_entropy(hid, w, y, impl="reference"), rtol=1e-5)


# ---------------------------------------------------------------- multi-process (gloo) parity
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, queue) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    from open_clip.loss import ClipLoss, SigLipLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = {}
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        i = F.normalize(torch.randn(19, 12, generator=g), dim=-1)
        t = F.normalize(i + torch.randn(19, 12, generator=g), dim=-1)
        s, b = torch.tensor(12.0), torch.tensor(-4.0)
        for name, ours, theirs, extra in (
            ("clip", clip_contrastive_loss, ClipLoss(local_loss=True, gather_with_grad=True, rank=rank,
                                                     world_size=world), ()),
            ("siglip", siglip_loss, SigLipLoss(rank=rank, world_size=world), (b,)),
        ):
            r = [x.clone().requires_grad_() for x in (i, t, s, *extra)]
            lb = theirs(*r)
            lb.backward()
            for impl in ("reference", "triton"):
                a = [x.clone().requires_grad_() for x in (i, t, s, *extra)]
                la = ours(*a, impl=impl, gather=True)
                la.backward()
                out[(name, impl)] = (abs(la.item() - lb.item()), max(_rel(x.grad, y.grad) for x, y in zip(a, r)))
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


def test_gather_matches_open_clip_on_two_ranks() -> None:
    # Local rows against all ranks' features, gradients through the all-gather: open_clip's
    # ClipLoss(local_loss=True, gather_with_grad=True) and SigLipLoss, for both implementations.
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = dict(queue.get() for _ in range(2))
    for rank, out in results.items():
        for name, (dloss, dgrad) in out.items():
            assert dloss < 1e-5, (rank, name, dloss)
            assert dgrad < 1e-4, (rank, name, dgrad)


# ---------------------------------------------------------------- mini-model convergence
def _train_clip(impl: str, steps: int = 15) -> list[float]:
    torch.manual_seed(0)
    enc_i, enc_t = torch.nn.Linear(10, 16), torch.nn.Linear(10, 16)
    log_scale = torch.nn.Parameter(torch.tensor(2.0))
    opt = torch.optim.Adam([*enc_i.parameters(), *enc_t.parameters(), log_scale], lr=5e-2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 10, generator=g)
    y = x @ torch.randn(10, 10, generator=g) + 0.1 * torch.randn(48, 10, generator=g)  # paired views
    losses = []
    for _ in range(steps):
        loss = clip_contrastive_loss(F.normalize(enc_i(x), dim=-1), F.normalize(enc_t(y), dim=-1),
                                     log_scale.exp(), impl=impl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _train_lm(impl: str, steps: int = 15) -> list[float]:
    torch.manual_seed(0)
    emb, head = torch.nn.Embedding(97, 16), torch.nn.Linear(16, 97, bias=True)
    opt = torch.optim.Adam([*emb.parameters(), *head.parameters()], lr=5e-2)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 97, (32,), generator=g)
    targets = (tokens * 7 + 3) % 97  # a learnable mapping
    targets[::7] = -100
    losses = []
    for _ in range(steps):
        loss = linear_cross_entropy(emb(tokens), head.weight, targets, bias=head.bias, z_loss=1e-4, impl=impl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("train", [_train_clip, _train_lm])
def test_mini_model_loss_curve_matches_reference(train) -> None:  # type: ignore[no-untyped-def]
    ours, ref = train("triton"), train("reference")
    assert ref[-1] < 0.5 * ref[0]  # it learns
    for a, b in zip(ours, ref):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (ours, ref)
