"""The normalised histograms of the report's figures: each line is the counts as shares of their total, drawn
through the bin centres; an empty histogram draws no line."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.report import figures


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the figure functions would encode (kept open to read their lines)."""
    kept = []

    def keep(fig, fig_id, title, caption):
        kept.append(fig)
        return fig_id

    monkeypatch.setattr(figures, "encode_figure", keep)
    yield kept
    plt = figures.pyplot()
    for fig in kept:
        plt.close(fig)


def _results(cosines: dict, q2d: dict, temperature: float = 0.05) -> dict:
    subject = {"label": "r@1", "geometry": {"cosine_histogram": cosines},
               "sampling": {"temperature": temperature, "q2d_softmax": {"entropy_norm_hist": q2d},
                            "d2q_softmax": None}}
    return {"runs": [{"name": "run", "representative": "r@1", "subjects": [subject]}]}


def _lines(ax) -> dict[str, tuple[list, list, str]]:
    return {line.get_label(): (line.get_xdata().tolist(), line.get_ydata().tolist(), line.get_drawstyle())
            for line in ax.get_lines()}


def test_cosine_histograms_are_shares_at_bin_centres(drawn):
    cosines = {"edges": [-1.0, 0.0, 0.5, 1.0], "positive": [0, 1, 3], "negative": [2, 2, 0],
               "random": [0, 0, 0]}
    assert figures.cosine_histograms(_results(cosines, {"edges": [0, 1], "counts": [1]})) == "fig-cosines"
    lines = _lines(drawn[0].axes[0])
    centres = [-0.5, 0.25, 0.75]
    assert lines == {"positive": (centres, [0.0, 0.25, 0.75], "steps-mid"),
                     "negative": (centres, [0.5, 0.5, 0.0], "steps-mid")}  # random: no pairs, no line


def test_sampling_entropy_is_shares_at_bin_centres_and_empty_panels_have_no_legend(drawn):
    q2d = {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [1, 0, 2, 5]}
    assert figures.sampling_entropy(_results({"edges": [0, 1], "positive": [1], "negative": [0],
                                              "random": [0]}, q2d)) == "fig-softmax"
    q2d_ax, d2q_ax = drawn[0].axes
    assert _lines(q2d_ax) == {"run (t=0.05)": ([0.125, 0.375, 0.625, 0.875], [0.125, 0.0, 0.25, 0.625],
                                              "steps-mid")}
    assert q2d_ax.get_legend() is not None
    assert _lines(d2q_ax) == {} and d2q_ax.get_legend() is None


def test_normalised_histogram_of_nothing_draws_nothing():
    plt = figures.pyplot()
    fig, ax = plt.subplots()
    try:
        assert figures.normalised_histogram(ax, [0.0, 1.0, 2.0], np.zeros(2)) is False
        assert ax.get_lines() == []
        assert figures.normalised_histogram(ax, [0.0, 1.0, 2.0], [3, 1], color="red") is True
        (line,) = ax.get_lines()
        assert line.get_ydata().tolist() == [0.75, 0.25] and line.get_xdata().tolist() == [0.5, 1.5]
    finally:
        plt.close(fig)
