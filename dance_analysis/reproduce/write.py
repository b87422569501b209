"""Write the experiment's report folder: metrics.json, per_unit.csv, runs/, logs/, trajectories.png, README.md,
index.html.

- ``runs/<arm>-seed<k>.trec.gz``: one TREC run per trained arm and training seed, each test query once (the folds
  pooled: fold f's test queries ranked by fold f's model of that seed); ``runs/<arm>.trec.gz`` for an arm that is
  not trained (one model, e.g. the start or a zero-shot reference).
- ``logs/fold<f>/<arm>-seed<k>.metrics.jsonl.gz``: each training run's metrics log, compressed.
- ``per_unit.csv``: every unit metric's value per fold, unit (and its cluster), arm and seed.
- ``trajectories.png``: the claim metrics along training, one panel per metric, one colour per arm.

The folder is built beside its final place and swapped in once complete; then the project README's results
section (between the ``rag24-results`` markers) is replaced. Every number of the README tables is read from the
``results`` that metrics.json holds.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from ..atomic import building_dir, write_text
from ..comparison import METRIC_BY_KEY, METRICS
from ..comparison.pictures import figure_arrays
from ..comparison.statistics import as_seed_lists, seed_labels
from ..errors import DanceError
from ..index import Rankings
from ..report.build import git_revision, package_versions
from ..report.comparison_figures import trajectory_figure
from ..report.experiment import render_experiment
from ..runs import write_trec_run
from .timing import Clock, duration

README_START = "<!-- rag24-results:start -->"
README_END = "<!-- rag24-results:end -->"
MAIN_CONTRAST = ("dance", "ance")
#: Trajectory panels, in order, with what a reader sees.
TRAJECTORY_KEYS = {"q2d.MRR@10": "test MRR@10", "q2d.nDCG@10": "test nDCG@10", "dev.MRR@10": "dev MRR@10",
                   "query_mean_cosine": "query mean cosine", "doc_mean_cosine": "passage mean cosine",
                   "query_doc_mmd2": "query-passage MMD²"}


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


# ----------------------------------------------------------------------------------------------- formats
def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_p(p, resamples: int | None = None, exact: bool | None = False) -> str:
    """A p-value no finer than its resampling: below 1 / (R + 1) it reads ``< 1/(R+1)`` with the real R (an
    exact test's p is shown as it is)."""
    if p is None:
        return "n/a"
    if resamples and not exact and p < 1.0 / (resamples + 1):
        return f"< 1/{resamples + 1}"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def ci(row: dict, digits: int = 4) -> str:
    return f"[{fmt(row.get('low'), digits)}, {fmt(row.get('high'), digits)}]"


def signed(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _p(row: dict, key: str = "p") -> str:
    return fmt_p(row.get(key), row.get("p_resamples"), row.get("p_exact"))


def _contrast(results: dict, treatment: str, control: str) -> dict | None:
    for c in results["contrasts"]:
        if c["treatment"] == treatment and c["control"] == control:
            return c
    return None


def _arms(results: dict) -> list[dict]:
    """The experiment's arms (name, label, ...) that have levels, in the experiment's order."""
    present = set(next(iter(results["levels"].values()), {}))
    return [a for a in results["experiment"]["arms"] if a["name"] in present]


def _labels(results: dict) -> dict[str, str]:
    return {a["name"]: a["label"] for a in results["experiment"]["arms"]}


def _seeds_text(seeds) -> str:
    if not seeds:
        return ""
    return str(seeds[0]) if len(set(seeds)) == 1 else "/".join(str(s) for s in seeds)


# ----------------------------------------------------------------------------------------------- tables
def ranking_table(results: dict) -> list[str]:
    """Markdown: per arm, each ranking metric's level (seed-averaged units pooled over folds) with its 95 % CI
    (bootstrap over units and seeds), and the arm's training seeds per fold."""
    keys = list(results["ranking_keys"])
    lines = ["| model | " + " | ".join(METRIC_BY_KEY[k].label for k in keys) + " | seeds per fold |",
             "|---|" + "---|" * (len(keys) + 1)]
    for arm in _arms(results):
        cells = []
        for key in keys:
            row = results["levels"][key].get(arm["name"])
            cells.append("n/a" if row is None else f"{fmt(row['value'])} {ci(row)}")
        seeds = _seeds_text(results.get("seeds", {}).get(arm["name"]))
        lines.append(f"| {arm['label']} | " + " | ".join(cells) + f" | {seeds} |")
    return lines


def difference_table(results: dict) -> list[str]:
    """Markdown: per contrast, each ranking metric's paired difference, CI, p and (MRR@10) the detectable size."""
    keys = list(results["ranking_keys"])
    labels = _labels(results)
    lines = ["| difference | " + " | ".join(METRIC_BY_KEY[k].label for k in keys)
             + " | MRR@10 detectable (80 % power) |", "|---|" + "---|" * (len(keys) + 1)]
    for c in results["contrasts"]:
        cells = []
        for key in keys:
            row = c["metrics"].get(key)
            cells.append("n/a" if row is None or row.get("not_measurable") else
                         f"{signed(row['effect'])} {ci(row)} p={_p(row)}")
        mde = c["metrics"].get("q2d.MRR@10", {}).get("mde")
        name = f"{labels.get(c['treatment'], c['treatment'])} - {labels.get(c['control'], c['control'])}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(mde)} |")
    return lines


def _replicates_cell(row: dict) -> str:
    rep = row.get("replicates")
    if not rep:
        return ""
    gap = "n/a" if rep.get("seed_gap") is None else f"{rep['seed_gap']:.4g}"
    return f"{'holds' if rep['passed'] else 'fails'} ({rep['replicates']} replicates, seed gap {gap})"


def claims_table(results: dict) -> list[str]:
    """Markdown: per claim metric (the claims contrast), the two levels, effect, CI, p (Holm for primary), the
    replicate rule (set metrics) and the verdicts."""
    treatment, control = results["claims_from"]
    labels = _labels(results)
    lines = [f"| claim | metric | predicted | {labels.get(control, control)} | {labels.get(treatment, treatment)} | "
             "effect [95 % CI] | p | p (Holm) | replicate rule | metric verdict | claim verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for claim in results["claims"]:
        for row in claim["rows"]:
            levels = results["levels"].get(row["key"], {})
            role = "" if row["primary"] else " (supporting)"
            effect = "n/a" if row["effect"] is None else f"{signed(row['effect'])} {ci(row)}"
            before, after = levels.get(control, {}).get("value"), levels.get(treatment, {}).get("value")
            lines.append(f"| {claim['claim']} | {row['label']}{role} | {row['direction']} | "
                         f"{fmt(before)} | {fmt(after)} | {effect} | {_p(row)} | {_p(row, 'p_holm')} | "
                         f"{_replicates_cell(row)} | {row['verdict']} | {claim['verdict']} |")
    return lines


def claims_summary(results: dict) -> list[str]:
    """Markdown bullets: each claim's verdict with its primary metrics' effects and CIs."""
    lines = []
    for claim in results["claims"]:
        parts = []
        for row in claim["rows"]:
            if not row["primary"]:
                continue
            if row["reason"]:
                parts.append(f"{row['label']}: not measurable here")
            elif row["effect"] is not None:
                parts.append(f"{row['label']} {signed(row['effect'])} {ci(row)} ({row['verdict']})")
        lines.append(f"- **{claim['claim']} {claim['verdict']}**: " + "; ".join(parts))
    return lines


def movement_table(results: dict) -> list[str]:
    """Markdown: do the models move? Per fold, seed and arm: the change from the arm it is compared with in
    held-out MRR@10, the share of test queries whose top 10 changes, the relative parameter distance."""
    rows = results.get("movement") or []
    if not rows:
        return []
    labels = _labels(results)
    lines = ["| fold | seed | arm | from | MRR@10 change | top-10 changed | relative parameter distance |",
             "|---|---|---|---|---|---|---|"]
    for m in sorted(rows, key=lambda m: (m["fold"], str(m["arm"]), m["seed"])):
        share = m.get("top10_changed_share")
        changed = "n/a" if share is None else f"{100 * share:.1f} %"
        lines.append(f"| {m['fold']} | {m['seed']} | {labels.get(m['arm'], m['arm'])} | "
                     f"{labels.get(m['vs'], m['vs'])} | {signed(m.get('mrr10_change'))} | {changed} | "
                     f"{fmt(m.get('relative_param_distance'))} |")
    return lines


_SELECTION_SKIP = {"run", "path", "fold", "arm", "seed"}


def selections_table(results: dict) -> list[str]:
    """Markdown: the dev-selected checkpoints (a secondary result), one row per fold, arm and seed."""
    rows = results.get("selections") or []
    if not rows:
        return []
    labels = _labels(results)
    extra = []
    for s in rows:
        extra += [k for k in s if k not in _SELECTION_SKIP and k not in extra]
    lines = ["| fold | arm | seed | " + " | ".join(extra) + " |", "|---|---|---|" + "---|" * len(extra)]
    for s in rows:
        cells = [fmt(s.get(k)) if isinstance(s.get(k), float) else str(s.get(k, "")) for k in extra]
        lines.append(f"| {s.get('fold', '')} | {labels.get(s.get('arm'), s.get('arm', ''))} | {s.get('seed', '')} | "
                     + " | ".join(cells) + " |")
    return lines


def verdict_sentence(results: dict) -> str:
    by_verdict: dict[str, list[str]] = {}
    for claim in results["claims"]:
        by_verdict.setdefault(claim["verdict"], []).append(claim["claim"])
    treatment, control = results["claims_from"]
    labels = _labels(results)
    text = (f"Claims ({labels.get(treatment, treatment)} vs {labels.get(control, control)}): "
            + "; ".join(f"{v}: {', '.join(ids)}" for v, ids in by_verdict.items()) + ".")
    main = _contrast(results, treatment, control)
    row = main["metrics"].get("q2d.MRR@10") if main else None
    if row and not row.get("not_measurable"):
        text += (f" MRR@10, {labels.get(treatment, treatment)} - {labels.get(control, control)}: "
                 f"{signed(row['effect'])} {ci(row)}, p = {_p(row)}, {row['changed']} of {row['n']} test queries "
                 "change (seed means); the design detects differences of about "
                 f" {fmt(row['mde'], 3)} with 80 % power ({row.get('mde_basis', '')}).")
    return text


# ----------------------------------------------------------------------------------------------- files
def run_name(arm: str, seed: int | None) -> str:
    """``<arm>-seed<k>.trec.gz`` for a trained arm's seed, ``<arm>.trec.gz`` for an arm that is not trained."""
    return f"{arm}.trec.gz" if seed is None else f"{arm}-seed{seed}.trec.gz"


def _trained(results: dict) -> dict[str, bool]:
    return {a["name"]: bool(a.get("recipe")) for a in results["experiment"]["arms"]}


def run_files(spaces: list[dict], trained: dict[str, bool]) -> dict[str, tuple[str, int | None]]:
    """File name -> (arm, seed): one per trained arm and seed, one per untrained arm (its only model)."""
    out: dict[str, tuple[str, int | None]] = {}
    folds = as_seed_lists(spaces)
    for arm in folds[0]:
        labels = sorted({label for f in folds for label in seed_labels(f[arm])})
        single = all(len(f[arm]) == 1 for f in folds)
        if single and not trained.get(arm, False):
            out[run_name(arm, None)] = (arm, None)
        else:
            for label in labels:
                out[run_name(arm, label)] = (arm, label)
    return out


def pooled_rankings(spaces: list[dict], arm: str, seed: int | None = None) -> Rankings:
    """The arm's test rankings of every fold (its training seed ``seed``; None: its only / first model),
    stacked: each tested query once."""
    parts = []
    for per_arm in as_seed_lists(spaces):
        chosen = per_arm[arm]
        if seed is not None:
            by_label = dict(zip(seed_labels(chosen), chosen))
            if seed not in by_label:
                raise DanceError(f"arm {arm}: no model of training seed {seed} in fold "
                                 f"{chosen[0].units.fold}")
            chosen = [by_label[seed]]
        parts.append(chosen[0].rankings)
    return Rankings(np.concatenate([p.query_ids for p in parts]), parts[0].doc_ids,
                    np.concatenate([p.indices for p in parts]), np.concatenate([p.scores for p in parts]))


def per_unit_csv(spaces: list[dict]) -> str:
    """Every unit metric's value per fold, unit (query id, statement id, passage id, or ``query>passage`` pool
    pair), cluster (what the statistics resample together), arm and training seed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "fold", "unit", "cluster", "arm", "seed", "value"])
    for per_arm in as_seed_lists(spaces):
        for metric in METRICS:
            if metric.kind != "unit":
                continue
            for arm, arm_spaces in per_arm.items():
                for label, space in zip(seed_labels(arm_spaces), arm_spaces):
                    values = metric.values(space)
                    if len(values) == 0:
                        continue
                    units = _unit_ids(metric.unit, space)
                    clusters = metric.cluster(space) if metric.cluster is not None else units
                    for unit, cluster, value in zip(units, clusters, values):
                        writer.writerow([metric.key, space.units.fold, unit, cluster, arm, label, repr(float(value))])
    return out.getvalue()


def _unit_ids(unit: str, space) -> list[str]:
    u = space.units
    if unit.startswith("test query"):
        return list(u.test_qids)
    if unit == "test statement":
        return list(u.statement_qids)
    if unit == "relevant passage":
        return [str(d) for d in u.corpus_ids[u.anchors]]
    if unit == "pool pair":
        owners = np.asarray(u.pool_qids, dtype=object)[u.pool_pair_queries]
        return [f"{q}>{d}" for q, d in zip(owners.tolist(), u.corpus_ids[u.pool_anchors].tolist())]
    raise DanceError(f"unknown unit {unit!r}")


def copy_logs(runs: list[dict], folder: Path) -> list[str]:
    """Each training run's ``metrics.jsonl``, gzip-compressed, as ``logs/fold<f>/<arm>-seed<k>.metrics.jsonl.gz``;
    returns the paths written (relative to ``folder``)."""
    written = []
    for run in runs or []:
        source = Path(run["path"]) / "metrics.jsonl"
        if not source.is_file():
            raise DanceError(f"{source}: the training run's metrics log is missing")
        rel = Path("logs") / f"fold{run['fold']}" / f"{run['arm']}-seed{run['seed']}.metrics.jsonl.gz"
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, open(target, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as dst:
                shutil.copyfileobj(src, dst)
        written.append(str(rel))
    return written


def readme(results: dict, clock: Clock, run_names: list[str], logs: list[str], has_trajectories: bool) -> str:
    exp = results["experiment"]
    folds = results["folds"]
    stages = clock.stages()
    trained = sum(v for k, v in stages.items() if k.startswith("fold"))
    settings = results["settings"]
    treatment, control = results["claims_from"]
    labels = _labels(results)
    lines = [
        "# The paper's ANCE -> DANCE contrast on the rag24 collection, cross-validated over topics", "",
        f"Produced by `{exp['command']}`, that is `{' '.join(exp['invocation'])}`.", "",
        "- Arms: " + "; ".join(
            f"`{a['name']}` ({a['label']}" + (f", `{a['recipe']}`" if a.get("recipe") else "") +
            (f", from `{a['starts_from']}`" if a.get("starts_from") else "") +
            (f" at step {a['branch_step']}" if a.get("starts_from") and a.get("branch_step") is not None else "") +
            (f", {a['steps']} steps ({a['total_steps']} from the start)" if a.get("steps") is not None else "") + ")"
            for a in exp["arms"]) + ".",
        f"- {exp['folds']}-fold cross-validation (fold seed {exp.get('fold_seed')}); tested real queries (with a "
        f"relevant passage, grade >= {results['collection']['min_relevance']}) per fold: "
        f"{', '.join(str(f['test_queries']) for f in folds)} ({sum(f['test_queries'] for f in folds)} in all); "
        f"whole corpus of {results['collection']['documents']:,} passages. Training seeds per fold and arm: "
        + ", ".join(f"{labels.get(a, a)} {_seeds_text(s)}" for a, s in results.get("seeds", {}).items()) + ".",
        "- Statistics: an arm's per-unit value is the mean over its training seeds; units (test queries, held-out "
        "statements, relevant passages, pool pairs) are pooled over the folds; paired two-sided randomisation test "
        f"on the seed-averaged differences ({settings['unit_resamples']:,} sign flips, by cluster where units "
        "cluster: passages by test query, statements and pool pairs by topic); 95 % CI from a two-stage bootstrap "
        "over units (clusters) and training seeds. Set statistics (e.g. a fold's query mean pairwise cosine): per "
        "fold and seed, effect = mean over folds of the seed-mean differences, CI and p from "
        f"{settings['set_resamples']:,} resamples of the units inside each fold and of the seeds; a geometry metric "
        "also needs every (fold, seed pair) replicate to agree in sign and the effect to exceed the gap between two "
        "seeds of one arm. p-values below 1/(R+1) read `< 1/(R+1)`. Verdicts: `reproduced` = CI excludes 0 in the "
        "predicted direction and Holm-adjusted p < 0.05 over the claim's primary metrics (and the replicate rule "
        "holds); `contradicted` = the same the other way; otherwise `inconclusive`; `not measurable here` when the "
        "design cannot move the metric. A claim is reproduced when at least one primary metric is and none is "
        "contradicted, contradicted in the mirror case, inconclusive otherwise.",
        f"- Machine: {machine()}.",
        f"- Wall time: {duration(clock.total())} in all, of which training {duration(trained)} "
        f"(stage times in `{exp['runs_dir']}/reproduce-timings.json`, summed over invocations).",
        "", f"## The paper's claims ({labels.get(treatment, treatment)} - {labels.get(control, control)})", "",
        *claims_summary(results), "", *claims_table(results), "",
        "## Ranking (seed means, test units pooled over folds)", "", *ranking_table(results), "",
        "Paired differences:", "", *difference_table(results), "", verdict_sentence(results), ""]
    movement = movement_table(results)
    if movement:
        lines += ["## Do the models move?", "", *movement, ""]
    checks = results.get("branch_checks") or []
    if checks:
        worst = max(float(c.get("max_direction_difference", 0.0)) for c in checks)
        lines += [f"Branch check: each stage's step-0 vectors point where its parent's were at the branch step "
                  f"(largest difference of a normalised coordinate over {len(checks)} stage runs: {worst:.2g}), so a "
                  "stage and its parent start as one model.", ""]
    if has_trajectories:
        lines += ["## Trajectories", "", "![The claim metrics along training](trajectories.png)", "",
                  "One panel per metric, one colour per arm; line: the mean over seeds and folds at each training "
                  "step (steps counted from the common start, so ANCE, stage 1, stage 2 and the control line up); "
                  "band: the range over seeds and folds.", ""]
    selections = selections_table(results)
    if selections:
        lines += ["## Dev-selected checkpoints (secondary)", "", *selections, ""]
    lines += ["## Files", "",
              "- `index.html`: the report (self-contained; open it in a browser).",
              "- `metrics.json`: every number above and more (levels, contrasts, claims, movement, trajectories, "
              "selections).",
              "- `per_unit.csv`: each unit's value of every unit metric, per fold, arm and training seed, with the "
              "cluster the statistics resample it with.",
              *[f"- `runs/{name}`: TREC run, top 100, each tested query once (pooled over the folds)"
                for name in run_names],
              *([f"- `logs/`: the {len(logs)} training runs' metrics logs (`fold<f>/<arm>-seed<k>.metrics.jsonl.gz`)"]
                if logs else []), ""]
    return "\n".join(lines)


def project_section(results: dict, out: Path, clock: Clock) -> str:
    return "\n".join([
        f"Every real query tested once by models that never trained or selected on its topic "
        f"({results['experiment']['folds']}-fold cross-validation over topics, seed means), mean with 95 % CI "
        f"(bootstrap over queries and training seeds), from `{results['experiment']['command']}` "
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
    spaces = results["_spaces"]
    results["provenance"] = {"git": git_revision(), "versions": package_versions(), "machine": machine(),
                             "wall_seconds": round(clock.total(), 1), "stages": clock.stages()}
    data = json_ready(results)
    labels = _labels(data)
    trajectory = trajectory_figure(data.get("trajectories") or [], labels)
    with building_dir(out) as build:
        (build / "runs").mkdir()
        names = run_files(spaces, _trained(data))
        for name, (arm, seed) in names.items():
            write_trec_run(build / "runs" / name, pooled_rankings(spaces, arm, seed),
                           tag=name.removesuffix(".trec.gz"))
        logs = copy_logs(data.get("runs") or [], build)
        data["files"] = {"runs": {name: {"arm": arm, "seed": seed} for name, (arm, seed) in names.items()},
                         "logs": logs, "trajectories": "trajectories.png" if trajectory else None}
        if trajectory is not None:
            (build / "trajectories.png").write_bytes(base64.b64decode(trajectory.data_uri.split(",", 1)[1]))
        (build / "per_unit.csv").write_text(per_unit_csv(spaces), encoding="utf-8")
        (build / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (build / "README.md").write_text(readme(data, clock, list(names), logs, trajectory is not None),
                                         encoding="utf-8")
        treatment, control = data["claims_from"]
        (build / "index.html").write_text(
            render_experiment(data, figure_arrays(spaces, treatment=treatment, control=control),
                              trajectory=trajectory), encoding="utf-8")
    if project_readme.exists():
        replace_section(project_readme, project_section(data, out, clock))
    return out
