"""``dance-analyze --export-projections``: every analysed query and passage, with its 2-D coordinates, as files
that interactive tools read, so that a user can hover over and search the points the static report only draws.

Written into the report folder, beside ``index.html``:

``projections.parquet``
    one row per (subject, point): ``subject`` (the checkpoint or model label), ``run`` (the input / arm), ``step``,
    ``side`` (``query`` / ``document``), ``id``, ``text`` (the first :data:`SNIPPET` characters), ``relevance``
    (a query: how many analysed documents are relevant to it; a document: its highest grade for an analysed query,
    0 when unjudged), ``relevant`` (a query: it has a relevant document; a document: it is relevant to one),
    ``pca_x`` / ``pca_y`` (each subject's PCA of its unit vectors, rotated onto the first subject's axes) and
    ``umap_x`` / ``umap_y`` (the report's UMAP coordinates; empty for points outside its sample).
``projector/``
    TensorBoard projector files: per subject and method a ``<n>-<method>.tensors.tsv`` (2 columns) with its
    ``<n>-<method>.metadata.tsv`` (a header row, then one row per point: subject, side, id, relevance, text), and
    ``projector_config.pbtxt`` naming them; ``tensorboard --logdir <report>/projector`` opens them in the projector
    plugin. UMAP tensors hold only the points of the UMAP sample.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["write_projection_files", "SNIPPET", "PARQUET_NAME", "PROJECTOR_DIR"]

#: Characters of text kept per point.
SNIPPET = 200
PARQUET_NAME = "projections.parquet"
PROJECTOR_DIR = "projector"


def _cell(text: str) -> str:
    """A metadata TSV cell: no tabs or line breaks (the projector splits on them), at most :data:`SNIPPET`."""
    return re.sub(r"[\t\r\n]+", " ", str(text))[:SNIPPET]


def _grades(points: dict, collection) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: number of relevant analysed documents; per document: highest grade for an analysed query."""
    doc_row = {d: i for i, d in enumerate(points["doc_ids"].tolist())}
    q_count = np.zeros(len(points["query_ids"]), dtype=np.int64)
    d_grade = np.zeros(len(points["doc_ids"]), dtype=np.int64)
    d_relevant = np.zeros(len(points["doc_ids"]), dtype=bool)
    for i, qid in enumerate(points["query_ids"].tolist()):
        for doc, grade in (collection.qrels.get(qid) or {}).items():
            row = doc_row.get(doc)
            if row is None:
                continue
            d_grade[row] = max(d_grade[row], int(grade))
            if grade >= collection.min_relevance:
                q_count[i] += 1
                d_relevant[row] = True
    return q_count, q_count > 0, d_grade, d_relevant


def write_projection_files(folder: Path, points: dict, collection) -> list[str]:
    """Write :data:`PARQUET_NAME` and :data:`PROJECTOR_DIR` into ``folder`` from ``points``
    (:func:`dance_analysis.report.compute.projection_points`); returns the names written."""
    import pandas as pd

    query_ids = [str(q) for q in points["query_ids"].tolist()]
    doc_ids = [str(d) for d in points["doc_ids"].tolist()]
    q_texts = [_cell(collection.queries.get(q, "")) for q in query_ids]
    d_texts = [_cell(t) for t in collection.corpus.texts(doc_ids)] if doc_ids else []
    q_count, q_relevant, d_grade, d_relevant = _grades(points, collection)
    frames = []
    for subject in points["subjects"]:
        for side, ids, texts, relevance, relevant, pca, umap in (
                ("query", query_ids, q_texts, q_count, q_relevant, subject["pca_queries"], subject["umap_queries"]),
                ("document", doc_ids, d_texts, d_grade, d_relevant, subject["pca_documents"],
                 subject["umap_documents"])):
            frames.append(pd.DataFrame({
                "subject": subject["label"], "run": subject["run"],
                "step": pd.array([subject["step"]] * len(ids), dtype="Int64"),
                "side": side, "id": ids, "text": texts, "relevance": relevance.astype(np.int64),
                "relevant": relevant.astype(bool),
                "pca_x": pca[:, 0], "pca_y": pca[:, 1], "umap_x": umap[:, 0], "umap_y": umap[:, 1]}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.to_parquet(folder / PARQUET_NAME, index=False)

    projector = folder / PROJECTOR_DIR
    projector.mkdir()
    config = []
    for n, subject in enumerate(points["subjects"]):
        rows = table[table["subject"] == subject["label"]]
        for method in ("pca", "umap"):
            coords = rows[[f"{method}_x", f"{method}_y"]].to_numpy(dtype=np.float64)
            keep = np.isfinite(coords).all(axis=1)
            if not keep.any():
                continue
            base = f"{n}-{method}"
            np.savetxt(projector / f"{base}.tensors.tsv", coords[keep], delimiter="\t", fmt="%.7g")
            meta = rows[keep]
            lines = ["subject\tside\tid\trelevance\ttext"]
            lines += [f"{_cell(s)}\t{side}\t{_cell(i)}\t{r}\t{_cell(t)}" for s, side, i, r, t in
                      zip(meta["subject"], meta["side"], meta["id"], meta["relevance"], meta["text"])]
            (projector / f"{base}.metadata.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
            name = f"{subject['label']} {method.upper()}".replace("\\", "/").replace('"', "'")
            config.append(f'embeddings {{\n  tensor_name: "{name}"\n  tensor_path: "{base}.tensors.tsv"\n'
                          f'  metadata_path: "{base}.metadata.tsv"\n}}\n')
    (projector / "projector_config.pbtxt").write_text("".join(config), encoding="utf-8")
    return [PARQUET_NAME, PROJECTOR_DIR]
