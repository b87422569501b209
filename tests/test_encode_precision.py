"""Encode precision: fp32 unchanged bit for bit, bf16 autocast with float32 vectors, the ``auto`` choice (hardware,
timing, agreement guard; stubbed where the machine would decide), the command-line scope, and the refreshes of a
training run (decided once, recorded, kept on resume)."""

from __future__ import annotations

import json
import logging
import shutil
import time

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis import encode
from dance_analysis.encode import (
    PrecisionDecision,
    TextTokens,
    agreement,
    choose_precision,
    encode_texts,
    encode_tokens,
    encoding_precision,
)
from dance_analysis.errors import DanceError
from dance_analysis.model import DualEncoder

WORDS = ("dense retrieval ranks passages by inner product of query and document vectors; hard negatives come "
         "from an index refreshed while the encoder trains, and the geometry of both spaces moves with it").split()


def texts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))) for _ in range(count)]


@pytest.fixture
def tiny(tiny_model_dir, one_torch_thread):
    return DualEncoder.load(str(tiny_model_dir))


@pytest.fixture
def tokens(tiny):
    docs = texts(40)
    return TextTokens.from_texts([str(i) for i in range(len(docs))], docs, tiny.tokenizer, 32)


@pytest.fixture
def query_tokens(tiny):
    queries = texts(24, seed=1)
    return TextTokens.from_texts([f"q{i}" for i in range(len(queries))], queries, tiny.tokenizer, 16)


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    """Every test decides afresh (decisions are cached per process)."""
    monkeypatch.setattr(encode, "_PRECISION", {})


def stub_hardware(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(encode, "bf16_hardware", lambda device="cpu": (native, "CPU flags: stub"))


# ------------------------------------------------------------------------------------------------ fp32 / bf16

def test_fp32_is_bitwise_the_encoding_without_the_option(tiny, tokens):
    legacy = encode_tokens(tiny, tokens, "doc", batch_size=7, progress=False).vectors
    forced = encode_tokens(tiny, tokens, "doc", batch_size=7, progress=False, precision="fp32").vectors
    with encoding_precision("fp32") as scope:
        scoped = encode_tokens(tiny, tokens, "doc", batch_size=7, progress=False).vectors
    assert legacy.dtype == forced.dtype == scoped.dtype == np.float32
    assert np.array_equal(legacy, forced) and np.array_equal(legacy, scoped)
    assert scope.used == {"doc": ["fp32"]}
    # ... and equal to a plain float32 forward of each text alone (no padding, no autocast).
    with torch.inference_mode():
        one = tiny.encode(*tokens.batch(np.array([5])), "doc").numpy()
    np.testing.assert_allclose(legacy[5:6], one, rtol=1e-5, atol=1e-6)


def test_bf16_runs_under_autocast_and_returns_float32_vectors(tiny, tokens, monkeypatch):
    seen = []
    forward = tiny.encode

    def spy(input_ids, attention_mask, side):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(input_ids, attention_mask, side)

    monkeypatch.setattr(tiny, "encode", spy)
    fp32 = encode_tokens(tiny, tokens, "doc", batch_size=8, progress=False, precision="fp32").vectors
    assert seen and not any(enabled for enabled, _ in seen)
    seen.clear()
    bf16 = encode_tokens(tiny, tokens, "doc", batch_size=8, progress=False, precision="bf16").vectors
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert bf16.dtype == np.float32
    assert not np.array_equal(bf16, fp32)                       # computed in fewer bits ...
    cosine = np.sum(bf16 * fp32, axis=1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.99                                  # ... and still the same vectors
    half = encode_tokens(tiny, tokens, "doc", batch_size=8, progress=False, precision="bf16",
                         dtype=np.float16).vectors
    assert half.dtype == np.float16


def test_bf16_weights_encode_with_a_bf16_copy_and_leave_the_model_alone(tiny, tokens):
    fp32 = encode_tokens(tiny, tokens, "doc", batch_size=8, progress=False, precision="fp32").vectors
    weights = encode_tokens(tiny, tokens, "doc", batch_size=8, progress=False, precision="bf16-weights").vectors
    assert all(p.dtype == torch.float32 for p in tiny.parameters())
    assert weights.dtype == np.float32 and not np.array_equal(weights, fp32)
    cosine = np.sum(weights * fp32, axis=1) / (np.linalg.norm(weights, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.99
    assert np.array_equal(fp32, encode_tokens(tiny, tokens, "doc", batch_size=8, progress=False).vectors)
    copy = encode.bf16_copy(tiny)
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters()) and not copy.training


def test_the_scope_sets_the_precision_of_calls_that_name_none(tiny, tokens):
    ids = [str(i) for i in range(6)]
    docs = texts(6, seed=3)
    direct = encode_texts(tiny, ids, docs, "query", progress=False, precision="bf16").vectors
    with encoding_precision("bf16") as scope:
        scoped = encode_texts(tiny, ids, docs, "query", progress=False).vectors
        explicit = encode_texts(tiny, ids, docs, "query", progress=False, precision="fp32").vectors
    assert np.array_equal(direct, scoped)
    assert np.array_equal(explicit, encode_texts(tiny, ids, docs, "query", progress=False).vectors)
    assert scope.used == {"query": ["bf16", "fp32"]} and scope.requested == "bf16"
    assert "query bf16/fp32" in scope.describe()
    with pytest.raises(DanceError, match="fp32, bf16, bf16-weights, auto"):
        encode_tokens(tiny, tokens, "doc", progress=False, precision="int8")
    with pytest.raises(DanceError, match="fp32, bf16, bf16-weights, auto"):
        with encoding_precision("fp8"):
            pass


# ------------------------------------------------------------------------------------------- the auto choice

def test_forced_precisions_are_taken_as_asked_without_measuring(tiny, tokens, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("a forced precision must not be measured")

    monkeypatch.setattr(encode, "_paired_encode", no_measuring)
    assert choose_precision(tiny, tokens, "fp32", device="cpu").precision == "fp32"
    decision = choose_precision(tiny, tokens, "bf16", device="cpu")
    assert decision.precision == "bf16" and decision.requested == "bf16" and decision.agreement is None


def test_auto_without_native_bf16_is_fp32_and_measures_nothing(tiny, tokens, monkeypatch):
    stub_hardware(monkeypatch, False)
    monkeypatch.setattr(encode, "_paired_encode", lambda *a, **k: pytest.fail("measured without bf16 hardware"))
    decision = choose_precision(tiny, tokens, "auto", device="cpu")
    assert (decision.precision, decision.reason) == ("fp32", "no native bf16")
    assert decision.hardware == "CPU flags: stub"
    monkeypatch.setattr(encode, "PROBE_SIZE", 4)
    with encoding_precision("auto") as scope:
        vectors = encode_tokens(tiny, tokens, "doc", progress=False).vectors
    assert scope.used == {"doc": ["fp32"]}
    assert np.array_equal(vectors, encode_tokens(tiny, tokens, "doc", progress=False).vectors)


def _stub_measurement(monkeypatch, seconds: dict[str, list[float]], noise: dict[str, float] | None = None):
    """``_paired_encode`` returning the true float32 vectors for every precision (plus ``noise[precision]``
    times normal noise) and the given ``seconds`` per precision."""
    noise = noise or {}

    def paired(models, cache, rows, side, device, batch_size, timed=True):
        reference = encode_tokens(models["fp32"], cache, side, indices=rows, progress=False,
                                  precision="fp32").vectors
        rng = np.random.default_rng(len(rows))
        vectors = {name: (reference + noise.get(name, 0.0) * rng.standard_normal(reference.shape)
                          ).astype(np.float32) for name in models}
        return vectors, {name: list(seconds[name]) if timed else [] for name in models}

    monkeypatch.setattr(encode, "_paired_encode", paired)


def test_auto_picks_the_fastest_candidate_in_agreement(tiny, tokens, query_tokens, monkeypatch, caplog):
    stub_hardware(monkeypatch, True)
    _stub_measurement(monkeypatch, {"fp32": [1.0, 1.1, 0.9], "bf16": [0.6, 0.6, 0.7],
                                    "bf16-weights": [0.5, 0.5, 0.5]})
    with caplog.at_level(logging.INFO, logger="dance_analysis.encode"):
        decision = choose_precision(tiny, tokens, "auto", device="cpu", queries=query_tokens, batch_size=8, k=200)
    assert decision.precision == "bf16-weights" and decision.reason.startswith("measured")
    assert decision.speedups["bf16"] == pytest.approx(np.median([1 / 0.6, 1.1 / 0.6, 0.9 / 0.7]))
    assert decision.speedup == decision.speedups["bf16-weights"] == pytest.approx(2.0)
    assert decision.agreement["bf16"]["overlap"] == 1.0 and decision.agreement["bf16"]["k"] == 20  # capped
    assert "encode precision: bf16-weights" in caplog.text and "top-20 overlap 1.0000" in caplog.text
    record = json.loads(json.dumps(decision.to_dict()))
    assert PrecisionDecision.from_dict(record) == decision
    assert PrecisionDecision.from_dict(record, reason="kept").reason == "kept"


def test_a_faster_candidate_that_disagrees_gives_way_to_one_that_agrees(tiny, tokens, query_tokens, monkeypatch):
    stub_hardware(monkeypatch, True)
    _stub_measurement(monkeypatch, {"fp32": [1.0] * 3, "bf16": [0.7] * 3, "bf16-weights": [0.5] * 3},
                      noise={"bf16-weights": 1.0})
    decision = choose_precision(tiny, tokens, "auto", device="cpu", queries=query_tokens, batch_size=8)
    assert decision.precision == "bf16"
    assert decision.agreement["bf16-weights"]["overlap"] < encode.AGREEMENT_THRESHOLD


def test_auto_keeps_fp32_when_bf16_is_not_faster(tiny, tokens, monkeypatch):
    stub_hardware(monkeypatch, True)
    _stub_measurement(monkeypatch, {"fp32": [1.0, 1.0, 1.0], "bf16": [0.98, 1.0, 1.2],
                                    "bf16-weights": [1.0, 0.99, 1.01]})
    decision = choose_precision(tiny, tokens, "auto", device="cpu", batch_size=8)
    assert decision.precision == "fp32" and "not faster" in decision.reason


def test_a_record_written_before_bf16_weights_were_measured_still_reads():
    old = {"precision": "bf16", "requested": "auto", "reason": "measured: faster and in agreement",
           "device": "cpu", "hardware": "CPU flags: x", "timings": {"fp32": [2.0, 2.2], "bf16": [1.0, 1.0]},
           "speedup": 2.1, "agreement": {"mean_cosine": 0.99999, "overlap": 0.996, "k": 20, "queries": 256,
                                         "docs": 256}}
    decision = PrecisionDecision.from_dict(old, reason="kept from checkpoint-6")
    assert decision.precision == "bf16" and decision.agreement["bf16"]["overlap"] == 0.996
    assert decision.speedup == pytest.approx(2.1) and "bf16 x2.10" in decision.describe()


def test_the_guard_falls_back_to_fp32_when_bf16_disagrees(tiny, tokens, query_tokens, monkeypatch, caplog):
    """A bf16 path that is faster but moves the neighbours: the real forward, slowed down for fp32 and with
    noise for bf16, so that the timing favours bf16 and only the guard stops it."""
    stub_hardware(monkeypatch, True)
    forward = encode._forward

    def disagreeing(model, cache, rows, side, device, precision, shapes):
        vectors = forward(model, cache, rows, side, device, precision, shapes)
        if precision == "fp32":
            time.sleep(0.02)
            return vectors
        rng = np.random.default_rng(int(np.sum(rows)))
        return (vectors + rng.standard_normal(vectors.shape) * np.abs(vectors).mean()).astype(np.float32)

    monkeypatch.setattr(encode, "_forward", disagreeing)
    with caplog.at_level(logging.INFO, logger="dance_analysis.encode"):
        decision = choose_precision(tiny, tokens, "auto", device="cpu", queries=query_tokens, batch_size=8)
    assert decision.precision == "fp32" and "disagrees" in decision.reason and "falling back" in decision.reason
    assert decision.speedup > 1.5
    assert all(numbers["overlap"] < encode.AGREEMENT_THRESHOLD for numbers in decision.agreement.values())
    assert any(r.levelno == logging.WARNING and "falling back to fp32" in r.getMessage() for r in caplog.records)


def test_auto_in_a_scope_decides_once_per_process_on_a_large_enough_workload(tiny, tokens, query_tokens,
                                                                               monkeypatch):
    stub_hardware(monkeypatch, True)
    calls = []

    def choose(model, docs, requested="auto", **kwargs):
        calls.append(len(kwargs["doc_rows"]))
        return PrecisionDecision("bf16", "auto", "stub", "cpu", "stub")

    monkeypatch.setattr(encode, "choose_precision", choose)
    monkeypatch.setattr(encode, "PROBE_SIZE", 30)             # 40 texts < 2 probes: too few to measure
    with encoding_precision("auto") as scope:
        small = encode_tokens(tiny, tokens, "doc", progress=False).vectors
    assert calls == [] and scope.used == {"doc": ["fp32"]}
    assert np.array_equal(small, encode_tokens(tiny, tokens, "doc", progress=False).vectors)
    monkeypatch.setattr(encode, "PROBE_SIZE", 8)
    with encoding_precision("auto") as scope:
        vectors = encode_tokens(tiny, tokens, "doc", progress=False).vectors
        encode_tokens(tiny, query_tokens, "query", progress=False)    # small: takes the decision made
    assert calls == [40] and scope.used == {"doc": ["bf16"], "query": ["bf16"]}
    assert np.array_equal(vectors, encode_tokens(tiny, tokens, "doc", progress=False, precision="bf16").vectors)


def test_auto_measures_on_this_machine_when_it_has_native_bf16(tiny, tokens, query_tokens):
    native, hardware = encode.bf16_hardware("cpu")
    decision = choose_precision(tiny, tokens, "auto", device="cpu", queries=query_tokens, batch_size=8)
    if not native:
        assert decision.precision == "fp32" and decision.timings == {}
        return
    assert decision.hardware == hardware and ("avx512_bf16" in hardware or "amx_bf16" in hardware
                                              or "bf16" in hardware)
    assert set(decision.timings) == {"fp32", "bf16", "bf16-weights"}
    assert all(len(values) == 5 for values in decision.timings.values())   # 40 texts in batches of 8
    for numbers in decision.agreement.values():
        assert 0.99 < numbers["mean_cosine"] <= 1.0 + 1e-6 and 0.0 <= numbers["overlap"] <= 1.0
    assert decision.precision in ("fp32", "bf16", "bf16-weights")


def test_agreement_counts_shared_neighbours():
    rng = np.random.default_rng(0)
    queries, docs = rng.standard_normal((6, 8)), rng.standard_normal((30, 8))
    same = agreement((queries, docs), (queries, docs), 5)
    assert same == {"mean_cosine": pytest.approx(1.0), "overlap": 1.0, "k": 5, "queries": 6, "docs": 30}
    # Moving every document far away from all queries changes every top-5 list completely.
    ranked = np.argsort(-(queries @ docs.T), axis=1)[:, :5]
    moved = docs.copy()
    moved[np.unique(ranked)] *= -1
    assert agreement((queries, docs), (queries, moved), 5)["overlap"] < 0.5
    # Same side: a text is not its own neighbour, and k is cut to the others.
    assert agreement((docs[:4], docs[:4]), (docs[:4], docs[:4]), 20, same_side=True)["k"] == 3


def test_bf16_hardware_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(encode, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni", "sse2"}))
    assert encode.bf16_hardware("cpu") == (False, "CPU flags: avx512f avx512_vnni")
    monkeypatch.setattr(encode, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    assert encode.bf16_hardware("cpu") == (True, "CPU flags: avx512f avx512_bf16 amx_bf16")
    monkeypatch.setattr(encode, "cpu_flags", lambda: frozenset({"fp", "asimd", "bf16"}))      # Arm
    assert encode.bf16_hardware("cpu")[0]


# ---------------------------------------------------------------------------------- refreshes of a training run

@pytest.fixture
def run_env(tmp_path, tiny_setup):
    with tiny_setup(tmp_path) as env:
        yield env


def _recipe(env, precision: str):
    from dance_analysis.training.config import recipe_from_dict

    raw = ts.recipe_dict(env["manifest"], env["encoder"], env["cache"], mining={"encode_precision": precision})
    return recipe_from_dict(raw).validate()


@pytest.mark.parametrize("chosen", ["bf16", "bf16-weights"])
def test_a_run_decides_at_its_first_refresh_records_it_and_keeps_it_on_resume(run_env, monkeypatch, chosen):
    from dance_analysis.embeddings import Embeddings
    from dance_analysis.training.loop import train

    calls = []

    def measured(model, docs, requested="auto", **kwargs):
        calls.append((requested, kwargs["k"], len(kwargs["query_rows"])))
        return PrecisionDecision(chosen, "auto", "measured: the fastest in agreement", "cpu", "CPU flags: stub",
                                 {"fp32": (1.0,), chosen: (0.5,)},
                                 {chosen: {"mean_cosine": 0.9999, "overlap": 0.995, "k": 20, "queries": 20,
                                           "docs": 48}})

    monkeypatch.setattr(encode, "choose_precision", measured)
    full = run_env["root"] / "full"
    train(_recipe(run_env, "auto"), full)
    assert calls == [("auto", 20, 20)]                             # once, at the first refresh
    for step in (0, 6, 12):
        record = json.loads((full / f"checkpoint-{step}" / "refresh.json").read_text())
        assert record["encode_precision"]["precision"] == chosen
        state = json.loads((full / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["encode_precision"]["precision"] == chosen
    logged = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["encode_precision"]["speedup"] for r in logged if "encode_precision" in r] == [2.0, 2.0, 2.0]

    # The refreshes really ran in it: the saved vectors are that encoding of the checkpoint's weights.
    model = DualEncoder.load(str(full / "checkpoint-6" / "encoder"))
    saved = Embeddings.load(full / "checkpoint-6" / "embeddings" / "corpus").vectors
    from dance_analysis.data import load_collection
    from dance_analysis.data.tokens import cached_tokens

    doc_tokens = cached_tokens(load_collection(str(run_env["manifest"])), "doc", model.tokenizer,
                               model.config.doc_max_length, cache_dir=str(run_env["cache"]))
    bf16 = encode_tokens(model, doc_tokens, "doc", batch_size=16, progress=False, precision=chosen).vectors
    fp32 = encode_tokens(model, doc_tokens, "doc", batch_size=16, progress=False, precision="fp32").vectors
    assert np.array_equal(saved, bf16) and not np.array_equal(saved, fp32)

    # Resumed from checkpoint-6: nothing is measured again and checkpoint-12 is encoded as before.
    resumed = run_env["root"] / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoint-12")
    monkeypatch.setattr(encode, "choose_precision", lambda *a, **k: pytest.fail("decided again on resume"))
    train(_recipe(run_env, "auto"), resumed, resume=True)
    record = json.loads((resumed / "checkpoint-12" / "refresh.json").read_text())
    assert record["encode_precision"]["precision"] == chosen
    assert record["encode_precision"]["reason"] == "kept from checkpoint-6"
    again = Embeddings.load(resumed / "checkpoint-12" / "embeddings" / "corpus").vectors
    assert np.array_equal(again, Embeddings.load(full / "checkpoint-12" / "embeddings" / "corpus").vectors)


def test_a_run_with_fp32_refreshes_records_fp32(run_env, monkeypatch):
    from dance_analysis.training.loop import train

    monkeypatch.setattr(encode, "_paired_encode", lambda *a, **k: pytest.fail("fp32 must not be measured"))
    run = run_env["root"] / "fp32"
    recipe = _recipe(run_env, "fp32")
    recipe.optim.max_steps = 6
    train(recipe, run)
    record = json.loads((run / "checkpoint-6" / "refresh.json").read_text())
    assert record["encode_precision"]["precision"] == "fp32"
    assert record["encode_precision"]["reason"] == "requested"


def test_kept_precision_of_a_checkpoint_from_before_the_option():
    from dance_analysis.training.refresh import kept_precision

    old = kept_precision(None, "checkpoint-40", "cpu")
    assert old.precision == "fp32" and "before the option" in old.reason
    kept = kept_precision({"precision": "bf16", "requested": "auto", "reason": "measured"}, "checkpoint-6", "cpu")
    assert (kept.precision, kept.requested, kept.reason) == ("bf16", "auto", "kept from checkpoint-6")


# ------------------------------------------------------------------------------------------ the command lines

def test_dance_eval_precision_bf16_is_used_and_recorded(tiny_model_dir, tmp_path, capsys, one_torch_thread):
    from dance_analysis.cli.eval import main

    run = tmp_path / "out" / "run.trec"
    status = main([str(tiny_model_dir), "--collection", "rag24-sample", "--split", "test", "--k", "20",
                   "--run", str(run), "--doc-max-length", "32", "--query-max-length", "16", "--precision", "bf16"])
    assert status == 0
    assert "encoded in doc bf16, query bf16 (--precision bf16)" in capsys.readouterr().out
    record = json.loads((run.parent / "metrics.json").read_text())
    assert record["encode_precision"] == {"requested": "bf16", "used": {"doc": ["bf16"], "query": ["bf16"]}}


@pytest.mark.parametrize("command, default", [("eval", "fp32"), ("mine", "auto"), ("analyze", "fp32")])
def test_the_commands_take_precision_with_their_defaults(command, default):
    import importlib

    parser = importlib.import_module(f"dance_analysis.cli.{command}").build_parser()
    action = next(a for a in parser._actions if "--precision" in a.option_strings)
    assert action.default == default and tuple(action.choices) == ("fp32", "bf16", "bf16-weights", "auto")


def test_dance_analyze_and_dance_mine_encode_inside_the_precision_scope(monkeypatch, tmp_path, capsys):
    import dance_analysis.hard_negatives as hard_negatives
    import dance_analysis.report.build as build
    from dance_analysis.cli.analyze import main as analyze_main
    from dance_analysis.cli.mine import main as mine_main

    seen = []

    def fake_report(*args, **kwargs):
        scope = encode._SCOPE.get()
        seen.append(scope.requested)
        scope.note("doc", scope.requested)
        raise DanceError("stop here")

    monkeypatch.setattr(build, "build_report", fake_report)
    assert analyze_main(["minilm", "--out", str(tmp_path / "r")]) == 2
    assert analyze_main(["minilm", "--out", str(tmp_path / "r"), "--precision", "bf16"]) == 2

    def fake_mine(*args, **kwargs):
        seen.append(encode._SCOPE.get().requested)
        raise DanceError("stop here")

    monkeypatch.setattr(hard_negatives, "mine_split", fake_mine)
    assert mine_main(["minilm", "--out", str(tmp_path / "n.jsonl")]) == 2
    assert seen == ["fp32", "bf16", "auto"]
    assert encode._SCOPE.get() is None          # the scope ends with the command
