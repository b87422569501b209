"""`make reproduce`: ANCE vs DANCE on the built-in rag24-sample, 3 seeds, one comparison report.

Steps (each skipped or resumed when an earlier, interrupted invocation already did it):

1. for every seed, ``dance-train train/rag24-ance.yaml`` and ``train/rag24-dance.yaml`` with ``optim.seed=<seed>``
   into ``runs/rag24/<method>-seed<seed>`` (``--resume`` when the folder exists: a finished run is not repeated);
2. the zero-shot start: the step-0 embeddings of the first run (the backbone before any update, encoded with the
   recipes' lengths) copied into ``runs/rag24/zero-shot``;
3. ``dance-analyze`` on the zero-shot start and every run, test split (each run is represented by its checkpoint
   with the best dev MRR@10; the seeds of a side are pooled);
4. the test-split TREC runs (top 100) of the zero-shot start and of every selected checkpoint, gzip, in ``runs/``;
5. ``README.md`` (command, seeds, machine, wall time, results table, claims).

Steps 3-5 build a folder beside ``reports/rag24``, which replaces it once complete; then the results table goes into
the project README between the ``rag24-results`` markers.

Wall time is summed over invocations in ``runs/rag24/reproduce-timings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .atomic import building_dir, replace_dir, write_json, write_text
from .cli import analyze, train
from .cli.common import user_errors_exit_2
from .errors import DanceError

METHODS = (("ance", "train/rag24-ance.yaml"), ("dance", "train/rag24-dance.yaml"))
SEEDS = (1, 2, 3)
ZERO_SHOT = "zero-shot"
RUN_DEPTH = 100
README_START = "<!-- rag24-results:start -->"
README_END = "<!-- rag24-results:end -->"
COMMAND = "make reproduce"
TABLE_COLUMNS = (("q2d", "MRR@10", "MRR@10"), ("q2d", "nDCG@10", "nDCG@10"), ("q2d", "R@100", "Recall@100"),
                 ("d2q", "MRR@10", "d2q MRR@10"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dance_analysis.reproduce", description=__doc__.split("\n\n")[0],
        epilog="Interrupted? Run the same command again: finished runs are kept, a started one resumes from its "
               "last checkpoint, and the report is rebuilt.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (default: 1 2 3)")
    parser.add_argument("--runs-dir", default="runs/rag24", help="where the runs go (default: runs/rag24)")
    parser.add_argument("--out", default="reports/rag24", help="report folder (default: reports/rag24)")
    parser.add_argument("--readme", default="README.md",
                        help="project README whose rag24-results section is replaced (default: README.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override passed to every dance-train (repeatable)")
    return parser


@user_errors_exit_2
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    runs_dir.mkdir(parents=True, exist_ok=True)
    clock = _Clock(runs_dir / "reproduce-timings.json")

    run_dirs = []
    for seed in args.seeds:
        for method, recipe in METHODS:
            run_dir = runs_dir / f"{method}-seed{seed}"
            cmd = [recipe, "--output-dir", str(run_dir), "--set", f"optim.seed={seed}",
                   "--set", f"name=rag24-{method}-seed{seed}"]
            for item in args.overrides:
                cmd += ["--set", item]
            if run_dir.exists():
                cmd.append("--resume")
            print(f"== dance-train {' '.join(cmd)}", flush=True)
            with clock.stage(run_dir.name):
                status = train.main(cmd)
            if status:
                return status
            run_dirs.append(run_dir)

    first = run_dirs[0]
    zero_shot = runs_dir / ZERO_SHOT
    _copy_zero_shot(first / "checkpoint-0", zero_shot)
    lengths = json.loads((first / "checkpoint-0" / "encoder" / "encoder.json").read_text(encoding="utf-8"))
    # Built beside the final folder, which is replaced only when everything is written.
    build = out.with_name(f".{out.name}.build")
    shutil.rmtree(build, ignore_errors=True)
    analyze_args = [str(zero_shot)] + [str(d) for d in run_dirs] + [
        "--out", str(build), "--name", out.name, "--split", "test",
        "--query-max-length", str(lengths["query_max_length"]), "--doc-max-length", str(lengths["doc_max_length"])]
    print(f"== dance-analyze {' '.join(analyze_args)}", flush=True)
    with clock.stage("analysis"):
        status = analyze.main(analyze_args)
    if status:
        return status

    with clock.stage("test runs and README"):
        metrics = json.loads((build / "metrics.json").read_text(encoding="utf-8"))
        written = write_test_runs(metrics, build / "runs")
        table = results_table(metrics)
        clock.finish()
        (build / "README.md").write_text(report_readme(metrics, table, args, clock.total(), written),
                                         encoding="utf-8")
        replace_dir(build, out)
        readme = Path(args.readme)
        if readme.exists():
            replace_section(readme, project_section(metrics, table, out, clock.total(), args.seeds))
    print(f"report: {out / 'index.html'}\nresults: {out / 'README.md'} (wall time {_duration(clock.total())})")
    return 0


# ----------------------------------------------------------------------------------------------- steps
def _copy_zero_shot(checkpoint: Path, dest: Path) -> None:
    """The step-0 embeddings of ``checkpoint`` (refresh before any update) as a saved-embeddings folder."""
    meta = json.loads((checkpoint / "checkpoint.json").read_text(encoding="utf-8"))
    if int(meta.get("step", -1)) != 0:
        raise DanceError(f"{checkpoint}: expected the step-0 checkpoint of a run")
    with building_dir(dest) as tmp:
        shutil.copytree(checkpoint / "embeddings", tmp, dirs_exist_ok=True)
        (tmp / "meta.json").write_text(json.dumps({
            "collection": meta.get("collection"), "temperature": meta.get("temperature"),
            "source": f"{checkpoint}/embeddings (the backbone before the first update)"}, indent=2) + "\n",
            encoding="utf-8")


def _representative(run: dict) -> dict:
    for subject in run["subjects"]:
        if subject["label"] == run["representative"]:
            return subject
    raise DanceError(f"metrics.json: run {run['name']!r} has no subject {run['representative']!r}")


def write_test_runs(metrics: dict, folder: Path) -> list[Path]:
    """TREC runs (top ``RUN_DEPTH``) of the analysed split's queries for each run's representative subject."""
    from .data import load_collection
    from .embeddings import Embeddings
    from .pipeline import rank
    from .runs import write_trec_run

    collection = load_collection(metrics["collection"]["source"])
    split = metrics["selection"]["split"]
    query_ids = collection.split_queries(split)
    folder.mkdir(parents=True)
    written = []
    for run in metrics["runs"]:
        subject = _representative(run)
        emb_dir = Path(subject["path"]) if subject["kind"] == "embeddings" else Path(subject["path"]) / "embeddings"
        queries = Embeddings.load(emb_dir / "queries").subset(query_ids)
        corpus = Embeddings.load(emb_dir / "corpus")
        name = f"{run['name']}.{split}.trec.gz"
        write_trec_run(folder / name, rank(queries, corpus, RUN_DEPTH, device="cpu"), tag=run["name"])
        written.append(folder / name)
    return written


# ----------------------------------------------------------------------------------------------- tables
def _side(run: dict) -> str:
    objective = str(run.get("objective") or "").lower()
    return {"ance": "ANCE", "dance": "DANCE"}.get(objective, "zero-shot")


def results_table(metrics: dict) -> dict:
    """Per-run values of the table's columns and, per side, mean and sample standard deviation (ddof=1)."""
    per_run = []
    for run in metrics["runs"]:
        ranking = _representative(run)["ranking"]
        values = {label: ranking.get(task, {}).get(key) for task, key, label in TABLE_COLUMNS}
        per_run.append({"name": run["name"], "side": _side(run), "checkpoint": run["representative"],
                        "selection": run.get("selection"), "values": values})
    sides = {}
    for side in ("zero-shot", "ANCE", "DANCE"):
        rows = [r for r in per_run if r["side"] == side]
        if not rows:
            continue
        stats = {}
        for _, _, label in TABLE_COLUMNS:
            vals = np.array([r["values"][label] for r in rows if r["values"][label] is not None], dtype=float)
            stats[label] = {"mean": float(vals.mean()) if vals.size else None,
                            "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n": int(vals.size)}
        sides[side] = stats
    return {"per_run": per_run, "sides": sides}


def _pm(mean, std, n) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _summary_rows(table: dict) -> list[str]:
    labels = [label for _, _, label in TABLE_COLUMNS]
    lines = ["| model | runs | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for side, stats in table["sides"].items():
        n = max(s["n"] for s in stats.values())
        name = "MiniLM zero-shot (start)" if side == "zero-shot" else side
        lines.append(f"| {name} | {n} | " + " | ".join(_pm(stats[c]["mean"], stats[c]["std"], stats[c]["n"])
                                                    for c in labels) + " |")
    return lines


def _claim_rows(metrics: dict) -> list[str]:
    """The claims table: per metric the zero-shot start's value (when there is one), ANCE and DANCE as mean ± std
    over the seeds, and the verdicts."""
    claims = metrics["claims"]
    verdict_of = {v["claim"]: v["verdict"] for v in claims["verdicts"]}
    start = [_representative(r).get("claim_metrics") or {} for r in metrics["runs"] if _side(r) == "zero-shot"]
    lines = ["| claim | metric | predicted | zero-shot (start) | ANCE | DANCE | metric verdict | claim verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for row in claims["rows"]:
        value = start[0].get(row["metric"]) if start else None
        cells = [f"{value:.4f}" if value is not None and np.isfinite(value) else "n/a"]
        for side in ("ance", "dance"):
            vals = np.array([v for v in row.get(side) or [] if v is not None], dtype=float)
            vals = vals[np.isfinite(vals)]
            cells.append(_pm(float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0, vals.size)
                         if vals.size else "n/a")
        role = "" if row.get("primary") else " (supporting)"
        lines.append(f"| {row['claim']} | {row['label']}{role} | {row['predicted']} | {' | '.join(cells)} | "
                     f"{row['verdict']} | {verdict_of.get(row['claim'], '')} |")
    return lines


def _verdict_sentence(metrics: dict, table: dict) -> str:
    sides = table["sides"]
    counts = {}
    for v in metrics["claims"]["verdicts"]:
        counts.setdefault(v["verdict"], []).append(v["claim"])
    parts = [f"{verdict}: {', '.join(ids)}" for verdict, ids in counts.items()]
    text = "Claims " + "; ".join(parts) + "."
    if "ANCE" in sides and "DANCE" in sides:
        a, d = sides["ANCE"]["MRR@10"], sides["DANCE"]["MRR@10"]
        if a["mean"] is not None and d["mean"] is not None:
            spread = float(np.hypot(a["std"], d["std"]))
            diff = d["mean"] - a["mean"]
            if abs(diff) > spread:
                how = "beats" if diff > 0 else "is worse than"
                text += (f" On the test split DANCE {how} ANCE in MRR@10 by {abs(diff):.4f}, beyond the seed spread "
                         f"({spread:.4f}).")
            else:
                text += (f" On the test split DANCE and ANCE do not differ in MRR@10 beyond the seed spread "
                         f"(difference {diff:+.4f}, spread {spread:.4f}): DANCE does not beat ANCE here.")
    return text


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(next(row.split()[1] for row in Path("/proc/meminfo").read_text().splitlines()
                          if row.startswith("MemTotal")))
        memory = f", {mem_kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        memory = ""
    import torch
    gpu = f"{torch.cuda.device_count()} CUDA GPU(s)" if torch.cuda.is_available() else "no GPU"
    return (f"{model}, {os.cpu_count()} cores{memory}, {gpu}; {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def report_readme(metrics: dict, table: dict, args, wall_seconds: float, written: list[Path]) -> str:
    sel = metrics["selection"]
    run_lines = []
    for r in table["per_run"]:
        vals = " | ".join("n/a" if r["values"][c] is None else f"{r['values'][c]:.4f}" for _, _, c in TABLE_COLUMNS)
        run_lines.append(f"| {r['name']} | {r['side']} | {r['checkpoint']} ({r['selection'] or 'only subject'}) | "
                         f"{vals} |")
    labels = " | ".join(label for _, _, label in TABLE_COLUMNS)
    lines = [
        f"# ANCE vs DANCE on the rag24-sample ({len(args.seeds)} seeds)", "",
        f"Produced by `{COMMAND}`, that is `python -m dance_analysis.reproduce --seeds "
        f"{' '.join(map(str, args.seeds))}{''.join(' --set ' + s for s in args.overrides)}`.", "",
        f"- Recipes: `train/rag24-ance.yaml`, `train/rag24-dance.yaml`, seeds {', '.join(map(str, args.seeds))}; "
        f"every run starts from `{_backbone(metrics)}` (the zero-shot row). Each run is represented by its "
        "checkpoint with the best dev MRR@10 (the dev split, 58 queries, evaluated at every refresh).",
        f"- Evaluation: the {sel['split']} split, {sel['queries']} queries with a relevant passage (grade >= "
        f"{metrics['collection']['min_relevance']}), the whole corpus of {sel['corpus_size']:,} passages. d2q MRR@10: "
        "each relevant passage of the split retrieves among the split's queries.",
        f"- Machine: {_machine()}.",
        f"- Wall time: {_duration(wall_seconds)} in all (training, analysis, run files; summed over invocations, see "
        f"`{Path(args.runs_dir) / 'reproduce-timings.json'}`).",
        "- Spread: mean ± sample standard deviation over the seeds. A claim counts as reproduced only when the "
        "DANCE-ANCE difference of the means exceeds the combined spread sqrt(s_ANCE² + s_DANCE²) in the predicted "
        "direction.", "",
        "## Results (test split)", "", *_summary_rows(table), "",
        _verdict_sentence(metrics, table), "",
        "Per run:", "", f"| run | side | selected checkpoint | {labels} |",
        "|---|---|---|" + "---|" * len(TABLE_COLUMNS),
        *run_lines, "",
        "## The paper's claims", "", *_claim_rows(metrics), "",
        metrics["claims"]["note"], "",
        "## Files", "",
        "- `index.html`: the comparison report (self-contained; open it in a browser).",
        "- `metrics.json`: every number of the report; the tables above are computed from it.",
        "- `*.csv`: the report's tables.",
        *[f"- `runs/{p.name}`: TREC run, top {RUN_DEPTH} of the {sel['split']} split" for p in written], "",
    ]
    return "\n".join(lines)


def _backbone(metrics: dict) -> str:
    for run in metrics["runs"]:
        backbone = ((run.get("config") or {}).get("model") or {}).get("backbone")
        if backbone:
            return str(backbone)
    return "the recipes' backbone"


def project_section(metrics: dict, table: dict, out: Path, wall_seconds: float, seeds: Sequence[int]) -> str:
    return "\n".join([
        f"Test split of the rag24-sample, mean ± std over {len(seeds)} seeds, from `{COMMAND}` "
        f"({_duration(wall_seconds)} on {os.cpu_count()} CPU cores, no GPU); details, claims and run files in "
        f"[{out}/README.md]({out}/README.md), the report in "
        f"[{out}/index.html]({out}/index.html).", "",
        *_summary_rows(table), "", _verdict_sentence(metrics, table)])


def replace_section(path: Path, body: str) -> None:
    """Replace the text between the rag24-results markers of ``path`` with ``body``."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise DanceError(f"{path}: expected the markers {README_START} and {README_END}")
    new = text[:start + len(README_START)] + "\n" + body + "\n" + text[end:]
    write_text(path, new)


# ----------------------------------------------------------------------------------------------- timing
def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"


class _Clock:
    """Stage timings of this invocation, appended to the earlier ones in a JSON file after every stage."""

    def __init__(self, path: Path):
        self.path = path
        self.previous = []
        if path.exists():
            try:
                self.previous = json.loads(path.read_text(encoding="utf-8"))["sessions"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DanceError(f"{path}: expected the timings JSON written by an earlier invocation") from None
        self.session = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stages": {},
                        "seconds": 0.0}
        self.t0 = time.perf_counter()

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.session["stages"][name] = round(time.perf_counter() - self.t, 1)
                clock.finish()
                return False
        return _Stage()

    def finish(self) -> None:
        self.session["seconds"] = round(time.perf_counter() - self.t0, 1)
        write_json(self.path, {"sessions": self.previous + [self.session]})

    def total(self) -> float:
        return sum(s["seconds"] for s in self.previous) + self.session["seconds"]


if __name__ == "__main__":
    sys.exit(main())
