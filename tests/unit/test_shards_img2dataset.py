"""Shards written by the real img2dataset tool (images served on loopback) go through the chain.

img2dataset pins an old webdataset, so it usually lives in its own environment: the test finds
its command through ``INHERITLAB_IMG2DATASET`` (a path) or on ``PATH``, and skips without it.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import threading

import pytest

from inheritlab.corruptors.chain import condition_data
from inheritlab.corruptors.shards import ReadStats, iter_samples, list_shards
from inheritlab.corruptors.world import ImageWorldConfig, load_world_info, write_image_world

TOOL = os.environ.get("INHERITLAB_IMG2DATASET") or shutil.which("img2dataset")
# No update checks or telemetry from the tool's dependencies: tests run offline.
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
pytestmark = pytest.mark.skipif(not TOOL, reason="img2dataset is not installed (set INHERITLAB_IMG2DATASET)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture()
def served(tmp_path):
    """World images as files on a loopback HTTP server, plus a 404 and a non-image."""
    world = write_image_world(ImageWorldConfig(num_classes=4, train_size=40, test_id_size=8, test_ood_size=8,
                                               samples_per_shard=40), tmp_path / "world")
    www = tmp_path / "www"
    www.mkdir()
    rows = []
    for s in iter_samples(world.splits["train"]):
        name = f"{s['__key__']}.jpg"
        buf = io.BytesIO()
        s["image"].save(buf, format="JPEG", quality=95)
        (www / name).write_bytes(buf.getvalue())
        rows.append((name, s["caption"]))
    (www / "broken.jpg").write_bytes(b"this is not an image")
    rows += [("missing.jpg", "a file that is not there"), ("broken.jpg", "bytes that do not decode")]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    csv = tmp_path / "urls.csv"
    csv.write_text("url,caption\n" + "".join(f'{base}/{n},"{c}"\n' for n, c in rows))
    yield csv, len(rows) - 2
    server.shutdown()


def test_img2dataset_shards_through_the_chain(served, tmp_path):
    csv, n_good = served
    out = tmp_path / "i2d"
    cmd = [TOOL, "--url_list", str(csv), "--input_format", "csv", "--url_col", "url", "--caption_col", "caption",
           "--output_format", "webdataset", "--output_folder", str(out), "--image_size", "32",
           "--resize_mode", "border", "--processes_count", "1", "--thread_count", "4", "--number_sample_per_shard",
           "20", "--enable_wandb", "False", "--timeout", "5", "--retries", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=50, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    shards = list_shards(out)
    info = load_world_info(out)
    assert info.num_classes == 0 and info.class_names == [] and info.splits["train"] == shards
    stats = ReadStats()
    samples = list(iter_samples(shards, stats=stats, bad_sample_ceiling=5))
    failed = sum(json.loads(p.read_text())["failed_to_download"] + json.loads(p.read_text())["failed_to_resize"]
                 for p in out.glob("*_stats.json"))
    assert len(samples) == n_good and failed == 2 and stats.skipped_total == 0
    s = samples[0]
    assert s["label"] == -1 and s["image"].size == (32, 32) and s["meta"]["status"] == "success"
    assert s["caption"] and "." not in s["__key__"]
    specs = [{"type": "caption_noise", "level": 0.5, "mode": "swap"}, {"type": "dedup", "method": "exact"},
             {"type": "duplicate", "level": 0.2}]
    counters = condition_data(shards, specs, study_seed=0, out_dir=tmp_path / "cond", num_classes=None,
                              class_names=None, bad_sample_ceiling=5)
    assert counters["balanced"] and counters["source"]["samples"] == n_good
    assert counters["corruptors"]["caption_noise"]["touched"] > 5


def test_img2dataset_shard_with_a_bad_member_is_counted(served, tmp_path):
    # The same shards with one image replaced by junk: skipped, counted, named.
    csv, n_good = served
    out = tmp_path / "i2d"
    cmd = [TOOL, "--url_list", str(csv), "--input_format", "csv", "--url_col", "url", "--caption_col", "caption",
           "--output_format", "webdataset", "--output_folder", str(out), "--image_size", "32",
           "--processes_count", "1", "--thread_count", "4", "--enable_wandb", "False", "--retries", "0"]
    assert subprocess.run(cmd, capture_output=True, timeout=50, env=ENV).returncode == 0
    import tarfile

    shard = list_shards(out)[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    victim = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = b"junk" if m.name == victim else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    stats = ReadStats()
    got = list(iter_samples([shard], stats=stats, bad_sample_ceiling=1))
    assert len(got) == n_good - 1 and stats.skipped == {"undecodable_image": 1} and victim in stats.problems[0]
