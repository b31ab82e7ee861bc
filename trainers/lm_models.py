"""Llama-style decoder-only language models in plain PyTorch, and the LM rung ladder.

RoPE (rotate-half convention), RMSNorm (computed in fp32), SwiGLU MLP, no biases, optional
grouped-query attention, tied or untied head. Module names follow Hugging Face's
``LlamaForCausalLM`` (``embed_tokens``, ``layers.N.self_attn.q_proj``, ...), so export is a
rename-free state dict (see :mod:`inheritlab.trainers.hf_export`).

``model(input_ids)`` returns the final hidden states ``[B, T, D]``; ``model(input_ids, targets)``
returns the mean next-token loss through :func:`inheritlab.kernels.linear_cross_entropy`, which
never materialises the ``[B·T, V]`` logits (Triton on GPU, the PyTorch reference on CPU). The
head is its own module so ZeRO-3 gathers its weight before the loss reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from inheritlab.infra.errors import SpecError
from inheritlab.kernels import linear_cross_entropy

IGNORE_INDEX = -100


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    """Shape of one decoder. ``n_kv_heads`` < ``n_heads`` is grouped-query attention."""

    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    vocab_size: int = 32000
    n_kv_heads: int | None = None
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"LMConfig.dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LMConfig: head_dim={self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"LMConfig.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.vocab_size < 2:
            raise ValueError(f"LMConfig.vocab_size={self.vocab_size} must be >= 2")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def build(self) -> "LlamaLM":
        return LlamaLM(self)


@dataclass(frozen=True, kw_only=True)
class LMRecipe:
    """The fixed training recipe of a rung (the study may override batch size and steps)."""

    seq_len: int
    batch_size: int  # sequences per optimizer step, over all ranks
    lr: float
    warmup_steps: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0


@dataclass(frozen=True, kw_only=True)
class LMRung:
    """A named model size with its recipe; ``device`` says where it is meant to train."""

    name: str
    model: LMConfig
    recipe: LMRecipe
    device: str = "gpu"
    activation_checkpointing: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


def _rung(name: str, dim: int, layers: int, heads: int, ffn: int, *, kv: int | None = None, vocab: int = 32000,
          seq: int = 2048, batch: int = 256, lr: float = 6e-4, warmup: int = 2000, device: str = "gpu",
          ckpt: bool = False) -> LMRung:
    return LMRung(
        name=name,
        model=LMConfig(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv, ffn_dim=ffn, vocab_size=vocab,
                       max_seq_len=max(seq, 128)),
        recipe=LMRecipe(seq_len=seq, batch_size=batch, lr=lr, warmup_steps=warmup),
        device=device,
        activation_checkpointing=ckpt,
    )


# CPU rungs take their vocabulary from the world's tokenizer (build_lm(vocab_size=...)).
RUNGS: dict[str, LMRung] = {
    r.name: r
    for r in (
        _rung("lm-tiny", 128, 4, 4, 352, vocab=1024, seq=128, batch=16, lr=3e-3, warmup=10, device="cpu"),
        _rung("lm-mini", 256, 6, 8, 704, vocab=1024, seq=256, batch=16, lr=2e-3, warmup=20, device="cpu"),
        _rung("lm-60m", 512, 8, 8, 1408, seq=1024, batch=256, lr=1e-3, warmup=500),
        _rung("lm-125m", 768, 12, 12, 2048, seq=2048, batch=256, lr=6e-4, warmup=2000),
        _rung("lm-350m", 1024, 24, 16, 2816, seq=2048, batch=256, lr=3e-4, warmup=2000),
        _rung("lm-760m", 1536, 24, 16, 4096, seq=2048, batch=256, lr=2.5e-4, warmup=2000, ckpt=True),
        _rung("lm-1b", 2048, 22, 32, 5632, kv=4, seq=2048, batch=256, lr=2e-4, warmup=2000, ckpt=True),
    )
}


def get_rung(name: str) -> LMRung:
    """The rung called ``name``; an unknown name lists the known ones."""
    if name not in RUNGS:
        raise SpecError(f"unknown LM rung {name!r}; known: {', '.join(RUNGS)}")
    return RUNGS[name]


# ----------------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """x / rms(x) · w, computed in fp32 and cast back (as Hugging Face's Llama does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_cache(cfg: LMConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim] in fp32 for positions 0..T-1 (halves repeated: rotate-half layout)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated by position; cos/sin [T, D] fp32, cast to x's dtype first."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, self.n_kv * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, self.n_kv * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv != self.n_heads:
            # Each kv head serves n_heads / n_kv query heads (the grouped-query layout).
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash kernel on GPU
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LMHead(nn.Module):
    """The output projection; with targets it returns the fused loss instead of logits."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.dim))
        self.impl = "auto"

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, *,
                reduction: str = "mean") -> torch.Tensor:
        if targets is None:
            return hidden @ self.weight.t()  # [..., V] logits: evaluation and generation only
        h = hidden.reshape(-1, hidden.shape[-1])  # [B·T, D]
        return linear_cross_entropy(h, self.weight, targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                    reduction=reduction, impl=self.impl)


class LlamaLM(nn.Module):
    """Decoder-only LM. ``forward(ids)`` → hidden [B, T, D]; ``forward(ids, targets)`` → loss."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = LMHead(cfg)
        self.activation_checkpointing = False
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # A plain cache, not buffers: an engine's bf16 cast must not round the rotation angles.
        self._rope_cache: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def _init_weights(self) -> None:
        std = self.cfg.init_std
        # Residual-branch outputs scaled down with depth (GPT-2) so the stream's variance stays flat.
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue
            nn.init.normal_(p, mean=0.0, std=out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=std)

    def _rope(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        if self._rope_cache is None or self._rope_cache[0] != device:
            cos, sin = rope_cache(self.cfg, self.cfg.max_seq_len, device)
            self._rope_cache = (device, cos, sin)
        return self._rope_cache[1][:T], self._rope_cache[2][:T]

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                reduction: str = "mean") -> torch.Tensor:
        B, T = input_ids.shape
        cos, sin = self._rope(T, input_ids.device)
        x = self.embed_tokens(input_ids)  # [B, T, D]
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        hidden = self.norm(x)
        if targets is None:
            return hidden
        return self.lm_head(hidden, targets, reduction=reduction)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full logits [B, T, V] (evaluation and generation; training uses the fused loss)."""
        return self.lm_head(self.forward(input_ids))

    @torch.no_grad()
    def generate_greedy(self, prompt: list[int], max_new_tokens: int, *, stop_id: int | None = None) -> list[int]:
        """Greedy continuation of one prompt (no KV cache: prompts here are short)."""
        device = self.embed_tokens.weight.device
        ids = list(prompt)
        out: list[int] = []
        for _ in range(max_new_tokens):
            ctx = ids[-self.cfg.max_seq_len:]
            logits = self.logits(torch.tensor([ctx], device=device))[0, -1]
            nxt = int(logits.argmax())
            if stop_id is not None and nxt == stop_id:
                break
            ids.append(nxt)
            out.append(nxt)
        return out


# ----------------------------------------------------------------------------------- sizes


def resolve_config(rung: str | LMRung | LMConfig, *, vocab_size: int | None = None,
                   max_seq_len: int | None = None) -> LMConfig:
    """The model config of a rung name, rung or config, with the vocabulary overridden."""
    cfg = rung if isinstance(rung, LMConfig) else (get_rung(rung) if isinstance(rung, str) else rung).model
    if vocab_size is not None:
        cfg = replace(cfg, vocab_size=int(vocab_size))
    if max_seq_len is not None and max_seq_len > cfg.max_seq_len:
        cfg = replace(cfg, max_seq_len=int(max_seq_len))
    return cfg


def build_lm(rung: str | LMRung | LMConfig, *, vocab_size: int | None = None,
             max_seq_len: int | None = None) -> LlamaLM:
    """A freshly initialised model of a rung (``vocab_size``: the tokenizer's, when given)."""
    cfg = resolve_config(rung, vocab_size=vocab_size, max_seq_len=max_seq_len)
    model = LlamaLM(cfg)
    if isinstance(rung, LMRung) or isinstance(rung, str):
        r = get_rung(rung) if isinstance(rung, str) else rung
        model.activation_checkpointing = r.activation_checkpointing
    return model


def compile_blocks(model: LlamaLM) -> LlamaLM:
    """Compile each decoder block with torch.compile (in place; parameter names unchanged).

    Blocks, not the whole model: the fused loss head launches its own Triton kernels with
    host-side chunking, which the compiler would only split around; twelve identical blocks
    also share one compiled graph, so start-up costs one compilation, not one per layer.
    """
    for block in model.layers:
        block.compile()
    return model


def count_params(cfg: LMConfig) -> dict[str, int]:
    """Parameter counts from the shape alone (no model built: works for the 1B rung on a laptop).

    ``total`` counts tied weights once. ``flops`` is the N of 6·N·tokens: every matmul weight
    (the head included, the input-embedding lookup excluded when untied).
    """
    d, L, V, f = cfg.dim, cfg.n_layers, cfg.vocab_size, cfg.ffn_dim
    kv = cfg.kv_heads * cfg.head_dim
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * f + 2 * d
    body = L * per_layer + d
    head = V * d
    total = body + head + (0 if cfg.tie_embeddings else V * d)
    return {"total": total, "non_embedding": body, "flops": body + head}


def flops_per_token(cfg: LMConfig, seq_len: int | None = None, *, attention: bool = False) -> float:
    """Training FLOPs per token: 6·N (+ 12·L·D·T for attention scores when ``attention``)."""
    n = count_params(cfg)["flops"]
    extra = 12 * cfg.n_layers * cfg.dim * (seq_len or cfg.max_seq_len) if attention else 0
    return 6.0 * n + extra


def train_flops(cfg: LMConfig, tokens: int) -> float:
    """6·N·tokens: the FLOPs column of the results table."""
    return flops_per_token(cfg) * float(tokens)
