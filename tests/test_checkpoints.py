"""The run folder read through one module (dance_analysis.checkpoints): every reader picks the checkpoint the trainer
calls best, and the readers' edge cases (incomplete checkpoints, missing metrics, a damaged metrics.jsonl).

The best checkpoint of a run is checked four ways against a choice made here by hand from the dev metrics (plain
``json`` on each checkpoint's ``dev_metrics.json``, the recipe's metric and its direction): the trainer
(``best.json`` and ``training.checkpoint``'s best, which pruning keeps), ``dance-analyze``
(``resolve_path(run).representative``), ``dance-mine`` (the model a run folder stands for) and the experiment
(``reproduce.evaluate.selected_checkpoint``); starting a new run from a run folder (``model.select: best``) too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dance_analysis import checkpoints
from dance_analysis.atomic import read_json
from dance_analysis.errors import DanceError, InputError
from dance_analysis.metrics import PRIMARY_METRIC, primary_metric


def _fake_run(root: Path, dev: dict[int, dict | None], *, best_metric: str | None = None,
              incomplete: tuple[int, ...] = ()) -> Path:
    """A run folder: ``checkpoint-<step>/`` with ``checkpoint.json``, an ``encoder/`` folder and (unless ``None``)
    ``dev_metrics.json``; ``config.yaml`` names ``best_metric`` when given."""
    root.mkdir(parents=True)
    for step, metrics in dev.items():
        folder = root / f"checkpoint-{step}"
        (folder / "encoder").mkdir(parents=True)
        complete = step not in incomplete
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "complete": complete, "objective": "ance",
                                                            "collection": "tiny"}))
        if metrics is not None:
            (folder / "dev_metrics.json").write_text(json.dumps(metrics))
    if best_metric is not None:
        (root / "config.yaml").write_text(yaml.safe_dump({"name": "fake", "checkpoint": {"best_metric": best_metric}}))
    return root


def _by_hand(run: Path, metric: str, higher_is_better: bool) -> int:
    """The best step, chosen here: complete checkpoints only, finite values, the earliest on ties."""
    best = None
    for folder in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        if not json.loads((folder / "checkpoint.json").read_text()).get("complete"):
            continue
        file = folder / "dev_metrics.json"
        value = json.loads(file.read_text()).get(metric) if file.is_file() else None
        if value is None or value != value:
            continue
        if best is None or (value > best[1] if higher_is_better else value < best[1]):
            best = (int(folder.name.split("-")[1]), value)
    assert best is not None
    return best[0]


def _picks(run: Path) -> dict[str, int]:
    """The step each reader picks for ``run``."""
    from dance_analysis.hard_negatives import model_of
    from dance_analysis.report.inputs import resolve_path
    from dance_analysis.reproduce.evaluate import selected_checkpoint
    from dance_analysis.training.run_folder import resolve_backbone

    return {
        "dance-analyze": resolve_path(str(run)).representative.step,
        "dance-mine": checkpoints.checkpoint_step(model_of(run)),
        "experiment": selected_checkpoint(run)[0],
        "model.select best": checkpoints.checkpoint_step(Path(resolve_backbone(str(run), "best")).parent),
    }


def _write_best_json_as_the_trainer(run: Path, metric: str) -> int:
    """best.json as the trainer writes it at the end of a run (training.loop: training.checkpoint's best by the
    recipe's best_metric)."""
    from dance_analysis.training import checkpoint as ckpt

    found = ckpt.best_checkpoint(run, metric)
    (run / "best.json").write_text(json.dumps({"step": found[0], "path": str(found[1]), "metric": metric,
                                               "value": found[2]}))
    return found[0]


# MRR@10 and MRR@100 disagree: by MRR@10 step 10 is best, by MRR@100 step 20; the report's old rule (MRR@10 first)
# picked 10 for a run whose recipe selects by MRR@100.
DISAGREE = {0: {"MRR@10": 0.2, "MRR@100": 0.25}, 10: {"MRR@10": 0.5, "MRR@100": 0.52},
            20: {"MRR@10": 0.3, "MRR@100": 0.6}, 30: {"MRR@10": 0.4, "MRR@100": 0.45}}


@pytest.mark.parametrize("with_best_json", [False, True])
def test_every_reader_picks_the_best_by_the_recipes_metric_not_mrr10(tmp_path, with_best_json):
    run = _fake_run(tmp_path / "run", DISAGREE, best_metric="MRR@100")
    expected = _by_hand(run, "MRR@100", True)
    assert expected == 20 and _by_hand(run, "MRR@10", True) == 10       # the case is one where they differ
    if with_best_json:
        assert _write_best_json_as_the_trainer(run, "MRR@100") == expected
    from dance_analysis.training import checkpoint as ckpt

    assert ckpt.best_checkpoint(run, "MRR@100")[0] == expected
    assert set(_picks(run).values()) == {expected}, _picks(run)
    assert checkpoints.run_best(run).source == ("best.json" if with_best_json else "dev_metrics.json")


def test_a_lower_is_better_metric_picks_the_lowest(tmp_path):
    # an evaluation loss (as a transformers Trainer logs it): the highest value (step 10) is the worst
    dev = {0: {"loss": 0.9}, 10: {"loss": 0.95}, 20: {"loss": 0.5}, 30: {"loss": 0.5}, 40: {"loss": 0.7}}
    run = _fake_run(tmp_path / "run", dev, best_metric="loss")
    assert not primary_metric("loss").higher_is_better and primary_metric("MRR@100").higher_is_better
    expected = _by_hand(run, "loss", False)
    assert expected == 20                                               # the earliest of the tie at 0.5
    assert set(_picks(run).values()) == {expected}
    _write_best_json_as_the_trainer(run, "loss")
    assert json.loads((run / "best.json").read_text())["step"] == expected
    assert set(_picks(run).values()) == {expected}
    # pruning keeps the best by the same rule
    from dance_analysis.training import checkpoint as ckpt

    assert ckpt.prune_checkpoints(run, 1, metric="loss") == [0, 10, 30]
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [20, 40]


def test_without_a_recipe_the_primary_metric_decides(tmp_path):
    run = _fake_run(tmp_path / "run", DISAGREE)
    assert PRIMARY_METRIC.name == "MRR@10" and PRIMARY_METRIC.higher_is_better
    assert set(_picks(run).values()) == {_by_hand(run, PRIMARY_METRIC.name, True)} == {10}


def test_a_real_run_best_json_and_every_reader_agree(tiny_env):
    """A tiny training run whose recipe selects by MRR@100 (as the MS MARCO document recipes): best.json names the
    checkpoint with the best dev MRR@100 (by hand), and every reader picks that one."""
    import train_support as ts
    from dance_analysis.training.config import recipe_from_dict
    from dance_analysis.training.loop import train

    recipe = recipe_from_dict(ts.recipe_dict(
        tiny_env["manifest"], tiny_env["encoder"], tiny_env["cache"], optim={"max_steps": 6, "warmup_steps": 1},
        mining={"refresh_every": 2}, checkpoint={"keep_last": None, "best_metric": "MRR@100"},
        log={"every": 1, "tensorboard": False, "report_to": ["none"], "progress": False})).validate()
    run = tiny_env["root"] / "run-mrr100"
    train(recipe, run)
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [0, 2, 4, 6]
    expected = _by_hand(run, "MRR@100", True)
    best = json.loads((run / "best.json").read_text())
    assert (best["step"], best["metric"]) == (expected, "MRR@100")
    assert set(_picks(run).values()) == {expected}, _picks(run)
    # one reader of metrics.jsonl: a line per step and one per refresh, in order
    records = checkpoints.read_metrics_log(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert records == [json.loads(line) for line in lines]


# --------------------------------------------------------------------------------------------- listing edge cases
def test_incomplete_checkpoints_are_not_listed_nor_picked(tmp_path):
    dev = {0: {"MRR@10": 0.1}, 10: {"MRR@10": 0.9}, 20: {"MRR@10": 0.3}}
    run = _fake_run(tmp_path / "run", dev, incomplete=(10,))
    (run / "checkpoint-30").mkdir()                                     # no checkpoint.json at all
    (run / "checkpoint-40").mkdir()
    (run / "checkpoint-40" / "checkpoint.json").write_text('{"complete": tru')   # cut while written
    (run / "checkpoint-5x").mkdir()                                     # not a checkpoint name
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [0, 20]
    assert [s for s, _ in checkpoints.list_checkpoints(run, complete_only=False)] == [0, 10, 20, 30, 40]
    assert not checkpoints.is_complete(run / "checkpoint-40")
    assert checkpoints.latest_checkpoint(run) == run / "checkpoint-20"
    assert checkpoints.run_best(run).step == 20
    # best.json naming a checkpoint that is not complete (or gone) is not followed
    (run / "best.json").write_text(json.dumps({"step": 10, "metric": "MRR@10", "value": 0.9}))
    assert checkpoints.run_best(run).step == 20 and checkpoints.run_best(run).source == "dev_metrics.json"


def test_missing_metrics_fall_back_to_the_last_checkpoint(tmp_path):
    run = _fake_run(tmp_path / "run", {0: None, 10: {"MRR@10": None}, 20: {"MRR@10": float("nan")},
                                       30: {"R@100": 0.5}})
    assert checkpoints.best_checkpoint(run) is None and checkpoints.run_best(run) is None
    assert checkpoints.run_checkpoint(run, "best") == run / "checkpoint-30"
    from dance_analysis.report.inputs import resolve_path

    rep = resolve_path(str(run))
    assert rep.representative.step == 30 and rep.selection.startswith("last")
    # some checkpoints with the metric: the best among them (the others are not "worse", they are unknown)
    (run / "checkpoint-10" / "dev_metrics.json").write_text(json.dumps({"MRR@10": 0.2}))
    assert checkpoints.run_best(run).step == 10
    assert resolve_path(str(run)).representative.step == 10
    assert checkpoints.run_checkpoint(run, "last") == run / "checkpoint-30"
    with pytest.raises(DanceError, match=r"'step-15' names no checkpoint.*\[0, 10, 20, 30\]"):
        checkpoints.run_checkpoint(run, "step-15")
    with pytest.raises(DanceError, match="no complete checkpoint"):
        checkpoints.run_checkpoint(tmp_path / "empty", "best")


def test_a_malformed_best_json_or_recipe_names_the_file(tmp_path):
    run = _fake_run(tmp_path / "run", DISAGREE, best_metric="MRR@100")
    (run / "best.json").write_text('{"step": 20,\n "metric": }')
    with pytest.raises(InputError, match=r"best\.json:2: expected"):
        checkpoints.run_best(run)
    (run / "best.json").unlink()
    (run / "config.yaml").write_text("checkpoint:\n  best_metric: [MRR@100\n")
    with pytest.raises(InputError, match=r"config\.yaml:\d+: expected the run's YAML recipe"):
        checkpoints.run_best(run)


def test_saved_embeddings_of_a_checkpoint_or_a_folder(tmp_path):
    folder = tmp_path / "checkpoint-3" / "embeddings"
    folder.mkdir(parents=True)
    for name in checkpoints.EMBEDDING_FILES[:-1]:
        (folder / name).write_bytes(b"")
    assert checkpoints.saved_embeddings(tmp_path / "checkpoint-3") is None          # one file missing
    (folder / checkpoints.EMBEDDING_FILES[-1]).write_bytes(b"")
    assert checkpoints.saved_embeddings(tmp_path / "checkpoint-3") == folder
    assert checkpoints.saved_embeddings(folder) == folder
    from dance_analysis.hard_negatives import saved_embeddings_folder

    assert saved_embeddings_folder(tmp_path / "checkpoint-3") == folder


# ---------------------------------------------------------------------------------------------- metrics.jsonl
def _log(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_metrics_log_a_bad_line_names_file_and_line(tmp_path):
    log = _log(tmp_path / "metrics.jsonl", '{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n{"step": 3, "loss": 0.4}\n')
    with pytest.raises(InputError, match=r"metrics\.jsonl:2: expected one JSON object per line"):
        checkpoints.read_metrics_log(log)
    _log(log, '{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(InputError, match=r"metrics\.jsonl:2: .*got 'list'"):
        checkpoints.read_metrics_log(log)
    # dance-analyze on a run with that log says so, instead of drawing a curve with a hole
    run = _fake_run(tmp_path / "run", {0: {"MRR@10": 0.1}})
    _log(run / "metrics.jsonl", '{"step": 1, "loss": 0.5}\nnot json\n{"step": 2, "loss": 0.4}\n')
    from dance_analysis.report.inputs import resolve_path

    with pytest.raises(InputError, match=r"metrics\.jsonl:2"):
        resolve_path(str(run))


def test_metrics_log_a_cut_last_line_is_skipped_and_repair_keeps_bytes(tmp_path):
    text = '{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": 4e-05, "dev": {"MRR@10": 0.25}}\n{"step": 3, "lo'
    log = _log(tmp_path / "metrics.jsonl", text)
    assert checkpoints.read_metrics_log(log) == [{"step": 1, "loss": 0.5},
                                                 {"step": 2, "loss": 4e-05, "dev": {"MRR@10": 0.25}}]
    assert checkpoints.read_metrics_log(tmp_path) == checkpoints.read_metrics_log(log)   # a run folder
    assert checkpoints.read_metrics_log(tmp_path / "absent.jsonl") == []
    # the trainer trimming its log on resume: later steps and cut lines go, kept lines stay byte for byte
    from dance_analysis.training.run_folder import truncate_metrics

    _log(log, '{"step": 1, "loss": 0.50}\n{"step": 2, "lo\n{"step": 2, "swapped_at": 3}\n{"step": 2, "loss": 1e-5}\n'
              '{"step": 3, "loss": 0.1}\n{"step": 1, "x')
    truncate_metrics(tmp_path, 2)
    assert log.read_text() == '{"step": 1, "loss": 0.50}\n{"step": 2, "loss": 1e-5}\n'


# -------------------------------------------------------------------------------------------------- read_json
def test_read_json_or_none_or_an_input_error(tmp_path):
    assert read_json(tmp_path / "absent.json", missing=None) is None
    with pytest.raises(InputError, match=r"absent\.json: expected a JSON document, got 'no such file'"):
        read_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  "b": \n}')
    with pytest.raises(InputError, match=r"bad\.json:4: expected the record"):
        read_json(bad, "the record")
    assert read_json(bad, invalid=None) is None
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert read_json(listed) == [1, 2]
    with pytest.raises(InputError, match=r"list\.json: expected an object, got 'list'"):
        read_json(listed, "an object", kind=dict)
    assert read_json(listed, kind=dict, invalid={}) == {}


# --------------------------------------------------------------------------------------------------- prepared
def test_prepared_check_reads_prepared_json(tmp_path):
    class _Recipe:
        def __init__(self, seed):
            self.seed = seed

        def to_dict(self):
            return {"model": {"backbone": "m"}, "data": {"collection": "c"}, "loss": {"objective": "dance"},
                    "optim": {"seed": self.seed}, "mining": {"top_k": 20, "mode": "async", "device": "cpu"}}

    run = tmp_path / "run"
    run.mkdir()
    assert not checkpoints.check_prepared(run, _Recipe(1)) and checkpoints.read_prepared(run) is None
    with pytest.raises(DanceError, match="not prepared for a multi-process run"):
        checkpoints.require_prepared(run, _Recipe(1))
    settings = checkpoints.step0_settings(_Recipe(1))
    assert settings["mining"] == {"top_k": 20}                          # runtime keys do not count
    (run / checkpoints.PREPARED_FILE).write_text(json.dumps({"settings": settings}))
    assert checkpoints.check_prepared(run, _Recipe(1))
    with pytest.raises(DanceError, match=r"prepared with other settings \(seed\)"):
        checkpoints.check_prepared(run, _Recipe(2))
    assert checkpoints.prepared_checkpoint(run, _Recipe(1)) is None     # no checkpoint-0 yet
    (run / "checkpoint-0").mkdir()
    (run / "checkpoint-0" / "checkpoint.json").write_text('{"complete": true}')
    assert checkpoints.prepared_checkpoint(run, _Recipe(1)) == run / "checkpoint-0"
    (run / checkpoints.PREPARED_FILE).write_text('{"settings": ')
    with pytest.raises(DanceError, match=r"prepared\.json:1: .*run --prepare again"):
        checkpoints.read_prepared(run)


def test_dance_mine_on_a_run_folder_mines_with_its_best_checkpoint(tmp_path, capsys):
    """The command itself: a run folder given as MODEL is its best checkpoint (by the recipe's MRR@100 here), so
    its output equals that of naming the checkpoint, and differs from the checkpoint MRR@10 would pick."""
    import numpy as np

    from dance_analysis.cli.mine import main as mine_main
    from report_support import write_beir, write_embeddings

    docs = {f"d{i}": f"text of document {i}" for i in range(6)}
    queries = {"q0": "first query", "q1": "second query"}
    collection = write_beir(tmp_path / "beir", docs, queries, {"q0": {"d0": 2}, "q1": {"d3": 2}}, split="train")
    rng = np.random.default_rng(0)
    run = _fake_run(tmp_path / "run", DISAGREE, best_metric="MRR@100")
    for step in DISAGREE:
        write_embeddings(run / f"checkpoint-{step}" / "embeddings", list(docs), rng.normal(size=(6, 4)),
                         list(queries), rng.normal(size=(2, 4)))

    def mine(model: Path, name: str) -> str:
        out = tmp_path / name
        assert mine_main([str(model), "--collection", str(collection), "--split", "train", "--min-relevance", "2",
                          "--out", str(out), "--top-k", "5", "--n", "3", "--sampling", "top"]) == 0
        return out.read_text()

    from_run = mine(run, "run.jsonl")
    assert "run (its best checkpoint, checkpoint-20)" in capsys.readouterr().out
    assert from_run == mine(run / "checkpoint-20", "best.jsonl")
    assert from_run != mine(run / "checkpoint-10", "mrr10.jsonl")
