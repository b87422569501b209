"""Seeded, deterministic query splits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import DanceError

#: The built-in split proportions (train / dev / test).
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.6, "dev": 0.2, "test": 0.2}
DEFAULT_SEED = 13


def seeded_splits(qids: Iterable[str], *, seed: int = DEFAULT_SEED,
                  fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, list[str]]:
    """Split query ids into disjoint named parts, the same way for the same ids and seed on every machine.

    The ids are sorted, shuffled with ``numpy.random.default_rng(seed).permutation``, then cut into consecutive slices:
    every split but the last gets ``floor(fraction * n + 0.5)`` ids, the last gets the rest (so for 301 ids and
    0.6 / 0.2 / 0.2: 181 / 60 / 60). Each split keeps the shuffled order.
    """
    ordered = np.asarray(sorted(set(qids)), dtype=object)
    if not fractions:
        raise DanceError("split fractions must name at least one split")
    values = list(fractions.values())
    if any((not isinstance(f, (int, float))) or f < 0 for f in values) or not math.isclose(sum(values), 1.0,
                                                                                            abs_tol=1e-6):
        raise DanceError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    ordered = ordered[np.random.default_rng(seed).permutation(len(ordered))]
    n = len(ordered)
    names = list(fractions)
    splits: dict[str, list[str]] = {}
    start = 0
    for i, name in enumerate(names):
        end = n if i == len(names) - 1 else min(n, start + int(math.floor(fractions[name] * n + 0.5)))
        splits[name] = [str(q) for q in ordered[start:end]]
        start = end
    return splits


def cross_validation_splits(qids: Iterable[str], folds: int, fold: int, *, seed: int = DEFAULT_SEED
                            ) -> dict[str, list[str]]:
    """Fold ``fold`` of ``folds``-fold cross-validation over the query ids: ``test``, ``dev`` and ``train``.

    The sorted ids are shuffled with ``numpy.random.default_rng(seed).permutation`` and cut into ``folds``
    nearly equal consecutive parts (``numpy.array_split``). Fold ``fold`` is the test part, fold
    ``(fold + 1) % folds`` the dev part (checkpoint selection), the rest the training part. Over
    ``fold = 0 .. folds - 1`` every query is tested exactly once, by a model that neither trained nor selected on
    it. Each part keeps the shuffled order.
    """
    if not (isinstance(folds, int) and folds >= 3):
        raise DanceError(f"folds must be an integer >= 3 (train, dev and test parts), got {folds!r}")
    if not (isinstance(fold, int) and 0 <= fold < folds):
        raise DanceError(f"fold must be in 0 .. {folds - 1}, got {fold!r}")
    ordered = np.asarray(sorted(set(qids)), dtype=object)
    if len(ordered) < folds:
        raise DanceError(f"{folds}-fold cross-validation needs at least {folds} queries, got {len(ordered)}")
    parts = np.array_split(ordered[np.random.default_rng(seed).permutation(len(ordered))], folds)
    dev = (fold + 1) % folds
    return {"train": [str(q) for i, part in enumerate(parts) if i not in (fold, dev) for q in part],
            "dev": [str(q) for q in parts[dev]], "test": [str(q) for q in parts[fold]]}
