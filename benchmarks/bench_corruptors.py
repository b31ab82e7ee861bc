"""Corruptor throughput and dedup quality → benchmarks/results/corruptors.json (+ .md).

1. Stream cost: samples/s of a raw WebDataset read vs the same read through the per-sample
   chain (label noise + caption noise + pool subsample), with and without image decoding, on
   the built-in world. Target: the chain costs <= 10 % of raw throughput.
2. Dedup plan: samples/s per core of the MinHash plan (signatures + LSH clustering) against
   datasketch's MinHash + MinHashLSH on the same captions, with precision/recall on planted
   near-duplicates (one word dropped).

Run: ``python benchmarks/bench_corruptors.py [--quick]``. Timings are process CPU time
(``time.process_time``; everything measured runs in this one thread), best of ``--repeats``
interleaved runs: the machine is shared, and wall time there mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inheritlab.corruptors.chain import build_chain
from inheritlab.corruptors.dedup import Dedup, dedup_quality, normalise_text
from inheritlab.corruptors.shards import iter_samples
from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

RESULTS = Path(__file__).resolve().parent / "results"
CHAIN = [
    {"type": "subsample", "fraction": 0.9},
    {"type": "label_noise", "level": 0.2},
    {"type": "caption_noise", "level": 0.2, "mode": "class_word"},
]


def _best(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        t = time.process_time()
        n = fn()
        best = min(best, time.process_time() - t)
    return best, n


def _wds_to_sample(s: dict[str, Any]) -> dict[str, Any]:
    """A webdataset dict as our sample dict (what a trainer reading with webdataset would do)."""
    return {"__key__": s["__key__"], "__shard__": s.get("__url__", ""), "image": s.get("png"),
            "caption": s["txt"], "label": int(s["cls"]), "meta": s.get("json") or {}}


def bench_stream(root: Path, repeats: int, train_size: int) -> dict[str, Any]:
    """Raw reads and chained reads, interleaved so machine load hits both alike; best of each."""
    import webdataset as wds

    info = write_image_world(ImageWorldConfig(train_size=train_size, test_id_size=50, test_ood_size=50), root / "world")
    shards = info.splits["train"]

    def chain():
        return build_chain(CHAIN, study_seed=0, num_classes=info.num_classes, class_names=info.class_names)

    def wds_iter(decode: bool):
        ds = wds.WebDataset(shards, shardshuffle=False)
        return ds.decode("pil") if decode else ds.decode()

    out: dict[str, Any] = {"samples": train_size, "chain": CHAIN,
                           "method": f"process CPU time, interleaved, best of {repeats}"}
    for decode in (False, True):
        tag = "decoded" if decode else "bytes"
        runs: dict[str, Callable[[], int]] = {
            "wds_raw": lambda: sum(1 for _ in wds_iter(decode)),
            "wds_as_samples": lambda: sum(1 for _ in map(_wds_to_sample, wds_iter(decode))),
            "wds_through_chain": lambda: sum(1 for _ in chain().apply(map(_wds_to_sample, wds_iter(decode)))),
            "reader": lambda: sum(1 for _ in iter_samples(shards, decode=decode)),
            "reader_through_chain": lambda: sum(1 for _ in chain().apply(iter_samples(shards, decode=decode))),
        }
        best = {k: float("inf") for k in runs}
        for rep in range(repeats):
            # A fresh order each round: load drifts on a shared machine, and a fixed order
            # would charge the drift to whichever run comes last.
            names = list(runs)
            random.Random(rep).shuffle(names)
            for name in names:
                fn = runs[name]
                t = time.process_time()
                fn()
                best[name] = min(best[name], time.process_time() - t)
        # The chain's own CPU time per sample, on samples already in memory.
        mem = list(iter_samples(shards, decode=decode))
        t_chain_only, n_out = _best(lambda: sum(1 for _ in chain().apply(mem)), max(repeats, 5))
        n = train_size
        out[tag] = {
            **{f"{k}_samples_per_s": n / v for k, v in best.items()},
            "chain_cost_vs_wds_raw": 1 - best["wds_raw"] / best["wds_through_chain"],
            "chain_cost_vs_same_wds_read": 1 - best["wds_as_samples"] / best["wds_through_chain"],
            "chain_cost_vs_reader": 1 - best["reader"] / best["reader_through_chain"],
            "chain_only_us_per_sample": 1e6 * t_chain_only / n,
            "read_us_per_sample_wds": 1e6 * best["wds_raw"] / n,
            "chain_only_vs_wds_raw_read": t_chain_only / best["wds_raw"],
            "samples_out_of_chain": n_out,
        }
    return out


def _captions(n: int, near_fraction: float, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Distinct random captions plus planted near-duplicates (one word dropped)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20))) for _ in range(n)]
    caps = list(base)
    groups = []
    for i in rng.sample(range(n), int(near_fraction * n)):
        words = base[i].split()
        j = rng.randrange(len(words))
        caps.append(" ".join(words[:j] + words[j + 1 :]))
        groups.append([i, len(caps) - 1])
    return caps, groups


def bench_dedup(n: int, repeats: int, threshold: float = 0.7, num_perm: int = 128) -> dict[str, Any]:
    from datasketch import MinHash, MinHashLSH

    caps, groups = _captions(n, 0.1)
    keys = [f"c{i:07d}" for i in range(len(caps))]
    key_groups = [[keys[i] for i in g] for g in groups]
    samples = [{"__key__": k, "caption": c, "meta": {}} for k, c in zip(keys, caps)]

    def ours() -> tuple[int, list[str]]:
        step = Dedup(name="dedup", params={"method": "minhash", "field": "caption", "threshold": threshold,
                                           "num_perm": num_perm, "bands": 32, "ngram": 5, "max_distance": 6,
                                           "max_cos_distance": 0.04},
                     study_seed=0, num_classes=None, class_names=None)
        chunk = 1000  # one "shard" per 1000 samples, as the plan map sees them
        partials = [step.plan_map(samples[i : i + chunk]) for i in range(0, len(samples), chunk)]
        plan = step.plan_reduce(partials)
        return len(samples), plan["key"].to_list()

    def theirs() -> tuple[int, list[str]]:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        dropped = []
        for k, c in zip(keys, caps):
            m = MinHash(num_perm=num_perm)
            text = normalise_text(c)
            m.update_batch([text[i : i + 5].encode("utf-8") for i in range(max(1, len(text) - 4))])
            if lsh.query(m):  # a near-duplicate of something kept: drop it
                dropped.append(k)
            else:
                lsh.insert(k, m)
        return len(keys), dropped

    result: dict[str, Any] = {"captions": len(caps), "planted_near_duplicates": len(groups),
                              "threshold": threshold, "num_perm": num_perm, "shingles": "character 5-grams"}
    for name, fn in (("inheritlab_minhash_plan", ours), ("datasketch_minhash_lsh", theirs)):
        best, dropped = float("inf"), []
        for _ in range(repeats):
            t = time.process_time()
            count, dropped = fn()
            best = min(best, time.process_time() - t)
        q = dedup_quality(dropped, key_groups)
        result[name] = {"samples_per_s_per_core": count / best, "seconds": best, **q}
    result["speedup"] = (result["inheritlab_minhash_plan"]["samples_per_s_per_core"]
                         / result["datasketch_minhash_lsh"]["samples_per_s_per_core"])
    return result


def _versions() -> dict[str, str]:
    import datasketch
    import polars
    import webdataset

    return {"python": platform.python_version(), "numpy": np.__version__, "polars": polars.__version__,
            "webdataset": getattr(webdataset, "__version__", "?"), "datasketch": datasketch.__version__}


def _markdown(res: dict[str, Any]) -> str:
    s, d = res["stream"], res["dedup"]
    lines = [
        "# Corruptor benchmarks", "",
        f"{res['date']} · {res['device']} · {res['versions']}", "",
        "Rates are samples per CPU-second of the one measuring thread (best of interleaved runs).", "",
        f"## Stream cost ({s['samples']} world samples, chain: subsample + label noise + caption noise)", "",
        "| read | raw webdataset | webdataset → chain | chain cost | our reader | our reader → chain | chain cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag in ("bytes", "decoded"):
        r = s[tag]
        lines.append(
            f"| {tag} | {r['wds_raw_samples_per_s']:.0f}/s | {r['wds_through_chain_samples_per_s']:.0f}/s | "
            f"{r['chain_cost_vs_wds_raw']:.1%} | {r['reader_samples_per_s']:.0f}/s | "
            f"{r['reader_through_chain_samples_per_s']:.0f}/s | {r['chain_cost_vs_reader']:.1%} |")
    lines += ["", "Chain CPU alone (samples already in memory): "
              + ", ".join(f"{tag}: {s[tag]['chain_only_us_per_sample']:.1f} µs/sample = "
                          f"{s[tag]['chain_only_vs_wds_raw_read']:.1%} of a raw webdataset read"
                          for tag in ("bytes", "decoded"))]
    lines += ["", f"## Dedup plan: MinHash on {d['captions']} captions ({d['planted_near_duplicates']} planted near-dups,"
              f" threshold {d['threshold']}, {d['num_perm']} perms)", "",
              "| implementation | samples/s per core | precision | recall |", "|---|---|---|---|"]
    for name in ("inheritlab_minhash_plan", "datasketch_minhash_lsh"):
        r = d[name]
        lines.append(f"| {name} | {r['samples_per_s_per_core']:.0f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    lines += ["", f"Speed-up over datasketch: {d['speedup']:.1f}×", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "corruptors.json")
    args = ap.parse_args(argv)
    train, captions = (1000, 2000) if args.quick else (4000, 20000)
    # One thread: "per core" numbers, and the shared machine stays usable.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        stream = bench_stream(Path(tmp), args.repeats, train)
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), {platform.system()}",
        "versions": _versions(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "stream": stream,
        "dedup": bench_dedup(captions, args.repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(res))
    print(_markdown(res))
    return res


if __name__ == "__main__":
    main()
