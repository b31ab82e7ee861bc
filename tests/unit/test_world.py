"""The built-in image world: deterministic bytes, atomic idempotent writes, class profile, OOD shift."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from inheritlab.corruptors.shards import iter_samples, write_shards
from inheritlab.corruptors.world import (
    ID_COLOURS,
    OOD_COLOURS,
    ImageWorldConfig,
    class_names_for,
    load_world_info,
    write_image_world,
)
from inheritlab.infra.errors import ShardError, SpecError

SMALL = ImageWorldConfig(seed=3, num_classes=6, train_size=240, test_id_size=60, test_ood_size=60, samples_per_shard=50)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_image_world(SMALL, tmp_path_factory.mktemp("w") / "world")


def test_layout_and_world_json(world):
    root = world.root
    assert world.num_classes == 6 and world.class_names == class_names_for(6)
    assert len(world.splits["train"]) == 5  # 240 / 50 rounded up
    assert all(Path(p).is_file() for ps in world.splits.values() for p in ps)
    data = json.loads((root / "world.json").read_text())
    assert data["config"]["seed"] == 3 and data["class_names"] == world.class_names
    assert all("{}" in t for t in data["prompt_templates"])
    again = load_world_info(root)
    assert again.splits == world.splits and again.class_names == world.class_names


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    other = write_image_world(SMALL, tmp_path / "again")
    for a, b in zip(world.splits["train"], other.splits["train"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    reseeded = ImageWorldConfig(**{**SMALL.__dict__, "seed": 4})
    diff = write_image_world(reseeded, tmp_path / "diff")
    assert Path(diff.splits["train"][0]).read_bytes() != Path(world.splits["train"][0]).read_bytes()


def test_reuse_when_config_matches_and_rebuild_when_not(tmp_path):
    cfg = ImageWorldConfig(num_classes=3, train_size=40, test_id_size=20, test_ood_size=20, samples_per_shard=20)
    info = write_image_world(cfg, tmp_path / "w")
    stamp = Path(info.splits["train"][0]).stat().st_mtime_ns
    write_image_world(cfg, tmp_path / "w")
    assert Path(info.splits["train"][0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    bigger = ImageWorldConfig(**{**cfg.__dict__, "train_size": 60})
    info2 = write_image_world(bigger, tmp_path / "w")
    assert sum(1 for _ in iter_samples(info2.splits["train"])) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ShardError, match="not empty"):
        write_image_world(SMALL, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_samples_keys_captions_and_domains(world):
    train = list(iter_samples(world.splits["train"]))
    ood = list(iter_samples(world.splits["test_ood"]))
    keys = [s["__key__"] for s in train]
    assert len(set(keys)) == 240 and not any("." in k for k in keys)
    for s in train[:50]:
        assert s["image"].size == (32, 32) and s["image"].mode == "RGB"
        assert world.class_names[s["label"]] in s["caption"]
        assert s["meta"]["class_name"] == world.class_names[s["label"]] and s["meta"]["domain"] == "id"
    assert {s["meta"]["colour"] for s in train} <= set(ID_COLOURS)
    assert {s["meta"]["colour"] for s in ood} <= set(OOD_COLOURS)
    assert {s["meta"]["domain"] for s in ood} == {"ood"}
    assert Counter(s["label"] for s in train) == Counter({c: 40 for c in range(6)})


def test_imbalance_is_zipf_in_train_only(tmp_path):
    cfg = ImageWorldConfig(num_classes=5, train_size=300, test_id_size=50, test_ood_size=50, samples_per_shard=100,
                           imbalance=1.0)
    info = write_image_world(cfg, tmp_path / "w")
    counts = Counter(s["label"] for s in iter_samples(info.splits["train"], decode=False))
    assert [counts[c] for c in range(5)] == sorted(counts.values(), reverse=True)
    assert counts[0] / counts[4] == pytest.approx(5.0, rel=0.05)
    test = Counter(s["label"] for s in iter_samples(info.splits["test_id"], decode=False))
    assert set(test.values()) == {10}


def test_classes_are_visually_distinct(world):
    # Mean foreground masks per class differ: a cheap proxy that shapes are not interchangeable.
    import numpy as np

    sums: dict[int, np.ndarray] = {}
    for s in iter_samples(world.splits["train"]):
        arr = np.asarray(s["image"], dtype=np.float32).std(axis=2)
        sums.setdefault(s["label"], np.zeros_like(arr))
        sums[s["label"]] += arr
    means = [sums[c] / np.abs(sums[c]).sum() for c in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert np.abs(means[i] - means[j]).sum() > 0.05


def test_bad_config_names_field():
    with pytest.raises(SpecError, match="num_classes"):
        ImageWorldConfig(num_classes=1)
    with pytest.raises(SpecError, match="imbalance"):
        ImageWorldConfig(imbalance=-1.0)


def test_load_world_info_user_shards(tmp_path):
    samples = [{"__key__": f"{i:09d}", "image": b"\xff\xd8fakejpg", "image_ext": "jpg", "caption": f"c {i}",
                "label": -1, "meta": {"url": "http://x", "status": "success"}} for i in range(5)]
    write_shards(samples, tmp_path / "img2ds", samples_per_shard=2, prefix="")
    info = load_world_info(tmp_path / "img2ds")
    assert info.num_classes == 0 and info.class_names == [] and len(info.splits["train"]) == 3
    with tarfile.open(info.splits["train"][0]) as tar:
        assert sorted(tar.getnames()) == ["000000000.jpg", "000000000.json", "000000000.txt",
                                          "000000001.jpg", "000000001.json", "000000001.txt"]


def test_load_world_info_errors_name_the_dir(tmp_path):
    with pytest.raises(ShardError, match="does not exist") as e:
        load_world_info(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no .tar shards"):
        load_world_info(tmp_path / "empty")


def test_load_world_info_user_split_dirs(tmp_path):
    samples = [{"__key__": f"k{i}", "image": b"\x89PNGfake", "image_ext": "png", "caption": "c", "meta": {}}
               for i in range(3)]
    write_shards(samples, tmp_path / "mine" / "train", samples_per_shard=2)
    write_shards(samples, tmp_path / "mine" / "test_id", samples_per_shard=5)
    info = load_world_info(tmp_path / "mine")
    assert sorted(info.splits) == ["test_id", "train"] and len(info.splits["train"]) == 2
    assert info.num_classes == 0 and "{}" in info.prompt_templates[0]


# ----------------------------------------------------------------------------------- size and format


def _pixels_digest(info) -> str:
    """The decoded pixels, keys, captions and labels of every split (encoder-version proof)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for split in ("train", "test_id", "test_ood"):
        for s in iter_samples(info.splits[split]):
            h.update(np.asarray(s["image"], dtype=np.uint8).tobytes())
            h.update(f'{s["__key__"]}|{s["caption"]}|{s["label"]}|'.encode())
    return h.hexdigest()


def test_a_32px_png_world_is_what_it_always_was(tmp_path):
    # Every shape and pattern, both domains, Zipf train: the digest was taken before the world
    # learnt other sizes and formats (rendering in chunks, JPEG). Changing it changes every
    # CPU study's data under unchanged cell ids.
    cfg = ImageWorldConfig(seed=5, num_classes=64, train_size=128, test_id_size=16, test_ood_size=48,
                           samples_per_shard=64, imbalance=0.5)
    info = write_image_world(cfg, tmp_path / "w")
    assert _pixels_digest(info) == "6d37b61aab9a9dde91183f860be996f8e2090c63a772506be6e6e6430ed352b0"
    with tarfile.open(info.splits["train"][0]) as tar:
        assert {n.rsplit(".", 1)[1] for n in tar.getnames()} == {"png", "txt", "cls", "json"}


def test_render_chunks_do_not_change_bytes(monkeypatch):
    # Chunking bounds memory; the random stream (noisy backgrounds included) is read as if the
    # split were drawn at once, so the bytes cannot depend on the chunk size.
    from inheritlab.corruptors import world as world_mod

    cfg = ImageWorldConfig(seed=1, num_classes=8, train_size=16, test_id_size=16, test_ood_size=37)
    names = class_names_for(8)
    whole = world_mod._render_split(cfg, "test_ood", 37, names)
    monkeypatch.setattr(world_mod, "_CHUNK_PIXELS", 3 * 4 * 32 * 32)  # 3 samples a chunk
    chunked = world_mod._render_split(cfg, "test_ood", 37, names)
    assert [s["image"] for s in chunked] == [s["image"] for s in whole]
    assert [s["caption"] for s in chunked] == [s["caption"] for s in whole]


def test_jpeg_world_at_224_px_decodes_at_size_and_is_deterministic(tmp_path):
    from PIL import Image, JpegImagePlugin

    cfg = ImageWorldConfig(seed=2, num_classes=4, image_size=224, image_format="jpeg", train_size=12,
                           test_id_size=4, test_ood_size=8, samples_per_shard=8)
    info = write_image_world(cfg, tmp_path / "a")
    again = write_image_world(cfg, tmp_path / "b")
    for split in ("train", "test_id", "test_ood"):
        for a, b in zip(info.splits[split], again.splits[split], strict=True):
            assert Path(a).read_bytes() == Path(b).read_bytes()
    with tarfile.open(info.splits["train"][0]) as tar:
        jpgs = [m for m in tar.getnames() if m.endswith(".jpg")]
        assert len(jpgs) == 8 and not [m for m in tar.getnames() if m.endswith(".png")]
        data = tar.extractfile(jpgs[0]).read()
    im = Image.open(__import__("io").BytesIO(data))
    assert im.format == "JPEG" and im.size == (224, 224)
    assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0, as img2dataset writes
    for s in iter_samples(info.splits["test_ood"]):
        assert s["image"].size == (224, 224) and s["image_ext"] == "jpg"
    meta = json.loads((info.root / "world.json").read_text())
    assert meta["config"]["image_format"] == "jpeg" and meta["config"]["image_size"] == 224
    assert meta["image_ext"] == "jpg"
    # Another format is another world: the directory is rebuilt, not reused.
    png = write_image_world(ImageWorldConfig(**{**cfg.__dict__, "image_format": "png"}), tmp_path / "a")
    with tarfile.open(png.splits["train"][0]) as tar:
        assert any(m.endswith(".png") for m in tar.getnames())


def test_world_json_from_before_formats_is_reused(tmp_path):
    cfg = ImageWorldConfig(num_classes=3, train_size=20, test_id_size=10, test_ood_size=10, samples_per_shard=20)
    info = write_image_world(cfg, tmp_path / "w")
    meta = json.loads((info.root / "world.json").read_text())
    del meta["config"]["image_format"]
    (info.root / "world.json").write_text(json.dumps(meta))
    stamp = Path(info.splits["train"][0]).stat().st_mtime_ns
    write_image_world(cfg, tmp_path / "w")
    assert Path(info.splits["train"][0]).stat().st_mtime_ns == stamp  # a PNG world: reused
    jpeg = ImageWorldConfig(**{**cfg.__dict__, "image_format": "jpeg"})
    write_image_world(jpeg, tmp_path / "w")
    assert json.loads((info.root / "world.json").read_text())["config"]["image_format"] == "jpeg"


def test_image_format_rule_and_bad_format():
    from inheritlab.corruptors.world import image_format_for

    assert [image_format_for(s) for s in (16, 32, 64, 65, 224, 512)] == ["png"] * 3 + ["jpeg"] * 3
    with pytest.raises(SpecError, match="image_format"):
        ImageWorldConfig(image_format="webp")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="image_size"):
        ImageWorldConfig(image_size=None)  # type: ignore[arg-type]
