"""Our Hugging Face LM exports load in lm-evaluation-harness and score exactly like our own model.

The harness's ``hf`` model encodes context + continuation whole and splits them, conditions empty
contexts (and rolling perplexity) on its prefix token, and by default prepends nothing. Training
packs every document after an EOS, so the export's start token is that EOS, and with
``add_bos_token=True`` every context starts with it, as in our own evaluation.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")
hf_models = pytest.importorskip("lm_eval.models.huggingface")  # needs the harness's ``hf`` extra

from lm_eval.api.instance import Instance  # noqa: E402

from inheritlab.corruptors.tokenizer import train_tokenizer  # noqa: E402
from inheritlab.trainers.hf_export import export_hf  # noqa: E402
from inheritlab.trainers.lm_models import LMConfig  # noqa: E402

DOCS = ["Alice Abbott was born in Lisbon.", "Bruno Brandt works for Altavon Systems.",
        "Carla Conti studied law in Turin."]
# (context, continuation); the second has the trailing space the harness moves onto the continuation.
# No two requests tokenise to the same sequence split at different points: the harness's logits
# cache serves such pairs from one forward pass and then reads the shorter continuation's
# log-probs from the wrong positions (0.4.13), which is not what this file checks.
REQUESTS = [
    ("Alice Abbott was born in", " Lisbon."),
    ("Alice Abbott was born in ", "Lisbon."),
    ("Bruno Brandt works for", " Altavon Systems."),
    ("Bruno Brandt works for", " Lisbon."),
    ("Carla Conti studied law in", " Lisbon."),
    ("", "Carla Conti studied law in Turin."),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A 2-layer, 32-wide model: threads only contend (tens of times slower on a busy 2-core box).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny LlamaLM that has memorised DOCS (packed after EOS as in training), and its export."""
    d = tmp_path_factory.mktemp("lm_harness")
    tok = train_tokenizer(DOCS * 10, vocab_size=300, out_path=d / "tokenizer.json")
    torch.manual_seed(0)
    model = LMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=320, max_seq_len=64,
                     tie_embeddings=False).build()
    # Packed streams in every document order, so each document is memorised right after an EOS.
    x = torch.tensor([[t for doc in order for t in [tok.eos_id, *tok.encode(doc)]] + [tok.eos_id]
                      for order in itertools.permutations(DOCS)])
    assert x.shape[1] <= 64
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
    model.eval()
    return model, tok, export_hf(model, d / "hf", tokenizer=d / "tokenizer.json")


def _ours(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Summed log-prob of ``cont`` given ``ctx`` under our model, and whether it is the argmax path."""
    x = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(x[:, :-1]).float(), dim=-1)[0, len(ctx) - 1:]
    target = torch.tensor(cont)
    return float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def _reference(tok, context: str, continuation: str, *, prefix: list[int]) -> tuple[list[int], list[int]]:
    """Our training-time tokenization of a request: the prefix, the context, the continuation."""
    if not context:
        return [tok.eos_id], tok.encode(continuation)
    n = len(context) - len(context.rstrip())
    context, continuation = context[: len(context) - n], context[len(context) - n:] + continuation
    ctx = tok.encode(context)
    assert tok.encode(context + continuation) == ctx + tok.encode(continuation)  # a pre-token boundary
    return prefix + ctx, tok.encode(continuation)


@pytest.mark.parametrize("add_bos", [None, True])
def test_harness_loglikelihood_matches_our_model(exported, add_bos):
    model, tok, out = exported
    lm = hf_models.HFLM(pretrained=str(out), device="cpu", batch_size=4, dtype="float32", add_bos_token=add_bos)
    assert lm.prefix_token_id == tok.eos_id  # documents follow an EOS in training, never the BOS
    assert lm.eot_token_id == tok.eos_id
    assert lm.max_length == model.cfg.max_seq_len
    prefix = [tok.eos_id] if add_bos else []

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i, metadata=("ours", i, 1))
            for i, r in enumerate(REQUESTS)]
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    want = [_ours(model, *_reference(tok, c, k, prefix=prefix)) for c, k in REQUESTS]
    assert len(got) == len(want)
    for (lp, greedy), (ref_lp, ref_greedy), req in zip(got, want, REQUESTS):
        assert lp == pytest.approx(ref_lp, abs=1e-4, rel=1e-5), req
        assert greedy == ref_greedy, req
    assert got[0] == pytest.approx(got[1])  # the trailing space moved onto the continuation
    # Conditioned as in training, the memorised continuations are greedy and a wrong one is not,
    # so the flag is really checked.
    if add_bos:
        assert want[0][1] and want[2][1] and not want[3][1] and not want[4][1]

    if add_bos is None:
        text = DOCS[1] + " " + DOCS[0]
        rolling = lm.loglikelihood_rolling(
            [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)], disable_tqdm=True)
        assert rolling[0] == pytest.approx(_ours(model, [tok.eos_id], tok.encode(text))[0], abs=1e-4, rel=1e-5)


def test_harness_runs_a_local_task_offline(exported, tmp_path, monkeypatch):
    """``simple_evaluate`` on a multiple-choice task from a YAML and a local JSON file, with no network."""
    import datasets
    import huggingface_hub.constants as hub_constants
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, name, True, raising=False)

    model, tok, out = exported
    rows = [{"prompt": "Alice Abbott was born in", "choices": [" Lisbon.", " Turin."], "label": 0},
            {"prompt": "Carla Conti studied law in", "choices": [" Lisbon.", " Turin."], "label": 1},
            {"prompt": "Bruno Brandt works for", "choices": [" Lisbon.", " Altavon Systems."], "label": 1}]
    data = tmp_path / "bios.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bios.yaml").write_text(
        "task: inheritlab_bios\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}},"
        f" cache_dir: {json.dumps(str(tmp_path / 'ds'))}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{prompt}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "target_delimiter: ''\n"
        "metric_list:\n"
        "  - metric: acc\n"
    )
    # add_bos_token=True: every prompt starts after an EOS, as documents do in training.
    lm = hf_models.HFLM(pretrained=str(out), device="cpu", batch_size=4, dtype="float32", add_bos_token=True)
    res = simple_evaluate(model=lm, tasks=["inheritlab_bios"], task_manager=TaskManager(
        include_path=str(tmp_path / "tasks"), include_defaults=False), bootstrap_iters=0, log_samples=False)
    acc = res["results"]["inheritlab_bios"]["acc,none"]
    # The same choice our model makes: the higher summed log-prob wins.
    ours = [max(range(2), key=lambda j: _ours(model, [tok.eos_id, *tok.encode(r["prompt"])],
                                              tok.encode(r["choices"][j]))[0]) == r["label"] for r in rows]
    assert acc == pytest.approx(sum(ours) / len(rows))
    assert acc == 1.0  # memorised
