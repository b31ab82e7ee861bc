"""Two-GPU (NCCL) check of the fused CLIP loss gather path against the PyTorch reference.

    torchrun --standalone --nproc-per-node 2 benchmarks/check_clip_gather_nccl.py

Each rank scores its local bf16 features against the all-gathered ones (open_clip local_loss=True,
gather_with_grad=True semantics) with the Triton kernels and with the fp32 reference on the same
rounded inputs, and prints the loss and the relative gradient errors. Results: results/clip_gather_nccl_2xh200.md.
"""
import torch, torch.distributed as dist, torch.nn.functional as F
from inheritlab.kernels import clip_contrastive_loss
dist.init_process_group("nccl"); r = dist.get_rank(); torch.cuda.set_device(r)
for B, scale in ((4096, 14.3), (16384, 100.0)):
    g = torch.Generator(device="cuda").manual_seed(100 + r)
    i = F.normalize(torch.randn(B, 512, device="cuda", generator=g), dim=-1)
    t = F.normalize(0.5 * i + torch.randn(B, 512, device="cuda", generator=g), dim=-1)
    ours = [i.bfloat16().requires_grad_(), t.bfloat16().requires_grad_(), torch.tensor(scale, device="cuda").requires_grad_()]
    ref = [x.detach().float().clone().requires_grad_() for x in ours]
    lo = clip_contrastive_loss(*ours, gather=True); lo.backward()
    lr = clip_contrastive_loss(*ref, impl="reference", gather=True); lr.backward()
    rel = [float((a.grad.double() - b.grad.double()).abs().max() / b.grad.double().abs().max()) for a, b in zip(ours, ref)]
    print(f"rank {r} B/rank={B} scale={scale}: loss {lo.item():.6f} vs ref {lr.item():.6f}; rel grad err img {rel[0]:.2e} txt {rel[1]:.2e} scale {rel[2]:.2e}", flush=True)
dist.destroy_process_group()
