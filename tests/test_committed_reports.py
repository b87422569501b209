"""The committed results of `make reproduce` in reports/rag24 agree with themselves and with the real data:

- the tables of reports/rag24/README.md and of the project README hold the levels, CIs, effects and verdicts of
  metrics.json, and the verdicts follow the rule from the numbers;
- every committed TREC run covers each tested query of the rag24-sample once and, scored here with ir-measures on
  the sample's qrels, gives the levels metrics.json reports;
- the main contrast agrees with scipy run here on the committed per-query values;
- the report names a clean revision and the command that made it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reproduce_support as rs
from dance_analysis import reproduce

ROOT = Path(__file__).resolve().parents[1]
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
    assert rs.check_run_files(REPORT, qrels) == len(rs.ARMS)


@committed
def test_main_contrast_agrees_with_scipy_on_the_committed_values():
    rs.check_main_contrast_with_scipy(REPORT)


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
