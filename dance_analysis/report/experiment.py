"""The page of a cross-validated experiment (`make reproduce`): the question and the answer first.

Layout, top to bottom: one panel per claim (verdict, the primary metrics' effects with 95 % CIs, a small figure of
the arms' levels); the arms and whether training moved them; the trajectories of the claim metrics along training;
the ranking table with CIs and the paired differences; then one section per topic that opens with its figure and
a two-line reading, the long tables (and the dev-selected checkpoints) in ``<details>`` blocks. Input: the
JSON-able results of :mod:`dance_analysis.reproduce`, the figure arrays of
:func:`dance_analysis.comparison.pictures.figure_arrays` and the trajectory figure of
:func:`dance_analysis.report.comparison_figures.trajectory_figure`. All text from data is escaped by Jinja2's
autoescape; the page loads nothing (Content-Security-Policy: images from data URIs only).
"""

from __future__ import annotations

from .comparison_figures import make_comparison_figures, projection_panels
from .figures import Figure
from .render import _environment

TEMPLATE = "experiment.html"


def render_experiment(results: dict, arrays: dict, trajectory: Figure | None = None) -> str:
    """The whole page as a string."""
    labels = {a["name"]: a["label"] for a in results["experiment"]["arms"]}
    figures = make_comparison_figures(results, arrays, labels)
    if trajectory is not None:
        figures["trajectories"] = trajectory
    panels = projection_panels(arrays.get("projections") or {}, labels)
    info = results["metric_info"]
    present = set(next(iter(results["levels"].values()), {}))
    arms = [a["name"] for a in results["experiment"]["arms"] if a["name"] in present]
    selection_keys = []
    for s in results.get("selections") or []:
        selection_keys += [k for k in s if k not in ("run", "path", "fold", "arm", "seed") and k not in selection_keys]
    return _environment().get_template(TEMPLATE).render(
        r=results, figures=figures, labels=labels, arms=arms, ranking_keys=results["ranking_keys"], panels=panels,
        projection_fold=arrays.get("projection_fold", 0), selection_keys=selection_keys,
        metric_labels={k: v["label"] for k, v in info.items()}, metric_claims={k: v["claim"] for k, v in info.items()})
