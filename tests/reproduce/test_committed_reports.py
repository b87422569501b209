"""The committed results of `make reproduce` in reports/rag24 agree with themselves and with the real data:

- the tables of reports/rag24/README.md and of the project README hold the seed-averaged levels, CIs, effects and
  verdicts of metrics.json, and the verdicts follow the rules from the numbers;
- every committed TREC run (one per trained arm and training seed, one per untrained arm) covers each tested real
  query of the rag24-sample once and, scored here with ir-measures on the sample's qrels, gives that arm and seed's
  level in metrics.json; each arm's level is the mean of its seeds';
- the main contrast agrees with scipy (and a bootstrap over queries and seeds written in the test) run here on the
  committed per-query, per-seed values;
- every training run's metrics log is committed; every trained arm has at least two seeds per fold; the compared
  stages are different models (their test top 10 differs for some queries in every fold and seed);
- the report names a clean revision and the command that made it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reproduce_support as rs
from dance_analysis import reproduce

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "rag24"

committed = pytest.mark.skipif(not (REPORT / "metrics.json").is_file(), reason="reports/rag24 is not committed")


@committed
def test_readme_tables_match_metrics_json():
    rs.check_readme_tables(REPORT, [REPORT / "README.md", ROOT / "README.md"])
    rs.check_claims_table(REPORT)
    section = (ROOT / "README.md").read_text()
    assert section.count(reproduce.README_START) == 1 and section.count(reproduce.README_END) == 1


@committed
def test_committed_run_files_score_like_metrics_json_on_the_real_qrels():
    from dance_analysis.data import load_collection

    metrics = json.loads((REPORT / "metrics.json").read_text())
    collection = load_collection("rag24-sample")
    assert metrics["collection"]["min_relevance"] == collection.min_relevance
    qrels = {q: dict(d) for q, d in collection.qrels.items()}
    assert rs.check_run_files(REPORT, qrels) == len(metrics["files"]["runs"])


@committed
def test_main_contrast_agrees_with_scipy_on_the_committed_values():
    rs.check_main_contrast_with_scipy(REPORT)


@committed
def test_training_logs_and_seeds_are_committed():
    import gzip

    metrics = json.loads((REPORT / "metrics.json").read_text())
    trained = {a["name"] for a in metrics["experiment"]["arms"] if a.get("recipe")}
    assert trained and all(min(metrics["seeds"][arm]) >= 2 for arm in trained), metrics["seeds"]
    logged = {(r["fold"], r["arm"], r["seed"]) for r in metrics["runs"]}
    assert {(f, arm) for f, arm, _ in logged} == {(f, arm) for f in range(metrics["experiment"]["folds"])
                                                  for arm in trained}
    for fold, arm, seed in logged:
        path = REPORT / "logs" / f"fold{fold}" / f"{arm}-seed{seed}.metrics.jsonl.gz"
        with gzip.open(path, "rt") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        assert lines, path


@committed
def test_compared_stages_are_different_models():
    metrics = json.loads((REPORT / "metrics.json").read_text())
    pairs = {("dance", "dance-stage1"), ("dance-stage1", "ance"), ("ance", "start")}
    rows = [m for m in metrics["movement"] if (m["arm"], m["vs"]) in pairs]
    assert {(m["arm"], m["vs"]) for m in rows} == pairs
    for m in rows:
        assert m["top10_changed_share"] > 0 and m["relative_param_distance"] > 0, m


@committed
def test_report_records_how_it_was_made():
    metrics = json.loads((REPORT / "metrics.json").read_text())
    assert metrics["experiment"]["command"] == reproduce.COMMAND
    assert "+dirty" not in metrics["provenance"]["git"], "reports/rag24 must be made from committed code"
    assert metrics["experiment"]["folds"] == reproduce.FOLDS


@pytest.mark.parametrize("folder", ["rag24", "demo"])
def test_committed_report_pages_stay_under_6_mb(folder):
    page = ROOT / "reports" / folder / "index.html"
    if not page.is_file():
        pytest.skip(f"reports/{folder} is not committed")
    assert page.stat().st_size < 6 * 2**20, f"{page}: {page.stat().st_size / 2**20:.1f} MB"
