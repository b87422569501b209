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


def topic_splits(topic_parts: Mapping[str, Iterable[str]], topics: Mapping[str, str], *,
                 train: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Splits of a collection whose queries share topics (real queries are their own topic; other queries, the
    statements, name one), from a split of the topics into ``train`` / ``dev`` / ``test``:

    ``train``: the statements of the training topics (``train`` overrides which topics those are);
    ``dev``: the real queries of the dev topics; ``test``: the real queries of the test topics;
    ``test-statements``: the statements of the test topics (a second held-out ranking test).
    A topic's queries are never in two parts, except that ``dev`` may name the training topics (their real
    queries are not trained on).
    """
    by_topic: dict[str, list[str]] = {}
    for qid, topic in topics.items():
        if qid != topic:
            by_topic.setdefault(topic, []).append(qid)
    train_topics = list(topic_parts.get("train", ())) if train is None else list(train)
    test_topics = list(topic_parts.get("test", ()))
    return {"train": [q for t in train_topics for q in by_topic.get(t, ())],
            "dev": [str(t) for t in topic_parts.get("dev", ())],
            "test": [str(t) for t in test_topics],
            "test-statements": [q for t in test_topics for q in by_topic.get(t, ())]}


def fold_splits(collection, folds: int, fold: int, *, seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
    """The splits of fold ``fold`` of ``folds``-fold cross-validation of ``collection``.

    Without ``collection.topics``: :func:`cross_validation_splits` over its queries (``folds`` >= 3). With
    topics: the folds are cut over the real queries (the topics) the same way, then expanded by
    :func:`topic_splits`; ``folds`` >= 3 selects on the next fold's real queries, ``folds`` = 2 on the real
    queries of the training topics (whose statements, not those queries, are trained on).
    """
    topics = getattr(collection, "topics", None)
    if topics is None:
        return cross_validation_splits(collection.queries, folds, fold, seed=seed)
    real = [q for q, t in topics.items() if q == t]
    if folds == 2:
        if fold not in (0, 1):
            raise DanceError(f"fold must be in 0 .. 1, got {fold!r}")
        ordered = np.asarray(sorted(set(real)), dtype=object)
        parts = np.array_split(ordered[np.random.default_rng(seed).permutation(len(ordered))], 2)
        test, train = [str(q) for q in parts[fold]], [str(q) for q in parts[1 - fold]]
        return topic_splits({"train": train, "dev": train, "test": test}, topics)
    return topic_splits(cross_validation_splits(real, folds, fold, seed=seed), topics)
