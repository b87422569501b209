"""The report in headless Chromium (Debian's ``chromium``): no request leaves the file, no console error, no
script runs, every figure has a non-zero size; a screenshot is kept in tests/artifacts/.

The browser is driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (see
tests/browser_support.py), which reports every network request and console message of the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from browser_support import find_chromium, inspect_page
from dance_analysis.report.build import build_report
from dance_analysis.report.compute import AnalysisSettings
from report_support import payload_collection, payload_runs

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = find_chromium()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install "
                                                "chromium; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An ANCE-vs-DANCE report whose collection and run name carry HTML / script payloads."""
    root = tmp_path_factory.mktemp("browser")
    collection = payload_collection(root)
    ance, dance = payload_runs(root, collection)
    result = build_report([str(ance), str(dance)], out=root / "report",
                          settings=AnalysisSettings(umap_points=100, progress=False, examples=12))
    return result.index


def test_report_in_headless_chromium(report):
    page = inspect_page(report, binary=CHROMIUM)

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-screenshot.png").write_bytes(page.screenshot)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 10_000

    assert page.title.startswith("dance-analyze:")
    # Only the file itself and its inline data: images are loaded.
    outside = [url for url in page.requests if not url.startswith(("file://", "data:"))]
    assert outside == [], outside
    assert [url for url in page.requests if url.startswith("file://")] == [report.resolve().as_uri()]
    assert page.failed == []
    # No console output at all, no exception, no error / warning entry (a blocked script would log one).
    assert page.console == [], page.console
    assert page.exceptions == [], page.exceptions
    assert page.dialogs == [], page.dialogs
    assert [e for e in page.log_entries if e.get("level") in ("error", "warning")] == [], page.log_entries

    html = report.read_text(encoding="utf-8")
    assert len(page.figures) == html.count("<img ") >= html.count("<figure ") >= 7
    for figure in page.figures:
        assert figure["tag"] == "img" and figure["complete"], figure
        assert figure["natural"][0] > 0 and figure["natural"][1] > 0, figure
        assert figure["box"][0] > 0 and figure["box"][1] > 0, figure


def test_first_screen_is_the_question_and_the_answer(report):
    """At 1280 x 900: the five claim panels start on the first screen, no sideways scroll, every table wider than
    the page scrolls in its own box, and the two models' projection panels differ (fitted per model)."""
    page = inspect_page(report, binary=CHROMIUM)
    layout = page.layout
    assert [c["id"] for c in layout["claims"]] == [f"claim-C{i}" for i in range(1, 6)]
    assert all(c["top"] < layout["innerHeight"] for c in layout["claims"]), layout["claims"]
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["wide"] == 0
    assert len(layout["panels"]) == 2 and len(set(layout["panels"])) == 2
    umap = [f for f in page.figures if f["id"] == "fig-umap"]
    assert len(umap) == 2
