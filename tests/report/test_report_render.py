"""The rendered report: every text from data escaped, figures embedded as decodable PNGs, no reference outside the
file, CSV / JSON beside it, and nothing written when rendering or writing fails."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import pytest

from dance_analysis.report import build as build_module
from dance_analysis.report import render as render_module
from dance_analysis.report.build import build_report
from dance_analysis.report.compute import AnalysisSettings
from dance_analysis.report.figures import png_size
from dance_analysis.report.render import Table, fmt
from report_support import RUN_NAME_PAYLOAD, XSS_ID, XSS_TEXT, payload_collection, payload_runs

SETTINGS = dict(umap_points=100, progress=False, examples=12)


@pytest.fixture(scope="module")
def payload_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("payload")
    collection = payload_collection(root)
    ance, dance = payload_runs(root, collection)
    result = build_report([str(ance), str(dance)], out=root / "report", settings=AnalysisSettings(**SETTINGS))
    return result, (root / "report" / "index.html").read_text(encoding="utf-8")


def test_texts_from_data_are_escaped(payload_report):
    result, page = payload_report
    # The payload document is among the examples' top documents (it is relevant to the example queries).
    shown = [d["doc_id"] for ex in result.results["examples"] for r in ex["runs"] for d in r["docs"]]
    assert XSS_ID in shown
    assert XSS_ID not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS_TEXT not in page
    assert "&#34; onerror=alert(2) x=&#34;&lt;img src=x onerror=alert(3)&gt;" in page
    assert '" onerror=' not in page
    assert RUN_NAME_PAYLOAD not in page and "run &lt;img src=x onerror=alert(4)&gt;" in page
    assert "</textarea><script>" not in page and "&lt;b&gt;bold&lt;/b&gt; question &amp;" in page
    # The only tags named img / script in the page are the figures: each an inline PNG (no script at all).
    assert "<script" not in page.lower()
    tags = re.findall(r"<img\b[^>]*>", page)
    assert tags and all(re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', tag) for tag in tags)
    assert len(tags) == page.count("data:image/png;base64,")


def test_page_refers_to_nothing_outside_itself(payload_report):
    _, page = payload_report
    targets = re.findall(r"""(?:src|href|action|poster|data)\s*=\s*["']([^"']*)["']""", page, flags=re.I)
    assert targets, "expected figure sources and anchors"
    for target in targets:
        assert target.startswith("data:image/png;base64,") or target.startswith("#"), target
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page                    # Content-Security-Policy: nothing may be fetched


def test_figures_are_decodable_pngs_with_a_size(payload_report):
    _, page = payload_report
    from PIL import Image

    uris = re.findall(r'<img (?:id="[^"]+" )?src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)"', page)
    ids = re.findall(r'<figure id="([^"]+)"', page)
    # every image: a figure, a panel of the projection figures, or a claim panel's figure
    assert len(uris) == page.count("<img ") and len(uris) >= len(ids) >= 7
    assert set(ids) >= {"fig-au-plane", "fig-umap", "fig-trajectory", "fig-lorenz", "fig-softmax", "fig-cosines",
                        "fig-spectrum", "fig-pca", "fig-rr-differences", "fig-sampling", "fig-distributions"}
    for data, width, height in uris:
        raw = base64.b64decode(data, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
        assert image.size == (int(width), int(height)) == png_size(raw)
        assert image.size[0] > 100 and image.size[1] > 100


def test_json_and_csv_beside_the_page(payload_report):
    result, _ = payload_report
    folder = result.out
    record = json.loads((folder / "metrics.json").read_text())
    assert record["provenance"]["versions"]["numpy"]
    assert record["settings"]["seed"] == 0 and record["selection"]["queries"] == 12
    with (folder / "ranking.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and rows[0]["run"] == RUN_NAME_PAYLOAD
    # CSV values are the JSON values at full precision.
    first = record["runs"][0]["subjects"][0]
    assert float(rows[0]["q2d MRR@10"]) == first["ranking"]["q2d"]["MRR@10"]
    with (folder / "claims.csv").open(newline="") as fh:
        claims = list(csv.DictReader(fh))
    assert [c["verdict"] for c in claims] == [r["verdict"] for c in record["comparison"]["claims"] for r in c["rows"]]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["index.html", "metrics.json", "ranking.csv", "claims.csv", "geometry.csv", "query_document.csv",
         "alignment_uniformity.csv", "sampling.csv"])


def test_a_failure_while_rendering_or_writing_leaves_no_report(tmp_path, monkeypatch):
    collection = payload_collection(tmp_path)
    ance, dance = payload_runs(tmp_path, collection)
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(build_module, "render_html", broken)
    with pytest.raises(RuntimeError):
        build_report([str(ance)], out=out, settings=AnalysisSettings(**SETTINGS))
    assert not out.exists()
    monkeypatch.undo()

    # Writing fails after index.html and metrics.json are in the temporary folder: nothing appears.
    monkeypatch.setattr(Table, "to_csv", broken)
    with pytest.raises(RuntimeError):
        build_report([str(ance)], out=out, settings=AnalysisSettings(**SETTINGS))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_cell_formatting():
    assert fmt(None) == "\u2013" and fmt(float("nan")) == "\u2013"
    assert fmt(0.123456) == "0.1235" and fmt(1.5e-6) == "1.500e-06" and fmt(3) == "3"
    assert fmt([0.5, None]) == "0.5000, \u2013" and fmt(True) == "yes"
    assert render_module.REPORT_FILES == ("index.html", "metrics.json", "projections.parquet", "projector")


def test_refresh_figure_shows_the_false_negative_diagnostics(tmp_path):
    """The refresh log of a run (as read from metrics.jsonl) gives the margin panel (median with its 10-90 % band)
    and the partly-relevant panel; a run without them shows neither."""
    from dance_analysis.report.figures import refresh_panels, refresh_trajectories
    from dance_analysis.report.inputs import read_refresh_log

    lines = [{"step": s, "dev": {"MRR@10": 0.3}, "negatives": {"doc_negatives_drawn": 10},
              "geometry": {"negatives.above_positive": 0.1 * s, "negatives.margin_q10": -0.5,
                           "negatives.margin_q50": -0.2, "negatives.margin_q90": 0.01 * s,
                           "negatives.partly_relevant": 0.05}} for s in (0, 5, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    log = read_refresh_log(tmp_path / "metrics.jsonl")
    assert [row["negatives.margin_q90"] for row in log] == [0.0, 0.05, 0.1]
    results = {"runs": [{"name": "run", "refresh_log": log, "subjects": []}]}
    keys = [key for key, _, _ in refresh_panels(results)]
    assert "negatives.margin_q50" in keys and "negatives.partly_relevant" in keys
    figure = refresh_trajectories(results)
    assert figure is not None and png_size(base64.b64decode(figure.data_uri.split(",", 1)[1]))[0] > 0
    plain = [{k: v for k, v in row.items() if not k.startswith("negatives.")} for row in log]
    keys = [key for key, _, _ in refresh_panels({"runs": [{"name": "run", "refresh_log": plain}]})]
    assert "negatives.margin_q50" not in keys and "negatives.partly_relevant" not in keys
