"""The page of a cross-validated experiment (`make reproduce`): the question and the answer first.

Layout, top to bottom: one panel per claim (verdict, the primary metrics' effects with 95 % CIs, a small figure of
the arms' levels); the ranking table with CIs and the paired differences; then one section per topic that opens
with its figure and a two-line reading, the long tables in ``<details>`` blocks. Input: the JSON-able results of
:mod:`dance_analysis.reproduce` and the figure arrays of :func:`dance_analysis.comparison.pictures.figure_arrays`.
All text from data is escaped by Jinja2's autoescape; the page loads nothing (Content-Security-Policy: images from
data URIs only).
"""

from __future__ import annotations

from .comparison_figures import make_comparison_figures, projection_panels

TEMPLATE = "experiment.html"


def render_experiment(results: dict, arrays: dict) -> str:
    """The whole page as a string."""
    from .render import _environment

    labels = {a["name"]: a["label"] for a in results["experiment"]["arms"]}
    figures = make_comparison_figures(results, arrays, labels)
    panels = projection_panels(arrays.get("projections") or {}, labels)
    info = results["metric_info"]
    return _environment().get_template(TEMPLATE).render(
        r=results, figures=figures, labels=labels, ranking_keys=results["ranking_keys"], panels=panels,
        projection_fold=arrays.get("projection_fold", 0),
        metric_labels={k: v["label"] for k, v in info.items()}, metric_claims={k: v["claim"] for k, v in info.items()})
