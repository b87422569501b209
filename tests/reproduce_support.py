"""Checks of a `make reproduce` report folder, shared by the tiny end-to-end experiment (test_reproduce.py) and
the committed results in reports/rag24 (test_committed_reports.py).

Each check recomputes what the folder states from an independent source: the README tables from the numbers in
metrics.json (numpy mean and sample standard deviation), and the metrics in metrics.json from the TREC run files
with ir-measures / trec_eval.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

TABLE_COLUMNS = [("q2d", "MRR@10"), ("q2d", "nDCG@10"), ("q2d", "R@100"), ("d2q", "MRR@10")]
SIDES = {"ance": "ANCE", "dance": "DANCE"}
ZERO_SHOT_ROW = "MiniLM zero-shot (start)"


def markdown_table(text: str, first_header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with ``| first_header |``: first cell -> other cells."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.startswith(f"| {first_header} |"):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) != {"-"}:
                rows[cells[0]] = cells[1:]
    return rows


def mean_std(cell: str) -> tuple[float, float]:
    """``"0.6667 ± 0.0151"`` -> (0.6667, 0.0151); a single number has spread 0."""
    match = re.fullmatch(r"(-?[\d.]+)(?: ± ([\d.]+))?", cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2) or 0.0)


def representative(run: dict) -> dict:
    """The subject (checkpoint) that stands for a run in the report."""
    return next(s for s in run["subjects"] if s["label"] == run["representative"])


def check_readme_tables(report: Path, readmes: list[Path]) -> None:
    """The results table of every README in ``readmes`` holds, per side, the number of runs and the mean ± sample
    standard deviation (over the runs' representative checkpoints) of each column, computed here from metrics.json."""
    metrics = json.loads((report / "metrics.json").read_text())
    values: dict[str, list[list[float]]] = {}
    for run in metrics["runs"]:
        side = SIDES.get(run.get("objective") or "", ZERO_SHOT_ROW)
        ranking = representative(run)["ranking"]
        values.setdefault(side, []).append([ranking[t][k] for t, k in TABLE_COLUMNS])
    for path in readmes:
        table = markdown_table(path.read_text(), "model")
        assert set(table) == set(values), path
        for side, rows in values.items():
            rows = np.array(rows)
            assert int(table[side][0]) == len(rows), (path, side)
            for j, cell in enumerate(table[side][1:]):
                mean, std = mean_std(cell)
                assert mean == pytest.approx(rows[:, j].mean(), abs=5e-5), (path, side, TABLE_COLUMNS[j])
                assert std == pytest.approx(rows[:, j].std(ddof=1) if len(rows) > 1 else 0.0, abs=5e-5), \
                    (path, side, TABLE_COLUMNS[j])


def check_claims_table(report: Path) -> None:
    """The claims table of the report's README lists every claim row of metrics.json: the zero-shot start's value
    of the metric, ANCE and DANCE as mean ± sample std of the per-seed values, and the computed verdicts."""
    metrics = json.loads((report / "metrics.json").read_text())
    text = (report / "README.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| claim |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    lines = [line for line in text.splitlines() if re.match(r"\| C\d \|", line)]
    assert len(lines) == len(metrics["claims"]["rows"])
    verdicts = {v["claim"]: v["verdict"] for v in metrics["claims"]["verdicts"]}
    start = [representative(r)["claim_metrics"] for r in metrics["runs"] if not r.get("objective")]
    assert len(start) == 1
    for line, row in zip(lines, metrics["claims"]["rows"]):
        cell = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert cell["claim"] == row["claim"] and cell["metric verdict"] == row["verdict"]
        assert cell["claim verdict"] == verdicts[row["claim"]]
        zero = start[0].get(row["metric"])
        if zero is None or not np.isfinite(zero):
            assert cell["zero-shot (start)"] == "n/a", row["metric"]
        else:
            assert float(cell["zero-shot (start)"]) == pytest.approx(zero, abs=5e-5), row["metric"]
        for side in ("ance", "dance"):
            values = np.array([v for v in row[side] if v is not None and np.isfinite(v)], dtype=float)
            if not values.size:
                assert cell[side.upper()] == "n/a", (row["metric"], side)
                continue
            mean, std = mean_std(cell[side.upper()])
            assert mean == pytest.approx(values.mean(), abs=5e-5), (row["metric"], side)
            assert std == pytest.approx(values.std(ddof=1) if values.size > 1 else 0.0, abs=5e-5), (row["metric"], side)


def check_run_files(report: Path, qrels: dict[str, dict[str, int]]) -> int:
    """Every ``runs/<run>.test.trec.gz`` scores, with ir-measures on ``qrels`` (query -> doc -> grade, the test
    split), what metrics.json reports for the run's representative checkpoint: nDCG@10 and R@100 with ir-measures,
    MRR@10 as trec_eval's recip_rank cut at rank 10 (ir-measures' own RR@k breaks score ties another way).
    Returns the number of run files checked."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    metrics = json.loads((report / "metrics.json").read_text())
    min_rel = metrics["collection"]["min_relevance"]
    evaluable = {q for q, docs in qrels.items() if any(g >= min_rel for g in docs.values())}
    qrel_list = [ir_measures.Qrel(q, d, int(g)) for q in evaluable for d, g in qrels[q].items()]
    checked = 0
    for run in metrics["runs"]:
        path = report / "runs" / f"{run['name']}.test.trec.gz"
        run_lines = list(ir_measures.read_trec_run(str(path)))
        assert evaluable <= {r.query_id for r in run_lines}, f"{path}: a query of the split is missing"
        scored = ir_measures.calc_aggregate([nDCG @ 10, R(rel=min_rel) @ 100], qrel_list, run_lines)
        rr = {m.query_id: m.value for m in ir_measures.pytrec_eval.iter_calc([RR(rel=min_rel)], qrel_list, run_lines)}
        mrr10 = np.mean([v if v > 0 and round(1 / v) <= 10 else 0.0 for v in (rr.get(q, 0.0) for q in evaluable)])
        q2d = representative(run)["ranking"]["q2d"]
        assert len(evaluable) == q2d["queries"], path
        assert scored[nDCG @ 10] == pytest.approx(q2d["nDCG@10"], abs=1e-9), path
        assert scored[R(rel=min_rel) @ 100] == pytest.approx(q2d["R@100"], abs=1e-9), path
        assert mrr10 == pytest.approx(q2d["MRR@10"], abs=1e-9), path
        checked += 1
    return checked
