"""Bad input, table-driven: each malformed file stops the CLI with exit 2 and one message naming the file (and the
line) and what was expected; no traceback, no partial output. BOM and CRLF files are accepted."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import yaml

from dance_analysis.cli import analyze as analyze_cli
from dance_analysis.cli import eval as eval_cli
from dance_analysis.cli import train as train_cli

DOCS = [f"D{i}\tdocument {i} about topic {i % 3}" for i in range(6)]
QUERIES = [f"Q{j}\tquestion about topic {j % 3}" for j in range(3)]
QRELS = [f"Q{j} 0 D{j} 1" for j in range(3)]


def write_manifest(root, docs=None, queries=None, qrels=None, *, raw=None, newline="\n", bom=False, extra=None):
    """An msmarco-passage manifest with docs.tsv, queries.tsv, qrels.tsv; ``raw`` maps file name -> bytes."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"docs.tsv": DOCS if docs is None else docs, "queries.tsv": QUERIES if queries is None else queries,
             "qrels.tsv": QRELS if qrels is None else qrels}
    for name, lines in files.items():
        data = "".join(line + newline for line in lines).encode("utf-8")
        (root / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    for name, data in (raw or {}).items():
        (root / name).write_bytes(data)
    manifest = {"format": "msmarco-passage", "name": "bad", "corpus": "docs.tsv",
                "queries": {"test": "queries.tsv"}, "qrels": {"test": "qrels.tsv"}, **(extra or {})}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return root / "manifest.yaml"


def write_beir(root, corpus=None, queries=None, qrels=None):
    root.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else [json.dumps({"_id": f"D{i}", "text": f"doc {i}"}) for i in range(6)]
    queries = queries if queries is not None else [json.dumps({"_id": f"Q{j}", "text": f"q {j}"}) for j in range(3)]
    qrels = qrels if qrels is not None else ["query-id\tcorpus-id\tscore"] + [f"Q{j}\tD{j}\t1" for j in range(3)]
    (root / "corpus.jsonl").write_text("".join(x + "\n" for x in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(x + "\n" for x in queries), encoding="utf-8")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("".join(x + "\n" for x in qrels), encoding="utf-8")
    return root


# Each case: (tmp) -> (collection path, file named in the message, line or None, phrase of what was expected)
def truncated_gzip(t):
    data = gzip.compress("".join(x + "\n" for x in DOCS * 50).encode())
    return write_manifest(t, raw={"docs.tsv": data[: len(data) // 2]}), "docs.tsv", None, "complete gzip"


def binary_junk(t):
    m = write_manifest(t)
    (t / "docs.tsv").write_bytes(b"D0\tfine\n" + b"\x00\xff\xfe\x80junk\x9c\n")
    return m, "docs.tsv", 2, "UTF-8"


def corpus_columns(t):
    return write_manifest(t, docs=DOCS[:2] + ["D9\tx\ty"]), "docs.tsv", 3, "2 tab-separated fields"


def queries_columns(t):
    return write_manifest(t, queries=["Q0"]), "queries.tsv", 1, "2 tab-separated fields"


def qrels_columns(t):
    return write_manifest(t, qrels=QRELS[:1] + ["Q1 0 D1"]), "qrels.tsv", 2, "4 whitespace-separated fields"


def empty_corpus(t):
    return write_manifest(t, docs=[]), "docs.tsv", None, "non-empty"


def empty_queries(t):
    return write_manifest(t, queries=[]), "queries.tsv", None, "non-empty"


def empty_qrels(t):
    return write_manifest(t, qrels=[]), "qrels.tsv", None, "non-empty"


def duplicate_doc(t):
    return write_manifest(t, docs=DOCS + ["D1\tagain"]), "docs.tsv", 7, "unique document ids"


def duplicate_query(t):
    return write_manifest(t, queries=QUERIES + ["Q0\tother"]), "queries.tsv", 4, "unique query ids"


def id_with_tab(t):
    return write_manifest(t, queries=QUERIES + ["Q\t9\ttext"]), "queries.tsv", 4, "2 tab-separated fields"


def empty_query_text(t):
    return write_manifest(t, queries=QUERIES + ["Q9\t   "]), "queries.tsv", 4, "non-empty text"


def huge_line(t):
    m = write_manifest(t)
    (t / "docs.tsv").write_bytes(("D0\tok\n" + "x" * (10 * 1024 * 1024)).encode())
    return m, "docs.tsv", 2, "2 tab-separated fields"


def grade_not_number(t):
    return write_manifest(t, qrels=QRELS[:2] + ["Q2 0 D2 high"]), "qrels.tsv", 3, "integer relevance grade"


def beir_bad_json(t):
    return write_beir(t, corpus=['{"_id": "D0", "text": "a"}', "{not json"]), "corpus.jsonl", 2, "JSON object"


def beir_missing_id(t):
    return write_beir(t, queries=['{"text": "no id"}']), "queries.jsonl", 1, '"_id"'


def beir_grade(t):
    return (write_beir(t, qrels=["query-id\tcorpus-id\tscore", "Q0\tD0\t1", "Q1\tD1\tyes"]), "test.tsv", 3,
            "integer relevance grade")


def beir_columns(t):
    return (write_beir(t, qrels=["query-id\tcorpus-id\tscore", "Q0\tD0"]), "test.tsv", 2,
            "3 tab-separated fields")


def gzip_junk(t):
    return write_manifest(t, raw={"queries.tsv": b"\x1f\x8b" + b"\x00junk" * 10}), "queries.tsv", None, "gzip"


# Input hygiene: one case per reader and failure. A record that lacks a required field or holds one of the wrong
# type is rejected, naming the file, the line and what was expected.
def beir_corpus_missing_id(t):
    corpus = ['{"_id": "D0", "text": "a"}', '{"title": "t", "text": "no id"}']
    return write_beir(t, corpus=corpus), "corpus.jsonl", 2, 'a non-empty string "_id"'


def beir_corpus_missing_text(t):
    corpus = ['{"_id": "D0", "text": "a"}', '{"_id": "D1", "title": "only a title"}']
    return write_beir(t, corpus=corpus), "corpus.jsonl", 2, 'a string "text"'


def beir_corpus_null_text(t):
    corpus = ['{"_id": "D0", "text": "a"}', '{"_id": "D1", "title": "t", "text": null}']
    return write_beir(t, corpus=corpus), "corpus.jsonl", 2, 'a string "text"'


def beir_corpus_numeric_text(t):
    corpus = ['{"_id": "D0", "text": 5}']
    return write_beir(t, corpus=corpus), "corpus.jsonl", 1, 'a string "text"'


def beir_corpus_numeric_title(t):
    corpus = ['{"_id": "D0", "text": "a"}', '{"_id": "D1", "title": 3, "text": "b"}']
    return write_beir(t, corpus=corpus), "corpus.jsonl", 2, 'a string "title"'


def beir_corpus_list_id(t):
    corpus = ['{"_id": ["D0"], "text": "a"}']
    return write_beir(t, corpus=corpus), "corpus.jsonl", 1, 'a non-empty string "_id"'


def beir_query_missing_text(t):
    queries = ['{"_id": "Q0", "text": "q 0"}', '{"_id": "Q1"}']
    return write_beir(t, queries=queries), "queries.jsonl", 2, 'a string "text"'


def beir_query_numeric_text(t):
    return write_beir(t, queries=['{"_id": "Q0", "text": 12}']), "queries.jsonl", 1, 'a string "text"'


def beir_query_not_object(t):
    return write_beir(t, queries=['["Q0", "text"]']), "queries.jsonl", 1, "one JSON object per line"


def beir_qrels_grade_with_underscore(t):
    return (write_beir(t, qrels=["query-id\tcorpus-id\tscore", "Q0\tD0\t1_0"]), "test.tsv", 2,
            "integer relevance grade")


def beir_qrels_empty_corpus_id(t):
    return (write_beir(t, qrels=["query-id\tcorpus-id\tscore", "Q0\t\t1"]), "test.tsv", 2,
            "non-empty query-id and corpus-id")


def tsv_corpus_missing_text(t):
    return write_manifest(t, docs=DOCS[:3] + ["D9"]), "docs.tsv", 4, "2 tab-separated fields"


def tsv_corpus_empty_id(t):
    return write_manifest(t, docs=DOCS[:1] + ["\tno id"]), "docs.tsv", 2, "a non-empty pid"


def tsv_query_empty_id(t):
    return write_manifest(t, queries=QUERIES + ["\tno id"]), "queries.tsv", 4, "a non-empty qid"


def qrels_grade_with_underscore(t):
    return write_manifest(t, qrels=QRELS[:1] + ["Q1 0 D1 1_0"]), "qrels.tsv", 2, "integer relevance grade"


def qrels_grade_float(t):
    return write_manifest(t, qrels=QRELS[:2] + ["Q2 0 D2 0.5"]), "qrels.tsv", 3, "integer relevance grade"


def _manifest_with(t, key=None, **changes):
    """The manifest with top-level ``changes`` (None: remove the key), and the line of ``key`` (default: the
    first changed key) in the file."""
    if key is None:
        key = next((k for k, v in changes.items() if v is not None), None)
    path = write_manifest(t)
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    path.write_text(yaml.safe_dump(manifest, sort_keys=True), encoding="utf-8")
    line = next((n for n, text in enumerate(path.read_text().splitlines(), start=1)
                 if key is not None and text.startswith(f"{key}:")), None)
    return path, line


def manifest_corpus_not_a_path(t):
    path, line = _manifest_with(t, corpus=5)
    return path, "manifest.yaml", line, "a file path"


def manifest_missing_queries(t):
    path, _ = _manifest_with(t, queries=None)
    return path, "manifest.yaml", None, "'queries'"


def manifest_bad_format(t):
    path, line = _manifest_with(t, format="trec-cast")
    return path, "manifest.yaml", line, "format"


def manifest_unknown_key(t):
    path, line = _manifest_with(t, corpora="docs.tsv")
    return path, "manifest.yaml", line, "unknown manifest key"


def manifest_min_relevance_not_integer(t):
    path, line = _manifest_with(t, min_relevance="high")
    return path, "manifest.yaml", line, "an integer grade"


def manifest_split_file_not_a_path(t):
    path, line = _manifest_with(t, queries={"test": ["queries.tsv"]})
    return path, "manifest.yaml", line, "a file path"


def manifest_random_splits_bad_seed(t):
    path, line = _manifest_with(t, key="random_splits", queries="queries.tsv", qrels="qrels.tsv",
                                random_splits={"seed": "x"})
    return path, "manifest.yaml", line, "random_splits.seed"


def manifest_not_a_mapping(t):
    path = write_manifest(t)
    path.write_text("- docs.tsv\n- queries.tsv\n", encoding="utf-8")
    return path, "manifest.yaml", None, "a YAML mapping"


HYGIENE_CASES = [beir_corpus_missing_id, beir_corpus_missing_text, beir_corpus_null_text, beir_corpus_numeric_text,
                 beir_corpus_numeric_title, beir_corpus_list_id, beir_query_missing_text, beir_query_numeric_text,
                 beir_query_not_object, beir_qrels_grade_with_underscore, beir_qrels_empty_corpus_id,
                 tsv_corpus_missing_text, tsv_corpus_empty_id, tsv_query_empty_id, qrels_grade_with_underscore,
                 qrels_grade_float, manifest_corpus_not_a_path, manifest_missing_queries, manifest_bad_format,
                 manifest_unknown_key, manifest_min_relevance_not_integer, manifest_split_file_not_a_path,
                 manifest_random_splits_bad_seed, manifest_not_a_mapping]

EVAL_CASES = [truncated_gzip, binary_junk, corpus_columns, queries_columns, qrels_columns, empty_corpus,
              empty_queries, empty_qrels, duplicate_doc, duplicate_query, id_with_tab, empty_query_text, huge_line,
              grade_not_number, beir_bad_json, beir_missing_id, beir_grade, beir_columns, gzip_junk, *HYGIENE_CASES]


def check_failure(capsys, code, out_dir, file, line, expected):
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text[-2000:]
    assert "Traceback" not in text
    assert file in captured.err, captured.err
    if line is not None:
        assert f"{file}:{line}" in captured.err, captured.err
    assert expected in captured.err, captured.err
    assert not out_dir.exists() or not any(out_dir.rglob("*")), list(out_dir.rglob("*"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DANCE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("case", HYGIENE_CASES, ids=lambda f: f.__name__)
def test_bad_record_is_an_input_error_naming_file_and_line(case, tmp_path):
    """The readers themselves (no CLI): an InputError whose path, line and expectation are those of the case."""
    from dance_analysis.data import load_collection
    from dance_analysis.errors import InputError

    spec, file, line, expected = case(tmp_path / "data")
    with pytest.raises(InputError) as info:
        load_collection(str(spec))
    error = info.value
    assert error.path.endswith(file), str(error)
    assert error.line == line, str(error)
    assert expected in error.expected, str(error)


@pytest.mark.parametrize("case", EVAL_CASES, ids=lambda f: f.__name__)
def test_bad_collection_file_dance_eval(case, tmp_path, capsys, tiny_model_dir):
    spec, file, line, expected = case(tmp_path / "data")
    out = tmp_path / "out"
    code = eval_cli.main([str(tiny_model_dir), "--collection", str(spec), "--split", "all", "--out", str(out),
                          "--device", "cpu"])
    check_failure(capsys, code, out, file, line, expected)


@pytest.mark.parametrize("kind", ["bom", "crlf", "bom+crlf"])
def test_bom_and_crlf_are_accepted(kind, tmp_path, capsys, tiny_model_dir):
    spec = write_manifest(tmp_path / "data", bom="bom" in kind, newline="\r\n" if "crlf" in kind else "\n")
    from dance_analysis.data import load_collection

    collection = load_collection(str(spec))
    assert sorted(collection.queries) == ["Q0", "Q1", "Q2"]
    assert collection.queries["Q0"] == "question about topic 0"
    assert collection.corpus.ids[0] == "D0"
    assert collection.qrels["Q1"] == {"D1": 1}
    out = tmp_path / "out"
    code = eval_cli.main([str(tiny_model_dir), "--collection", str(spec), "--split", "all", "--out", str(out),
                          "--device", "cpu", "--k", "5"])
    assert code == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file()


def test_qrels_naming_unknown_ids_with_strict(tmp_path):
    from dance_analysis.data import load_collection
    from dance_analysis.errors import InputError

    spec = write_manifest(tmp_path / "data", qrels=QRELS + ["Q0 0 D99 1", "Q77 0 D1 1"])
    load_collection(str(spec))                                 # not strict: dropped with a warning
    with pytest.raises(InputError) as info:
        load_collection(str(spec), strict=True)
    message = str(info.value)
    assert "qrels.tsv:4" in message and "unknown document id" in message and "'D99'" in message
    assert "unknown query id" in message and "expected" in message


# ------------------------------------------------------------------------------------------------- recipes
def _recipe(tmp_path, collection, **changes):
    recipe = yaml.safe_load(open("train/demo-ance.yaml", encoding="utf-8"))
    recipe["data"]["collection"] = str(collection)
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        recipe[section][key] = value
    return recipe


def recipe_wrong_type(t):
    return _recipe(t, "rag24-sample", optim__max_steps="lots"), None, "'optim.max_steps' must be"


def recipe_unknown_key(t):
    return _recipe(t, "rag24-sample", optim__learning_rate=1e-5), None, "unknown key 'optim.learning_rate'"


def recipe_bad_choice(t):
    return _recipe(t, "rag24-sample", loss__objective="colbert"), None, "'loss.objective' must be one of"


def recipe_not_yaml(t):
    return "name: x\nmodel:\n\tbackbone: minilm\n", 3, "not valid YAML"


def recipe_not_mapping(t):
    return "- a\n- b\n", None, "expected a mapping"


def recipe_bad_collection(t):
    manifest = write_manifest(t / "data", qrels=["Q0 0 D0 one"])
    return _recipe(t, manifest, model__backbone=str(t / "model")), None, "qrels.tsv:1"


RECIPE_CASES = [recipe_wrong_type, recipe_unknown_key, recipe_bad_choice, recipe_not_yaml, recipe_not_mapping,
                recipe_bad_collection]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=lambda f: f.__name__)
def test_bad_recipe_dance_train(case, tmp_path, capsys, tiny_model_dir):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    recipe, line, expected = case(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe), encoding="utf-8")
    run = tmp_path / "run"
    code = train_cli.main([str(path), "--output-dir", str(run)])
    if case is recipe_bad_collection:
        check_failure(capsys, code, run, "qrels.tsv", 1, "integer relevance grade")
    else:
        check_failure(capsys, code, run, "recipe.yaml", line, expected)


# ------------------------------------------------------------------------------------------------ dance-analyze
def checkpoint_without_config(t, collection):
    import report_support as rs

    folder = rs.write_checkpoint(t / "run", 5, collection, objective="ance", encoder=None, dim=8)
    (folder / "checkpoint.json").unlink()
    return [str(folder)], "checkpoint-5", "expected"


def run_without_configs(t, collection):
    import report_support as rs

    run = rs.write_run(t / "run", collection, objective="ance", steps=(1, 2), dim=8)
    for child in run.glob("checkpoint-*/checkpoint.json"):
        child.unlink()
    return [str(run)], "checkpoint.json", "expected"


def embeddings_rows_disagree(t, collection):
    import report_support as rs

    doc_ids, docs, query_ids, queries = rs.fake_space(collection, 8, 0, concentrate=0.5, anisotropy=1.0)
    folder = rs.write_embeddings(t / "emb", doc_ids, docs[:-1], query_ids, queries)
    return [str(folder)], "corpus.npy", "one id per row"


def embeddings_ids_missing(t, collection):
    import report_support as rs

    doc_ids, docs, query_ids, queries = rs.fake_space(collection, 8, 0, concentrate=0.5, anisotropy=1.0)
    folder = rs.write_embeddings(t / "emb", doc_ids, docs, query_ids, queries)
    (folder / "queries.ids.npy").unlink()
    return [str(folder)], "queries.ids.npy", "expected"


def embeddings_nan(t, collection):
    import report_support as rs

    doc_ids, docs, query_ids, queries = rs.fake_space(collection, 8, 0, concentrate=0.5, anisotropy=1.0)
    docs[2, 3] = np.nan
    folder = rs.write_embeddings(t / "emb", doc_ids, docs, query_ids, queries)
    return [str(folder)], "corpus.npy", "finite"


def empty_folder(t, collection):
    (t / "nothing").mkdir()
    return [str(t / "nothing")], "nothing", "expected a checkpoint folder"


ANALYZE_CASES = [checkpoint_without_config, run_without_configs, embeddings_rows_disagree, embeddings_ids_missing,
                 embeddings_nan, empty_folder]


@pytest.mark.parametrize("case", ANALYZE_CASES, ids=lambda f: f.__name__)
def test_bad_input_dance_analyze(case, tmp_path, capsys):
    from dance_analysis.data import load_collection

    spec = write_beir(tmp_path / "beir", corpus=[json.dumps({"_id": f"D{i}", "text": f"doc {i}"}) for i in range(30)],
                      queries=[json.dumps({"_id": f"Q{j}", "text": f"q {j}"}) for j in range(6)],
                      qrels=["query-id\tcorpus-id\tscore"] + [f"Q{j}\tD{j}\t1" for j in range(6)])
    collection = load_collection(str(spec))
    paths, file, expected = case(tmp_path, collection)
    out = tmp_path / "report"
    code = analyze_cli.main([*paths, "--collection", str(spec), "--out", str(out), "--quiet", "--device", "cpu"])
    check_failure(capsys, code, out, file, None, expected)
