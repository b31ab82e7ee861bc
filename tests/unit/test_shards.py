"""Shard I/O: listing, splitting, round-trips, and every kind of bad shard named or counted."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from inheritlab.corruptors.shards import ReadStats, iter_samples, list_shards, split_shards, write_shards
from inheritlab.infra.errors import BadSampleCeilingError, ShardError


def _png(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n: int, start: int = 0) -> list[dict]:
    return [{"__key__": f"s{i:05d}", "image": _png(), "image_ext": "png", "caption": f"a red square {i}",
             "label": i % 3, "meta": {"i": i}} for i in range(start, start + n)]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _good(key: str) -> list[tuple[str, bytes]]:
    return [(f"{key}.png", _png()), (f"{key}.txt", b"a caption"), (f"{key}.cls", b"1")]


def test_roundtrip_and_deterministic_bytes(tmp_path):
    paths = write_shards(_samples(7), tmp_path / "a", samples_per_shard=3)
    again = write_shards(_samples(7), tmp_path / "b", samples_per_shard=3)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    stats = ReadStats()
    got = list(iter_samples(list_shards(tmp_path / "a"), stats=stats))
    assert [s["__key__"] for s in got] == [f"s{i:05d}" for i in range(7)]
    assert got[4]["caption"] == "a red square 4" and got[4]["label"] == 1 and got[4]["meta"] == {"i": 4}
    assert got[0]["image"].mode == "RGB" and got[0]["__shard__"] == str(paths[0])
    raw = next(iter_samples([str(paths[0])], decode=False))
    assert isinstance(raw["image"], bytes) and raw["image"].startswith(b"\x89PNG")
    assert stats.samples == 7 and stats.shards == 3 and stats.skipped_total == 0


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    paths = write_shards(_samples(4), tmp_path, samples_per_shard=4)
    keys = [s["__key__"] for s in wds.WebDataset([str(p) for p in paths], shardshuffle=False)]
    assert keys == [f"s{i:05d}" for i in range(4)]


def test_list_shards_dir_glob_brace_and_errors(tmp_path):
    write_shards(_samples(6), tmp_path, samples_per_shard=2)
    expect = [str(tmp_path / f"shard-{i:06d}.tar") for i in range(3)]
    assert list_shards(tmp_path) == expect
    assert list_shards(str(tmp_path / "shard-*.tar")) == expect
    assert list_shards(str(tmp_path / "shard-{000000..000002}.tar")) == expect
    with pytest.raises(ShardError, match="does not exist") as e:
        list_shards(tmp_path / "missing")
    assert "missing" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no .tar shards"):
        list_shards(tmp_path / "empty")
    with pytest.raises(ShardError, match="do not exist"):
        list_shards(str(tmp_path / "shard-{000000..000005}.tar"))


def test_split_shards_partitions_deterministically():
    shards = [f"/d/shard-{i:06d}.tar" for i in range(11)]
    parts = [split_shards(list(reversed(shards)), rank=r, world_size=2, worker_id=w, num_workers=3)
             for r in range(2) for w in range(3)]
    flat = sorted(s for p in parts for s in p)
    assert flat == shards  # every shard exactly once
    assert parts[0] == ["/d/shard-000000.tar", "/d/shard-000006.tar"]
    with pytest.raises(ValueError, match="rank"):
        split_shards(shards, rank=2, world_size=2)


def test_truncated_tar_names_shard_and_member(tmp_path):
    p = _tar(tmp_path / "t.tar", _good("a") + _good("b") + _good("c"))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError) as e:
        list(iter_samples([str(p)]))
    assert str(p) in str(e.value) and "truncated" in str(e.value) and e.value.member is not None


def test_zero_byte_shard_file(tmp_path):
    (tmp_path / "z.tar").write_bytes(b"")
    with pytest.raises(ShardError, match="zero-byte shard"):
        list(iter_samples([str(tmp_path / "z.tar")]))


@pytest.mark.parametrize(
    "members, member, reason",
    [
        ([("b.png", b""), ("b.txt", b"x")], "b.png", "empty_member"),
        ([("b.png", b"not an image"), ("b.txt", b"x")], "b.png", "undecodable_image"),
        ([("b.png", _png()), ("b.cls", b"2")], "b.txt", "missing_caption"),
        ([("b.1.png", _png()), ("b.1.txt", b"x")], "b.1.png", "dotted_key"),
        ([("b.png", _png()), ("b.txt", b"x"), ("b.cls", b"two")], "b.cls", "bad_label"),
    ],
)
def test_bad_sample_named_then_skipped_and_counted(tmp_path, members, member, reason):
    p = _tar(tmp_path / "bad.tar", _good("a") + members + _good("c"))
    with pytest.raises(ShardError) as e:
        list(iter_samples([str(p)]))
    assert e.value.shard == str(p) and e.value.member == member
    stats = ReadStats()
    keys = [s["__key__"] for s in iter_samples([str(p)], bad_sample_ceiling=1, stats=stats)]
    assert keys == ["a", "c"]
    assert stats.skipped == {reason: 1} and member in stats.problems[0] and str(p) in stats.problems[0]


def test_ceiling_count_and_fraction(tmp_path):
    members = _good("a") + [("b.png", b"junk"), ("b.txt", b"x")] + [("c.png", b"junk"), ("c.txt", b"x")] + _good("d")
    p = _tar(tmp_path / "bad.tar", members)
    with pytest.raises(BadSampleCeilingError, match="undecodable_image"):
        list(iter_samples([str(p)], bad_sample_ceiling=1))
    assert len(list(iter_samples([str(p)], bad_sample_ceiling=2))) == 2
    with pytest.raises(BadSampleCeilingError, match="ceiling"):
        list(iter_samples([str(p)], bad_sample_ceiling=0.25))  # 2 of 4 bad
    assert len(list(iter_samples([str(p)], bad_sample_ceiling=0.5))) == 2


def test_undecodable_image_passes_without_decode(tmp_path):
    # The data-condition pass reads bytes only; decoding (and its check) happens in the trainer.
    p = _tar(tmp_path / "x.tar", [("b.png", b"junk"), ("b.txt", b"x")])
    assert len(list(iter_samples([str(p)], decode=False))) == 1


def test_write_rejects_dotted_key(tmp_path):
    with pytest.raises(ValueError, match="dot"):
        write_shards([{"__key__": "a.b", "caption": "x", "meta": {}}], tmp_path, samples_per_shard=1)


def test_every_block_boundary_cut_is_caught(tmp_path):
    # A cut at a member boundary reads as a shorter valid-looking archive unless the end
    # marker is checked: every truncation point must fail, never silently lose samples.
    p = _tar(tmp_path / "t.tar", _good("a") + _good("b"))
    data = p.read_bytes()
    end = data.rstrip(b"\0")
    for cut in list(range(512, len(end), 512)) + [len(end), len(end) + 100]:
        q = tmp_path / f"cut{cut}.tar"
        q.write_bytes(data[:cut])
        with pytest.raises(ShardError, match="truncated"):
            list(iter_samples([str(q)]))
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(data[: len(end) + (512 - len(end) % 512) % 512] + b"\x07" * 1024)
    with pytest.raises(ShardError, match="corrupt|truncated"):
        list(iter_samples([str(garbage)]))


def test_float_ceiling_is_a_fraction_even_at_one(tmp_path):
    p = _tar(tmp_path / "bad.tar", [("b.png", b"junk"), ("b.txt", b"x")] + _good("a"))
    assert len(list(iter_samples([str(p)], bad_sample_ceiling=1.0))) == 1  # 100 % allowed
    with pytest.raises(ShardError):
        list(iter_samples([str(p)], bad_sample_ceiling=0.0))  # 0.0 is strict, like 0


def test_extensions_match_case_insensitively_and_labels_come_from_json(tmp_path):
    import json as _json

    members = [("a.JPG", _png()), ("a.Txt", b"a cat"), ("a.json", _json.dumps({"label": 3}).encode())]
    p = _tar(tmp_path / "upper.tar", members)
    (s,) = iter_samples([str(p)], label_key="label")
    assert s["caption"] == "a cat" and s["label"] == 3 and s["image"].size == (8, 8)
    (s,) = iter_samples([str(p)])
    assert s["label"] == -1  # no label key named: .cls only


def test_captionless_classification_samples(tmp_path):
    p = _tar(tmp_path / "cls.tar", [("a.webp", _png()), ("a.cls", b"1"), ("b.png", _png())])
    with pytest.raises(ShardError, match="b.png.*has no label"):
        list(iter_samples([str(p)], kind="labeled"))
    with pytest.raises(ShardError, match="has no .txt caption"):
        list(iter_samples([str(p)], kind="image"))
    stats = ReadStats()
    (s,) = iter_samples([str(p)], kind="labeled", bad_sample_ceiling=1, stats=stats)
    assert s["label"] == 1 and s["caption"] == "" and stats.skipped == {"missing_label": 1}


def test_a_fraction_ceiling_is_judged_on_the_whole_read(tmp_path):
    # Two bad samples, both in the first shard: 2 of 10 overall is under a 25 % ceiling.
    first = _tar(tmp_path / "a.tar", [("x.png", b"junk"), ("x.txt", b"x"), ("y.png", b"junk"), ("y.txt", b"y")]
                 + _good("a1"))
    second = _tar(tmp_path / "b.tar", [m for k in ("b1", "b2", "b3", "b4", "b5", "b6", "b7") for m in _good(k)])
    stats = ReadStats()
    assert len(list(iter_samples([str(first), str(second)], bad_sample_ceiling=0.25, stats=stats))) == 8
    assert stats.skipped == {"undecodable_image": 2}


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/../../x"])
def test_member_names_that_climb_are_refused_and_counted(tmp_path, name: str) -> None:
    import io
    import tarfile

    from inheritlab.corruptors.shards import ReadStats, ShardError, iter_samples

    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for member, data in [(f"{name}.txt", b"a caption"), (f"{name}.cls", b"1"), ("ok.txt", b"fine"), ("ok.cls", b"0")]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match="climbs with '..'"):
        list(iter_samples([str(path)], kind="text"))
    stats = ReadStats()
    got = list(iter_samples([str(path)], kind="text", bad_sample_ceiling=1.0, stats=stats))
    assert [s["__key__"] for s in got] == ["ok"] and stats.skipped == {"unsafe_member_name": 1}
    assert not (tmp_path.parent / "x").exists()  # and nothing was written anywhere
