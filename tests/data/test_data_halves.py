"""The MS MARCO document dev queries split in two seeded halves (query and qrels files): disjoint, together every
judged query, the same halves for the same seed, and loadable as the dev / test splits of a manifest."""

from __future__ import annotations

import gzip

import yaml

from dance_analysis.data import load_collection
from dance_analysis.data.halves import main, split_in_halves


def _dev_files(folder, n=25):
    queries = "".join(f"{1000 + i}\tquestion number {i}\n" for i in range(n + 3))     # 3 queries without qrels
    qrels = "".join(f"{1000 + i} 0 D{i % 7} 1\n" for i in range(n))
    (folder / "docdev-queries.tsv.gz").write_bytes(gzip.compress(queries.encode()))
    (folder / "docdev-qrels.tsv").write_text(qrels + "1001 0 D6 1\n")                   # a second judgment
    return folder / "docdev-queries.tsv.gz", folder / "docdev-qrels.tsv"


def _ids(path):
    return [line.split("\t")[0] for line in path.read_text().splitlines()]


def test_two_seeded_halves(tmp_path):
    queries, qrels = _dev_files(tmp_path)
    written = split_in_halves(queries, qrels, tmp_path / "out", seed=13)
    half1, half2 = _ids(written["half1"]["queries"]), _ids(written["half2"]["queries"])
    assert not set(half1) & set(half2)
    assert sorted(half1 + half2) == [str(1000 + i) for i in range(25)]      # judged queries only
    assert abs(len(half1) - len(half2)) <= 1
    for half, ids in (("half1", half1), ("half2", half2)):
        judged = {line.split()[0] for line in written[half]["qrels"].read_text().splitlines()}
        assert judged == set(ids)
    assert written["half1"]["qrels"].read_text().count("1001 0") in (0, 2)   # both judgments go with their query
    again = split_in_halves(queries, qrels, tmp_path / "again", seed=13)
    assert again["half1"]["queries"].read_text() == written["half1"]["queries"].read_text()
    other = split_in_halves(queries, qrels, tmp_path / "other", seed=14)
    assert _ids(other["half1"]["queries"]) != half1

    # The recipes' manifest: half 1 selects checkpoints (dev), half 2 is held out (test).
    manifest = {"format": "msmarco-doc", "corpus": "docs.tsv",
                "queries": {"dev": "out/docdev-half1-queries.tsv", "test": "out/docdev-half2-queries.tsv"},
                "qrels": {"dev": "out/docdev-half1-qrels.tsv", "test": "out/docdev-half2-qrels.tsv"}}
    (tmp_path / "docs.tsv").write_text("".join(f"D{i}\thttp://x/{i}\tt{i}\tbody {i}\n" for i in range(7)))
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    collection = load_collection(str(tmp_path / "manifest.yaml"))
    assert collection.split_queries("dev") == half1 and collection.split_queries("test") == half2


def test_the_command_line(tmp_path, capsys):
    queries, qrels = _dev_files(tmp_path)
    assert main([str(queries), str(qrels), str(tmp_path / "halves")]) == 0
    assert "half1: 13 queries" in capsys.readouterr().out
    assert main([str(queries), str(tmp_path / "missing.tsv"), str(tmp_path / "x")]) == 2
    assert "missing.tsv" in capsys.readouterr().err
