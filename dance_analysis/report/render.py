"""Render the report: tables from the results, the Jinja2 HTML page, ``metrics.json`` and CSV files, atomically.

The page is one self-contained ``index.html``: CSS inline, figures as ``data:`` URIs, no script, no external
URL, and a Content-Security-Policy that forbids any fetch but inline images. The template is shipped as package
data (``templates/report.html``) and rendered with autoescaping on, so every text that comes from data (ids,
document texts, paths, configs) is escaped.

The output folder is built in a temporary folder beside it and renamed into place when complete: a failure
leaves no partial report, and an existing report folder is replaced as a whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import building_dir
from ..errors import DanceError

TEMPLATE = "report.html"
#: Files a report folder may contain; an existing --out folder with anything else is not replaced.
REPORT_FILES = ("index.html", "metrics.json")
REPORT_SUFFIXES = (".csv",)


@dataclass
class Table:
    """A table for the page and for a CSV file: ``columns`` names and ``rows`` of raw values."""

    name: str                     # CSV file stem
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    highlight: list[bool] = field(default_factory=list)   # rows of representative subjects

    def to_csv(self) -> str:
        """CSV text (numbers with full precision, missing values empty)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
        return buffer.getvalue()


def fmt(value: Any, digits: int = 4) -> str:
    """A cell as text: floats with ``digits`` significant decimals, None as an en dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "\u2013"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value) if value else "\u2013"
    return str(value)


# ----------------------------------------------------------------------------------------------- tables
def _subject_rows(results: dict):
    for run in results["runs"]:
        for subject in run["subjects"]:
            yield run, subject, subject["label"] == run["representative"]


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def build_tables(results: dict) -> dict[str, Table]:
    """Every table of the report (each also written as ``<name>.csv``)."""
    from .compute import D2Q_KS, Q2D_MEASURES

    tables: dict[str, Table] = {}

    t = Table("ranking", "Ranking metrics",
              ["run", "subject", "step", "embeddings", "queries"] + [f"q2d {m}" for m in Q2D_MEASURES]
              + ["d2q MRR@10"] + [f"d2q R@{k}" for k in D2Q_KS] + ["d2q documents", "dev MRR@10 (trainer)"])
    for run, s, rep in _subject_rows(results):
        q2d, d2q = s["ranking"]["q2d"], s["ranking"]["d2q"]
        t.rows.append([run["name"], s["label"], s["step"], s["embeddings_source"], q2d.get("queries")]
                      + [q2d.get(m) for m in Q2D_MEASURES] + [d2q.get("MRR@10")]
                      + [d2q.get(f"R@{k}") for k in D2Q_KS]
                      + [d2q.get("n_docs"), _get(s, "dev_metrics", "MRR@10")])
        t.highlight.append(rep)
    tables["ranking"] = t

    cmp = results["comparison"]
    treatment, control = cmp["claims_from"] or ("", "")
    t = Table("claims", "Claims C1-C5",
              ["claim", "metric", "label", "primary", "predicted", "control", "treatment", "control value",
               "treatment value", "effect", "CI low", "CI high", "p", "p (Holm)", "verdict", "claim verdict"])
    for claim in cmp["claims"]:
        for row in claim["rows"]:
            levels = cmp["levels"].get(row["key"], {})
            t.rows.append([claim["claim"], row["key"], row["label"], row["primary"], row["direction"], control,
                           treatment, _get(levels, control, "value"), _get(levels, treatment, "value"),
                           row["effect"], row["low"], row["high"], row["p"], row["p_holm"], row["verdict"],
                           claim["verdict"]])
            t.highlight.append(bool(row["primary"]))
    tables["claims"] = t

    t = Table("geometry", "Anisotropy and isotropy",
              ["run", "subject", "step", "side", "rows", "mean pairwise cosine", "PC1 share", "PC10 share",
               "PC50 share", "|mean| / mean norm", "IsoScore", "effective rank", "I(W)", "norm mean",
               "norm std"])
    for run, s, rep in _subject_rows(results):
        for side in ("queries", "documents", "both"):
            g = s["geometry"][side]
            t.rows.append([run["name"], s["label"], s["step"], side, g.get("rows"), g.get("mean_cosine"),
                           g.get("pc1"), g.get("pc10"), g.get("pc50"), g.get("mean_vector_norm_ratio"),
                           g.get("isoscore"), g.get("effective_rank"), g.get("partition_ratio"),
                           _get(g, "norm", "mean"), _get(g, "norm", "std")])
            t.highlight.append(rep)
    tables["geometry"] = t

    t = Table("query_document", "Query-document geometry",
              ["run", "subject", "step", "centroid distance (unit)", "centroid distance (raw)",
               "mean q-d cosine", "cos positive", "cos negative", "cos random", "dist positive",
               "dist negative", "dist random"])
    for run, s, rep in _subject_rows(results):
        qd = s["geometry"]["qd"]
        t.rows.append([run["name"], s["label"], s["step"], qd.get("centroid_distance"),
                       qd.get("centroid_distance_raw"), qd.get("cross_mean_cosine")]
                      + [_get(qd, g, "cosine_mean") for g in ("positive", "negative", "random")]
                      + [_get(qd, g, "distance_mean") for g in ("positive", "negative", "random")])
        t.highlight.append(rep)
    tables["query_document"] = t

    t = Table("alignment_uniformity", "Alignment and uniformity",
              ["run", "subject", "step", "alignment", "uniformity queries", "uniformity documents",
               "uniformity both", "method", "pairs"])
    for run, s, rep in _subject_rows(results):
        au = s["alignment_uniformity"]
        u = au["uniformity"]
        t.rows.append([run["name"], s["label"], s["step"], au.get("alignment"), _get(u, "queries", "value"),
                       _get(u, "documents", "value"), _get(u, "both", "value"),
                       "/".join(str(_get(u, side, "method")) for side in ("queries", "documents", "both")),
                       _get(u, "both", "pairs")])
        t.highlight.append(rep)
    tables["alignment_uniformity"] = t

    t = Table("sampling", "Negative sampling",
              ["run", "subject", "step", "temperature", "top K", "q2d softmax entropy (norm.)",
               "q2d max prob", "q2d positive mass", "d2q softmax entropy (norm.)", "d2q max prob",
               "doc draws entropy (norm.)", "doc draws Gini", "docs never drawn", "query draws entropy (norm.)",
               "query draws Gini", "queries never drawn", "refresh doc Gini", "refresh query entropy (norm.)",
               "refresh query Gini", "refresh queries never drawn"])
    for run, s, rep in _subject_rows(results):
        sm = s["sampling"]
        q2d, d2q = sm.get("q2d_softmax") or {}, sm.get("d2q_softmax") or {}
        split = sm["split_counts"]
        trainer = sm.get("trainer_counts") or {}
        t.rows.append([run["name"], s["label"], s["step"], sm.get("temperature"), sm.get("top_k"),
                       q2d.get("entropy_norm_mean"), q2d.get("max_prob_mean"), q2d.get("positive_mass_mean"),
                       d2q.get("entropy_norm_mean"), d2q.get("max_prob_mean"),
                       _get(split, "documents", "entropy_norm"), _get(split, "documents", "gini"),
                       _get(split, "documents", "never_share"), _get(split, "queries", "entropy_norm"),
                       _get(split, "queries", "gini"), _get(split, "queries", "never_share"),
                       _get(trainer, "documents", "gini"), _get(trainer, "queries", "entropy_norm"),
                       _get(trainer, "queries", "gini"), _get(trainer, "queries", "never_share")])
        t.highlight.append(rep)
    tables["sampling"] = t
    return tables


# ----------------------------------------------------------------------------------------------- HTML
def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    folder = Path(__file__).with_name("templates")
    env = Environment(loader=FileSystemLoader(str(folder)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=False, default=str)
    return env


def render_html(results: dict, figures: dict, tables: dict[str, Table], provenance: dict,
                panels: dict | None = None) -> str:
    """The page as a string (autoescaped Jinja2); ``panels``: ``{"pca": [...], "umap": [...]}`` projection panels."""
    labels = {run["name"]: run["name"] for run in results["runs"]}
    return _environment().get_template(TEMPLATE).render(
        r=results, figures=figures, tables=tables, provenance=provenance, labels=labels,
        panels={"pca": [], "umap": [], **(panels or {})})


# ----------------------------------------------------------------------------------------------- writing
def check_replaceable(out: Path) -> None:
    """Raise :class:`DanceError` unless ``out`` is absent or an earlier report folder (safe to replace)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DanceError(f"{out}: exists and is not a folder; expected a new or an earlier report folder for --out")
    foreign = [p.name for p in out.iterdir()
               if p.name not in REPORT_FILES and not p.name.endswith(REPORT_SUFFIXES)]
    if foreign:
        raise DanceError(f"{out}: exists and holds files that are not part of a report ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose another --out folder")


def write_report(out: str | os.PathLike, html: str, results: dict, tables: dict[str, Table]) -> Path:
    """Write ``index.html``, ``metrics.json`` and one CSV per table into ``out``, atomically.

    Everything goes to a temporary folder beside ``out`` first; it is renamed into place only when complete
    (an earlier report in ``out`` is swapped out and deleted afterwards). Returns the path of ``index.html``.
    """
    out = Path(out)
    check_replaceable(out)
    with building_dir(out) as tmp:
        (tmp / "index.html").write_text(html, encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        for table in tables.values():
            (tmp / f"{table.name}.csv").write_text(table.to_csv(), encoding="utf-8")
        os.chmod(tmp, 0o755)
    return out / "index.html"


def csv_names(tables: Sequence[Table] | dict[str, Table]) -> list[str]:
    """File names of the CSV tables."""
    values = tables.values() if isinstance(tables, dict) else tables
    return [f"{t.name}.csv" for t in values]
