"""The trainer in-process on a tiny random encoder and a tiny generated MS MARCO-format collection:
the checkpoint contract, negatives against a brute-force reference, output-directory rules, NaN handling,
async refresh, and the loss options."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis import checkpoints
from dance_analysis.cli.train import main as train_main
from dance_analysis.mining import NegativeSet
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.loop import TrainingDiverged, train


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny collection, a tiny encoder, and a private cache (restored afterwards)."""
    root = tmp_path_factory.mktemp("train-loop")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains several times faster on one thread than on two busy ones
    old = {key: os.environ.get(key) for key in ("DANCE_CACHE", "OMP_NUM_THREADS")}
    os.environ["DANCE_CACHE"] = str(root / "cache")
    os.environ["OMP_NUM_THREADS"] = "1"  # for the async miner process
    manifest = ts.write_tiny_collection(root / "collection")
    encoder = ts.tiny_encoder(root / "model")
    yield {"root": root, "manifest": manifest, "encoder": encoder, "cache": root / "cache"}
    torch.set_num_threads(threads)
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _recipe(env, **sections):
    return recipe_from_dict(ts.recipe_dict(env["manifest"], env["encoder"], env["cache"], **sections)).validate()


@pytest.fixture(scope="module")
def sync_run(env):
    """One DANCE run: 12 steps, refreshes at 0, 6 and 12."""
    run_dir = env["root"] / "sync-run"
    result = train(_recipe(env), run_dir)
    return run_dir, result


def test_sync_run_writes_the_checkpoint_contract(env, sync_run):
    run_dir, result = sync_run
    assert [s for s, _ in checkpoints.list_checkpoints(run_dir)] == [0, 6, 12]
    assert result.final_step == 12 and result.final_checkpoint == run_dir / "checkpoint-12"
    from dance_analysis.data import load_collection

    collection = load_collection(str(env["manifest"]))
    for step in (0, 6, 12):
        folder = run_dir / f"checkpoint-{step}"
        meta = json.loads((folder / "checkpoint.json").read_text())
        assert meta["step"] == step and meta["complete"] is True and meta["objective"] == "dance"
        assert meta["splits"] == {"train": "train", "dev": "dev"} and meta["seed"] == 7
        assert meta["temperature"] == 0.5 and meta["collection"] == collection.source
        assert (folder / "encoder" / "encoder.json").is_file()
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["step"] == step and state["data"]["negatives_step"] == step
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch.load(folder / name, weights_only=True)
        dev = json.loads((folder / "dev_metrics.json").read_text())
        assert 0.0 <= dev["MRR@10"] <= 1.0 and "R@1000" not in dev
        corpus_ids = np.load(folder / "embeddings" / "corpus.ids.npy")
        query_ids = np.load(folder / "embeddings" / "queries.ids.npy")
        assert list(corpus_ids) == list(collection.corpus.ids)
        assert sorted(query_ids) == sorted(collection.queries)
        assert np.load(folder / "embeddings" / "corpus.npy").shape == (len(corpus_ids), 32)
        negatives = NegativeSet.load(folder / "negatives")
        assert negatives.meta["step"] == step and negatives.meta["n"] == 4 and negatives.meta["top_k"] == 20
        assert negatives.query_negatives is not None
        assert np.array_equal(negatives.doc_counts,
                              np.bincount(negatives.doc_negatives[negatives.doc_negatives >= 0],
                                          minlength=len(corpus_ids)))
        assert negatives.query_counts.sum() == (negatives.query_negatives >= 0).sum()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert [r["step"] for r in records if "dev" in r] == [0, 6, 12]
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 and "q2d" in r and "d2q" in r
               for r in records if "loss" in r)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_step"] == 12 and 0 < summary["refresh_share"] < 1
    assert json.loads((run_dir / "best.json").read_text())["step"] in (0, 6, 12)


def test_saved_embeddings_are_those_of_the_checkpoint_weights(env, sync_run):
    from dance_analysis.data import load_collection
    from dance_analysis.data.tokens import cached_tokens
    from dance_analysis.encode import encode_tokens
    from dance_analysis.model import DualEncoder

    folder = sync_run[0] / "checkpoint-6"
    model = DualEncoder.load(str(folder / "encoder"))
    collection = load_collection(str(env["manifest"]))
    tokens = cached_tokens(collection, "doc", model.tokenizer, model.config.doc_max_length,
                           cache_dir=env["cache"])
    again = encode_tokens(model, tokens, "doc", progress=False).vectors
    saved = np.load(folder / "embeddings" / "corpus.npy")
    np.testing.assert_allclose(saved, again, rtol=1e-5, atol=1e-6)
    first = np.load(sync_run[0] / "checkpoint-0" / "embeddings" / "corpus.npy")
    assert not np.allclose(first, saved), "training did not change the weights"


def test_negatives_match_a_brute_force_reference(env, sync_run):
    """Each mined negative lies in the top-K of an exact numpy search over the checkpoint's embeddings and is
    not a judged document (document side) / not a query judging that document (query side)."""
    from dance_analysis.data import load_collection

    collection = load_collection(str(env["manifest"]))
    for step in (0, 12):
        folder = sync_run[0] / f"checkpoint-{step}"
        negatives = NegativeSet.load(folder / "negatives")
        corpus = np.load(folder / "embeddings" / "corpus.npy")
        qids = np.load(folder / "embeddings" / "queries.ids.npy")
        qvec = np.load(folder / "embeddings" / "queries.npy")
        row = {q: i for i, q in enumerate(qids)}
        train_vec = qvec[[row[q] for q in negatives.train_query_ids]]
        k = negatives.meta["top_k"]
        # Within the top K: scored at least the K-th best score (up to float rounding between faiss and numpy;
        # the random encoder scores many documents nearly alike).
        doc_scores = train_vec.astype(np.float64) @ corpus.T.astype(np.float64)
        kth_doc = -np.sort(-doc_scores, axis=1)[:, k - 1]
        for i, qid in enumerate(negatives.train_query_ids):
            drawn = negatives.doc_negatives[i][negatives.doc_negatives[i] >= 0]
            assert len(drawn) == negatives.meta["n"] and len(set(drawn)) == len(drawn)
            assert (doc_scores[i, drawn] >= kth_doc[i] - 1e-5 * abs(kth_doc[i])).all()
            judged = set(collection.qrels[qid])
            assert not judged & {negatives.corpus_ids[d] for d in drawn}
        query_scores = doc_scores.T
        kth_query = -np.sort(-query_scores, axis=1)[:, min(k, len(train_vec)) - 1]
        judged_by = {}
        for qid in negatives.train_query_ids:
            for doc in collection.qrels[qid]:
                judged_by.setdefault(doc, set()).add(qid)
        for p, (q_row, d) in enumerate(negatives.pairs):
            drawn = negatives.query_negatives[p][negatives.query_negatives[p] >= 0]
            assert len(drawn) > 0
            assert (query_scores[d, drawn] >= kth_query[d] - 1e-5 * abs(kth_query[d])).all()
            names = {negatives.train_query_ids[j] for j in drawn}
            assert negatives.train_query_ids[q_row] not in names
            assert not names & judged_by[negatives.corpus_ids[d]]


def test_non_empty_output_directory_is_refused(env, tmp_path, capsys):
    recipe_path = ts.write_recipe(tmp_path / "r.yaml", ts.recipe_dict(
        env["manifest"], env["encoder"], env["cache"], optim={"max_steps": 2}, mining={"refresh_every": 2},
        log={"tensorboard": False, "progress": False}))
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert train_main([str(recipe_path), "--output-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--resume" in err and "--overwrite" in err
    assert train_main([str(recipe_path), "--output-dir", str(other), "--overwrite"]) == 2
    assert "does not look like a dance-train run" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"

    run = tmp_path / "run"
    assert train_main([str(recipe_path), "--output-dir", str(run)]) == 0
    assert train_main([str(recipe_path), "--output-dir", str(run)]) == 2
    capsys.readouterr()
    before = (run / "checkpoint-2" / "checkpoint.json").stat().st_mtime_ns
    assert train_main([str(recipe_path), "--output-dir", str(run), "--overwrite"]) == 0
    assert (run / "checkpoint-2" / "checkpoint.json").stat().st_mtime_ns != before
    # --resume with another recipe names the differing keys.
    assert train_main([str(recipe_path), "--output-dir", str(run), "--resume", "--set", "optim.lr=0.5"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    # --resume of a finished run is a no-op that keeps the checkpoints.
    assert train_main([str(recipe_path), "--output-dir", str(run), "--resume"]) == 0
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [0, 2]


def test_resume_of_a_finished_run_says_it_has_nothing_to_do(env, sync_run, tmp_path, capsys):
    run_dir, _ = sync_run
    recipe_path = ts.write_recipe(tmp_path / "r.yaml", ts.recipe_dict(env["manifest"], env["encoder"], env["cache"]))
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert train_main([str(recipe_path), "--output-dir", str(run_dir), "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"{run_dir}: finished already (checkpoint-12, step 12 of 12); nothing to do" in captured.out
    assert "done:" not in captured.out + captured.err          # no new training time
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(env, tmp_path, monkeypatch, capsys):
    from dance_analysis import losses

    real = losses.dance_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 8:            # step 8: after checkpoint-6
            total = total * float("nan")
        return total, parts

    monkeypatch.setattr(losses, "dance_loss", poisoned)
    recipe_path = ts.write_recipe(tmp_path / "r.yaml", ts.recipe_dict(
        env["manifest"], env["encoder"], env["cache"], log={"tensorboard": False, "progress": False}))
    run = tmp_path / "run"
    assert train_main([str(recipe_path), "--output-dir", str(run)]) == TrainingDiverged.exit_status == 3
    err = capsys.readouterr().err
    assert "training diverged at step 8" in err and "checkpoint-6" in err and "optim.lr" in err
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [0, 6]
    assert NegativeSet.load(run / "checkpoint-6" / "negatives").meta["step"] == 6
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6

    monkeypatch.setattr(losses, "dance_loss", real)
    with pytest.raises(TrainingDiverged):
        monkeypatch.setattr(losses, "dance_loss", lambda *a, **k: (real(*a, **k)[0] * float("inf"), {"total": 1.0}))
        train(recipe_from_dict(ts.recipe_dict(env["manifest"], env["encoder"], env["cache"],
                                              log={"tensorboard": False, "progress": False})),
              tmp_path / "run2")


def test_ance_in_batch_regularisers_accumulation_and_rotation(env, tmp_path):
    recipe = _recipe(env, loss={"objective": "ance", "in_batch": True, "w_align": 0.5, "w_uniform": 0.1},
                     optim={"max_steps": 3, "batch_size": 8, "grad_accum": 2},
                     mining={"refresh_every": 3, "fraction": 0.5}, log={"tensorboard": False, "progress": False},
                     checkpoint={"keep_last": 1})
    run = tmp_path / "run"
    result = train(recipe, run)
    assert result.final_step == 3 and len(result.losses) == 3
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [s for s in (0, 3) if s == 3 or
                                                           result.best["step"] == 0]
    negatives = NegativeSet.load(run / "checkpoint-3" / "negatives")
    assert negatives.query_negatives is None and not negatives.query_counts.any()
    mined = (negatives.doc_negatives >= 0).any(axis=1)
    assert mined.sum() == len(mined) // 2          # a rotating half of the training queries
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if "loss" in r]
    assert all("align" in r and "uniform" in r and "d2q" not in r for r in train_lines)


def test_async_refresh_swaps_in_complete_sets(env, tmp_path):
    from dance_analysis.training.async_refresh import list_sets

    recipe = _recipe(env, mining={"mode": "async", "refresh_every": 4, "max_staleness": 6, "poll_seconds": 0.2},
                     log={"tensorboard": False, "progress": False})
    run = tmp_path / "run"
    result = train(recipe, run)
    assert result.final_step == 12
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    swaps = [r for r in records if "swapped_at" in r]
    used = [r["negatives_step"] for r in records if "loss" in r]
    assert used == sorted(used) and used[0] == 0 and used[-1] >= 4, used
    # The trainer waited whenever the negatives were 6 steps old: it never trained on stale ones.
    assert all(r["step"] - 1 - r["negatives_step"] < 6 for r in records if "loss" in r)
    assert [r["step"] for r in swaps][0] == 0 and len(swaps) >= 2
    assert [r["step"] for r in records if "dev" in r and "swapped_at" not in r] == [12]
    steps = [s for s, _ in checkpoints.list_checkpoints(run)]
    assert steps == [0, 4, 8, 12]
    # The miner added negatives, embeddings and dev metrics to the checkpoints it refreshed, the final one included.
    final = run / "checkpoint-12"
    assert NegativeSet.load(final / "negatives").meta["step"] == 12
    assert (final / "embeddings" / "corpus.npy").is_file() and (final / "dev_metrics.json").is_file()
    for step in {r["step"] for r in swaps}:
        assert NegativeSet.load(run / f"checkpoint-{step}" / "negatives").meta["step"] == step
    assert not [p for p in (run / "refresh").iterdir() if p.name.startswith(".tmp")]
    assert [s for s, _ in list_sets(run)][-1] == 12
    assert "watching" in (run / "miner.log").read_text()


def test_async_sets_are_only_seen_when_complete(tmp_path):
    from dance_analysis.training.async_refresh import list_sets

    root = tmp_path / "refresh"
    (root / ".tmp-step-8-123").mkdir(parents=True)
    (root / "step-4").mkdir()
    (root / "step-12").mkdir()
    (root / "STOP").write_text("{}")
    assert [s for s, _ in list_sets(tmp_path)] == [4, 12]


def test_initial_embeddings_are_shared_by_runs_from_the_same_model(env, tmp_path):
    sections = dict(optim={"max_steps": 1}, mining={"refresh_every": 1, "cache_initial_embeddings": True},
                    log={"tensorboard": False, "progress": False})
    first = train(_recipe(env, **sections), tmp_path / "first")
    second = train(_recipe(env, loss={"objective": "ance"}, **sections), tmp_path / "second")
    assert first.final_step == second.final_step == 1

    def record(run, step):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in lines if r["step"] == step and "dev" in r)

    assert "embeddings_from_cache" not in record(tmp_path / "first", 0)
    assert record(tmp_path / "second", 0).get("embeddings_from_cache") is True
    assert "embeddings_from_cache" not in record(tmp_path / "second", 1)     # only the initial refresh
    for name in ("corpus.npy", "queries.npy", "corpus.ids.npy", "queries.ids.npy"):
        a = np.load(tmp_path / "first" / "checkpoint-0" / "embeddings" / name)
        b = np.load(tmp_path / "second" / "checkpoint-0" / "embeddings" / name)
        assert np.array_equal(a, b)
    # Another starting model (other weights) does not hit the cache.
    other = ts.tiny_encoder(tmp_path / "other-model", seed=1)
    recipe = recipe_from_dict(ts.recipe_dict(env["manifest"], other, env["cache"], **sections))
    train(recipe, tmp_path / "third")
    assert "embeddings_from_cache" not in record(tmp_path / "third", 0)


def test_an_async_miner_that_skips_checkpoints_rotates_by_refresh_count(env, tmp_path):
    """The query chunk mined at a refresh is the refresh's count, not ``step // refresh_every``: a miner that falls
    behind and takes only every fifth checkpoint still walks through the five chunks (the reference rotates by the
    number of refreshes it has made)."""
    import shutil

    from dance_analysis.mining import rotation_slice
    from dance_analysis.training.async_refresh import STOP_FILE, Miner, list_sets, refresh_root
    from dance_analysis.training.config import dump_recipe
    from dance_analysis.training.refresh import prepare_data

    recipe = _recipe(env, mining={"mode": "async", "refresh_every": 1, "fraction": 0.2, "poll_seconds": 0.05})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(recipe))

    def checkpoint(step):
        folder = run / f"checkpoint-{step}"
        shutil.copytree(env["encoder"], folder / "encoder")
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "complete": True}))

    def mine_until(final_step):
        refresh_root(run).mkdir(exist_ok=True)
        (refresh_root(run) / STOP_FILE).write_text(json.dumps({"final_step": final_step}))
        assert Miner(run, device="cpu").run() == 0

    checkpoint(0)
    mine_until(0)
    for step in range(1, 6):   # the trainer wrote five checkpoints while the miner was busy
        checkpoint(step)
    mine_until(5)              # a new miner process: it knows its count from the sets on disk
    assert [s for s, _ in list_sets(run)] == [0, 5]      # checkpoints 1-4 were skipped

    from dance_analysis.model import DualEncoder

    model = DualEncoder.load(str(env["encoder"]))
    data = prepare_data(recipe, model.tokenizer, model.config.query_max_length, model.config.doc_max_length)
    nq = len(data.train_qids)
    mined = {}
    for step in (0, 5):
        negatives = NegativeSet.load(run / "refresh" / f"step-{step}" / "negatives")
        mined[step] = np.flatnonzero((negatives.doc_negatives >= 0).any(axis=1))
    assert np.array_equal(mined[0], rotation_slice(nq, 0.2, 0, recipe.optim.seed))
    assert np.array_equal(mined[5], rotation_slice(nq, 0.2, 1, recipe.optim.seed))
    assert not set(mined[0]) & set(mined[5])
    assert NegativeSet.load(run / "refresh" / "step-5" / "negatives").meta["refresh_index"] == 1


def test_gradient_checkpointing_trains_the_same_weights(env, tmp_path):
    """model.gradient_checkpointing recomputes activations in the backward pass (non-reentrant, dropout replayed
    from the same generator state): the same losses and weights as without it."""
    sections = dict(optim={"max_steps": 2}, mining={"refresh_every": 100, "final_refresh": False},
                    log={"tensorboard": False, "progress": False})
    plain = train(_recipe(env, **sections), tmp_path / "plain")
    recipe = _recipe(env, model={"backbone": str(env["encoder"]), "temperature": 0.5,
                                 "gradient_checkpointing": True}, **sections)
    from dance_analysis.training.loop import Trainer

    trainer = Trainer(recipe, tmp_path / "probe")
    trainer._setup()
    assert getattr(trainer.model.backbone, "is_activation_checkpointing", None) is True
    trainer.log.close()
    checkpointed = train(recipe, tmp_path / "checkpointed")
    np.testing.assert_allclose(checkpointed.losses, plain.losses, rtol=1e-6)
    a, b = ts.encoder_state(tmp_path / "plain" / "checkpoint-2"), ts.encoder_state(tmp_path / "checkpointed" /
                                                                                   "checkpoint-2")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7)
