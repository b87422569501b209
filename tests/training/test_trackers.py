"""log.report_to: TensorBoard, Weights & Biases (offline) and none, each with the run name and the resolved recipe as
the tracker's config; wandb without its package stops the run before any work."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

import train_support as ts
from dance_analysis.errors import DanceError
from dance_analysis.training.config import dump_recipe, load_recipe, recipe_from_dict
from dance_analysis.training.loop import train


def _recipe(tiny_env, name: str, report_to):
    return recipe_from_dict(ts.recipe_dict(
        tiny_env["manifest"], tiny_env["encoder"], tiny_env["cache"], name=name,
        optim={"max_steps": 3, "warmup_steps": 1}, mining={"refresh_every": 3},
        log={"every": 1, "report_to": report_to, "progress": False})).validate()


def test_report_to_defaults_to_tensorboard_and_checks_its_names(tmp_path):
    path = ts.write_recipe(tmp_path / "r.yaml", {"name": "x"})
    assert load_recipe(path).log.report_to == ["tensorboard"]
    assert load_recipe(path, ["log.report_to=wandb"]).log.report_to == ["wandb"]
    assert load_recipe(path, ["log.report_to=[tensorboard, wandb]"]).log.report_to == ["tensorboard", "wandb"]
    assert load_recipe(path, ["log.report_to=none"]).log.report_to == ["none"]
    with pytest.raises(DanceError, match="report_to' must be one of tensorboard, wandb, none, got 'mlflow'"):
        load_recipe(path, ["log.report_to=mlflow"])
    with pytest.raises(DanceError, match="none cannot be named with other trackers"):
        load_recipe(path, ["log.report_to=[none, wandb]"])
    assert yaml.safe_load(dump_recipe(load_recipe(path)))["log"]["report_to"] == ["tensorboard"]


def test_tensorboard_gets_the_metrics_the_run_name_and_the_resolved_recipe(tiny_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tiny_env["root"] / "tb-run"
    recipe = _recipe(tiny_env, "tb-run-name", ["tensorboard"])
    train(recipe, run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    assert "dev/MRR@10" in events.Tags()["scalars"]
    texts = {tag: events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()
             for tag in ("run/name", "run/recipe")}
    assert texts["run/name"] == "tb-run-name"
    assert yaml.safe_load(texts["run/recipe"]) == yaml.safe_load(dump_recipe(recipe))


def test_none_and_the_old_switch_write_no_tracker(tiny_env):
    run_dir = tiny_env["root"] / "none-run"
    train(_recipe(tiny_env, "none-run", ["none"]), run_dir)
    assert (run_dir / "metrics.jsonl").is_file()
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "wandb").exists()
    off = recipe_from_dict(ts.recipe_dict(tiny_env["manifest"], tiny_env["encoder"], tiny_env["cache"], name="off",
                                          optim={"max_steps": 1, "warmup_steps": 0}, mining={"refresh_every": 1},
                                          log={"tensorboard": False, "progress": False})).validate()
    assert off.log.report_to == ["tensorboard"]
    train(off, tiny_env["root"] / "off-run")
    assert not (tiny_env["root"] / "off-run" / "tensorboard").exists()


def test_wandb_without_its_package_stops_before_any_work(tiny_env, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    run_dir = tiny_env["root"] / "no-wandb"
    with pytest.raises(DanceError, match=r"wandb package is not installed: pip install 'dance-analysis\[wandb\]'"):
        train(_recipe(tiny_env, "no-wandb", ["tensorboard", "wandb"]), run_dir)
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "tensorboard").exists()


def _wandb_records(path):
    """The protobuf payloads of a W&B transaction log: a 7-byte header (":W&B", 0xBEE1, version), then LevelDB-log
    records (crc32, length uint16, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks."""
    import struct

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(raw):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768      # the block's tail is too short for a header: padding
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        if kind == 0:
            break
        payload = raw[position + 7:position + 7 + length]
        position += 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            yield pending


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra is not installed")
def test_wandb_offline_run_has_the_run_name_the_recipe_and_the_metrics(tiny_env, monkeypatch):
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tiny_env["root"] / "wandb-config"))
    run_dir = tiny_env["root"] / "wandb-run"
    recipe = _recipe(tiny_env, "wandb-run-name", ["wandb"])
    train(recipe, run_dir)
    assert not (run_dir / "tensorboard").exists()
    run_id = (run_dir / "wandb" / "run-id").read_text().strip()
    [offline] = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    names, configs, history = [], [], []
    for data in _wandb_records(offline / f"run-{run_id}.wandb"):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            names.append(record.run.display_name)
            configs.append({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    assert names and set(names) == {"wandb-run-name"}
    resolved = recipe.to_dict()
    assert {k: v for k, v in configs[0].items() if not k.startswith("_")} == resolved
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    logged = [(row["_step"], row["train/loss"]) for row in history if "train/loss" in row]
    assert [step for step, _ in logged] == [1, 2, 3]
    assert [loss for _, loss in logged] == pytest.approx(losses, rel=1e-6)
    assert any("dev/MRR@10" in row for row in history)
