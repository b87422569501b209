"""Render the report: tables from the results, the Jinja2 HTML page, ``metrics.json`` and CSV files, atomically.

The page is one self-contained ``index.html``: CSS inline, figures as ``data:`` URIs, no script, no external
URL, and a Content-Security-Policy that forbids any fetch but inline images. The template is shipped as package
data (``templates/report.html``) and rendered with autoescaping on, so every text that comes from data (ids,
document texts, paths, configs) is escaped.

The output folder is built in a temporary folder beside it and renamed into place when complete: a failure
leaves no partial report. An existing report folder is replaced, as a whole, only when asked (``overwrite``):
a report never silently replaces an earlier one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import building_dir, read_json
from ..errors import DanceError
from .columns import SIDES, TABLES, table_columns

TEMPLATE = "report.html"
#: Files a report folder may contain; an existing --out folder with anything else is not replaced.
REPORT_FILES = ("index.html", "metrics.json", "projections.parquet", "projector")
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
    """The report's tables (one CSV each): the per-checkpoint tables from the registry
    :data:`~dance_analysis.report.columns.COLUMNS` (one row per subject; the geometry table one per subject and
    side), and the claims table from the comparison."""
    tables: dict[str, Table] = {}
    for name, title in TABLES.items():
        columns = table_columns(name)
        sides = SIDES if name == "geometry" else (None,)
        t = Table(name, title, ["run", "subject", "step"] + (["side"] if name == "geometry" else [])
                  + [c.label for c in columns])
        for run, s, rep in _subject_rows(results):
            for side in sides:
                t.rows.append([run["name"], s["label"], s["step"]] + ([side] if side else [])
                              + [c.value(s, side) for c in columns])
                t.highlight.append(rep)
        tables[name] = t
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
def earlier_report(out: Path) -> dict:
    """What an earlier report in ``out`` records about itself: ``{"inputs": [...], "created": ...}`` from its
    ``metrics.json`` (empty when it records nothing readable)."""
    record = read_json(out / "metrics.json", kind=dict, invalid=None) or {}
    provenance = record.get("provenance")
    if not isinstance(provenance, dict):
        return {}
    return {key: provenance[key] for key in ("inputs", "created", "command") if key in provenance}


def check_replaceable(out: Path, *, overwrite: bool = False) -> None:
    """Raise :class:`DanceError` unless ``out`` is absent, or an earlier report folder and ``overwrite`` is set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DanceError(f"{out}: exists and is not a folder; expected a new or an earlier report folder for --out")
    if not any(out.iterdir()):
        return                                  # an empty folder holds nothing to lose
    foreign = [p.name for p in out.iterdir()
               if p.name not in REPORT_FILES and not p.name.endswith(REPORT_SUFFIXES)]
    if foreign:
        raise DanceError(f"{out}: exists and holds files that are not part of a report ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose another --out folder")
    if not overwrite:
        earlier = earlier_report(out)
        what = ""
        if earlier.get("command"):
            what = f" (made by `{earlier['command']}`" + (f" on {earlier['created']}" if earlier.get("created")
                                                          else "") + ")"
        raise DanceError(f"{out}: holds an earlier report{what}; pass --overwrite to replace it, or choose another "
                         f"folder with --out or --name")


def write_report(out: str | os.PathLike, html: str, results: dict, tables: dict[str, Table], *,
                 overwrite: bool = False, extra: Callable[[Path], object] | None = None) -> Path:
    """Write ``index.html``, ``metrics.json`` and one CSV per table into ``out``, atomically; ``extra(folder)``
    writes more files into the folder being built (the projection files).

    Everything goes to a temporary folder beside ``out`` first; it is renamed into place only when complete
    (an earlier report in ``out``, replaced only with ``overwrite``, is swapped out and deleted afterwards).
    Returns the path of ``index.html``.
    """
    out = Path(out)
    check_replaceable(out, overwrite=overwrite)
    with building_dir(out) as tmp:
        (tmp / "index.html").write_text(html, encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        for table in tables.values():
            (tmp / f"{table.name}.csv").write_text(table.to_csv(), encoding="utf-8")
        if extra is not None:
            extra(tmp)
        os.chmod(tmp, 0o755)
    return out / "index.html"


def csv_names(tables: Sequence[Table] | dict[str, Table]) -> list[str]:
    """File names of the CSV tables."""
    values = tables.values() if isinstance(tables, dict) else tables
    return [f"{t.name}.csv" for t in values]
