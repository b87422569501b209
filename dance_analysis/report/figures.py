"""Figures of the report: matplotlib (Agg backend) -> inline ``data:image/png;base64`` URIs.

Every function takes the JSON-able results of :mod:`dance_analysis.report.compute` (and, for UMAP, the
coordinates) and returns :class:`Figure` records or ``None`` when there is nothing to draw. No file is written
and nothing refers to the network: the PNG bytes are embedded in the HTML.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from .columns import trajectory_columns
from .inputs import REFRESH_DEV_KEY

#: Resolution of the embedded PNGs.
DPI = 100


@dataclass
class Figure:
    """One embedded figure: ``data_uri`` holds the PNG; width / height in pixels."""

    id: str
    title: str
    caption: str
    data_uri: str
    width: int
    height: int


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def encode_figure(fig, fig_id: str, title: str, caption: str) -> Figure:
    """Close ``fig`` and return it as an embedded PNG :class:`Figure`."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = buffer.getvalue()
    width, height = png_size(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return Figure(fig_id, title, caption, uri, width, height)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG from its IHDR chunk (0, 0 when ``data`` is not a PNG)."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return 0, 0
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _colors(n: int) -> list:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _subjects(results: dict) -> list[tuple[int, dict, dict]]:
    """(run index, run, subject) of every subject."""
    return [(i, run, subject) for i, run in enumerate(results["runs"]) for subject in run["subjects"]]


def _representatives(results: dict) -> list[tuple[int, dict, dict]]:
    out = []
    for i, run in enumerate(results["runs"]):
        for subject in run["subjects"]:
            if subject["label"] == run["representative"]:
                out.append((i, run, subject))
    return out


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def normalised_histogram(ax, edges, counts, **style) -> bool:
    """Draw a histogram given by its bin ``edges`` and ``counts`` as shares of its total: a step line through
    the bin centres (``where="mid"``) with the matplotlib ``style`` given. Draws nothing and returns False when
    the counts sum to 0."""
    counts = np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return False
    edges = np.asarray(edges, dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    ax.step(centers, counts / counts.sum(), where="mid", **style)
    return True


# ----------------------------------------------------------------------------------------------- figures
def alignment_uniformity_plane(results: dict) -> Figure | None:
    """Alignment (x) vs uniformity of queries and documents together (y), one point per checkpoint and run."""
    plt = pyplot()
    runs = results["runs"]
    colors = _colors(len(runs))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    drawn = 0
    for i, run in enumerate(runs):
        xs = [_num(s["alignment_uniformity"]["alignment"]) for s in run["subjects"]]
        ys = [_num(s["alignment_uniformity"]["uniformity"]["both"]["value"]) for s in run["subjects"]]
        if not any(np.isfinite(x) and np.isfinite(y) for x, y in zip(xs, ys)):
            continue
        drawn += 1
        if len(xs) > 1:
            ax.plot(xs, ys, "-", color=colors[i], alpha=0.5, linewidth=1)
            for subject, x, y in zip(run["subjects"], xs, ys):
                if subject["step"] is not None:
                    ax.annotate(str(subject["step"]), (x, y), textcoords="offset points", xytext=(4, 3),
                                fontsize=7, color=colors[i])
        ax.scatter(xs, ys, color=colors[i], s=22, label=shorten(run["name"]), zorder=3)
        rep = [k for k, s in enumerate(run["subjects"]) if s["label"] == run["representative"]]
        if rep and len(xs) > 1:
            ax.scatter([xs[rep[0]]], [ys[rep[0]]], marker="*", s=180, color=colors[i], edgecolor="black",
                       linewidth=0.6, zorder=4)
    if not drawn:
        plt.close(fig)
        return None
    t = results["settings"]["uniformity_t"]
    ax.set_xlabel("alignment  (mean ||f(q) - f(d+)||², lower = better aligned)")
    ax.set_ylabel(f"uniformity  (log E exp(-{t:g}||u-v||²), lower = more uniform)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return encode_figure(fig, "fig-au-plane", "Alignment-uniformity plane",
                   "One point per checkpoint (numbers: steps) and run; a star marks the checkpoint that stands "
                   "for a run. Lower-left is better on both axes (Wang & Isola 2020). Uniformity over queries "
                   "and documents together.")


def pca_spectra(results: dict) -> Figure | None:
    """Explained-variance ratio of the first principal components, queries and documents, per run."""
    plt = pyplot()
    reps = _representatives(results)
    if not reps:
        return None
    colors = _colors(len(results["runs"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, run, subject in reps:
        for side, style in (("queries", "-"), ("documents", "--")):
            ratio = np.asarray([_num(v) for v in subject["geometry"]["spectrum"].get(side, [])])
            if ratio.size and np.isfinite(ratio).any():
                ax.plot(np.arange(1, ratio.size + 1), np.clip(ratio, 1e-8, None), style, color=colors[i],
                        label=f"{shorten(run['name'], 28)} {side}")
    ax.set_yscale("log")
    ax.set_xlabel("principal component")
    ax.set_ylabel("share of variance")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    return encode_figure(fig, "fig-spectrum", "PCA spectra",
                   "Share of the variance on each of the first principal components (solid: queries, dashed: "
                   "documents). A steep drop means a few dominant directions (anisotropy).")


def cosine_histograms(results: dict) -> Figure | None:
    """Cosine of each query to its positives, to mined negatives and to random documents."""
    plt = pyplot()
    reps = _representatives(results)
    if not reps:
        return None
    fig, axes = plt.subplots(1, len(reps), figsize=(4.2 * len(reps) + 0.6, 3.4), squeeze=False, sharey=False)
    for ax, (i, run, subject) in zip(axes[0], reps):
        hist = subject["geometry"]["cosine_histogram"]
        for group, color in (("positive", "tab:green"), ("negative", "tab:red"), ("random", "tab:gray")):
            normalised_histogram(ax, hist["edges"], hist[group], color=color, label=group)
        ax.set_title(shorten(run["name"]), fontsize=9)
        ax.set_xlabel("cosine(q, d)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of pairs")
    axes[0][0].legend(fontsize=8, loc="upper left")
    return encode_figure(fig, "fig-cosines", "Query-document cosines",
                   "Cosine between each query and its relevant documents (positive), the documents the ANCE "
                   "sampler draws from its top-K (negative) and random documents.")


def sampling_entropy(results: dict) -> Figure | None:
    """Histograms of the normalised entropy of the per-row sampling softmax, q2d and d2q."""
    plt = pyplot()
    reps = _representatives(results)
    if not reps:
        return None
    colors = _colors(len(results["runs"]))
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4), squeeze=False)
    for ax, key, title in ((axes[0][0], "q2d_softmax", "q2d: queries over their top-K documents"),
                           (axes[0][1], "d2q_softmax", "d2q: positive documents over their top-K queries")):
        any_drawn = False
        for i, run, subject in reps:
            soft = subject["sampling"].get(key)
            if not soft:
                continue
            hist = soft["entropy_norm_hist"]
            t = subject["sampling"]["temperature"]
            any_drawn |= normalised_histogram(ax, hist["edges"], hist["counts"], color=colors[i],
                                              label=f"{shorten(run['name'], 28)} (t={t:g})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("normalised entropy of the softmax (1 = uniform)")
        ax.grid(alpha=0.3)
        if any_drawn:
            ax.legend(fontsize=8, loc="upper right")
    axes[0][0].set_ylabel("share of rows")
    return encode_figure(fig, "fig-softmax", "Negative-sampling softmax",
                   "Per row, the softmax over its top-K retrieval scores at the training temperature: a "
                   "normalised entropy near 1 spreads the sampling probability evenly over the candidates.")


def lorenz_curves(results: dict) -> Figure | None:
    """Lorenz curves of how often each document / query is drawn as a negative."""
    plt = pyplot()
    reps = _representatives(results)
    if not reps:
        return None
    colors = _colors(len(results["runs"]))
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), squeeze=False)
    for ax, side in ((axes[0][0], "documents"), (axes[0][1], "queries")):
        ax.plot([0, 1], [0, 1], ":", color="black", linewidth=1, label="equality")
        for i, run, subject in reps:
            for source_key, style, tag in (("split_counts", "-", "split"), ("trainer_counts", "--", "refresh")):
                block = subject["sampling"].get(source_key) or {}
                entry = block.get(side)
                if not entry or entry.get("lorenz") is None:
                    continue
                ys = np.asarray([_num(v) for v in entry["lorenz"]["y"]])
                if not np.isfinite(ys).any():
                    continue
                xs = np.asarray(entry["lorenz"]["x"], dtype=float)
                gini = entry.get("gini")
                label = f"{shorten(run['name'], 24)} {tag}" + (f" (Gini {gini:.2f})" if gini is not None else "")
                ax.plot(xs, ys, style, color=colors[i], label=label)
        ax.set_title(f"{side} drawn as negatives", fontsize=9)
        ax.set_xlabel(f"share of {side} (least drawn first)")
        ax.set_ylabel("share of draws")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return encode_figure(fig, "fig-lorenz", "Lorenz curves of negative draws",
                   "Solid: the samplers applied to the analysed split; dashed: the trainer's counts at the "
                   "checkpoint's refresh (negatives/). The closer to the diagonal, the more evenly negatives are "
                   "spread.")



def _over_steps(results: dict, runs: list, panels: list, fig_id: str, title: str, caption: str) -> Figure:
    """A grid of panels, one line per run over training steps; ``panels``: (title, run -> (steps, values))."""
    plt = pyplot()
    colors = _colors(len(results["runs"]))
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.8 * rows), squeeze=False)
    for k, (panel, series) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        for i, run in runs:
            steps, values = series(run)
            if len(steps):
                ax.plot(steps, values, "o-", color=colors[i], markersize=3, label=shorten(run["name"], 28))
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    return encode_figure(fig, fig_id, title, caption)


def trajectories(results: dict) -> Figure | None:
    """Metrics over the checkpoints of each run (runs with at least two checkpoints)."""
    runs = [(i, run) for i, run in enumerate(results["runs"])
            if len(run["subjects"]) > 1 and all(s["step"] is not None for s in run["subjects"])]
    if not runs:
        return None

    def series(column):
        return lambda run: ([s["step"] for s in run["subjects"]], [_num(column.value(s)) for s in run["subjects"]])

    panels = [(c.trajectory, series(c)) for c in trajectory_columns()
              if any(c.value(s) is not None for _, run in runs for s in run["subjects"])]
    return _over_steps(results, runs, panels, "fig-trajectory", "Trajectories over checkpoints",
                       "Each point is one checkpoint of a run, in step order; all numbers are computed on the "
                       "analysed split, except the trainer's dev metric.")


def training_loss(results: dict) -> Figure | None:
    """The training loss of each run (its metrics.jsonl), with the checkpoints marked."""
    plt = pyplot()
    runs = [(i, run) for i, run in enumerate(results["runs"]) if len(run.get("training_log") or []) > 1]
    if not runs:
        return None
    colors = _colors(len(results["runs"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, run in runs:
        log = run["training_log"]
        steps = np.asarray([r["step"] for r in log], dtype=float)
        loss = np.asarray([r["loss"] for r in log], dtype=float)
        ax.plot(steps, loss, "-", color=colors[i], linewidth=1, alpha=0.8, label=shorten(run["name"], 28))
        for subject in run["subjects"]:
            if subject["step"] is not None:
                ax.axvline(subject["step"], color=colors[i], linestyle=":", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return encode_figure(fig, "fig-training-loss", "Training loss",
                   "The loss logged by the trainer (metrics.jsonl); dotted lines mark the analysed checkpoints.")


#: (key, title, band): a panel per statistic of the refresh log; ``band`` names the keys of a shaded range.
REFRESH_PANELS: tuple[tuple[str, str, tuple[str, str] | None], ...] = (
    (REFRESH_DEV_KEY, f"{REFRESH_DEV_KEY} (trainer)", None), ("queries.mean_cosine", "query mean cosine", None),
    ("documents.mean_cosine", "document mean cosine", None),
    ("documents.uniformity", "document uniformity (t = 2)", None), ("qd.mmd2", "query-document MMD²", None),
    ("negatives.above_positive", "negatives scoring >= the positive", None),
    ("negatives.margin_q50", "s(q, d-) - s(q, d+): median, 10-90 % band",
     ("negatives.margin_q10", "negatives.margin_q90")),
    ("negatives.partly_relevant", "drawn negatives judged partly relevant", None),
)


def refresh_panels(results: dict) -> list[tuple[str, str, tuple[str, str] | None]]:
    """The :data:`REFRESH_PANELS` that some run's refresh log (two refreshes or more) has values for."""
    rows = [row for run in results["runs"] if len(run.get("refresh_log") or []) > 1 for row in run["refresh_log"]]
    return [(key, title, band) for key, title, band in REFRESH_PANELS if any(key in row for row in rows)]


def refresh_trajectories(results: dict) -> Figure | None:
    """The space statistics the trainer logged at every refresh (metrics.jsonl), per run: how the space moved
    while training, also where no checkpoint kept its embeddings."""
    runs = [(i, run) for i, run in enumerate(results["runs"]) if len(run.get("refresh_log") or []) > 1]
    if not runs:
        return None
    plt = pyplot()
    colors = _colors(len(results["runs"]))
    panels = refresh_panels(results)
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.7 * rows), squeeze=False)
    for k, (key, title, band) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        for i, run in runs:
            points = [(row["step"], row[key]) for row in run["refresh_log"] if key in row]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, "o-", color=colors[i], markersize=3, label=shorten(run["name"], 28))
            if band is not None:
                rows_band = [(row["step"], row[band[0]], row[band[1]]) for row in run["refresh_log"]
                             if band[0] in row and band[1] in row]
                if rows_band:
                    steps, low, high = zip(*rows_band)
                    ax.fill_between(steps, low, high, color=colors[i], alpha=0.15, linewidth=0)
        if key.startswith("negatives.margin"):
            ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    return encode_figure(fig, "fig-refresh", "The space at every refresh, as the trainer logged it",
                         "Training and dev queries against the whole corpus, computed by the trainer when it "
                         "re-encoded the collection (metrics.jsonl); no embeddings need to be kept. False "
                         "negatives show as negatives scoring at or above their positive (margin >= 0, above the "
                         "dashed line) and, where the judgments grade below the relevance threshold, as drawn "
                         "negatives judged partly relevant.")


def make_figures(results: dict, arrays: dict) -> dict[str, Figure]:
    """Every figure the report shows, keyed by section (``None`` entries dropped)."""
    figures = {
        "au_plane": alignment_uniformity_plane(results),
        "spectrum": pca_spectra(results),
        "cosines": cosine_histograms(results),
        "softmax": sampling_entropy(results),
        "lorenz": lorenz_curves(results),
        "trajectory": trajectories(results),
        "refresh": refresh_trajectories(results),
        "training_loss": training_loss(results),
    }
    return {key: fig for key, fig in figures.items() if fig is not None}
