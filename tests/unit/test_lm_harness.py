"""Our Hugging Face LM exports load in lm-evaluation-harness and score exactly like our own model.

The harness's ``hf`` model encodes context + continuation whole and splits them, conditions empty
contexts (and rolling perplexity) on its prefix token, and by default prepends nothing. Training
packs every document after an EOS, so the export's start token (BOS, hence the harness's prefix
token) is that EOS. What ``add_bos_token`` does in lm-eval 0.4.13 (``models/huggingface.py``):

- ``loglikelihood`` / ``multiple_choice`` / ``generate_until``: ``True`` makes the tokenizer
  prepend the start token to every context (``tok_encode``/``tok_batch_encode`` with
  ``add_special_tokens=True``), so contexts start after an EOS as in training and in our own
  evaluation; unset, they start bare (an empty context still gets the prefix token).
- ``loglikelihood_rolling`` (wikitext-style perplexity): the text is encoded with the same
  ``tok_encode``, so ``True`` puts the start token *into the scored tokens*, and
  ``get_rolling_token_windows`` then conditions the first window on the prefix token as well:
  the windows start ``EOS EOS …`` and the EOS after EOS is scored. Unset (or ``False``), the
  windows are exactly ours: the document after one EOS, every token scored once, so the
  harness's perplexity equals our ``perplexity`` task's on the same documents.
"""

from __future__ import annotations

import itertools
import json
import math

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


@pytest.fixture
def offline(monkeypatch):
    """No network: the Hugging Face hub and datasets in offline mode."""
    import datasets
    import huggingface_hub.constants as hub_constants

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, name, True, raising=False)


def test_harness_runs_a_local_task_offline(exported, tmp_path, offline):
    """``simple_evaluate`` on a multiple-choice task from a YAML and a local JSON file, with no network."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

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


# A rolling-perplexity task (as wikitext): the documents' log-likelihood by rolling windows, reported
# per token (``token_perplexity``, counts from our tokenizer, which the export shares) and per word.
ROLLING_TASK = """\
task: inheritlab_rolling
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}, cache_dir: {cache}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
process_results: !function inheritlab_rolling_utils.process_results
metric_list:
  - metric: token_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""
ROLLING_UTILS = """\
import re


def process_results(doc, results):
    (loglikelihood,) = results
    return {"token_perplexity": (loglikelihood, doc["n_tokens"]),
            "word_perplexity": (loglikelihood, len(re.split(r"\\s+", doc["text"])))}
"""


@pytest.fixture(scope="module")
def rolling_results(exported, tmp_path_factory):
    """Our ``perplexity`` task on a few documents (two longer than the 64-token context), and
    lm-eval's rolling perplexity of the export on the same documents, per ``add_bos_token``."""
    import datasets
    import huggingface_hub.constants as hub_constants
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from inheritlab.corruptors.shards import write_shards
    from inheritlab.corruptors.text_world import TextWorldInfo
    from inheritlab.trainers.lm_tasks import evaluate_lm

    model, tok, out = exported
    d = tmp_path_factory.mktemp("rolling")
    texts = [DOCS[0], " ".join(DOCS * 4), DOCS[2] + " " + DOCS[1], " ".join(DOCS[::-1] * 8)]
    n_tokens = [len(tok.encode(t)) for t in texts]
    assert max(n_tokens) > 2 * model.cfg.max_seq_len and min(n_tokens) < model.cfg.max_seq_len

    write_shards([{"__key__": f"doc{i}", "text": t, "meta": {}} for i, t in enumerate(texts)], d / "test_id",
                 samples_per_shard=10)
    world = TextWorldInfo(root=d, splits={"test_id": [str(p) for p in sorted((d / "test_id").glob("*.tar"))]},
                          tokenizer=tok.path)
    ours = {r["metric"]: r["value"] for r in evaluate_lm(model, world, tasks=["perplexity"], tokenizer=tok.path)}

    data = d / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t, "n_tokens": n}) + "\n" for t, n in zip(texts, n_tokens)))
    (d / "tasks").mkdir()
    (d / "tasks" / "rolling.yaml").write_text(ROLLING_TASK.format(data=json.dumps(str(data)),
                                                                  cache=json.dumps(str(d / "ds"))))
    (d / "tasks" / "inheritlab_rolling_utils.py").write_text(ROLLING_UTILS)
    harness = {}
    with pytest.MonkeyPatch.context() as mp:  # offline, as the ``offline`` fixture (module scope here)
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(var, "1")
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            mp.setattr(datasets.config, name, True, raising=False)
        for add_bos in (None, False, True):
            lm = hf_models.HFLM(pretrained=str(out), device="cpu", batch_size=4, dtype="float32",
                                add_bos_token=add_bos)
            res = simple_evaluate(model=lm, tasks=["inheritlab_rolling"], task_manager=TaskManager(
                include_path=str(d / "tasks"), include_defaults=False), bootstrap_iters=0, log_samples=False)
            harness[add_bos] = res["results"]["inheritlab_rolling"]
    words = sum(len(t.split()) for t in texts)
    return ours, harness, sum(n_tokens), words


@pytest.mark.parametrize("add_bos", [None, False])
def test_harness_rolling_perplexity_equals_ours_without_add_bos_token(rolling_results, add_bos):
    """Rolling perplexity (wikitext-style tasks): load the export *without* ``add_bos_token`` (unset or
    False) and the harness's token perplexity is our ``perplexity`` task's, to a relative 1e-5 (fp32)."""
    ours, harness, n_tokens, words = rolling_results
    got = harness[add_bos]
    assert got["token_perplexity,none"] == pytest.approx(ours["perplexity"], rel=1e-5)
    # Per word: the same summed log-likelihood over the documents' words.
    assert got["word_perplexity,none"] == pytest.approx(math.exp(ours["loss"] * n_tokens / words), rel=1e-5)


def test_harness_rolling_perplexity_with_add_bos_token_scores_a_second_start_token(rolling_results):
    """``add_bos_token=True`` puts the start token into the scored text: windows start EOS EOS, and
    the (improbable) EOS after EOS is scored, so the perplexity is not ours."""
    ours, harness, *_ = rolling_results
    got = harness[True]["token_perplexity,none"]
    assert got != pytest.approx(ours["perplexity"], rel=1e-3)
    assert got > ours["perplexity"]
