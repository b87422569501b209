"""dance-analyze --export-projections: every analysed query and passage of every subject with id, side, run /
checkpoint, text snippet, relevance and its PCA / UMAP coordinates, as Parquet (read back with pandas) and as
TensorBoard projector files (the config parsed with the projector plugin's own protobuf, every tensor and metadata
file of matching length); the PCA coordinates are the project's aligned_pca of the subject's vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import train_support as ts
from dance_analysis import analysis as A
from dance_analysis.cli.analyze import main as analyze_main
from dance_analysis.data import load_collection
from dance_analysis.encode import encode_texts
from dance_analysis.model import DualEncoder

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


def test_projections_are_written_and_read_back(tmp_path, tiny_model_dir, capsys, one_torch_thread):
    manifest = ts.write_tiny_collection(tmp_path / "collection", n_docs=30, n_train=6, n_dev=8)
    out = tmp_path / "report"
    assert analyze_main([str(tiny_model_dir), "--collection", str(manifest), "--split", "dev", "--out", str(out),
                         "--quiet", "--umap-points", "16", "--device", "cpu", "--export-projections"]) == 0
    assert f"projections: {out / 'projections.parquet'}" in capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())
    collection = load_collection(manifest)
    qids = collection.evaluable(collection.split_queries("dev"))
    table = pd.read_parquet(out / "projections.parquet")
    assert list(table.columns) == ["subject", "run", "step", "side", "id", "text", "relevance", "relevant",
                                   "pca_x", "pca_y", "umap_x", "umap_y"]
    queries = table[table.side == "query"]
    docs = table[table.side == "document"]
    assert sorted(queries.id) == sorted(qids) and len(docs) == len(collection.corpus) == 30
    assert set(table.subject) == {results["runs"][0]["subjects"][0]["label"]}
    # relevance: a query counts its relevant documents, a document carries its grade
    for qid, count in zip(queries.id, queries.relevance):
        assert count == sum(1 for g in collection.qrels[qid].values() if g >= collection.min_relevance)
    judged = {d for q in qids for d in collection.qrels[q]}
    assert set(docs[docs.relevance > 0].id) == judged
    assert queries.text.iloc[0] == collection.queries[queries.id.iloc[0]]
    # UMAP: exactly the points of the report's UMAP sample (8 queries, 8 documents)
    assert np.isfinite(queries.umap_x).sum() == 8 and np.isfinite(docs.umap_x).sum() == 8
    # PCA: the project's aligned_pca of this model's vectors (one subject: its own axes)
    model = DualEncoder.load(str(tiny_model_dir)).eval()
    doc_ids = docs.id.tolist()
    q = encode_texts(model, queries.id.tolist(), [collection.queries[x] for x in queries.id], "query",
                     progress=False).vectors
    d = encode_texts(model, doc_ids, collection.corpus.texts(doc_ids), "doc", progress=False).vectors
    d_xy, q_xy = A.aligned_pca([d], [q])[0]
    np.testing.assert_allclose(docs[["pca_x", "pca_y"]].to_numpy(), d_xy, atol=1e-4)
    np.testing.assert_allclose(queries[["pca_x", "pca_y"]].to_numpy(), q_xy, atol=1e-4)

    # TensorBoard projector files
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2

    folder = out / "projector"
    config = text_format.Parse((folder / "projector_config.pbtxt").read_text(),
                               projector_config_pb2.ProjectorConfig())
    assert [e.tensor_path for e in config.embeddings] == ["0-pca.tensors.tsv", "0-umap.tensors.tsv"]
    for embedding, rows in zip(config.embeddings, (len(table), 16)):
        tensors = np.loadtxt(folder / embedding.tensor_path, delimiter="\t", ndmin=2)
        meta = (folder / embedding.metadata_path).read_text().splitlines()
        assert tensors.shape == (rows, 2) and len(meta) == rows + 1
        assert meta[0] == "subject\tside\tid\trelevance\ttext"
        assert all(len(line.split("\t")) == 5 for line in meta)
    # a later report with the same files replaces them only with --overwrite, and the files are its own
    assert analyze_main([str(tiny_model_dir), "--collection", str(manifest), "--split", "dev", "--out", str(out),
                         "--quiet", "--umap-points", "16", "--device", "cpu", "--overwrite"]) == 0
    assert not (out / "projections.parquet").exists()
