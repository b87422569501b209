"""The search of a sync refresh sharded over the ranks (2 gloo processes under torchrun) against one process.

Both sides get the same embeddings (random, seeded; given to rank 0 only, as after encoding) and run
:func:`dance_analysis.training.refresh.search_and_mine`. In the two-process job every rank receives the embeddings
and searches its whole blocks of queries (4 per block here, so that both ranks search in every one of the three
searches of this tiny collection) against the whole corpus; rank 0 mines and evaluates from the gathered rankings.
The mined negatives (document and query negatives, sampling counts) and the dev metrics must equal the
single-process ones exactly, and the record must show that both ranks searched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import train_support as ts
from dance_analysis.mining import NegativeSet
from dance_analysis.training.config import load_recipe
from dance_analysis.training.refresh import prepare_data, search_and_mine, summary_line

BLOCK = 4

WORKER = '''
import json, sys
from pathlib import Path
import numpy as np
from dance_analysis.model import DualEncoder
from dance_analysis.training.config import load_recipe
from dance_analysis.training.distributed import init_distributed
from dance_analysis.training.refresh import prepare_data, search_and_mine

recipe_path, encoder, vectors, out = (Path(a) for a in sys.argv[1:5])
block = int(sys.argv[5])
recipe = load_recipe(recipe_path)
dist = init_distributed("cpu", 5)
model = DualEncoder.load(str(encoder))
data = prepare_data(recipe, model.tokenizer, model.config.query_max_length, model.config.doc_max_length, dist)
corpus = np.load(vectors / "corpus.npy") if dist.is_main else None     # as after encoding: rank 0 holds them
queries = np.load(vectors / "queries.npy") if dist.is_main else None
result = search_and_mine(corpus, queries, data, recipe, 6, dist=dist, search_device="cpu", refresh_index=0,
                         query_block=block)
if dist.is_main:
    result.negatives.save(out / "negatives")
    (out / "record.json").write_text(json.dumps({"dev": result.dev_metrics, "parallel": result.parallel,
                                                 "timings": result.timings}))
dist.barrier()
dist.close()
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_setup):
    with tiny_setup(tmp_path_factory.mktemp("sharded")) as env:
        yield _setup(env["root"], env["manifest"], env["encoder"])


def _setup(root, manifest, encoder):
    recipe_path = ts.write_recipe(root / "recipe.yaml", ts.recipe_dict(
        manifest, encoder, root / "cache", mining={"top_k": 20, "n": 4, "query_top_k": 12}))
    recipe = load_recipe(recipe_path)
    from dance_analysis.model import DualEncoder

    model = DualEncoder.load(str(encoder))
    data = prepare_data(recipe, model.tokenizer, model.config.query_max_length, model.config.doc_max_length)
    rng = np.random.default_rng(3)
    vectors = root / "vectors"
    vectors.mkdir()
    corpus = rng.standard_normal((data.num_docs, 24)).astype(np.float32)
    queries = rng.standard_normal((len(data.query_ids), 24)).astype(np.float32)
    np.save(vectors / "corpus.npy", corpus)
    np.save(vectors / "queries.npy", queries)
    return {"root": root, "recipe_path": recipe_path, "recipe": recipe, "encoder": encoder, "data": data,
            "corpus": corpus, "queries": queries, "vectors": vectors}


def _same_negatives(a: NegativeSet, b: NegativeSet) -> None:
    for name in ("doc_negatives", "query_negatives", "doc_counts", "query_counts"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_sharded_search_over_two_ranks_equals_one_process(setup):
    root, data, recipe = setup["root"], setup["data"], setup["recipe"]
    out = root / "two-ranks"
    out.mkdir()
    script = root / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(setup["recipe_path"]), str(setup["encoder"]), str(setup["vectors"]), str(out), str(BLOCK)]
    done = subprocess.run(command, env=ts.subprocess_env(root / "cache"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    sharded = NegativeSet.load(out / "negatives")
    record = json.loads((out / "record.json").read_text())

    # One process, the same blocks of queries per search call, and the production block size (4096: one call).
    for block in (BLOCK, 4096):
        single = search_and_mine(setup["corpus"], setup["queries"], data, recipe, 6, search_device="cpu",
                                 refresh_index=0, query_block=block)
        _same_negatives(sharded, single.negatives)
        assert record["dev"] == single.dev_metrics
        assert single.parallel == {}
    assert (sharded.doc_negatives >= 0).any() and (sharded.query_negatives >= 0).any()

    # Both ranks searched, in whole blocks; together every query of the three searches exactly once.
    ranks = record["parallel"]["search_ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["queries"] > 0 for r in ranks), ranks
    anchors = len(np.unique(data.pairs[:, 1]))
    assert sum(r["queries"] for r in ranks) == len(data.train_qids) + anchors + len(data.dev_qids)
    threads = record["parallel"]["threads"]
    assert threads["search"] >= 1 and threads["rank0"] >= threads["search"]
    for part in ("share", "search", "mine", "eval", "geometry"):
        assert part in record["timings"], record["timings"]
    # ... and the run log's line names each timed part (sending the embeddings only when there was any)
    line = summary_line({"step": 6, "dev": record["dev"], "timings": record["timings"]})
    shown = dict(re.findall(r"(\w+) ([0-9.]+)s", line))
    for part, seconds in record["timings"].items():
        assert float(shown[part]) == round(seconds, 1), line
    assert "share" not in summary_line({"step": 6, "dev": single.dev_metrics, "timings": single.timings})
