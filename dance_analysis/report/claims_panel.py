"""The claims and the paired ranking statistics of a dance-analyze report, from the shared comparison registry.

``dance-analyze`` compares the representative checkpoint of each input (run, checkpoint, model) on the analysed
split: one "fold" whose test queries are the analysed queries. The statistics are those of the cross-validated
experiment (:mod:`dance_analysis.comparison`): per-query values with a paired randomisation test and a paired
bootstrap CI, set statistics with a bootstrap over the analysed queries, three-way verdicts with Holm's correction.
The claims are decided when one input trained with the ANCE objective and one with the DANCE objective are
compared (the first of each); otherwise the panel shows the levels only. The query pool of the d2q sampler is the
analysed queries themselves (a report does not know the training queries of every input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..comparison import build_space, compare, fold_units
from ..comparison.pictures import figure_arrays


def claims_pair(runs: Sequence[Any]) -> tuple[str, str] | None:
    """(DANCE run name, ANCE run name) when the inputs hold both objectives, else None."""
    by_objective: dict[str, str] = {}
    for run in runs:
        if run.objective in ("ance", "dance") and run.objective not in by_objective:
            by_objective[run.objective] = run.name
    if len(by_objective) == 2:
        return by_objective["dance"], by_objective["ance"]
    return None


def compare_inputs(runs: Sequence[Any], vectors: dict[str, tuple[Any, Any]], collection, selection, *,
                   seed: int = 0, log=lambda message: None) -> tuple[dict, dict]:
    """``(results, figure arrays)`` of :func:`dance_analysis.comparison.compare` for the inputs' representatives.

    ``vectors`` maps a run name to the (corpus, queries) :class:`~dance_analysis.embeddings.Embeddings` of its
    representative on the selection (documents ``selection.doc_ids``, queries ``selection.query_ids``).
    """
    queries = [str(q) for q in selection.query_ids]
    units = fold_units(collection, 0, {"test": queries, "train": queries}, np.asarray(selection.doc_ids),
                       np.asarray(selection.query_ids))
    fold = {}
    for run in runs:
        corpus, qvecs = vectors[run.name]
        temperature, _ = run.representative.temperature()
        fold[run.name] = build_space(run.name, units, corpus, qvecs, temperature, collection)
    names = [run.name for run in runs]
    pair = claims_pair(runs)
    contrasts = []
    if pair:
        contrasts.append((pair[0], pair[1], f"{pair[0]} vs {pair[1]}: the paper's contrast (DANCE - ANCE)"))
    contrasts += [(name, names[0], f"{name} vs {names[0]}") for name in names[1:]
                  if not pair or (name, names[0]) != pair]
    results = compare([fold], names, contrasts, claims_from=pair or ("", ""), seed=seed, log=log)
    treatment, control = pair if pair else (names[-1], names[0])
    arrays = figure_arrays([fold], treatment=treatment, control=control)
    return results, arrays
