"""Checks of a `make reproduce` report folder, shared by the tiny end-to-end experiment (test_reproduce.py) and
the committed results in reports/rag24 (test_committed_reports.py).

Each check recomputes what the folder states from an independent source: the README tables from metrics.json,
the ranking levels from the TREC run files with ir-measures / trec_eval, the main paired test and bootstrap CI
from per_unit.csv with scipy.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

ARMS = ("zero-shot", "ance", "dance-stage1", "dance")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NUMBER = r"(-?[\d.]+|n/a)"


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


def value_ci(cell: str) -> tuple[float, float, float]:
    """``"0.6667 [0.6012, 0.7300]"`` (an optional ``p=...`` after it) -> (0.6667, 0.6012, 0.7300)."""
    match = re.match(r"([+-]?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2)), float(match.group(3))


def check_readme_tables(report: Path, readmes: list[Path]) -> None:
    """The ranking table of every README in ``readmes`` holds each arm's pooled mean and 95 % CI of metrics.json."""
    metrics = json.loads((report / "metrics.json").read_text())
    labels = {a["name"]: a["label"] for a in metrics["experiment"]["arms"]}
    keys = metrics["ranking_keys"]
    for path in readmes:
        table = markdown_table(path.read_text(), "model")
        assert set(table) == set(labels.values()), path
        for arm, label in labels.items():
            for key, cell in zip(keys, table[label]):
                level = metrics["levels"][key][arm]
                value, low, high = value_ci(cell)
                assert value == pytest.approx(level["value"], abs=5e-5), (path, arm, key)
                assert low == pytest.approx(level["low"], abs=5e-5) and high == pytest.approx(level["high"], abs=5e-5)
                assert low <= value <= high, (path, arm, key)


def check_claims_table(report: Path) -> None:
    """The README's claims table lists every claim metric of metrics.json with its effect, CI, p-values and the
    verdicts; the verdicts follow the rule from the numbers (recomputed here)."""
    metrics = json.loads((report / "metrics.json").read_text())
    text = (report / "README.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| claim |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    lines = [line for line in text.splitlines() if re.match(r"\| C\d \|", line)]
    rows = [(claim, row) for claim in metrics["claims"] for row in claim["rows"]]
    assert len(lines) == len(rows)
    for line, (claim, row) in zip(lines, rows):
        cell = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert cell["claim"] == claim["claim"] and cell["metric verdict"] == row["verdict"]
        assert cell["claim verdict"] == claim["verdict"]
        if row["effect"] is not None:
            effect, low, high = value_ci(cell["effect [95 % CI]"])
            assert effect == pytest.approx(row["effect"], abs=5e-5) and low == pytest.approx(row["low"], abs=5e-5)
            assert high == pytest.approx(row["high"], abs=5e-5)
        p = row["p_holm"] if row["primary"] else row["p"]
        if row["reason"] is None and p is not None and row["low"] is not None:
            excludes = row["low"] > 0 or row["high"] < 0
            predicted = (row["low"] > 0) == (row["direction"] == "higher")
            expected = ("reproduced" if excludes and predicted and p < 0.05 else
                        "contradicted" if excludes and not predicted and p < 0.05 else "inconclusive")
            assert row["verdict"] == expected, row["key"]
    for claim in metrics["claims"]:
        primary = [r["verdict"] for r in claim["rows"] if r["primary"]]
        measurable = [v for v in primary if v != "not measurable here"]
        if measurable and all(v == "reproduced" for v in measurable):
            assert claim["verdict"] == "reproduced"
        elif "contradicted" in measurable and "reproduced" not in measurable:
            assert claim["verdict"] == "contradicted"


def run_queries(path: Path) -> list[str]:
    """Query ids of a TREC run file, in first-seen order."""
    seen: dict[str, None] = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            seen.setdefault(line.split()[0], None)
    return list(seen)


def check_run_files(report: Path, qrels: dict[str, dict[str, int]]) -> int:
    """Every ``runs/<arm>.trec.gz`` covers each tested query once and scores, with ir-measures on ``qrels``, the
    pooled levels of metrics.json: nDCG@10 and R@100 with ir-measures, MRR@10 as trec_eval's recip_rank cut at rank
    10 (ir-measures' own RR@k breaks score ties another way). Returns the number of run files checked."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    metrics = json.loads((report / "metrics.json").read_text())
    min_rel = metrics["collection"]["min_relevance"]
    evaluable = {q for q, docs in qrels.items() if any(g >= min_rel for g in docs.values())}
    qrel_list = [ir_measures.Qrel(q, d, int(g)) for q in evaluable for d, g in qrels[q].items()]
    tested = sum(f["test_queries"] for f in metrics["folds"])
    assert tested == len(evaluable)
    checked = 0
    for arm in ARMS:
        path = report / "runs" / f"{arm}.trec.gz"
        queries = run_queries(path)
        assert len(queries) == len(set(queries)) == tested and set(queries) == evaluable, path
        run_lines = list(ir_measures.read_trec_run(str(path)))
        scored = ir_measures.calc_aggregate([nDCG @ 10, R(rel=min_rel) @ 100], qrel_list, run_lines)
        rr = {m.query_id: m.value for m in ir_measures.pytrec_eval.iter_calc([RR(rel=min_rel)], qrel_list, run_lines)}
        mrr10 = np.mean([v if v > 0 and round(1 / v) <= 10 else 0.0 for v in (rr.get(q, 0.0) for q in evaluable)])
        levels = metrics["levels"]
        assert scored[nDCG @ 10] == pytest.approx(levels["q2d.nDCG@10"][arm]["value"], abs=1e-9), path
        assert scored[R(rel=min_rel) @ 100] == pytest.approx(levels["q2d.R@100"][arm]["value"], abs=1e-9), path
        assert mrr10 == pytest.approx(levels["q2d.MRR@10"][arm]["value"], abs=1e-9), path
        checked += 1
    return checked


def per_unit(report: Path, metric: str, arm: str) -> dict[tuple[str, str], float]:
    """``(fold, unit) -> value`` of ``metric`` for ``arm`` from per_unit.csv."""
    out = {}
    with open(report / "per_unit.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["metric"] == metric and row["arm"] == arm:
                out[(row["fold"], row["unit"])] = float(row["value"])
    return out


def check_main_contrast_with_scipy(report: Path, metric: str = "q2d.MRR@10") -> None:
    """The DANCE - ANCE effect, p-value and CI of ``metric`` in metrics.json agree with scipy's paired permutation
    test and paired bootstrap run here on the per-query values of per_unit.csv (Monte Carlo tolerances)."""
    from scipy import stats

    metrics = json.loads((report / "metrics.json").read_text())
    row = next(c for c in metrics["contrasts"]
               if c["treatment"] == "dance" and c["control"] == "ance")["metrics"][metric]
    a, b = per_unit(report, metric, "ance"), per_unit(report, metric, "dance")
    assert set(a) == set(b)
    keys = sorted(a)
    x = np.array([a[k] for k in keys])
    y = np.array([b[k] for k in keys])
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    assert row["n"] == len(x) and row["effect"] == pytest.approx(float((y - x).mean()), abs=1e-12)
    if np.all(x == y):
        assert row["p"] == 1.0
        return
    res = stats.permutation_test((y - x,), np.mean, permutation_type="samples", n_resamples=9999,
                                 alternative="two-sided", random_state=1)
    n_eff = min(10_000, 2 ** int((x != y).sum()))
    tol = 4 * np.sqrt(max(res.pvalue * (1 - res.pvalue), 1e-4) / n_eff) + 2e-3
    assert row["p"] == pytest.approx(res.pvalue, abs=tol)
    boot = stats.bootstrap((x, y), lambda u, v, axis=-1: np.mean(v - u, axis=axis), paired=True,
                           method="percentile", n_resamples=9999, random_state=1)
    width = max(boot.confidence_interval.high - boot.confidence_interval.low, 1e-9)
    assert row["low"] == pytest.approx(boot.confidence_interval.low, abs=0.1 * width)
    assert row["high"] == pytest.approx(boot.confidence_interval.high, abs=0.1 * width)
