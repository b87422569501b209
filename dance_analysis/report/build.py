"""The whole report in one call: resolve the inputs, check them, compute, draw, render and write atomically.

Where a report goes: ``--out`` when given; else ``runs/reports/<name>/`` (``runs/`` is ignored by git, so a
user's reports stay apart from the committed ones in ``reports/``), ``<name>`` being ``--name`` or made from the
inputs' paths (:func:`default_name`). Two different inputs never share a default folder: when the named folder
holds the report of other inputs, a short hash of the inputs is added to the name. An earlier report is
replaced only with ``overwrite`` (``--overwrite``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data import load_collection
from ..outputs import OUTPUT_ROOT, input_slug, safe_name
from ..runtime import Timer
from .comparison_figures import make_comparison_figures, projection_panels
from .compute import AnalysisSettings, compute_all
from .encode_subjects import check_dims
from .figures import make_figures
from .inputs import RunInput, collection_spec, resolve_inputs
from .progress import ReportProgress
from .projections import write_projection_files
from .render import build_tables, check_replaceable, earlier_report, render_html, write_report

#: Packages whose versions the provenance section records.
#: Where reports go without --out: under runs/ (ignored by git), apart from the committed reports/.
DEFAULT_ROOT = OUTPUT_ROOT / "reports"
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


def input_key(run: RunInput) -> str:
    """What identifies an input: the absolute path of its folder, or the alias (``minilm``) as it is."""
    folder = Path(run.path).expanduser()
    return str(folder.resolve()) if folder.exists() else run.path


def default_name(runs: Sequence[RunInput]) -> str:
    """A folder-safe report name from the inputs' paths (``a-vs-b``): ``runs/demo-dance/checkpoint-40`` ->
    ``demo-dance-checkpoint-40``, ``runs/exported/minilm`` -> ``exported-minilm``, the alias -> ``minilm``."""
    return safe_name("-vs-".join(input_slug(run.path) for run in runs))


def default_out(runs: Sequence[RunInput], root: Path = DEFAULT_ROOT) -> Path:
    """``root/<default_name>``, or ``root/<default_name>-<hash of the inputs>`` when the first holds a report
    of other inputs (or of inputs it does not record): two inputs never share a default folder."""
    keys = [input_key(run) for run in runs]
    name = default_name(runs)
    out = root / name
    if out.exists() and earlier_report(out).get("inputs") != keys:
        digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:8]
        out = root / f"{name}-{digest}"
    return out


def describe_input(run: RunInput) -> str:
    """One line on what an input is: a model, a checkpoint, a run of N checkpoints and which stands for it, or
    saved embeddings."""
    if run.kind == "run":
        n = len(run.subjects)
        return (f"{run.name}: a run of {n} checkpoint{'s' if n != 1 else ''}; "
                f"{run.representative.label.rsplit('/', 1)[-1]} stands for it: {run.selection}")
    what = {"model": "a model, encoded on the collection", "embeddings": "saved embeddings",
            "checkpoint": "a checkpoint"}.get(run.kind, run.kind)
    subject = run.subjects[0]
    if run.kind == "checkpoint":
        what += " (saved embeddings)" if subject.embeddings_dir is not None else " (encoded on the collection)"
    return f"{run.name}: {what}"


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
                 log: Callable[[str], None] | None = None, progress: ReportProgress | None = None,
                 overwrite: bool = False) -> ReportResult:
    """Analyse ``paths`` (see :mod:`dance_analysis.report.inputs`) and write the report folder.

    ``out`` defaults to ``runs/reports/<name>/`` (see the module docstring). ``progress`` shows the steps as they
    run (:class:`~dance_analysis.report.progress.ReportProgress`); ``log`` (else the progress' log) receives a line
    per input and per statistic.
    Raises :class:`DanceError` on bad input, and for an earlier report in the folder without ``overwrite``,
    before anything is computed or written; the folder appears only when the report is complete.
    """
    started = time.perf_counter()
    settings = settings or AnalysisSettings()
    progress = progress or ReportProgress(enabled=False)
    log = log or progress.log
    step = progress.step
    runs = resolve_inputs(paths)
    spec = collection_spec(runs, collection)
    for run in runs:
        log("input " + describe_input(run))
    if out is not None:
        out_dir = Path(out)
    elif name is not None:
        out_dir = DEFAULT_ROOT / name
    else:
        out_dir = default_out(runs)
    report_name = name or out_dir.name
    check_replaceable(out_dir, overwrite=overwrite)
    coll = load_collection(spec, min_relevance=min_relevance)
    dim = check_dims(runs, settings.encoder_overrides)
    log(f"collection: {coll.name} ({len(coll.corpus)} documents, {len(coll.queries)} queries); dimension {dim}")

    progress.start(sum(len(run.subjects) for run in runs))
    results, arrays = compute_all(runs, coll, settings, log=log, step=step)
    step("figures")
    timer = Timer(results["timings"])
    with timer.stage("figures"):
        figures = make_figures(results, arrays)
        labels = {run["name"]: run["name"] for run in results["runs"]}
        figures.update(make_comparison_figures(results["comparison"], arrays["comparison"], labels))
        panels = {"pca": projection_panels(arrays["comparison"].get("projections") or {}, labels),
                  "umap": umap_panels(results, arrays)}
        tables = build_tables(results)
    provenance = {
        "name": report_name,
        "inputs": [input_key(run) for run in runs],
        "command": shlex.join(list(command)) if command is not None else shlex.join(["dance-analyze", *paths]),
        "cwd": os.getcwd(),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "git": git_revision(),
        "versions": package_versions(),
    }
    results["provenance"] = provenance
    results["timings"]["total_before_writing"] = round(time.perf_counter() - started, 3)
    step("page")
    html = render_html(results, figures, tables, provenance, panels)
    extra = None
    if settings.export_projections and arrays.get("points"):
        def extra(folder: Path) -> None:
            write_projection_files(folder, arrays["points"], coll)
    index = write_report(out_dir, html, results, tables, overwrite=overwrite, extra=extra)
    progress.close()
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


__all__ = ["DEFAULT_ROOT", "build_report", "ReportResult", "claims_text", "default_name", "default_out",
           "describe_input", "git_revision", "input_key", "package_versions"]
