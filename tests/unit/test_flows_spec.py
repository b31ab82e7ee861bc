"""Study specs: valid ones load, bad ones name the field path, value and what is allowed."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from inheritlab.flows.grid import CODE_EPOCH, expand_grid
from inheritlab.flows.spec import builtin_specs, load_spec, parse_spec
from inheritlab.infra.errors import SpecError

BASE = {
    "name": "t",
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.0, 0.2, 0.4], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        "data_scale": {"values": [1000, 2000]},
        "seeds": [0, 1],
    },
}


def _with_local_shards(data: dict, root: Path) -> dict:
    """A shipped GPU example whose shard paths (to fill in) point into ``root``, with class names."""
    shards = data.get("data", {}).get("shards")
    if shards:
        for split in ("train", "test_id", "test_ood"):
            if shards.get(split):
                (root / split).mkdir(parents=True, exist_ok=True)
                shards[split] = str(root / split)
        (root / "world.json").write_text('{"class_names": ["a", "b"], "num_classes": 2}')
    return data


def test_shipped_studies_load_and_expand(tmp_path: Path) -> None:
    from inheritlab.flows.spec import resolve_spec_path

    names = builtin_specs()
    assert "demo" in names
    for name in names:
        data = yaml.safe_load(resolve_spec_path(name).read_text())
        spec = parse_spec(_with_local_shards(data, tmp_path / name), source=name)
        assert expand_grid(spec), name


def test_demo_is_a_real_grid() -> None:
    spec = load_spec("demo")
    cells = expand_grid(spec)
    levels = {c.config.bias.level for c in cells}
    scales = {c.config.samples_seen for c in cells}
    assert 0.0 in levels and len(levels) >= 2 and len(scales) >= 2


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.update(bogus=1), "bogus: unknown key"),
        (lambda d: d["grid"].update(modle=["x"]), "grid.modle: unknown key"),
        (lambda d: d["grid"]["bias"][0].update(levels=[0.1, 1.5]), "grid.bias[0].levels[1]"),
        (lambda d: d["grid"]["data_scale"].update(values=[0]), "grid.data_scale.values[0]"),
        (lambda d: d["grid"]["data_scale"].update(unique="sometimes"), "grid.data_scale.unique"),
        (lambda d: d["grid"].pop("model"), "grid.model: required field is missing"),
        (lambda d: d.update(name="has space"), "name"),
        (lambda d: d.update(train={"zero_stage": 5}), "train.zero_stage"),
    ],
)
def test_bad_spec_names_the_field(mutate, needle: str) -> None:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, source="bad.yaml")
    msg = str(err.value)
    assert "bad.yaml" in msg and needle in msg, msg


def test_bad_corruptor_is_named_with_its_axis() -> None:
    data = copy.deepcopy(BASE)
    data["grid"]["bias"][0]["type"] = "label_nosie"
    with pytest.raises(SpecError) as err:
        parse_spec(data, source="bad.yaml")
    assert "grid.bias[0]" in str(err.value) and "label_nosie" in str(err.value)


def test_unreadable_yaml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(str(p))
    with pytest.raises(SpecError, match="no study spec"):
        load_spec(str(tmp_path / "missing.yaml"))
    p.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(str(p))


def test_cells_are_their_config() -> None:
    spec = parse_spec(copy.deepcopy(BASE))
    cells = expand_grid(spec)
    # 3 levels x 2 scales x 2 seeds, ids unique and stable across expansions
    assert len(cells) == 12
    assert len({c.cell_id for c in cells}) == 12
    assert [c.cell_id for c in cells] == [c.cell_id for c in expand_grid(parse_spec(copy.deepcopy(BASE)))]
    # execution-only knobs do not change ids; recipe knobs do
    moved = copy.deepcopy(BASE)
    moved["train"] = {"workers": 4, "use_gpu": "yes", "ckpt_every": 7}
    assert {c.cell_id for c in expand_grid(parse_spec(moved))} == {c.cell_id for c in cells}
    changed = copy.deepcopy(BASE)
    changed["train"] = {"lr": 1e-3}
    assert not {c.cell_id for c in expand_grid(parse_spec(changed))} & {c.cell_id for c in cells}
    assert CODE_EPOCH >= 1


def test_clean_control_shared_across_bias_types() -> None:
    data = copy.deepcopy(BASE)
    data["grid"]["bias"].append({"type": "caption_noise", "levels": [0.0, 0.3], "params": {"mode": "random"}})
    cells = expand_grid(parse_spec(data))
    clean = [c for c in cells if c.config.bias.is_clean]
    # one clean cell per (scale, seed), not one per bias type
    assert len(clean) == 4
    assert len(cells) == 4 + 8 + 4


def test_scaled_unique_pool() -> None:
    data = copy.deepcopy(BASE)
    data["grid"]["data_scale"] = {"values": [1000, 8000], "unique": "scaled"}
    data["data"] = {"world": {"train_size": 4000}}
    cells = expand_grid(parse_spec(data))
    assert {c.config.samples_seen: c.config.unique_samples for c in cells} == {1000: 1000, 8000: 4000}


@pytest.mark.parametrize(
    "mutate, needle",
    [
        # Rung names are checked against the modality's registry when the spec loads.
        (lambda d: d["grid"].update(model=["clip-nonexistent"]), "grid.model[0]: 'clip-nonexistent' is not a rung of modality 'clip'"),
        (lambda d: d.update(modality="lm") or d["grid"].update(model=["lm-huge"]), "grid.model[0]: 'lm-huge' is not a rung of modality 'lm'"),
        (lambda d: d.update(modality="video"), "modality: got 'video'"),
        (lambda d: d.update(eval={"tasks": ["zero_shot"]}), "eval.tasks[0]: 'zero_shot' is not a task of modality 'clip' (did you mean 'zeroshot'?)"),
    ],
)
def test_registries_check_the_spec(mutate, needle: str) -> None:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, source="bad.yaml")
    assert needle in str(err.value), str(err.value)


def _on_user_shards(root: Path, **eval_: object) -> dict:
    data = copy.deepcopy(BASE)
    data["grid"]["bias"] = [{"type": "caption_noise", "levels": [0.0, 0.2], "params": {"mode": "random"}}]
    data["data"] = {"source": "shards", "shards": {"train": str(root / "train"), "test_id": str(root / "val")}}
    if eval_:
        data["eval"] = eval_
    return data


def test_classification_tasks_need_class_names(tmp_path: Path) -> None:
    # Asked for on caption-only shards: refused at load, naming the task and where names go.
    with pytest.raises(SpecError) as err:
        parse_spec(_on_user_shards(tmp_path, tasks=["zeroshot", "retrieval"]))
    msg = str(err.value)
    assert "eval.tasks: 'zeroshot' needs class names" in msg and str(tmp_path / "classnames.txt") in msg
    # Left to the defaults: only the tasks the data can serve, and the others said.
    spec = parse_spec(_on_user_shards(tmp_path))
    assert spec.eval_tasks == ("retrieval",)
    from inheritlab.trainers.modality import get_modality

    left = get_modality("clip").left_out(spec.data, spec.eval, spec.grid.bias_types)
    assert set(left) == {"zeroshot", "linear_probe"} and "classnames.txt" in left["zeroshot"]
    # With class names beside the train split (CLIP_benchmark's file or ours), zero-shot is back.
    (tmp_path / "classnames.txt").write_text("a\nb\n")
    assert parse_spec(_on_user_shards(tmp_path)).eval_tasks == ("zeroshot", "linear_probe", "retrieval")
    (tmp_path / "classnames.txt").unlink()
    (tmp_path / "world.json").write_text('{"class_names": ["a", "b"], "num_classes": 2}')
    assert parse_spec(_on_user_shards(tmp_path)).eval_tasks == ("zeroshot", "linear_probe", "retrieval")


def test_cell_config_is_typed_and_round_trips() -> None:
    from inheritlab.infra.cell import CellConfig

    cell = expand_grid(parse_spec(copy.deepcopy(BASE)))[-1]
    again = CellConfig.model_validate(cell.config.model_dump(mode="json"))
    assert again == cell.config and again.cell_id == cell.cell_id
    assert cell.config.corruptors() == [{"type": "label_noise", "level": 0.4, "mode": "symmetric"}]
    # Frozen: a cell cannot drift after its id was taken.
    with pytest.raises(Exception):
        cell.config.seed = 5  # type: ignore[misc]
    assert CODE_EPOCH == 3


def test_two_axes_of_one_bias_type_get_distinct_labels_and_are_never_pooled() -> None:
    data = copy.deepcopy(BASE)
    data["grid"]["bias"] = [{"type": "dedup", "levels": [0.0, 1.0], "params": {"method": "exact"}},
                            {"type": "dedup", "levels": [0.0, 1.0], "params": {"method": "minhash", "threshold": 0.7}},
                            {"type": "caption_noise", "levels": [0.0, 0.3]}]
    cells = expand_grid(parse_spec(data))
    labels = {c.config.bias.label for c in cells}
    assert labels == {"none", "dedup[method=exact]", "dedup[method=minhash,threshold=0.7]", "caption_noise"}
    biased = [c for c in cells if not c.config.bias.is_clean]
    assert len({c.label for c in biased}) == len(biased)  # no two cells share a label
    # An axis alone of its type keeps a bare label (and its cells their ids).
    single = copy.deepcopy(BASE)
    assert all(c.config.bias.axis is None for c in expand_grid(parse_spec(single)))
    # Names given win; two axes that cannot be told apart are refused.
    data["grid"]["bias"][0]["name"] = "dedup-exact"
    assert "dedup-exact" in {c.config.bias.label for c in expand_grid(parse_spec(data))}
    data["grid"]["bias"] = [{"type": "dedup", "levels": [0.0, 1.0]}, {"type": "dedup", "levels": [0.0, 0.5]}]
    with pytest.raises(SpecError, match=r"both labelled 'dedup\[defaults\]'"):
        parse_spec(data)


def test_two_axes_of_one_type_stay_apart_in_the_report(tmp_path: Path) -> None:
    import polars as pl
    from inheritlab.analysis.report import compute_report
    from inheritlab.analysis.results import load_results
    from inheritlab.analysis.synthetic import write_synthetic_run

    # Recorded as the flow records them (bias_type = the axis label), into one run directory.
    for i, axis in enumerate(("dedup[method=exact]", "dedup[method=minhash]")):
        write_synthetic_run(tmp_path, levels=(0.0, 0.5), bias_type=axis, seeds=(0, 1), seed=i)
    report = compute_report(load_results(str(tmp_path)), metric="acc1", task="zeroshot", split="id")
    assert set(report.delta.filter(pl.col("bias_level") > 0)["bias_type"]) == {"dedup[method=exact]",
                                                                              "dedup[method=minhash]"}
    assert {c.key["bias_type"] for c in report.curves} == {"dedup[method=exact]", "dedup[method=minhash]"}


def test_lm_memorization_needs_a_duplicate_axis() -> None:
    data = {"name": "lm", "modality": "lm", "grid": {
        "bias": [{"type": "token_noise", "levels": [0.0, 0.1]}], "model": ["lm-tiny"],
        "data_scale": {"values": [64]}}}
    spec = parse_spec(data)
    assert "memorization" not in spec.eval_tasks  # left out of the defaults, and said
    from inheritlab.flows.preflight import left_out

    assert "duplicate" in left_out(spec)["memorization"]
    with pytest.raises(SpecError, match="'memorization' needs duplicated training data"):
        parse_spec({**data, "eval": {"tasks": ["perplexity", "memorization"]}})
    data["grid"]["bias"].append({"type": "duplicate", "levels": [0.0, 0.1]})
    assert "memorization" in parse_spec(data).eval_tasks


def test_lm_refuses_image_only_settings(tmp_path: Path) -> None:
    data = {"name": "lm", "modality": "lm", "data": {"source": "shards", "shards": {
        "train": str(tmp_path), "test_id": str(tmp_path), "label_key": "label"}},
        "grid": {"bias": [{"type": "token_noise", "levels": [0.0, 0.1]}], "model": ["lm-tiny"],
                 "data_scale": {"values": [64]}}}
    with pytest.raises(SpecError, match=r"\['label_key'\] apply to CLIP studies"):
        parse_spec(data)


def test_summary_states_how_each_task_is_measured() -> None:
    from inheritlab.flows.publish import render_conventions

    lm = render_conventions("lm", ["perplexity", "qa"])
    assert "rolling windows" in lm and "loglikelihood_rolling" in lm and "no BOS" in lm
    clip = render_conventions("clip", ["zeroshot", "retrieval_t2i", "suite/digits"])
    assert "mean_per_class_recall" in clip and "**retrieval_t2i**" in clip and "**suite**" in clip


# ----------------------------------------------------------------------------------- the image world


def _world_spec(models: list[str], **world: object) -> dict:
    data = copy.deepcopy(BASE)
    data["grid"]["model"] = models
    if world:
        data["data"] = {"world": dict(world)}
    return data


def test_demo_cell_ids_unchanged_by_the_world_size_rule() -> None:
    # Taken before the world's size and format were resolved from the rungs (CODE_EPOCH 3): a
    # CPU-rung study resolves to the declared defaults (32 px, PNG), which ids leave out.
    # The demo's grid of that time (2 scales, 1 seed); the rest of the shipped demo is unchanged.
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("inheritlab.flows").joinpath("studies", "demo.yaml").read_text())
    data["grid"]["data_scale"]["values"], data["grid"]["seeds"] = [24576, 98304], [0]
    cells = expand_grid(parse_spec(data))
    assert [c.cell_id for c in cells] == ["99cee8a0d89c28da", "e63c803407a46549", "86cee25b71a31c2c",
                                          "c51a5b5a12001259"]
    assert all(c.config.canonical()["data"] == {} for c in cells)
    assert {(c.config.data.world.image_size, c.config.data.world.image_format) for c in cells} == {(32, "png")}


def test_cpu_rungs_resolve_to_the_32px_png_world() -> None:
    spec = parse_spec(_world_spec(["clip-tiny", "clip-mini"]))
    assert (spec.data.world.image_size, spec.data.world.image_format) == (32, "png")
    assert all(c.config.canonical()["data"] == {} for c in expand_grid(spec))


def test_gpu_rung_resolves_to_224px_jpeg_and_enters_the_id() -> None:
    spec = parse_spec(_world_spec(["datacomp-small"]))
    assert (spec.data.world.image_size, spec.data.world.image_format) == (224, "jpeg")
    cells = expand_grid(spec)
    assert cells[0].config.canonical()["data"] == {"world": {"image_size": 224, "image_format": "jpeg"}}
    # The largest rung sets the size; the CPU rung's cells share that world (their ids move with it).
    mixed = parse_spec(_world_spec(["clip-tiny", "datacomp-small"], num_classes=4))
    world = mixed.data.world
    assert (world.image_size, world.image_format, world.num_classes) == (224, "jpeg", 4)
    tiny = parse_spec(_world_spec(["clip-tiny"], num_classes=4))
    assert not {c.cell_id for c in expand_grid(mixed)} & {c.cell_id for c in expand_grid(tiny)}
    # null says the same as leaving the setting out.
    nulls = parse_spec(_world_spec(["datacomp-small"], image_size=None, image_format=None))
    assert (nulls.data.world.image_size, nulls.data.world.image_format) == (224, "jpeg")


def test_explicit_world_size_and_format_are_kept() -> None:
    world = parse_spec(_world_spec(["datacomp-small"], image_size=64)).data.world
    assert (world.image_size, world.image_format) == (64, "png")  # the format follows the given size
    world = parse_spec(_world_spec(["datacomp-small"], image_size=128, image_format="png")).data.world
    assert (world.image_size, world.image_format) == (128, "png")
    world = parse_spec(_world_spec(["clip-tiny"], image_format="jpeg")).data.world
    assert (world.image_size, world.image_format) == (32, "jpeg")
    world = parse_spec(_world_spec(["clip-tiny"], image_size=96)).data.world
    assert (world.image_size, world.image_format) == (96, "jpeg")
    # Explicit 32/png on a GPU rung is that study's world as it always was: same ids as before.
    explicit = parse_spec(_world_spec(["datacomp-small"], image_size=32, image_format="png"))
    assert all(c.config.canonical()["data"] == {} for c in expand_grid(explicit))
    for size, needle in ((8, "data.world.image_size"), (600, "data.world.image_size")):
        with pytest.raises(SpecError, match=needle):
            parse_spec(_world_spec(["clip-tiny"], image_size=size))
    with pytest.raises(SpecError, match="data.world.image_format"):
        parse_spec(_world_spec(["clip-tiny"], image_format="webp"))


def test_world_left_alone_without_a_builtin_image_world(tmp_path: Path) -> None:
    from inheritlab.infra.cell import WorldSpec

    (tmp_path / "classnames.txt").write_text("a\nb\n")
    shards = _on_user_shards(tmp_path, tasks=["retrieval"])
    shards["grid"]["model"] = ["datacomp-small"]
    spec = parse_spec(shards)
    assert spec.data.world == WorldSpec() and "world" not in expand_grid(spec)[0].config.canonical()["data"]
    lm = parse_spec({"name": "lm", "modality": "lm", "grid": {
        "bias": [{"type": "token_noise", "levels": [0.0, 0.1]}], "model": ["lm-tiny"], "data_scale": {"values": [64]}}})
    assert lm.data.world == WorldSpec()


@pytest.mark.parametrize("change, where", [
    (lambda d: d["grid"]["data_scale"].update(values=[10**30]), "grid.data_scale.values"),
    (lambda d: d["grid"]["data_scale"].update(values=[1e30]), "grid.data_scale.values"),
    (lambda d: d.setdefault("train", {}).update(batch_size=10**9), "train.batch_size"),
    (lambda d: d.setdefault("train", {}).update(workers=10**6), "train.workers"),
    (lambda d: d["grid"].update(seeds=[10**40]), "grid.seeds"),
    (lambda d: d.update(seed=-1), "seed"),
    (lambda d: d["grid"]["bias"][0].update(levels=[True]), "a boolean where a number"),
    (lambda d: d.setdefault("train", {}).update(ckpt_every=True), "a boolean where a number"),
    (lambda d: d.setdefault("train", {}).update(use_gpu=True), "quote the value"),
])
def test_absurd_sizes_and_booleans_as_numbers_are_refused(change, where) -> None:
    import copy
    from importlib import resources

    base = yaml.safe_load(resources.files("inheritlab.flows").joinpath("studies", "demo.yaml").read_text())
    parse_spec(base)
    spec = copy.deepcopy(base)
    change(spec)
    with pytest.raises(SpecError, match=re.escape(where)):
        parse_spec(spec)


def test_clip_adaptations_become_tasks_and_are_checked() -> None:
    data = copy.deepcopy(BASE)
    data["eval"] = {"tasks": ["zeroshot"], "adaptations": ["linear_probe", "nmtune", "few_shot"], "few_shot_k": [2, 8]}
    spec = parse_spec(data)
    # Each adaptation is a task; the frozen spectrum (diagnostics) comes with them.
    assert spec.eval_tasks == ("zeroshot", "linear_probe", "nmtune", "few_shot", "diagnostics")
    cell = expand_grid(spec)[0].config
    assert cell.eval.few_shot_k == (2, 8) and "few_shot" in cell.eval_tasks
    for bad, msg in (({"adaptations": ["nmtune"], "few_shot_k": [4]}, "only used by the few_shot adaptation"),
                     ({"adaptations": ["nmtune", "nmtune"]}, "repeat"),
                     ({"adaptations": ["nmtunes"]}, "adaptations"),
                     ({"adaptations": ["few_shot"], "few_shot_k": [0]}, "few_shot_k")):
        d = copy.deepcopy(BASE)
        d["eval"] = bad
        with pytest.raises(SpecError, match=msg):
            parse_spec(d, source="bad.yaml")


def test_an_lm_study_is_told_where_its_adaptations_go() -> None:
    spec = load_spec("lm-duplication")
    d = spec.model_dump(mode="json", exclude_unset=True)
    d.setdefault("eval", {})["adaptations"] = ["nmtune"]
    with pytest.raises(SpecError, match="eval.lm_adaptation"):
        parse_spec(d, source="lm.yaml")
