"""Figures that compare arms (models) on the same queries: used by the experiment page and by dance-analyze.

Input: the JSON-able results of :func:`dance_analysis.comparison.compare` and the plain arrays of
:func:`dance_analysis.comparison.pictures.figure_arrays` (a dict: ``rr_differences``, ``sampling``,
``projections``, ``nearest``, ``norms``, ``projection_fold``). Output: :class:`~dance_analysis.report.figures.Figure`
records (inline PNG), one colour per arm throughout.
"""

from __future__ import annotations

import textwrap

import numpy as np

from .figures import Figure, encode_figure, pyplot, shorten

#: Fixed colours of the experiment's arms; other arms (e.g. run names in dance-analyze) take the palette in turn.
ARM_COLORS = {"zero-shot": "#8c8c8c", "minilm": "#8c8c8c", "start": "#2e4057", "ance": "#d1495b",
              "dance-stage1": "#edae49", "dance": "#00798c", "dance-control": "#66a182"}
PALETTE = ("#d1495b", "#00798c", "#edae49", "#8c8c8c", "#66a182", "#2e4057", "#8d96a3")
QUERY_COLOR, DOC_COLOR = "#d1495b", "#30638e"


def arm_colors(arms) -> dict[str, str]:
    """A colour per arm: the fixed one of a known arm, else the next of the palette."""
    free = [c for c in PALETTE if c not in ARM_COLORS.values()] + list(PALETTE)
    out = {}
    for arm in arms:
        out[arm] = ARM_COLORS.get(arm) or free[len([a for a in out if a not in ARM_COLORS]) % len(free)]
    return out


def _short_label(label: str) -> str:
    """An arm's label without its explanation: ``DANCE (stage 2, + 0.1 dual loss)`` -> ``DANCE``,
    ``start: MiniLM, first 3 layers (...)`` -> ``start``."""
    return label.split(" (")[0].split(":")[0].strip() or label


def _title(text: str, width: int = 34, lines: int = 3) -> str:
    """``text`` wrapped to at most ``lines`` lines of ``width`` characters (the last one cut with an ellipsis)."""
    wrapped = textwrap.wrap(text, width)
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def _levels_figure(results: dict, claim: dict, labels: dict[str, str]) -> Figure:
    """One panel per primary metric of ``claim``: each arm's value with its 95 % CI, the arms down the shared
    y-axis (their short names, read horizontally) and the values across."""
    plt = pyplot()
    rows = [r for r in claim["rows"] if r["primary"]]
    arms = list(labels)
    fig, axes = plt.subplots(1, len(rows), figsize=(1.0 + 2.5 * len(rows), 0.9 + 0.27 * len(arms)),
                             squeeze=False, sharey=True)
    colors = arm_colors(arms)
    for ax, row in zip(axes[0], rows):
        levels = results["levels"][row["key"]]
        for i, arm in enumerate(arms):
            lv = levels.get(arm) or {}
            if lv.get("value") is None:
                continue
            lo, hi = lv.get("low"), lv.get("high")
            err = None if lo is None or hi is None else [[max(lv["value"] - lo, 0.0)], [max(hi - lv["value"], 0.0)]]
            ax.errorbar([lv["value"]], [i], xerr=err, fmt="o", color=colors[arm], capsize=3, ms=5)
        ref = [lv.get("isotropic_reference") for lv in levels.values() if lv.get("isotropic_reference") is not None]
        if ref:
            ax.axvline(float(np.mean(ref)), color="#555", ls=":", lw=1)    # named in the caption
        ax.set_yticks(range(len(arms)), [_short_label(labels[a]) for a in arms], fontsize=7)
        ax.set_ylim(len(arms) - 0.5, -0.5)      # the first arm at the top
        ax.grid(axis="x", color="#e5e5e5", lw=0.6)
        ax.set_title(_title(row["label"]), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.locator_params(axis="x", nbins=4)    # a narrow panel: long tick labels (0.0125, -3.675) must not touch
    fig.tight_layout()
    return encode_figure(fig, f"fig-{claim['claim']}", f"{claim['claim']}: levels of the primary metrics",
                         "Each arm's value with its 95 % CI (pooled units, or mean over folds with the bootstrap "
                         "inside folds); dotted: the value of an isotropic Gaussian sample of the same size, where it "
                         "applies.")


def _differences_figure(diffs: np.ndarray, treatment: str = "DANCE", control: str = "ANCE") -> Figure | None:
    """Sorted per-query differences in RR@10, treatment minus control: wins, ties and losses at a glance."""
    if diffs.size == 0:
        return None
    plt = pyplot()
    d = np.sort(diffs)[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 2.4))
    colors = np.where(d > 0, "#00798c", np.where(d < 0, "#d1495b", "#bbbbbb"))
    ax.bar(np.arange(d.size), d, color=colors, width=1.0)
    ax.axhline(0, color="#333", lw=0.8)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    ax.set_xlabel(f"test queries, sorted ({wins} {treatment} better, {d.size - wins - losses} tied, {losses} "
                  f"{control} better)", fontsize=8)
    ax.set_ylabel(f"RR@10 {treatment} − {control}", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return encode_figure(fig, "fig-rr-differences", f"Per-query differences in RR@10, {treatment} minus {control}",
                         "One bar per tested query (pooled over the folds, where there are several); ties count in the "
                         "paired tests, but only the queries that change can move them.")


def _lorenz(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(np.asarray(values, dtype=np.float64))
    total = v.sum()
    x = np.linspace(0, 1, v.size + 1)
    y = np.concatenate([[0.0], np.cumsum(v) / total]) if total > 0 else x
    return x, y


def _sampling_figure(sampling: dict[str, np.ndarray], labels: dict[str, str], k: int = 10) -> Figure | None:
    if not sampling:
        return None
    plt = pyplot()
    colors = arm_colors(sampling)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 2.8))
    top = max(float(np.max(v)) for v in sampling.values()) or 1.0
    bins = np.linspace(0, top, 31)
    for arm, values in sampling.items():
        ax1.hist(values, bins=bins, histtype="step", lw=1.4, color=colors[arm], label=labels[arm])
        x, y = _lorenz(values)
        ax2.plot(x, y, color=colors[arm], lw=1.4, label=labels[arm])
    ax1.set_xlabel(f"expected draws as a negative per refresh (K = {k})", fontsize=8)
    ax1.set_ylabel("queries", fontsize=8)
    ax2.plot([0, 1], [0, 1], color="#999", ls=":", lw=1)
    ax2.set_xlabel("share of queries (least drawn first)", fontsize=8)
    ax2.set_ylabel("share of draws", fontsize=8)
    ax2.legend(fontsize=7, loc="upper left", frameon=False)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return encode_figure(fig, "fig-sampling", "How evenly the query-retrieval sampler would draw the queries",
                         "Each training query's probability of being drawn as a negative, summed over the passages "
                         f"that retrieve it among their {k} nearest (own queries removed), averaged over the training "
                         "seeds, all folds pooled. Left: "
                         "histogram; right: Lorenz curve (the diagonal = every query drawn equally often).")


def projection_panels(projections: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str],
                      what: str = "PCA", prefix: str = "fig-pca", contours: bool = True) -> list[Figure]:
    """One panel per arm (``projections``: arm -> (query xy, document xy)), all with the same axes limits: the
    coordinates are already aligned across arms (:func:`~dance_analysis.analysis.projection.procrustes_align`)."""
    if not projections:
        return []
    plt = pyplot()
    points = np.concatenate([np.concatenate([q, d]) for q, d in projections.values()])
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.05 * (hi - lo + 1e-9)
    panels = []
    for arm, (q, d) in projections.items():
        fig, ax = plt.subplots(figsize=(3.1, 3.0))
        ax.scatter(d[:, 0], d[:, 1], s=3, c=DOC_COLOR, alpha=0.35, lw=0, label="documents")
        ax.scatter(q[:, 0], q[:, 1], s=10, c=QUERY_COLOR, alpha=0.9, lw=0, label="queries")
        if contours:
            _contours(ax, d, DOC_COLOR)
            _contours(ax, q, QUERY_COLOR)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(shorten(labels.get(arm, arm), 40), fontsize=9)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="lower left", frameon=False, markerscale=2)
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in arm)
        panels.append(encode_figure(fig, f"{prefix}-{safe}", labels.get(arm, arm),
                                    f"{what}, axes shared with the other panels"))
    return panels


def _contours(ax, points: np.ndarray, color: str) -> None:
    if len(points) < 10:
        return
    try:
        from scipy.stats import gaussian_kde

        kde = gaussian_kde(points.T)
    except (np.linalg.LinAlgError, ValueError):
        return
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * (hi - lo + 1e-9)
    xs, ys = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 60),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 60))
    z = kde(np.vstack([xs.ravel(), ys.ravel()])).reshape(xs.shape)
    ax.contour(xs, ys, z, levels=4, colors=color, linewidths=0.7, alpha=0.8)


def _distribution_figure(nearest: dict[str, tuple[np.ndarray, np.ndarray]],
                         norms: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str]) -> Figure | None:
    if not nearest:
        return None
    plt = pyplot()
    n = len(nearest)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 4.4), squeeze=False)
    bins = np.linspace(-0.2, 1.0, 41)
    for j, arm in enumerate(nearest):
        q, d = nearest[arm]
        ax = axes[0][j]
        ax.hist(d, bins=bins, density=True, color=DOC_COLOR, alpha=0.45, label="passage to passages")
        ax.hist(q, bins=bins, density=True, histtype="step", color=QUERY_COLOR, lw=1.5, label="query to passages")
        ax.set_title(labels[arm], fontsize=8)
        ax.tick_params(labelsize=6)
        qn, dn = norms[arm]
        ax = axes[1][j]
        top = float(max(qn.max(), dn.max())) * 1.05
        nb = np.linspace(0, top, 41)
        ax.hist(dn, bins=nb, density=True, color=DOC_COLOR, alpha=0.45, label="passages")
        ax.hist(qn, bins=nb, density=True, histtype="step", color=QUERY_COLOR, lw=1.5, label="queries")
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("mean cosine to the 10 nearest passages", fontsize=7)
    axes[1][0].set_ylabel("vector norm", fontsize=7)
    axes[0][0].legend(fontsize=6, loc="upper left", frameon=False)
    fig.tight_layout()
    return encode_figure(fig, "fig-distributions", "Queries against passages: nearest-passage cosine and norms",
                         "Top: each test query's mean cosine to its 10 nearest passages against each passage's own "
                         "(C2: a query that sits among the passages scores like a passage). Bottom: vector norms "
                         "(they matter for the dot-product ANCE arm; normalised arms sit at 1).")


def make_comparison_figures(results: dict, arrays: dict, labels: dict[str, str]) -> dict[str, Figure]:
    """Every figure by id (absent when there is nothing to draw); ``labels`` maps arm names to what readers see."""
    figures: dict[str, Figure] = {}
    for claim in results["claims"]:
        figures[claim["claim"]] = _levels_figure(results, claim, labels)
    names = arrays.get("difference_arms") or ("dance", "ance")
    diffs = np.asarray(arrays.get("rr_differences", np.zeros(0)))
    for key, fig in (("differences", _differences_figure(diffs, *(labels.get(n, n).split(" (")[0] for n in names))),
                     ("sampling", _sampling_figure(arrays.get("sampling") or {}, labels, arrays.get("sampling_k", 10))),
                     ("distributions", _distribution_figure(arrays.get("nearest") or {}, arrays.get("norms") or {},
                                                            labels))):
        if fig is not None:
            figures[key] = fig
    return figures


#: Trajectory panels: metric key in the trainer's log -> what a reader sees.
TRAJECTORY_LABELS = {"q2d.MRR@10": "test MRR@10", "q2d.nDCG@10": "test nDCG@10", "dev.MRR@10": "dev MRR@10",
                     "query_mean_cosine": "query mean cosine", "doc_mean_cosine": "passage mean cosine",
                     "query_doc_mmd2": "query-passage MMD²"}


def trajectory_figure(trajectories: list[dict], labels: dict[str, str]) -> Figure | None:
    """Small multiples of the claim metrics along training: one panel per metric, one colour per arm; the line is
    the mean over seeds and folds at each step, the band the range (min to max) over seeds and folds.

    ``trajectories``: dicts ``{"fold", "seed", "arm", "step", "metrics": {key: value}}``; ``step`` counts the
    training steps from the common start (a stage's steps added to its parent's), so the arms of the chain line
    up and a stage starts where its parent's curve is."""
    if not trajectories:
        return None
    keys = [k for k in TRAJECTORY_LABELS if any(k in (t.get("metrics") or {}) for t in trajectories)]
    keys += sorted({k for t in trajectories for k in (t.get("metrics") or {})} - set(keys))
    if not keys:
        return None
    arms = list(dict.fromkeys(t["arm"] for t in trajectories))
    colors = arm_colors(arms)
    plt = pyplot()
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        for arm in arms:
            by_step: dict[float, list[float]] = {}
            for t in trajectories:
                value = (t.get("metrics") or {}).get(key)
                if t["arm"] == arm and value is not None and np.isfinite(value):
                    by_step.setdefault(float(t["step"]), []).append(float(value))
            if not by_step:
                continue
            steps = np.array(sorted(by_step))
            mean = np.array([np.mean(by_step[s]) for s in steps])
            low = np.array([np.min(by_step[s]) for s in steps])
            high = np.array([np.max(by_step[s]) for s in steps])
            ax.plot(steps, mean, color=colors[arm], lw=1.5, marker="o", ms=2.5, label=labels.get(arm, arm))
            ax.fill_between(steps, low, high, color=colors[arm], alpha=0.18, lw=0)
        ax.set_title(TRAJECTORY_LABELS.get(key, key), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("training steps from the start", fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return encode_figure(fig, "fig-trajectories", "The claim metrics along training",
                         "One panel per metric, one colour per arm. Line: the mean over training seeds and folds at "
                         "each step (steps counted from the common start, so a stage begins where its parent's curve "
                         "is: DANCE and stage 1 coincide at the branch point by construction); band: the range over "
                         "seeds and folds.")
