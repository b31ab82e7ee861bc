"""The tuned launch configs persist on disk and are reused across processes (CPU only).

``pick_config`` is driven with a fake ``launch`` and a patched timing function, and the GPU is
faked by patching ``torch.cuda.get_device_name`` / ``get_device_capability``: nothing here needs
a GPU, and nothing here compiles a kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from inheritlab.kernels import _config_cache, _tuning
from inheritlab.kernels._tuning import chosen_configs, pick_config, tuning_records

CANDIDATES = [
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=256, BLOCK_N=128, BLOCK_D=64, num_warps=8, num_stages=2),
]
KEY = ("fake_fwd", torch.bfloat16, 1024, 1024, 512, True, torch.device("cuda", 0))
# Fake timings (ms): the third candidate is fastest.
TIMES = {0: 3.0, 1: 2.0, 2: 1.0, 3: 4.0}


class Timer:
    """Stands in for triton.testing.do_bench: counts calls, returns the fake time of a config."""

    def __init__(self, times: dict[int, float] | None = None) -> None:
        self.times = dict(TIMES if times is None else times)
        self.calls = 0

    def __call__(self, launch, cfg, *, warmup, rep):  # type: ignore[no-untyped-def]
        self.calls += 1
        launch(cfg)
        return self.times[CANDIDATES.index(cfg)]


class Launch:
    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []

    def __call__(self, cfg: dict[str, int]) -> None:
        self.calls.append(cfg)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache dir, a fake H100, tuning on, and an empty in-process cache."""
    d = tmp_path / "kcache"
    monkeypatch.setenv("INHERITLAB_KERNEL_CACHE_DIR", str(d))
    for var in ("TRITON_INTERPRET", "INHERITLAB_KERNEL_TUNING", "INHERITLAB_KERNEL_CACHE"):
        monkeypatch.delenv(var, raising=False)
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    monkeypatch.setattr(_tuning, "_CHOSEN", {})
    monkeypatch.setattr(_tuning, "_RECORDS", {})
    return d


def fake_gpu(monkeypatch: pytest.MonkeyPatch, name: str, cap: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)


def new_process() -> None:
    """What a new process starts with: an empty first level (the disk stays)."""
    _tuning._CHOSEN.clear()
    _tuning._RECORDS.clear()


def entries(d: Path) -> list[Path]:
    return sorted(d.glob("*.json")) if d.exists() else []


def tune(monkeypatch: pytest.MonkeyPatch, times: dict[int, float] | None = None,
         key: tuple = KEY, candidates: list[dict[str, int]] = CANDIDATES) -> tuple[dict[str, int], Timer, Launch]:
    timer, launch = Timer(times), Launch()
    monkeypatch.setattr(_tuning, "_measure", timer)
    return pick_config(key, candidates, launch), timer, launch


# (1) ------------------------------------------------------------------------------------------

def test_second_process_reads_the_disk_entry_and_times_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, timer, launch = tune(monkeypatch)
    assert cfg == CANDIDATES[2]
    assert len(launch.calls) == timer.calls == len(CANDIDATES) + 3  # the sweep, then the three finalists again
    [path] = entries(cache)
    rec = json.loads(path.read_text())
    assert rec["config"] == CANDIDATES[2]
    assert rec["key"]["key"] == ["fake_fwd", "torch.bfloat16", 1024, 1024, 512, True, {"device": "cuda"}]
    assert rec["key"]["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}]
    assert rec["key"]["kernel_config_version"] == _tuning.KERNEL_CONFIG_VERSION
    assert rec["key"]["torch"] == torch.__version__
    # When and with what timing: for the benchmarks' records.
    assert rec["tuned_at"] and rec["host"] and rec["best_ms"] == 1.0
    assert [t["sweep_ms"] for t in rec["timings"]] == [3.0, 2.0, 1.0, 4.0]
    assert tuning_records()[KEY]["source"] == "tuned"

    new_process()
    # Same answer even though the timings now favour another config: it was read, not measured.
    cfg2, timer2, launch2 = tune(monkeypatch, times={0: 0.1, 1: 2.0, 2: 1.0, 3: 4.0})
    assert cfg2 == CANDIDATES[2]
    assert timer2.calls == 0 and launch2.calls == []
    assert chosen_configs() == {KEY: CANDIDATES[2]}
    rec2 = tuning_records()[KEY]
    assert rec2["source"] == "disk" and rec2["path"] == str(path) and rec2["best_ms"] == 1.0

    # The third call is served by the in-process dict: the disk is not read again.
    monkeypatch.setattr(_config_cache, "load", lambda key: pytest.fail("read the disk again"))
    assert tune(monkeypatch)[0] == CANDIDATES[2]


def test_a_real_second_process_reuses_the_entry(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tune(monkeypatch)
    child = f"""
import torch
from inheritlab.kernels import _tuning
torch.cuda.get_device_name = lambda device=None: "NVIDIA H100 80GB HBM3"
torch.cuda.get_device_capability = lambda device=None: (9, 0)
def no_timing(*a, **k):
    raise SystemExit("timed in the second process")
_tuning._measure = no_timing
cands = {CANDIDATES!r}
key = ("fake_fwd", torch.bfloat16, 1024, 1024, 512, True, torch.device("cuda", 0))
print(cands.index(_tuning.pick_config(key, cands, lambda cfg: None)))
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "INHERITLAB_KERNEL_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


# (2) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["device_name", "capability", "triton", "torch", "kernel_version",
                                    "candidates", "dtype", "shape"])
def test_another_gpu_or_stack_does_not_reuse_the_entry(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                       change: str) -> None:
    tune(monkeypatch)
    assert len(entries(cache)) == 1
    new_process()
    key, cands = KEY, CANDIDATES
    if change == "device_name":
        fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (9, 0))
    elif change == "capability":
        fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (8, 0))
    elif change == "triton":
        import triton

        monkeypatch.setattr(triton, "__version__", "0.0.0-other")
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    elif change == "kernel_version":
        monkeypatch.setattr(_tuning, "KERNEL_CONFIG_VERSION", _tuning.KERNEL_CONFIG_VERSION + 1)
    elif change == "candidates":
        cands = CANDIDATES + [dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=32, num_warps=2, num_stages=2)]
    elif change == "dtype":
        key = KEY[:1] + (torch.float32,) + KEY[2:]
    elif change == "shape":
        key = KEY[:2] + (2048,) + KEY[3:]
    times = {0: 0.5, 1: 2.0, 2: 1.0, 3: 4.0, 4: 9.0}
    cfg, timer, _ = tune(monkeypatch, times=times, key=key, candidates=cands)
    assert timer.calls > 0  # measured again, not reused
    assert cfg == CANDIDATES[0]
    assert len(entries(cache)) == 2  # its own entry; the other GPU's/stack's one is kept


def test_the_device_index_is_not_part_of_the_disk_key(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tune(monkeypatch)
    new_process()
    cfg, timer, _ = tune(monkeypatch, key=KEY[:-1] + (torch.device("cuda", 3),))
    assert cfg == CANDIDATES[2] and timer.calls == 0  # same GPU type on another index of the node


def test_without_a_gpu_identity_nothing_is_persisted(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(device=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("no CUDA")

    monkeypatch.setattr(torch.cuda, "get_device_name", broken)
    cfg, timer, _ = tune(monkeypatch)
    assert cfg == CANDIDATES[2] and timer.calls > 0
    assert entries(cache) == []
    cfg, timer, _ = tune(monkeypatch, key=KEY[:-1])  # no device in the key: cannot tie it to a GPU
    assert timer.calls > 0 and entries(cache) == []


# (3) ------------------------------------------------------------------------------------------

def _foreign_key(rec: dict) -> dict:
    return {**rec, "key": {**rec["key"], "key": ["other_kernel"]}}


CORRUPTIONS = {
    "garbage": lambda path, rec: path.write_bytes(b"\x00\xff not json"),
    "empty": lambda path, rec: path.write_bytes(b""),
    "truncated": lambda path, rec: path.write_text(json.dumps(rec)[:40]),
    "not_an_object": lambda path, rec: path.write_text("[1, 2, 3]"),
    "foreign_key": lambda path, rec: path.write_text(json.dumps(_foreign_key(rec))),
    "unknown_format": lambda path, rec: path.write_text(json.dumps({**rec, "format": 999})),
    "config_not_a_candidate": lambda path, rec: path.write_text(json.dumps({**rec, "config": {"BLOCK_M": 7}})),
    "config_wrong_types": lambda path, rec: path.write_text(json.dumps({**rec, "config": {"BLOCK_M": "128"}})),
    "config_missing": lambda path, rec: path.write_text(json.dumps({k: v for k, v in rec.items() if k != "config"})),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_file_is_ignored_and_replaced(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                corruption: str) -> None:
    tune(monkeypatch, times={0: 0.5, 1: 2.0, 2: 1.0, 3: 4.0})  # stored: candidate 0
    [path] = entries(cache)
    CORRUPTIONS[corruption](path, json.loads(path.read_text()))
    new_process()
    cfg, timer, _ = tune(monkeypatch)  # now candidate 2 measures fastest
    assert timer.calls > 0, "a corrupt entry was used instead of re-tuning"
    assert cfg == CANDIDATES[2]
    [again] = entries(cache)
    assert again == path
    rec = json.loads(path.read_text())  # overwritten with a valid entry
    assert rec["config"] == CANDIDATES[2] and rec["key"]["key"][0] == "fake_fwd"
    new_process()
    assert tune(monkeypatch)[1].calls == 0


def test_an_unwritable_cache_is_a_warning_not_an_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("a file where the directory should be")
    with pytest.warns(RuntimeWarning, match="could not save the tuned launch config"):
        cfg, timer, _ = tune(monkeypatch)
    assert cfg == CANDIDATES[2] and timer.calls > 0
    assert tuning_records()[KEY]["path"] is None


def test_a_directory_in_place_of_the_entry_is_a_miss(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tune(monkeypatch)
    [path] = entries(cache)
    path.unlink()
    path.mkdir()
    new_process()
    with pytest.warns(RuntimeWarning):
        cfg, timer, _ = tune(monkeypatch)
    assert cfg == CANDIDATES[2] and timer.calls > 0


# (4) ------------------------------------------------------------------------------------------

def _record(i: int) -> dict:
    # Big enough that a non-atomic write would be caught half-done by the reader.
    return {"config": CANDIDATES[i % len(CANDIDATES)], "writer": i, "padding": "x" * 200_000}


def test_concurrent_writers_leave_a_valid_file_and_readers_never_see_a_torn_one(cache: Path) -> None:
    disk_key = _tuning._disk_key(KEY, CANDIDATES)
    assert disk_key is not None
    path = _config_cache.entry_path(disk_key)
    writers, rounds = 8, 15
    start = threading.Barrier(writers + 1)
    stop = threading.Event()
    bad: list[str] = []

    def write(i: int) -> None:
        start.wait()
        for _ in range(rounds):
            assert _config_cache.store(disk_key, _record(i)) == path

    def read() -> None:
        start.wait()
        while not stop.is_set():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(raw)
            except ValueError:
                bad.append(f"torn read of {len(raw)} bytes")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    reader = threading.Thread(target=read)
    for t in threads + [reader]:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    assert bad == []
    rec = _config_cache.load(disk_key)
    assert rec is not None and rec == {**_record(rec["writer"]), "format": _config_cache.FORMAT,
                                       "key": disk_key, "path": str(path)}
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp files left behind


def test_concurrent_processes_tuning_one_key(cache: Path) -> None:
    """Several processes tune the same key at once, each measuring a different winner: the file
    left is one of their entries, whole, and every process got a config."""
    child = f"""
import sys, torch
from inheritlab.kernels import _tuning
torch.cuda.get_device_name = lambda device=None: "NVIDIA H100 80GB HBM3"
torch.cuda.get_device_capability = lambda device=None: (9, 0)
cands = {CANDIDATES!r}
me = int(sys.argv[1])
_tuning._measure = lambda launch, cfg, **kw: 0.5 if cands.index(cfg) == me else 2.0
key = ("fake_fwd", torch.bfloat16, 1024, 1024, 512, True, torch.device("cuda", 0))
for _ in range(10):  # a fresh first level each time; force re-tuning by skipping the disk read
    _tuning._CHOSEN.clear()
    _tuning._config_cache.load = lambda key: None
    assert _tuning.pick_config(key, cands, lambda cfg: None) == cands[me]
"""
    env = {**os.environ, "INHERITLAB_KERNEL_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", child, str(i)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    [path] = entries(cache)
    assert [p.name for p in cache.iterdir()] == [path.name]
    rec = _config_cache.load(_tuning._disk_key(KEY, CANDIDATES))
    assert rec is not None and rec["config"] in CANDIDATES


# (5) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["interpreter", "tuning_off", "single_candidate", "cache_off"])
def test_untimed_choices_and_a_disabled_cache_write_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                            path: str) -> None:
    cands = CANDIDATES
    if path == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif path == "tuning_off":
        monkeypatch.setenv("INHERITLAB_KERNEL_TUNING", "0")
    elif path == "single_candidate":
        cands = CANDIDATES[2:3]
    elif path == "cache_off":
        monkeypatch.setenv("INHERITLAB_KERNEL_CACHE", "0")
    cfg, timer, _ = tune(monkeypatch, candidates=cands)
    assert entries(cache) == [] and not cache.exists()
    if path == "cache_off":
        assert cfg == CANDIDATES[2] and timer.calls > 0  # still measured, just not stored
    else:
        assert timer.calls == 0
        assert cfg == cands[0]
        assert KEY not in tuning_records()


@pytest.mark.parametrize("path", ["interpreter", "tuning_off", "cache_off"])
def test_untimed_choices_and_a_disabled_cache_do_not_read_the_disk(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   path: str) -> None:
    tune(monkeypatch, times={0: 3.0, 1: 0.5, 2: 1.0, 3: 4.0})  # stored: candidate 1
    new_process()
    monkeypatch.setenv({"interpreter": "TRITON_INTERPRET", "tuning_off": "INHERITLAB_KERNEL_TUNING",
                        "cache_off": "INHERITLAB_KERNEL_CACHE"}[path], "1" if path == "interpreter" else "0")
    cfg, timer, _ = tune(monkeypatch)
    assert cfg == (CANDIDATES[2] if path == "cache_off" else CANDIDATES[0])
    assert (timer.calls > 0) == (path == "cache_off")


# (6) ------------------------------------------------------------------------------------------

def test_the_env_var_moves_the_directory(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "run_a" / "kernels", tmp_path / "run_b" / "kernels"
    monkeypatch.setenv("INHERITLAB_KERNEL_CACHE_DIR", str(a))
    tune(monkeypatch)
    assert len(entries(a)) == 1 and not b.exists() and not cache.exists()
    new_process()
    monkeypatch.setenv("INHERITLAB_KERNEL_CACHE_DIR", str(b))
    timer = tune(monkeypatch)[1]
    assert timer.calls > 0  # run_a's entry is not seen from run_b
    assert [p.name for p in entries(b)] == [p.name for p in entries(a)]


def test_default_directory_is_under_home_cache(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INHERITLAB_KERNEL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _config_cache.cache_dir() == tmp_path / "home" / ".cache" / "inheritlab" / "kernels"
    tune(monkeypatch)
    assert len(entries(tmp_path / "home" / ".cache" / "inheritlab" / "kernels")) == 1
    assert not cache.exists()


def test_entry_file_name_is_a_stable_hash_of_the_key(cache: Path) -> None:
    k = _tuning._disk_key(KEY, CANDIDATES)
    assert k is not None
    shuffled = dict(reversed(list(k.items())))  # order of the mapping does not matter
    assert _config_cache.entry_path(shuffled) == _config_cache.entry_path(k)
    name = _config_cache.entry_path(k).name
    assert name.startswith("fake_fwd-") and name.endswith(".json") and len(name) == len("fake_fwd-") + 32 + 5
