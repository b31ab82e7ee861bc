"""Export an LM checkpoint as a Hugging Face ``LlamaForCausalLM`` directory.

Our module names already follow Llama's, so the export is a prefix (``model.``) on every
weight but the head, a ``config.json`` and the tokenizer files. The directory loads with
``transformers.AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` (and
therefore with lm-evaluation-harness's ``hf`` model) and gives the same loss as our model:
the same RoPE layout (rotate-half), RMSNorm in fp32, SwiGLU, no biases.
Writing needs only ``safetensors``; transformers is needed only to load the result.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from inheritlab.corruptors.tokenizer import load_tokenizer
from inheritlab.infra.atomic import atomic_dir, atomic_write_json
from inheritlab.trainers.lm_models import LlamaLM
from inheritlab.trainers.lm_pretrain import load_exported

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_config(model: LlamaLM, *, bos_id: int, eos_id: int, pad_id: int, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of a ``LlamaForCausalLM`` with our model's shape."""
    c = model.cfg
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": c.init_std,
        "tie_word_embeddings": c.tie_embeddings,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype,
    }


def hf_state_dict(model: LlamaLM, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our weights under Llama's names (a tied head is stored once, as the embedding)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if model.cfg.tie_embeddings:
                continue
            key = name
        else:
            key = f"model.{name}"
        out[key] = t.detach().to("cpu", dtype).contiguous()
    return out


def export_hf(weights: str | Path | LlamaLM, out_dir: str | Path, *, tokenizer: str | Path | None = None,
              dtype: str = "float32") -> Path:
    """Write a ``LlamaForCausalLM`` directory (config, safetensors, tokenizer) atomically.

    ``weights``: an export directory of :func:`inheritlab.trainers.lm_pretrain.train_lm` (its
    recorded tokenizer is used unless ``tokenizer`` is given) or a model in memory.
    """
    from safetensors.torch import save_file

    if dtype not in _DTYPES:
        raise ValueError(f"export_hf: dtype={dtype!r}; allowed {sorted(_DTYPES)}")
    if isinstance(weights, LlamaLM):
        model, rec = weights, {}
    else:
        model, rec = load_exported(weights)
    tok_path = tokenizer or rec.get("tokenizer")
    if tok_path is None:
        raise ValueError("export_hf: no tokenizer given and none recorded with the weights")
    tok = load_tokenizer(tok_path)
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"export_hf: tokenizer {tok.path} has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size} rows"
        )
    # Training packs documents after an end-of-text token; the tokenizer's own BOS never reaches
    # the model. So the exported start token is the EOS, as in GPT-2: lm-evaluation-harness
    # conditions empty contexts and rolling perplexity on it. Nothing is prepended by default;
    # ``add_bos_token=True`` at load time prefixes every text with it, as our own evaluation does.
    start_id = tok.eos_id
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        save_file(hf_state_dict(model, _DTYPES[dtype]), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(model, bos_id=start_id, eos_id=tok.eos_id,
                                                         pad_id=tok.pad_id, dtype=dtype))
        atomic_write_json(tmp / "generation_config.json",
                          {"bos_token_id": start_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
                           "do_sample": False})
        shutil.copyfile(str(tok.path), tmp / "tokenizer.json")
        special = {"bos_token": tok.token(start_id), "eos_token": tok.token(tok.eos_id),
                   "pad_token": tok.token(tok.pad_id), "unk_token": None}
        atomic_write_json(tmp / "special_tokens_map.json", {k: v for k, v in special.items() if v is not None})
        atomic_write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.cfg.max_seq_len,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            **special,
        })
    return out
