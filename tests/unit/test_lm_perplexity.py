"""Perplexity over every token of every document (rolling windows of the model's context), and
exact continuation on documents longer than the context.

Models here have a short context (``L`` = 8 tokens) and documents several times longer, so a
scorer that kept only each document's last window (as the LM tasks once did) fails every test.
Weights are drawn wide (``init_std``) so that predictions really depend on the context.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from inheritlab.corruptors.shards import write_shards
from inheritlab.corruptors.text_world import TextWorldInfo
from inheritlab.corruptors.tokenizer import train_tokenizer
from inheritlab.trainers.lm_eval import (
    continuation_windows,
    doc_sequences,
    read_docs,
    rolling_windows,
    score_documents,
    score_groups,
    score_sequences,
)
from inheritlab.trainers.lm_models import LlamaLM, LMConfig
from inheritlab.trainers.lm_tasks import evaluate_lm

L = 8  # the short context of the models under test
WORDS = ("otter heron badger lynx marmot ibis gecko walrus river forest harbour meadow canyon glacier clams "
         "berries beetles seeds fish moss").split()


def _text(rng: random.Random, n_sentences: int) -> str:
    return " ".join(f"The {rng.choice(WORDS)} eats {rng.choice(WORDS)} by the {rng.choice(WORDS)}."
                    for _ in range(n_sentences))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Held-out and training text with documents of 1 to ~12 context lengths, and the tokenizer."""
    root = tmp_path_factory.mktemp("ppl_world")
    rng = random.Random(0)
    tok = train_tokenizer([_text(rng, 5) for _ in range(50)], vocab_size=300, out_path=root / "tokenizer.json")
    splits = {}
    for split, sizes in (("test_id", (1, 12, 3, 1, 7, 2)), ("train", (9, 1, 4, 6, 1, 2))):
        docs = [{"__key__": f"{split}_{i:03d}", "text": _text(rng, n), "meta": {}} for i, n in enumerate(sizes)]
        docs.append({"__key__": f"{split}_short", "text": "The otter.", "meta": {}})
        write_shards(docs, root / split, samples_per_shard=4)
        splits[split] = sorted(str(p) for p in (root / split).glob("*.tar"))
    info = TextWorldInfo(root=root, splits=splits, tokenizer=root / "tokenizer.json")
    lengths = [len(tok.encode(d)) for d in _docs(info, "test_id")]
    assert max(lengths) > 10 * L and min(lengths) <= L  # long documents and short ones
    return info, tok


def _docs(info, split):
    return [d["text"] for d in read_docs(info.splits[split])]


def _model(vocab: int, *, n_layers: int, max_seq_len: int, seed: int = 0, attention: bool = True) -> LlamaLM:
    """``attention=False``: attention outputs zeroed, so each prediction depends on the current
    token only and any windows give the same losses."""
    torch.manual_seed(seed)
    model = LMConfig(dim=32, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=vocab,
                     max_seq_len=max_seq_len, tie_embeddings=False, init_std=0.3).build().eval()
    if not attention:
        with torch.no_grad():
            for layer in model.layers:
                layer.self_attn.o_proj.weight.zero_()
    return model


def _with_context(model: LlamaLM, max_seq_len: int) -> LlamaLM:
    """The same weights with another context length (RoPE: nothing else depends on it)."""
    other = LlamaLM(dataclasses.replace(model.cfg, max_seq_len=max_seq_len))
    other.load_state_dict(model.state_dict())
    return other.eval()


@torch.no_grad()
def _nll_one_pass(model: LlamaLM, tokens: list[int]) -> tuple[float, int]:
    """Summed loss of tokens[1:] given their whole prefix, in one pass."""
    x = torch.tensor([tokens])
    logp = torch.log_softmax(model.logits(x[:, :-1]).float(), -1)[0]
    return -float(logp.gather(-1, x[0, 1:, None]).sum()), len(tokens) - 1


@torch.no_grad()
def _nll_token(model: LlamaLM, context: list[int], target: int) -> float:
    logp = torch.log_softmax(model.logits(torch.tensor([context])).float()[0, -1], -1)
    return -float(logp[target])


# ----------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("max_seq_len", [1, 3, 8])
def test_rolling_windows_predict_every_token_once_within_the_context(max_seq_len):
    for n in range(30):
        tokens = list(range(100, 100 + n))
        full = [7] + tokens  # the prefix (end-of-text) then the document
        windows = rolling_windows(tokens, max_seq_len, prefix=7)
        targets = [t for w, s in windows for t in w[s:]]
        assert targets == tokens  # every token once, in order
        pos = 1
        for i, (w, s) in enumerate(windows):
            n_t = len(w) - s
            assert 1 <= n_t <= max_seq_len and len(w) <= max_seq_len + 1
            end = pos + n_t  # the window is the tokens of ``full`` ending at its last target
            assert w == full[end - len(w) : end]
            assert (len(w) == max_seq_len + 1) if i else (w[0] == 7 and s == 1)  # later windows: a full context
            pos = end


def test_rolling_windows_are_lm_evaluation_harness_windows():
    utils = pytest.importorskip("lm_eval.utils")
    for max_seq_len in (1, 2, 5, 16):
        for n in range(0, 60, 3):
            tokens = list(range(100, 100 + n))
            want = [(ctx + cont, len(ctx)) for ctx, cont in map(
                utils.make_disjoint_window, utils.get_rolling_token_windows(tokens, 7, max_seq_len, 1))]
            assert rolling_windows(tokens, max_seq_len, prefix=7) == want, (max_seq_len, n)


# ----------------------------------------------------------------------------------- perplexity


def test_long_documents_score_every_token(world):
    """A model without attention (each prediction depends on the previous token only) gives
    the same loss whatever the windows: rolling windows of an 8-token context must reproduce the
    one-pass loss of the same weights with a context longer than every document."""
    info, tok = world
    texts = _docs(info, "test_id")
    short = _model(tok.vocab_size, n_layers=1, max_seq_len=L, attention=False)
    long = _with_context(short, 4096)
    docs = [{"text": t} for t in texts]
    got = score_documents(short, tok, docs, batch_size=3)
    want = [_nll_one_pass(long, [tok.eos_id] + tok.encode(t)) for t in texts]
    for (loss, count, _), (ref, n), t in zip(got, want, texts):
        assert count == n == len(tok.encode(t))  # every token, no end-of-text target
        assert loss == pytest.approx(ref, rel=1e-5)
    seqs, owner = doc_sequences(tok, docs, L)
    assert sorted(set(owner)) == list(range(len(docs))) and len(seqs) > 2 * len(docs)

    # The task: the loss is the mean over every token of the split.
    rows = evaluate_lm(short, info, tasks=["perplexity"], tokenizer=info.tokenizer, batch_size=4)
    v = {(r["split"], r["metric"]): r["value"] for r in rows}
    mean = sum(r for r, _ in want) / sum(n for _, n in want)
    assert v[("id", "loss")] == pytest.approx(mean, rel=1e-5)
    assert v[("id", "perplexity")] == pytest.approx(torch.tensor(mean).exp().item(), rel=1e-5)


def test_rolling_losses_are_the_windowed_losses_of_each_token(world):
    """A real (2-layer) model: each token's loss is its loss given exactly the context of its window
    (the window's tokens before it), computed here one token at a time; documents that fit in the
    context are scored in one pass with their whole prefix, as before."""
    info, tok = world
    short = _model(tok.vocab_size, n_layers=2, max_seq_len=L, seed=1)
    texts = _docs(info, "test_id")
    got = score_documents(short, tok, [{"text": t} for t in texts], batch_size=5)
    for (loss, count, _), text in zip(got, texts):
        ids = tok.encode(text)
        full = [tok.eos_id] + ids
        ref = 0.0
        for i in range(1, len(full)):
            # Targets 1..L in the first window (after the EOS); then windows of L targets, the last
            # one ending at the document's end; a window ending at b sees full[b - L : ...].
            if i <= L:
                lo = 0
            else:
                b = min(len(full) - 1, L + L * -(-(i - L) // L))  # the end of the window holding i
                lo = b - L
            ref += _nll_token(short, full[lo:i], full[i])
        assert count == len(ids)
        assert loss == pytest.approx(ref, rel=1e-5, abs=1e-4)
        if len(full) <= L + 1:
            assert (loss, count) == pytest.approx(_nll_one_pass(short, full), rel=1e-5)
    # The old scorer kept each document's last window only: never more than L tokens.
    assert max(c for _, c, _ in got) > 3 * L


def test_memorization_and_contamination_losses_score_every_token(world):
    info, tok = world
    short = _model(tok.vocab_size, n_layers=1, max_seq_len=L, attention=False)
    long = _with_context(short, 4096)

    def mean_ref(texts):
        ref = [_nll_one_pass(long, [tok.eos_id] + tok.encode(t)) for t in texts]
        return sum(r for r, _ in ref) / sum(n for _, n in ref)

    train = read_docs(info.splits["train"])
    dup = [d["__key__"] for d in train[:3]]
    test = read_docs(info.splits["test_id"])
    leaked = [d["__key__"] for d in test[:2]]
    rows = evaluate_lm(short, info, tasks=["memorization", "contamination"], tokenizer=info.tokenizer,
                       duplicated_keys=dup, leaked_keys={"test_id": leaked}, continuation_tokens=3)
    v = {(r["task"], r["split"], r["metric"]): r["value"] for r in rows}
    assert v[("memorization", "duplicated", "loss")] == pytest.approx(mean_ref([d["text"] for d in train[:3]]),
                                                                      rel=1e-5)
    assert v[("memorization", "unique", "loss")] == pytest.approx(mean_ref([d["text"] for d in train[3:6]]),
                                                                  rel=1e-5)
    assert v[("contamination_test_id", "leaked", "loss")] == pytest.approx(
        mean_ref([d["text"] for d in test[:2]]), rel=1e-5)
    assert v[("contamination_test_id", "clean", "loss")] == pytest.approx(
        mean_ref([d["text"] for d in test[2:]]), rel=1e-5)
    # Exact continuation is what greedy decoding does (here: never the text).
    for split, docs in (("duplicated", train[:3]), ("unique", train[3:6])):
        hits = []
        for d in docs:
            ids = [tok.eos_id] + tok.encode(d["text"])
            hits.append(short.generate_greedy(ids[:-3], 3) == ids[-3:])
        assert v[("memorization", split, "exact_continuation")] == sum(hits) / len(hits)


# ----------------------------------------------------------------------------------- continuation


def test_exact_continuation_is_greedy_decoding_with_the_models_context():
    """Greedy decoding slides its context (the last ``max_seq_len`` tokens); exact continuation
    must agree on documents longer than the context, where one teacher-forced pass cannot give
    every continuation token its full context."""
    vocab = 40
    model = _model(vocab, n_layers=2, max_seq_len=L, seed=2)
    rng = random.Random(3)
    cases = []
    for prefix_len in (1, 3, 5, 8, 12, 30):
        for k in (1, 4, 6, 8):
            prefix = [0] + [rng.randrange(1, vocab) for _ in range(prefix_len)]
            gen = model.generate_greedy(prefix, k)
            cases.append((prefix + gen, k, True))  # reproduced by construction
            for j in (0, k - 1):  # a wrong token first or last: not reproduced
                bad = list(gen)
                bad[j] = (bad[j] + 1) % vocab
                cases.append((prefix + bad, k, False))
    seqs, owner = [], []
    for i, (ids, k, _) in enumerate(cases):
        w = continuation_windows(ids, k, L)
        assert [t for s, st in w for t in s[st:]] == ids[-k:]  # the last k tokens, once each
        assert all(len(s) <= L + 1 for s, _ in w)
        seqs += w
        owner += [i] * len(w)
    got = score_groups(model, seqs, owner, len(cases), batch_size=7)
    assert [h for _, _, h in got] == [want for *_, want in cases]
    assert [c for _, c, _ in got] == [k for _, k, _ in cases]
    # A target set wider than the context cannot be scored in one sequence: refused, not cut.
    with pytest.raises(ValueError, match="at most max_seq_len"):
        score_sequences(model, [(list(range(L + 3)), 1)], batch_size=1)
