"""The plan pass through Ray tasks gives the same plans and counters as in-process."""

from __future__ import annotations

import polars as pl
import pytest

from inheritlab.corruptors.chain import condition_data
from inheritlab.corruptors.world import ImageWorldConfig, write_image_world

ray = pytest.importorskip("ray")


@pytest.mark.slow  # starting Ray costs ~10-30 s on 2 shared cores
def test_ray_plan_pass_matches_in_process(tmp_path):
    info = write_image_world(ImageWorldConfig(num_classes=4, train_size=300, test_id_size=40, test_ood_size=20,
                                              samples_per_shard=60), tmp_path / "w")
    specs = [{"type": "duplicate", "level": 0.1}, {"type": "dedup", "method": "exact"},
             {"type": "label_noise", "level": 0.3, "count": "exact"}, {"type": "contamination", "level": 0.2}]
    kw = dict(study_seed=3, num_classes=4, class_names=info.class_names)
    local = condition_data(info.splits["train"], specs, out_dir=tmp_path / "local", **kw)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, namespace="inheritlab-test")
    try:
        remote = condition_data(info.splits["train"], specs, out_dir=tmp_path / "ray", **kw)
    finally:
        if started:
            ray.shutdown()
    assert remote == local
    for name in ("plan-dedup.parquet", "plan-label_noise.parquet", "plan-contamination.parquet", "manifest.parquet"):
        assert pl.read_parquet(tmp_path / "ray" / name).equals(pl.read_parquet(tmp_path / "local" / name))
