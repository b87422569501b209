"""The whole report in one call: resolve the inputs, check them, compute, draw, render and write atomically."""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .comparison_figures import make_comparison_figures, projection_panels
from .compute import AnalysisSettings, compute_all
from .figures import make_figures
from .inputs import RunInput, check_dims, collection_spec, resolve_inputs
from .render import build_tables, check_replaceable, render_html, write_report

#: Packages whose versions the provenance section records.
VERSION_PACKAGES = ("dance-analysis", "numpy", "scipy", "scikit-learn", "torch", "transformers", "faiss-cpu",
                    "faiss-gpu-cu12", "umap-learn", "pynndescent", "numba", "matplotlib", "jinja2")


@dataclass
class ReportResult:
    """What :func:`build_report` produced."""

    index: Path
    out: Path
    results: dict
    seconds: float
    timings: dict = field(default_factory=dict)


def default_name(runs: Sequence[RunInput]) -> str:
    """A folder-safe report name from the run names (``a-vs-b``)."""
    name = "-vs-".join(run.name for run in runs)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "report"
    return name[:120]


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers, plus Python's."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision(folder: Path | None = None) -> str:
    """The git commit of the project source (with ``+dirty`` when files changed), or why there is none."""
    folder = folder or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "no git revision (not a git checkout, or no commit yet)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "no git revision (git not available)"


def build_report(paths: Sequence[str], *, collection: str | None = None, out: str | os.PathLike | None = None,
                 name: str | None = None, settings: AnalysisSettings | None = None,
                 min_relevance: int | None = None, command: Sequence[str] | None = None,
                 log: Callable[[str], None] = lambda message: None) -> ReportResult:
    """Analyse ``paths`` (see :mod:`dance_analysis.report.inputs`) and write the report folder.

    ``out`` defaults to ``reports/<name>/`` with ``name`` derived from the inputs. Raises :class:`DanceError`
    on bad input before anything is written; the folder appears only when the report is complete.
    """
    from ..data import load_collection

    started = time.perf_counter()
    settings = settings or AnalysisSettings()
    runs = resolve_inputs(paths)
    spec = collection_spec(runs, collection)
    log("inputs: " + ", ".join(f"{run.name} ({run.kind}, {len(run.subjects)} checkpoint(s))" for run in runs))
    coll = load_collection(spec, min_relevance=min_relevance)
    dim = check_dims(runs, settings.encoder_overrides)
    log(f"collection: {coll.name} ({len(coll.corpus)} documents, {len(coll.queries)} queries); dimension {dim}")
    report_name = name or default_name(runs)
    out_dir = Path(out) if out is not None else Path("reports") / report_name
    check_replaceable(out_dir)

    results, arrays = compute_all(runs, coll, settings, log=log)
    drawn = time.perf_counter()
    figures = make_figures(results, arrays)
    labels = {run["name"]: run["name"] for run in results["runs"]}
    figures.update(make_comparison_figures(results["comparison"], arrays["comparison"], labels))
    panels = {"pca": projection_panels(arrays["comparison"].get("projections") or {}, labels),
              "umap": umap_panels(results, arrays)}
    tables = build_tables(results)
    results["timings"]["figures"] = round(time.perf_counter() - drawn, 3)
    provenance = {
        "name": report_name,
        "command": shlex.join(list(command)) if command is not None else shlex.join(["dance-analyze", *paths]),
        "cwd": os.getcwd(),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "git": git_revision(),
        "versions": package_versions(),
    }
    results["provenance"] = provenance
    results["timings"]["total_before_writing"] = round(time.perf_counter() - started, 3)
    html = render_html(results, figures, tables, provenance, panels)
    index = write_report(out_dir, html, results, tables)
    seconds = time.perf_counter() - started
    return ReportResult(index=index, out=out_dir, results=results, seconds=seconds, timings=results["timings"])


def umap_panels(results: dict, arrays: dict) -> list:
    """The UMAP pictures as one panel per subject (queries are the first ``umap_nq`` rows of each picture)."""
    coords = arrays.get("umap") or {}
    n_q = int(arrays.get("umap_nq", 0))
    shown = {label: (c[:n_q], c[n_q:]) for label, c in coords.items()}
    return projection_panels(shown, {label: label for label in shown}, what="UMAP", prefix="fig-umap",
                             contours=False)


def claims_text(results: dict) -> str:
    """The claims as plain text for the terminal: verdict, then each primary metric's effect and CI."""
    claims = results["comparison"]["claims"]
    width = max((len(c["verdict"]) for c in claims), default=10)
    lines = []
    for claim in claims:
        shown = "; ".join(
            f"{r['label']}: " + ("n/a" if r["effect"] is None else
                                 f"{r['effect']:+.4g} [{r['low']:.4g}, {r['high']:.4g}]")
            for r in claim["rows"] if r["primary"])
        lines.append(f"{claim['claim']}  {claim['verdict']:<{width}}  {shown}")
    return "\n".join(lines)


__all__ = ["build_report", "ReportResult", "claims_text", "default_name", "git_revision", "package_versions"]
