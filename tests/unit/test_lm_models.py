"""The Llama-style LM: shapes, causality, the fused-loss head, sizes, and Hugging Face parity."""

from __future__ import annotations

import pytest
import torch

from inheritlab.infra.errors import SpecError
from inheritlab.trainers.lm_models import (
    RUNGS,
    LMConfig,
    LlamaLM,
    build_lm,
    count_params,
    flops_per_token,
    get_rung,
)

SMALL = LMConfig(dim=32, n_layers=2, n_heads=4, ffn_dim=64, vocab_size=96, max_seq_len=64)


def test_shapes_and_loss_matches_plain_cross_entropy():
    torch.manual_seed(0)
    m = SMALL.build()
    x = torch.randint(0, 96, (3, 17))
    h = m(x)
    assert h.shape == (3, 17, 32)
    logits = m.logits(x)
    assert logits.shape == (3, 17, 96)
    loss = m(x[:, :-1], x[:, 1:])
    ref = torch.nn.functional.cross_entropy(m.logits(x[:, :-1]).reshape(-1, 96), x[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert m.embed_tokens.weight.grad is not None and m.layers[0].self_attn.q_proj.weight.grad is not None


def test_causal_mask_future_tokens_do_not_leak():
    torch.manual_seed(0)
    m = SMALL.build().eval()
    x = torch.randint(0, 96, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 96, (2, 5))
    with torch.no_grad():
        hx, hy = m(x), m(y)
    torch.testing.assert_close(hx[:, :7], hy[:, :7])
    assert not torch.allclose(hx[:, 7:], hy[:, 7:])


def test_ignore_index_and_tied_head():
    m = SMALL.build()
    assert m.lm_head.weight is m.embed_tokens.weight
    untied = LlamaLM(LMConfig(**{**SMALL.__dict__, "tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    x = torch.randint(0, 96, (2, 9))
    t = x.clone()
    t[:, :4] = -100
    full = m(x, x, reduction="none").view(2, 9)
    part = m(x, t, reduction="none").view(2, 9)
    assert torch.all(part[:, :4] == 0)
    torch.testing.assert_close(part[:, 4:], full[:, 4:])


def test_grouped_query_attention_runs():
    cfg = LMConfig(dim=64, n_layers=1, n_heads=8, n_kv_heads=2, ffn_dim=96, vocab_size=50, max_seq_len=32)
    m = cfg.build()
    assert m.layers[0].self_attn.k_proj.weight.shape == (2 * 8, 64)
    assert m(torch.randint(0, 50, (1, 10))).shape == (1, 10, 64)
    assert sum(p.numel() for p in m.parameters()) == count_params(cfg)["total"]


def test_rung_ladder_sizes():
    assert get_rung("lm-tiny").device == "cpu"
    tiny = count_params(build_lm("lm-tiny", vocab_size=1024).cfg)["total"]
    assert 0.5e6 < tiny < 1.5e6
    assert sum(p.numel() for p in build_lm("lm-tiny", vocab_size=1024).parameters()) == tiny
    c125 = get_rung("lm-125m").model
    assert (c125.n_layers, c125.dim) == (12, 768)
    assert 100e6 < count_params(c125)["total"] < 140e6
    assert 0.9e9 < count_params(get_rung("lm-1b").model)["total"] < 1.3e9
    sizes = [count_params(r.model)["total"] for r in RUNGS.values()]
    assert sizes == sorted(sizes)
    assert flops_per_token(c125) == 6 * count_params(c125)["flops"]
    with pytest.raises(SpecError, match="lm-tiny"):
        get_rung("lm-7b")
    with pytest.raises(ValueError, match="n_heads"):
        LMConfig(dim=30, n_layers=1, n_heads=4, ffn_dim=8)


@pytest.mark.parametrize("tied,kv", [(True, None), (False, 2)])
def test_hf_export_loads_in_transformers_with_the_same_loss(tmp_path, tied, kv):
    transformers = pytest.importorskip("transformers")
    from inheritlab.corruptors.tokenizer import load_tokenizer, train_tokenizer
    from inheritlab.trainers.hf_export import export_hf

    tok_path = tmp_path / "tokenizer.json"
    train_tokenizer(["Alice Abbott was born in Lisbon.", "Bruno Brandt works for Altavon Systems."] * 10,
                    vocab_size=300, out_path=tok_path)
    torch.manual_seed(0)
    m = LMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=kv, ffn_dim=64, vocab_size=320, max_seq_len=64,
                 tie_embeddings=tied).build().eval()
    with torch.no_grad():  # non-trivial norm weights, so a mis-mapped norm would show
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    out = export_hf(m, tmp_path / "hf", tokenizer=tok_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Alice Abbott was born in Lisbon. Bruno Brandt works for Altavon Systems."
    ids = load_tokenizer(tok_path).encode(text)
    assert hf_tok(text, add_special_tokens=False).input_ids == ids
    x = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        ours = m(x[:, :-1], x[:, 1:])
        theirs = hf(input_ids=x, labels=x).loss
        torch.testing.assert_close(m.logits(x), hf(input_ids=x).logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
