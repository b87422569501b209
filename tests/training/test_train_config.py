"""Recipe loading: typed sections, errors that name the key and the valid keys, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from dance_analysis.cli.train import main as train_main
from dance_analysis.errors import DanceError
from dance_analysis.training.config import (
    MiningConfig,
    Recipe,
    dump_recipe,
    load_recipe,
    recipe_differences,
    recipe_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "train").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_recipe_loads():
    names = {p.name for p in RECIPES}
    assert {"demo-ance.yaml", "demo-dance.yaml", "rag24-ance.yaml", "rag24-dance.yaml",
            "msmarco-doc-ance-firstp.yaml", "msmarco-doc-dance-stage1.yaml",
            "msmarco-doc-dance-stage2.yaml"} <= names
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        assert recipe.loss.objective == ("dance" if "dance" in path.stem and "stage1" not in path.stem else "ance")


def test_demo_recipes_differ_only_in_the_objective():
    ance = load_recipe(REPO / "train" / "demo-ance.yaml")
    dance = load_recipe(REPO / "train" / "demo-dance.yaml")
    assert recipe_differences(ance, dance) == ["name", "loss.objective"]
    assert dance.loss.w_d2q == 0.1 and ance.model.backbone == "minilm"


def test_paper_settings_in_the_msmarco_recipes():
    stage1 = load_recipe(REPO / "train" / "msmarco-doc-dance-stage1.yaml")
    stage2 = load_recipe(REPO / "train" / "msmarco-doc-dance-stage2.yaml")
    for recipe in (stage1, stage2, load_recipe(REPO / "train" / "msmarco-doc-ance-firstp.yaml")):
        assert (recipe.optim.lr, recipe.optim.warmup_steps, recipe.optim.batch_size) == (5e-6, 3000, 64)
        assert (recipe.optim.grad_clip, recipe.optim.weight_decay) == (1.0, 0.0)
        assert (recipe.mining.refresh_every, recipe.mining.top_k, recipe.mining.n) == (5000, 200, 20)
        assert (recipe.model.query_max_length, recipe.model.doc_max_length) == (64, 512)
    assert stage1.model.normalize and stage1.model.temperature == 0.01 and stage1.loss.objective == "ance"
    assert stage2.loss.objective == "dance" and stage2.loss.w_d2q == 0.1


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 1.0e-5\n  learning_rate: 3\n")
    with pytest.raises(DanceError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "optim.learning_rate" in message and str(path) in message
    for valid in ("lr", "batch_size", "warmup_steps", "grad_accum"):
        assert valid in message


def test_unknown_section_and_typo_hint(tmp_path):
    with pytest.raises(DanceError, match=r"unknown key 'minning'.*did you mean 'mining'.*valid keys"):
        load_recipe(_write(tmp_path, "minning:\n  n: 3\n"))


@pytest.mark.parametrize("text, key, expected", [
    ("optim:\n  max_steps: ten\n", "optim.max_steps", "an integer"),
    ("optim:\n  lr: fast\n", "optim.lr", "a number"),
    ("loss:\n  in_batch: 1\n", "loss.in_batch", "true or false"),
    ("optim:\n  max_steps: 1.5\n", "optim.max_steps", "an integer"),
    ("model: [1, 2]\n", "model", "mapping"),
])
def test_mistyped_value_names_the_key(tmp_path, text, key, expected):
    with pytest.raises(DanceError) as info:
        load_recipe(_write(tmp_path, text))
    assert key in str(info.value) and expected in str(info.value)


def test_choice_fields_list_their_choices(tmp_path):
    with pytest.raises(DanceError, match=r"'loss.objective' must be one of ance, dance, got 'danse'"):
        load_recipe(_write(tmp_path, "loss:\n  objective: danse\n"))
    with pytest.raises(DanceError, match=r"'mining.mode' must be one of sync, async"):
        load_recipe(_write(tmp_path, "mining:\n  mode: later\n"))


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    recipe = load_recipe(_write(tmp_path, "optim:\n  lr: 5e-6\n  max_steps: 7.0\n"))
    assert recipe.optim.lr == 5e-6 and isinstance(recipe.optim.lr, float)
    assert recipe.optim.max_steps == 7 and isinstance(recipe.optim.max_steps, int)


def test_set_overrides(tmp_path):
    path = _write(tmp_path, "name: x\noptim:\n  lr: 1.0e-5\n")
    recipe = load_recipe(path, ["optim.lr=3e-4", "mining.mode=async", "data.max_train_queries=null",
                                "model.backbone=/some/where", "name=renamed", "checkpoint.keep_last=2"])
    assert recipe.optim.lr == 3e-4 and recipe.mining.mode == "async" and recipe.data.max_train_queries is None
    assert recipe.model.backbone == "/some/where" and recipe.name == "renamed" and recipe.checkpoint.keep_last == 2
    with pytest.raises(DanceError, match=r"unknown key 'optim.lrr'.*valid keys in 'optim'"):
        load_recipe(path, ["optim.lrr=1"])
    with pytest.raises(DanceError, match="section.key=value"):
        load_recipe(path, ["optim.lr"])
    with pytest.raises(DanceError, match="exactly one dot"):
        load_recipe(path, ["optim.lr.x=1"])


def test_value_checks(tmp_path):
    with pytest.raises(DanceError, match=r"batch_size \(10\) must be a multiple of optim.grad_accum \(4\)"):
        load_recipe(_write(tmp_path, "optim:\n  batch_size: 10\n  grad_accum: 4\n"))
    with pytest.raises(DanceError, match="fraction"):
        load_recipe(_write(tmp_path, "mining:\n  fraction: 0\n"))


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(DanceError, match=r"recipe.yaml:3: not valid YAML"):
        load_recipe(_write(tmp_path, "optim:\n  lr: 1\n   bad: [\nmining: {}\n"))
    with pytest.raises(DanceError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_dump_round_trip():
    recipe = load_recipe(REPO / "train" / "demo-dance.yaml")
    import yaml

    again = recipe_from_dict(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe
    assert Recipe().mining == MiningConfig()


def test_cli_exits_2_with_the_message(tmp_path, capsys):
    path = _write(tmp_path, "optim:\n  lrr: 1\n")
    assert train_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.lrr" in err and "valid keys" in err
    assert train_main([str(REPO / "train" / "demo-ance.yaml"), "--set", "optim.max_steps=5",
                       "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 5" in out and "objective: ance" in out


def test_every_recipe_key_carries_its_help():
    import dataclasses

    from dance_analysis.training.config import SECTIONS

    for cls in (Recipe, *SECTIONS.values()):
        for item in dataclasses.fields(cls):
            assert item.metadata.get("help", "").strip(), f"{cls.__name__}.{item.name} has no help text"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "train").glob("*.yaml")))
def test_print_config_shows_the_help_and_loads_back_to_the_same_recipe(name, capsys):
    import dataclasses

    import yaml

    from dance_analysis.training.config import SECTIONS

    path = REPO / "train" / name
    assert train_main([str(path), "--set", "optim.max_steps=7", "--print-config"]) == 0
    out = capsys.readouterr().out
    recipe = load_recipe(path, ["optim.max_steps=7"])
    assert recipe_from_dict(yaml.safe_load(out)) == recipe
    lines = out.splitlines()
    for section, cls in SECTIONS.items():
        start = lines.index(f"{section}:")
        for item in dataclasses.fields(cls):
            row = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {item.name}:"))
            comment = []
            for line in reversed(lines[start + 1:row]):
                if not line.startswith("  # "):
                    break
                comment.insert(0, line[4:])
            assert " ".join(comment).startswith(item.metadata["help"]), (section, item.name, comment)
