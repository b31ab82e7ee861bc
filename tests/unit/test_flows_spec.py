"""Study specs: valid ones load, bad ones name the field path, value and what is allowed."""

from __future__ import annotations

import copy
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
        (lambda d: d["grid"]["bias"][0].update(levels=[0.1, 1.5]), "grid.bias.0.levels.1"),
        (lambda d: d["grid"]["data_scale"].update(values=[0]), "grid.data_scale.values.0"),
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
        (lambda d: d["grid"].update(model=["clip-nonexistent"]), "grid.model: ['clip-nonexistent'] are not clip rungs"),
        (lambda d: d.update(modality="lm") or d["grid"].update(model=["lm-huge"]), "grid.model: ['lm-huge'] are not lm rungs"),
        (lambda d: d.update(modality="video"), "modality: Value error, got 'video'"),
        (lambda d: d.update(eval={"tasks": ["zero_shot"]}), "eval.tasks: ['zero_shot'] are not clip tasks"),
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
    assert "eval.tasks: 'zeroshot' needs class names" in msg and str(tmp_path / "world.json") in msg
    # Left to the defaults: only the tasks the data can serve.
    assert parse_spec(_on_user_shards(tmp_path)).eval_tasks == ("retrieval",)
    # With class names beside the train split, zero-shot is back.
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
    assert CODE_EPOCH == 2
