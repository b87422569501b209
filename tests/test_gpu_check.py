"""bench/gpu_check.py --smoke: the one-GPU check's code, run at tiny sizes on the CPU.

The script runs as a subprocess; its JSON lines are read back and checked against independent references: the
search's first ranking against numpy brute force in float64 over the same generated vectors, the MS MARCO
extrapolation against the arithmetic and the estimate printed in docs/scaling.md, the training step's settings
against the recipe file, the end-to-end run against the checkpoints it must have written.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import yaml

import train_support as ts

SCRIPT = ts.REPO / "bench" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_of_every_check(tmp_path):
    env = ts.subprocess_env(tmp_path / "cache")
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    checks = {line["check"]: line for line in lines if "check" in line}
    summary = lines[-1]
    assert list(checks) == ["search", "encode", "train", "e2e"]
    assert summary["summary"] and summary["ok"] and summary["checks"] == {name: True for name in checks}
    assert all(line["ok"] and line["device"] == "cpu" and line["smoke"] for line in checks.values())

    # search: the first query's ranking, recomputed by brute force in float64 from the same generated vectors
    search = checks["search"]
    queries, corpus = _module().search_data(search["docs"], search["dim"], search["queries"], search["seed"])
    scores = corpus.astype(np.float64) @ queries[0].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    assert search["first_query_top10"] == order[:10].tolist()
    assert math.isclose(search["first_query_kth_score"], scores[order[search["k"] - 1]], rel_tol=1e-5)
    assert search["backend"] == "faiss-cpu" and search["recall_vs_torch"] == 1.0
    assert search["train_steps_during_search"] >= 1

    # encode: the extrapolation to MS MARCO, and the estimate as docs/scaling.md prints it
    encode = checks["encode"]
    assert math.isclose(encode["msmarco_corpus_minutes"], 3_213_835 / encode["docs_per_second"] / 60, rel_tol=1e-3)
    section = (ts.REPO / "docs" / "scaling.md").read_text().split("## (a) MS MARCO document")[1]
    row = next(line for line in section.splitlines() if line.startswith("| encode corpus |"))
    assert encode["scaling_md_estimate_minutes"] == float(row.split("|")[3].strip().removesuffix(" min"))
    assert encode["min_cosine_bf16_vs_fp32"] > 0.99

    # train: the MS MARCO recipe's optimiser and accumulation, three variants, the fp16 scale alive
    recipe = yaml.safe_load((ts.REPO / "train" / "msmarco-doc-ance-firstp.yaml").read_text())["optim"]
    train = checks["train"]
    assert (train["optimizer"], train["grad_accum"]) == (recipe["optimizer"], recipe["grad_accum"])
    assert train["micro_batch"] == recipe["batch_size"] // (8 * recipe["grad_accum"])
    assert set(train["variants"]) == {"bf16", "fp16", "bf16+checkpointing"}
    assert all(v["finite"] and all(math.isfinite(x) for x in v["losses"]) for v in train["variants"].values())
    assert min(train["variants"]["fp16"]["scales"]) >= 1.0

    # e2e: --prepare then the async run, the miner on the CPU, every checkpoint written
    e2e = checks["e2e"]
    assert (e2e["prepare_exit"], e2e["train_exit"], e2e["miner_device"]) == (0, 0, "cpu")
    assert e2e["checkpoints"] == ["checkpoint-0", "checkpoint-2"]
    assert (tmp_path / "work" / "e2e-run" / "checkpoint-2" / "trainer_state.json").is_file()
    assert summary["seconds"] < 180      # tiny sizes: about half a minute on 2 idle cores


def test_without_a_gpu_the_full_check_refuses(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--checks", "search"], env=ts.subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA GPU" in done.stdout
