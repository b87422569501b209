"""dance-mine on a hand-made collection with saved 2-d embeddings, so that every expected negative, count and
diagnostic is written out by hand; the training-data files read back by the datasets library's own JSON loader
(what sentence-transformers and Tevatron train from) when it is installed, else by json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dance_analysis.cli.mine import main as mine_main
from report_support import write_beir, write_embeddings

DOCS = {f"d{i}": f"text of document {i}" for i in range(6)}
QUERIES = {"q0": "first query", "q1": "second query"}
# grade 2 = relevant (--min-relevance 2), grade 1 = partly relevant
QRELS = {"q0": {"d0": 2, "d1": 1}, "q1": {"d3": 2}}
#                       d0          d1           d2          d3          d4          d5
VECTORS = np.array([[0.9, 0.2], [0.95, 0.1], [0.8, 0.6], [0.5, 0.9], [0.3, 0.4], [0.1, 0.3]])
# q0 = (1, 0) scores d1 .95, d0 .90 (its positive), d2 .80, d3 .50, d4 .30, d5 .10
# q1 = (0, 1) scores d3 .90 (its positive), d2 .60, d4 .40, d5 .30, d0 .20, d1 .10
QUERY_VECTORS = np.array([[1.0, 0.0], [0.0, 1.0]])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    collection = write_beir(root / "beir", DOCS, QUERIES, QRELS, split="train")
    embeddings = write_embeddings(root / "emb", list(DOCS), VECTORS, list(QUERIES), QUERY_VECTORS)
    return root, collection, embeddings


def run(data, *options, fmt="ids", name="out.jsonl", capsys=None):
    root, collection, embeddings = data
    out = root / name
    code = mine_main([str(embeddings), "--collection", str(collection), "--split", "train", "--min-relevance", "2",
                      "--out", str(out), "--format", fmt, *options])
    return code, out


def table_rows(text):
    """The summary table as {label: (count, rest of the line)} (label in the first 32 columns, count in the next 11)."""
    return {line[:32].strip(): (line[33:43].strip(), line[43:].strip()) for line in text.splitlines()}


def read_ids(out):
    return {r["query_id"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_default_excludes_every_judged_document(data, capsys):
    code, out = run(data, "--n", "3", "--sampling", "top")
    assert code == 0
    rows = read_ids(out)
    assert rows["q0"]["negative_ids"] == ["d2", "d3", "d4"]          # d0 relevant, d1 judged 1: both out
    assert rows["q1"]["negative_ids"] == ["d2", "d4", "d5"]
    assert rows["q0"]["positive_ids"] == ["d0"] and rows["q0"]["positive_scores"] == [pytest.approx(0.9)]
    assert rows["q0"]["negative_scores"] == pytest.approx([0.8, 0.5, 0.3])
    table = table_rows(capsys.readouterr().out)
    assert table["retrieved (top 200)"][0] == "12"                   # 6 documents for each of 2 queries
    assert table["judged, excluded (grade >= 1)"][0] == "3"          # d0, d1 for q0; d3 for q1
    assert table["candidates"][0] == "9"
    assert table["left to draw from"][0] == "9" and table["drawn (top, n = 3)"][0] == "6"
    assert table["queries short of negatives"][0] == "0"
    assert table["negatives scoring >= positive"][1] == "0.00%"
    assert table["judged partly relevant"][1].startswith("0.00%")


def test_exclude_grade_two_lets_partly_relevant_through_and_shows_it(data, capsys):
    code, out = run(data, "--n", "3", "--sampling", "top", "--exclude-grade", "2")
    assert code == 0
    assert read_ids(out)["q0"]["negative_ids"] == ["d1", "d2", "d3"]
    table = table_rows(capsys.readouterr().out)
    # d1 (grade 1, 0.95 above the positive's 0.90) is 1 of the 6 drawn negatives
    assert table["judged partly relevant"][1].startswith("16.67%")
    assert table["negatives scoring >= positive"][1] == "16.67%"
    assert table["judged, excluded (grade >= 2)"][0] == "2"


def test_absolute_margin_and_window(data, capsys):
    code, out = run(data, "--n", "3", "--sampling", "top", "--exclude-grade", "2", "--absolute-margin", "0")
    assert code == 0 and read_ids(out)["q0"]["negative_ids"] == ["d2", "d3", "d4"]      # d1 skipped: .95 > .90
    table = table_rows(capsys.readouterr().out)
    assert table["skipped: absolute margin"][0] == "1"
    # retrieved positions 1..3: q0 d0 d2 d3 (d0 judged) -> d2 d3; q1 d2 d4 d5
    code, out = run(data, "--n", "5", "--sampling", "top", "--range-min", "1", "--range-max", "4")
    rows = read_ids(out)
    assert rows["q0"]["negative_ids"] == ["d2", "d3"] and rows["q1"]["negative_ids"] == ["d2", "d4", "d5"]
    table = table_rows(capsys.readouterr().out)
    assert table["queries short of negatives"][0] == "2"             # both have fewer than 5
    # q0 loses columns 0, 4, 5 (d1 d4 d5; d0 is judged), q1 columns 0, 4, 5 (d3 judged; d0 d1)
    assert table["skipped: rank window"][0] == "4"
    # the candidates' positions instead (sentence-transformers): q0's candidates d2 d3 d4 d5 -> d3 d4 d5
    code, out = run(data, "--n", "5", "--sampling", "top", "--range-min", "1", "--range-max", "4",
                    "--rank-window", "candidates")
    assert read_ids(out)["q0"]["negative_ids"] == ["d3", "d4", "d5"]


def test_relative_margin_and_max_score(data):
    # q1: pos 0.9, threshold 0.9 - 0.9 * 0.4 = 0.54: d2 (0.6) skipped
    code, out = run(data, "--n", "2", "--sampling", "top", "--relative-margin", "0.4")
    assert read_ids(out)["q1"]["negative_ids"] == ["d4", "d5"]
    code, out = run(data, "--n", "2", "--sampling", "top", "--max-score", "0.45")
    rows = read_ids(out)
    assert rows["q0"]["negative_ids"] == ["d4", "d5"] and rows["q1"]["negative_ids"] == ["d4", "d5"]


def test_random_sampling_draws_from_the_candidates(data):
    code, out = run(data, "--n", "2", "--seed", "3")
    rows = read_ids(out)
    assert set(rows["q0"]["negative_ids"]) <= {"d2", "d3", "d4", "d5"} and len(rows["q0"]["negative_ids"]) == 2
    again = read_ids(run(data, "--n", "2", "--seed", "3", name="again.jsonl")[1])
    assert again == rows


def _load_jsonl(path):
    """The datasets library's own JSON loader when installed (what both trainers use), else json."""
    try:
        import datasets
    except ImportError:
        return [json.loads(line) for line in path.read_text().splitlines()]
    return list(datasets.load_dataset("json", data_files=str(path), split="train"))


def test_sentence_transformers_rows(data, capsys):
    code, out = run(data, "--n", "3", "--sampling", "top", fmt="sentence-transformers", name="st.jsonl")
    assert code == 0
    rows = _load_jsonl(out)
    assert rows == [
        {"query": "first query", "positive": "text of document 0", "negative_1": "text of document 2",
         "negative_2": "text of document 3", "negative_3": "text of document 4"},
        {"query": "second query", "positive": "text of document 3", "negative_1": "text of document 2",
         "negative_2": "text of document 4", "negative_3": "text of document 5"},
    ]
    # a query with fewer than n negatives leaves its rows out (every row has the same columns): q0 has 4
    # candidates (d2 d3 d4 d5), q1 five (d2 d4 d5 d0 d1)
    code, out = run(data, "--n", "5", "--sampling", "top", fmt="sentence-transformers", name="st5.jsonl")
    rows = _load_jsonl(out)
    assert [r["query"] for r in rows] == ["second query"] and rows[0]["negative_5"] == "text of document 1"
    printed = capsys.readouterr().out
    # the count says what it counts: rows (query, relevant passage) and the queries they belong to
    assert "wrote 1 sentence-transformers row (one per query and relevant passage)" in printed
    assert "left out: 1 row of 1 query with fewer than 5 negatives" in printed


def test_tevatron_lines(data):
    code, out = run(data, "--n", "2", "--sampling", "top", fmt="tevatron", name="tevatron.jsonl")
    assert code == 0
    rows = _load_jsonl(out)
    assert rows[0] == {"query_id": "q0", "query": "first query",
                       "positive_passages": [{"docid": "d0", "title": "", "text": "text of document 0"}],
                       "negative_passages": [{"docid": "d2", "title": "", "text": "text of document 2"},
                                             {"docid": "d3", "title": "", "text": "text of document 3"}]}
    assert [r["query_id"] for r in rows] == ["q0", "q1"]


def test_bad_input_exits_2_with_one_line(data, capsys):
    code, _ = run(data, "--range-max", "300")
    err = capsys.readouterr().err
    assert code == 2 and "range_max" in err and len(err.strip().splitlines()) == 1
    code, _ = run(data, "--sampling", "top", "--range-min", "4", "--range-max", "2")
    assert code == 2 and "range_max" in capsys.readouterr().err
    root, collection, embeddings = data
    (root / "bad").mkdir()
    for name in ("corpus.npy", "corpus.ids.npy", "queries.ids.npy"):
        (root / "bad" / name).write_bytes((embeddings / name).read_bytes())
    (root / "bad" / "queries.npy").write_bytes(b"not npy")
    out = root / "never.jsonl"
    code = mine_main([str(root / "bad"), "--collection", str(collection), "--split", "train", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "queries.npy" in err and not out.exists()


def test_a_model_is_encoded_as_the_pipeline_encodes(tmp_path, one_torch_thread, monkeypatch):
    """MODEL without saved embeddings: encoded (queries and documents), then mined as from the pipeline's vectors."""
    import train_support as ts
    from dance_analysis.data import load_collection
    from dance_analysis.pipeline import embed_corpus, embed_queries, load_model

    monkeypatch.setenv("DANCE_CACHE", str(tmp_path / "cache"))
    manifest = ts.write_tiny_collection(tmp_path / "collection", n_docs=30, n_train=8, n_dev=2)
    encoder = ts.tiny_encoder(tmp_path / "model")
    collection = load_collection(str(manifest))
    model = load_model(str(encoder))
    qids = collection.evaluable(collection.split_queries("train"))
    corpus = embed_corpus(model, collection, progress=False)
    queries = embed_queries(model, collection, qids, progress=False)
    folder = write_embeddings(tmp_path / "emb", corpus.ids, corpus.vectors, queries.ids, queries.vectors)
    outs = []
    kept = tmp_path / "kept"
    for source in (encoder, folder, kept):
        out = tmp_path / f"{source.name}.jsonl"
        extra = ["--save-embeddings", str(kept)] if source == encoder else []
        assert mine_main([str(source), "--collection", str(manifest), "--split", "train", "--top-k", "10", "--n",
                          "3", "--out", str(out), *extra]) == 0
        outs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [r["negative_ids"] for r in outs[0]] == [r["negative_ids"] for r in outs[1]]
    assert [r["negative_ids"] for r in outs[0]] == [r["negative_ids"] for r in outs[2]]   # the kept vectors
    assert len(outs[0]) == len(qids)
    assert np.array_equal(np.load(kept / "queries.ids.npy"), np.asarray(qids))


def test_flagembedding_lines(data, capsys):
    """FlagEmbedding's fine-tuning layout {query, pos, neg}, read back with the datasets JSON loader its embedder
    uses; the negatives are those of the ids output, in the same order."""
    code, out = run(data, "--n", "2", "--sampling", "top", fmt="flagembedding", name="flag.jsonl")
    assert code == 0
    rows = _load_jsonl(out)
    assert rows == [
        {"query": "first query", "pos": ["text of document 0"], "neg": ["text of document 2", "text of document 3"]},
        {"query": "second query", "pos": ["text of document 3"],
         "neg": ["text of document 2", "text of document 4"]},
    ]
    ids = read_ids(run(data, "--n", "2", "--sampling", "top", name="flag-ids.jsonl")[1])
    for row, qid in zip(rows, ("q0", "q1")):
        assert row["neg"] == [DOCS[d] for d in ids[qid]["negative_ids"]]
        assert row["pos"] == [DOCS[d] for d in ids[qid]["positive_ids"]]
    assert "wrote 2 flagembedding rows (one per query)" in capsys.readouterr().out
