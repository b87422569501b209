"""The committed results of `make reproduce` in reports/rag24 agree with themselves and with the real data:

- the tables of reports/rag24/README.md and of the project README are the means and spreads of metrics.json;
- every committed test-split TREC run, scored here with ir-measures on the rag24-sample's test qrels, gives the
  metrics that metrics.json reports for it;
- the claims table carries the verdicts computed in metrics.json, and the report names the revision and command
  that made it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reproduce_support as rs
from dance_analysis import reproduce

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "rag24"

pytestmark = pytest.mark.skipif(not (REPORT / "metrics.json").is_file(), reason="reports/rag24 is not committed")


def test_readme_tables_match_metrics_json():
    rs.check_readme_tables(REPORT, [REPORT / "README.md", ROOT / "README.md"])
    section = (ROOT / "README.md").read_text()
    assert section.count(reproduce.README_START) == 1 and section.count(reproduce.README_END) == 1


def test_claims_table_matches_metrics_json():
    rs.check_claims_table(REPORT)


def test_committed_run_files_score_like_metrics_json_on_the_real_test_qrels():
    from dance_analysis.data import load_collection

    metrics = json.loads((REPORT / "metrics.json").read_text())
    collection = load_collection("rag24-sample")
    assert metrics["collection"]["min_relevance"] == collection.min_relevance
    test = collection.split_queries("test")
    qrels = {q: dict(collection.qrels[q]) for q in test if q in collection.qrels}
    assert rs.check_run_files(REPORT, qrels) == 1 + 2 * len(reproduce.SEEDS)


def test_report_records_how_it_was_made():
    provenance = json.loads((REPORT / "metrics.json").read_text())["provenance"]
    assert provenance["command"].startswith("dance-analyze runs/rag24/zero-shot ")
    assert "+dirty" not in provenance["git"], "reports/rag24 must be made from committed code"
