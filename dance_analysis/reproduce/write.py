"""Write the experiment's report folder: metrics.json, per_unit.csv, runs/<arm>.trec.gz, README.md, index.html.

The folder is built beside its final place and swapped in once complete; then the project README's results
section (between the ``rag24-results`` markers) is replaced. Every number of the README tables is read from the
``results`` that metrics.json holds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from pathlib import Path

import numpy as np

from ..atomic import building_dir, write_text
from ..comparison import METRIC_BY_KEY, METRICS, RANKING_KEYS
from ..errors import DanceError
from ..index import Rankings
from ..runs import write_trec_run
from .arms import ARM_BY_NAME, ARMS
from .timing import Clock, duration

README_START = "<!-- rag24-results:start -->"
README_END = "<!-- rag24-results:end -->"
MAIN_CONTRAST = ("dance", "ance")


def machine() -> str:
    """CPU model, cores, memory, GPU, OS, Python and torch of this machine."""
    model = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
        memory = f", {mem_kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    gpu = f"{torch.cuda.device_count()} CUDA GPU(s)" if torch.cuda.is_available() else "no GPU"
    return (f"{model}, {os.cpu_count()} cores{memory}, {gpu}; {platform.system()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_p(p) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def ci(row: dict, digits: int = 4) -> str:
    return f"[{fmt(row.get('low'), digits)}, {fmt(row.get('high'), digits)}]"


def signed(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _contrast(results: dict, treatment: str, control: str) -> dict:
    for c in results["contrasts"]:
        if c["treatment"] == treatment and c["control"] == control:
            return c
    raise DanceError(f"results have no contrast {treatment} - {control}")


# ----------------------------------------------------------------------------------------------- tables
def ranking_table(results: dict) -> list[str]:
    """Markdown: per arm, each ranking metric's pooled mean with its 95 % CI."""
    keys = [k for k in RANKING_KEYS if k in results["levels"]]
    lines = ["| model | " + " | ".join(METRIC_BY_KEY[k].label for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for arm in ARMS:
        cells = []
        for key in keys:
            row = results["levels"][key].get(arm.name)
            cells.append("n/a" if row is None else f"{fmt(row['value'])} {ci(row)}")
        lines.append(f"| {arm.label} | " + " | ".join(cells) + " |")
    return lines


def difference_table(results: dict) -> list[str]:
    """Markdown: per contrast, each ranking metric's paired difference, CI, p and (MRR@10) the detectable size."""
    keys = [k for k in RANKING_KEYS if k in results["levels"]]
    lines = ["| difference | " + " | ".join(METRIC_BY_KEY[k].label for k in keys)
             + " | MRR@10 detectable (80 % power) |",
             "|---|" + "---|" * (len(keys) + 1)]
    for c in results["contrasts"]:
        cells = []
        for key in keys:
            row = c["metrics"].get(key)
            cells.append("n/a" if row is None or row.get("not_measurable") else
                         f"{signed(row['effect'])} {ci(row)} p={fmt_p(row['p'])}")
        mde = c["metrics"].get("q2d.MRR@10", {}).get("mde")
        name = f"{ARM_BY_NAME[c['treatment']].label} - {ARM_BY_NAME[c['control']].label}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(mde)} |")
    return lines


def claims_table(results: dict) -> list[str]:
    """Markdown: per claim metric (DANCE - ANCE), the two levels, effect, CI, p (Holm for primary) and verdicts."""
    lines = ["| claim | metric | predicted | ANCE | DANCE | effect [95 % CI] | p | p (Holm) | metric verdict | "
             "claim verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for claim in results["claims"]:
        for row in claim["rows"]:
            levels = results["levels"][row["key"]]
            role = "" if row["primary"] else " (supporting)"
            effect = "n/a" if row["effect"] is None else f"{signed(row['effect'])} {ci(row)}"
            lines.append(f"| {claim['claim']} | {row['label']}{role} | {row['direction']} | "
                         f"{fmt(levels['ance']['value'])} | {fmt(levels['dance']['value'])} | {effect} | "
                         f"{fmt_p(row['p'])} | {fmt_p(row['p_holm'])} | {row['verdict']} | {claim['verdict']} |")
    return lines


def verdict_sentence(results: dict) -> str:
    by_verdict: dict[str, list[str]] = {}
    for claim in results["claims"]:
        by_verdict.setdefault(claim["verdict"], []).append(claim["claim"])
    text = "Claims (DANCE vs ANCE): " + "; ".join(f"{v}: {', '.join(ids)}" for v, ids in by_verdict.items()) + "."
    row = _contrast(results, *MAIN_CONTRAST)["metrics"].get("q2d.MRR@10")
    if row:
        text += (f" MRR@10, DANCE - ANCE: {signed(row['effect'])} {ci(row)}, p = {fmt_p(row['p'])}, "
                 f"{row['changed']} of {row['n']} test queries change; the design detects differences of about "
                 f"{fmt(row['mde'], 3)} with 80 % power.")
    return text


# ----------------------------------------------------------------------------------------------- files
def per_unit_csv(spaces: list[dict]) -> str:
    """Every unit metric's value per fold, arm and unit (query id, or passage id)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "fold", "unit", "arm", "value"])
    for per_arm in spaces:
        for metric in METRICS:
            if metric.kind != "unit":
                continue
            for arm, space in per_arm.items():
                units = _unit_ids(metric.unit, space)
                for unit, value in zip(units, metric.values(space)):
                    writer.writerow([metric.key, space.units.fold, unit, arm, repr(float(value))])
    return out.getvalue()


def _unit_ids(unit: str, space) -> list[str]:
    if unit.startswith("test query"):
        return list(space.units.test_qids)
    if unit == "relevant passage":
        return [str(d) for d in space.units.corpus_ids[space.units.anchors]]
    if unit == "pool pair":
        return [str(d) for d in space.units.corpus_ids[space.units.pool_anchors]]
    raise DanceError(f"unknown unit {unit!r}")


def pooled_rankings(spaces: list[dict], arm: str) -> Rankings:
    """The arm's test rankings of every fold, stacked: each tested query once."""
    parts = [per_arm[arm].rankings for per_arm in spaces]
    return Rankings(np.concatenate([p.query_ids for p in parts]), parts[0].doc_ids,
                    np.concatenate([p.indices for p in parts]), np.concatenate([p.scores for p in parts]))


def readme(results: dict, clock: Clock, run_files: list[str]) -> str:
    exp = results["experiment"]
    folds = results["folds"]
    stages = clock.stages()
    trained = sum(v for k, v in stages.items() if k.startswith("fold"))
    lines = [
        "# The paper's ANCE -> DANCE contrast on the rag24-sample, cross-validated", "",
        f"Produced by `{exp['command']}`, that is `{' '.join(exp['invocation'])}`.", "",
        f"- Arms, all from `{results['collection']['backbone']}`: " + "; ".join(
            f"`{a['name']}` ({a['label']}" + (f", `{a['recipe']}`" if a["recipe"] else "") +
            (f", from the fold's selected `{a['starts_from']}` checkpoint" if a["starts_from"] else "") + ")"
            for a in exp["arms"]) + ".",
        f"- {exp['folds']}-fold cross-validation over all {results['collection']['queries']} queries (fold seed "
        f"{exp['fold_seed']}, training seed {exp['seed']}): each fold trains on the other "
        f"{exp['folds'] - 2} folds, selects the checkpoint with the best dev MRR@10 on the next fold, tests on its "
        "own. Tested queries (with a relevant passage, "
        f"grade >= {results['collection']['min_relevance']}) per fold: "
        f"{', '.join(str(f['test_queries']) for f in folds)} ({sum(f['test_queries'] for f in folds)} in all); "
        f"whole corpus of {results['collection']['documents']:,} passages.",
        "- Statistics: per-query values pooled over the folds; paired two-sided randomisation test "
        f"({results['settings']['unit_resamples']:,} sign flips) and paired percentile bootstrap 95 % CI over "
        "queries; set statistics (e.g. a fold's query mean pairwise cosine) per fold, effect = mean of the per-fold "
        f"paired differences, CI and p from {results['settings']['set_resamples']:,} bootstrap resamples of the "
        "units inside each fold. Verdicts: `reproduced` = CI excludes 0 in the predicted direction and "
        "Holm-adjusted p < 0.05 over the claim's primary metrics; `contradicted` = CI excludes 0 the other way; "
        "otherwise `inconclusive`.",
        f"- Machine: {machine()}.",
        f"- Wall time: {duration(clock.total())} in all, of which training {duration(trained)} "
        f"(stage times in `{exp['runs_dir']}/reproduce-timings.json`, summed over invocations).",
        "", "## Ranking (test queries pooled over folds)", "", *ranking_table(results), "",
        "Paired differences:", "", *difference_table(results), "", verdict_sentence(results), "",
        "## The paper's claims (DANCE - ANCE)", "", *claims_table(results), "",
        "Selected checkpoints (dev MRR@10 of the next fold):", "",
        "| fold | " + " | ".join(a.name for a in ARMS if a.recipe) + " |",
        "|---|" + "---|" * sum(1 for a in ARMS if a.recipe)]
    for f in folds:
        sel = {s["arm"]: s for s in results["selections"] if s["fold"] == f["fold"]}
        lines.append(f"| {f['fold']} | " + " | ".join(
            f"step {sel[a.name]['step']} ({fmt(sel[a.name]['dev_MRR@10'])})" for a in ARMS if a.recipe) + " |")
    lines += ["", "## Files", "",
              "- `index.html`: the report (self-contained; open it in a browser).",
              "- `metrics.json`: every number above and more (levels, contrasts, claims, selections).",
              "- `per_unit.csv`: each per-query / per-passage value of every arm, fold and unit.",
              *[f"- `runs/{name}`: TREC run, top 100, each tested query once (pooled over the folds)"
                for name in run_files], ""]
    return "\n".join(lines)


def project_section(results: dict, out: Path, clock: Clock) -> str:
    return "\n".join([
        f"Every query tested once by a model that never trained or selected on it ({results['experiment']['folds']}"
        f"-fold cross-validation), mean with 95 % bootstrap CI, from `{results['experiment']['command']}` "
        f"({clock.duration()} on {os.cpu_count()} CPU cores, no GPU); claims, paired tests and run files in "
        f"[{out}/README.md]({out}/README.md), the report in [{out}/index.html]({out}/index.html).", "",
        *ranking_table(results), "", verdict_sentence(results)])


def replace_section(path: Path, body: str) -> None:
    """Replace the text between the rag24-results markers of ``path`` with ``body``."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise DanceError(f"{path}: expected the markers {README_START} and {README_END}")
    write_text(path, text[:start + len(README_START)] + "\n" + body + "\n" + text[end:])


def json_ready(results: dict) -> dict:
    """``results`` without the in-memory arrays."""
    return {k: v for k, v in results.items() if not k.startswith("_")}


def write_outputs(results: dict, out: Path, project_readme: Path, clock: Clock) -> Path:
    """Write the report folder (atomically) and update the project README; returns ``out``."""
    from ..comparison.pictures import figure_arrays
    from ..report.build import git_revision, package_versions
    from ..report.experiment import render_experiment

    spaces = results["_spaces"]
    results["provenance"] = {"git": git_revision(), "versions": package_versions(), "machine": machine(),
                             "wall_seconds": round(clock.total(), 1), "stages": clock.stages()}
    data = json_ready(results)
    with building_dir(out) as build:
        (build / "runs").mkdir()
        run_files = []
        for arm in ARMS:
            name = f"{arm.name}.trec.gz"
            write_trec_run(build / "runs" / name, pooled_rankings(spaces, arm.name), tag=arm.name)
            run_files.append(name)
        (build / "per_unit.csv").write_text(per_unit_csv(spaces), encoding="utf-8")
        (build / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (build / "README.md").write_text(readme(data, clock, run_files), encoding="utf-8")
        (build / "index.html").write_text(render_experiment(data, figure_arrays(spaces)), encoding="utf-8")
    if project_readme.exists():
        replace_section(project_readme, project_section(data, out, clock))
    return out
