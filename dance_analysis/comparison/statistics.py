"""From the arms' spaces (one per fold and training seed) to levels, paired contrasts and the claims' verdicts.

Input: per fold, per arm, a list of :class:`~dance_analysis.comparison.spaces.Space`, one per training seed (one
for an arm that is not trained, e.g. the start or a zero-shot reference; a bare Space counts as a list of one).

- Level of an arm on a ``unit`` metric: each unit's value averaged over the arm's seeds, the units of all folds
  pooled; 95 % CI from the two-stage bootstrap over units (clusters of units) and seeds
  (:func:`~dance_analysis.analysis.stats.seed_unit_bootstrap`). On a ``set`` metric: per fold and seed; the mean
  over folds of the seed means, CI from the bootstrap inside the folds and over the seeds
  (:func:`~dance_analysis.analysis.stats.seed_fold_bootstrap`).
- Contrast (treatment - control) on a ``unit`` metric: the paired randomisation test on the seed-averaged per-unit
  differences, signs flipped per cluster (:func:`~dance_analysis.analysis.stats.cluster_randomization_test`), the
  two-stage bootstrap CI over units and both arms' seeds, and the smallest difference the design detects with
  80 % power (``mde``; its ``mde_basis`` says which noise it assumes, see :func:`detectable_difference`). On a
  ``set`` metric: the seed-and-fold bootstrap of the differences (the same resampled units for both arms) and
  the replicate rule (:func:`~dance_analysis.analysis.stats.replicate_rule`).
- Every p-value carries the number of resamples behind it (``p_resamples``; ``p_exact`` when all sign vectors
  were enumerated): a p below 1 / (R + 1) is shown as ``p < 1/(R+1)``, never as a finer number.
- ``not measurable here`` (:func:`not_measurable`): a K of the C4 sampler whose candidates cover the query pool;
  a metric at which every arm, the start included, sits at one of its bounds (e.g. no query is ever left
  undrawn); a metric without units in these inputs. Such metrics get no p-value and do not enter Holm.
- Claims (contrast ``claims_from``, DANCE - ANCE): Holm's correction over each claim's primary metrics; a metric
  is ``reproduced`` when its CI excludes 0 on the side the paper predicts and its adjusted p < 0.05 (and, for a
  set metric, the replicate rule holds), ``contradicted`` when the same holds on the other side, ``inconclusive``
  otherwise (:func:`~dance_analysis.analysis.stats.verdict`); the claim's verdict follows the symmetric rule of
  :func:`~dance_analysis.analysis.stats.claim_verdict`. Supporting metrics get a verdict from their unadjusted p
  and do not decide the claim.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..analysis import stats
from ..runtime import single_threaded_blas
from .measures import METRICS, RANKING_KEYS, Metric
from .spaces import SAMPLING_KS, Space

logger = logging.getLogger(__name__)

#: Resamples: randomisation test and bootstrap of pooled units; bootstrap inside folds for set statistics.
UNIT_RESAMPLES = 10_000
SET_RESAMPLES = 1_000
#: Power analysis of the detectable difference.
ALPHA, POWER = 0.05, 0.8

CLAIM_TEXT = {
    "C1": "ANCE queries, trained only to align to documents, are coarsely positioned: an anisotropic query space; "
          "DANCE's query space is more isotropic.",
    "C2": "DANCE concentrates query embeddings closer to the document representations.",
    "C3": "DANCE makes the document distribution more discriminative.",
    "C4": "DANCE's concentrated queries receive more uniform negative-sampling probabilities in the query "
          "retrieval task, so more queries get optimised.",
    "C5": "A smoother, more uniform embedding space and better ranking.",
}

Folds = Sequence[Mapping[str, "Sequence[Space] | Space"]]


def as_seed_lists(folds: Folds) -> list[dict[str, list[Space]]]:
    """``folds`` with every arm's value a list of spaces (a bare Space becomes a list of one)."""
    out = []
    for fold in folds:
        out.append({arm: [v] if isinstance(v, Space) else list(v) for arm, v in fold.items()})
        for arm, spaces in out[-1].items():
            if not spaces:
                raise ValueError(f"arm {arm!r}: expected at least one space (training seed) per fold")
    return out


def seed_labels(spaces: Sequence[Space]) -> list[int]:
    """The training seed of each space (its position when the space does not say)."""
    return [s.seed if getattr(s, "seed", None) is not None else i for i, s in enumerate(spaces)]


class _Memo:
    """Per-(space, units) values of set statistics, so that levels and the contrasts sharing an arm share work
    (every bootstrap draws the same units from the same seed)."""

    def __init__(self) -> None:
        self.values: dict[tuple, float] = {}

    def __call__(self, metric: Metric, space: Space, idx: np.ndarray) -> float:
        key = (metric.key, id(space), hashlib.blake2b(idx.tobytes(), digest_size=12).digest())
        if key not in self.values:
            try:
                self.values[key] = float(metric.compute(space, idx))
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                self.values[key] = float("nan")
        return self.values[key]

    def full(self, metric: Metric, space: Space) -> float:
        return self(metric, space, np.arange(metric.units(space), dtype=np.int64))


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _values(metric: Metric, space: Space) -> np.ndarray:
    return np.asarray(metric.values(space), dtype=np.float64)


def _clusters(metric: Metric, space: Space) -> np.ndarray | None:
    if metric.cluster is None:
        return None
    labels = metric.cluster(space)
    return None if labels is None else np.asarray(labels)


def _n_units(metric: Metric, space: Space) -> int:
    return len(_values(metric, space)) if metric.kind == "unit" else int(metric.units(space))


# ------------------------------------------------------------------------------------------ not measurable
def not_measurable(metric: Metric, folds: Folds, memo: _Memo | None = None) -> str | None:
    """Why the design cannot move ``metric`` (None when it can): a C4 K whose candidates cover the query pool;
    no units of the metric's kind in these inputs; every arm (the start included), every fold and seed at one
    of the metric's bounds."""
    folds = as_seed_lists(folds)
    memo = memo or _Memo()
    if metric.key.startswith("sampling.pi_"):
        k = int(metric.key.rsplit("@", 1)[1])
        for spaces in folds:
            space = next(iter(spaces.values()))[0]
            pool = len(space.units.pool_rows)
            excluded = int(space.units.pool_excluded.sum(axis=1).max(initial=0))
            if k + excluded >= pool:
                where = f" in fold {space.units.fold}" if len(folds) > 1 else ""
                return (f"K = {k} candidates plus up to {excluded} judged queries cover the whole pool of {pool} "
                        f"queries{where}: every query is a candidate whatever the model")
    spaces = [s for fold in folds for arm_spaces in fold.values() for s in arm_spaces]
    if all(_n_units(metric, s) == 0 for s in spaces):
        return f"no {metric.unit} units in these inputs"
    if metric.bounds is not None:
        if metric.kind == "unit":
            values = [float(np.nanmean(v)) for v in (_values(metric, s) for s in spaces) if np.isfinite(v).any()]
        else:
            values = [memo.full(metric, s) for s in spaces if _n_units(metric, s)]
        for bound in metric.bounds:
            if values and all(math.isclose(v, bound, rel_tol=0.0, abs_tol=1e-12) for v in values):
                return (f"every arm, the start included, sits at the bound {bound:g} of this metric in every fold "
                        "and seed: the design cannot move it")
    return None


# ------------------------------------------------------------------------------------------ unit metrics
def _unit_arrays(metric: Metric, fold: dict[str, list[Space]], arms: Sequence[str]):
    """Per arm the [seeds, units] matrix of the fold, the units with a finite value in every seed of every arm
    in ``arms``, and the fold's cluster labels."""
    mats = [np.stack([_values(metric, s) for s in fold[arm]]) for arm in arms]
    keep = np.logical_and.reduce([np.isfinite(m).all(axis=0) for m in mats]) if mats[0].shape[1] else \
        np.zeros(0, dtype=bool)
    labels = _clusters(metric, fold[arms[0]][0])
    return [m[:, keep] for m in mats], keep, (None if labels is None else labels[keep])


def _pooled_clusters(labels: list[np.ndarray | None], sizes: list[int]) -> np.ndarray:
    """Cluster labels unique across folds (``"<fold>:<label>"``; a unit without labels is its own cluster)."""
    out = []
    for f, (lab, n) in enumerate(zip(labels, sizes)):
        lab = np.arange(n) if lab is None else lab
        out.append(np.array([f"{f}:{x}" for x in lab.tolist()], dtype=object))
    return np.concatenate(out) if out else np.zeros(0, dtype=object)


def _cluster_totals(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    _, codes = np.unique(clusters, return_inverse=True)
    return np.bincount(np.asarray(codes).reshape(-1), weights=values)


def detectable_difference(treatment: list[np.ndarray], control: list[np.ndarray], clusters: np.ndarray,
                          control_name: str, treatment_name: str) -> tuple[float | None, str]:
    """The smallest true mean difference per unit the design detects with 80 % power (two-sided, alpha 0.05;
    :func:`~dance_analysis.analysis.stats.min_detectable_difference` on the cluster totals, scaled back to a
    mean per unit), and the noise it assumes (``mde_basis``):

    - two seeds of the control arm (else of the treatment arm) in every fold: the per-unit differences between
      its first two seeds, two equally trained models that differ only by training randomness, scaled by
      sqrt((1/S_T + 1/S_C) / 2) to the seed-averaged difference the test sees;
    - one seed of each: the control arm's per-unit values, with treatment and control assumed independent
      (standard deviation of a difference sqrt(2) x the control's; conservative: real arms are correlated).

    It never uses the two compared models' own differences, which describe those two models (two near-identical
    models would make any difference look detectable)."""
    s_t = min(m.shape[0] for m in treatment)
    s_c = min(m.shape[0] for m in control)
    n = sum(m.shape[1] for m in control)
    if n < 3:
        return None, "fewer than 3 units"
    if s_c >= 2 or s_t >= 2:
        source, name = (control, control_name) if s_c >= 2 else (treatment, treatment_name)
        noise = np.concatenate([m[1] - m[0] for m in source])
        scale = math.sqrt((1.0 / s_t + 1.0 / s_c) / 2.0)
        basis = (f"per-unit differences between two training seeds of {name} (training randomness only), "
                 f"scaled to means over {s_t} and {s_c} seeds")
    else:
        noise = np.concatenate([m[0] for m in control])
        scale = math.sqrt(2.0)
        basis = (f"per-unit variance of {control_name}, treatment and control assumed independent "
                 "(one seed per arm)")
    totals = _cluster_totals(noise, clusters)
    if totals.size < 3:
        return None, basis
    mde = stats.min_detectable_difference(totals, alpha=ALPHA, power=POWER) * totals.size / n * scale
    return _finite(mde), basis


def _unit_level(metric: Metric, folds: list[dict[str, list[Space]]], arm: str, seed: int) -> dict:
    mats, labels, sizes, per_seed_sum = [], [], [], {}
    for fold in folds:
        (m,), keep, lab = _unit_arrays(metric, fold, [arm])
        mats.append(m)
        labels.append(lab)
        sizes.append(m.shape[1])
        for label, row in zip(seed_labels(fold[arm]), m):
            total, count = per_seed_sum.get(label, (0.0, 0))
            per_seed_sum[label] = (total + float(row.sum()), count + row.size)
    n = sum(sizes)
    seeds = [m.shape[0] for m in mats]
    if n < 2:
        return {"value": float(np.concatenate(mats, axis=1).mean()) if n else None, "low": None, "high": None,
                "n": n, "seeds": seeds}
    boot = stats.seed_unit_bootstrap(mats, None, labels, n_resamples=UNIT_RESAMPLES, seed=seed)
    clustered = metric.cluster is not None
    out = {"value": boot["effect"], "low": boot["low"], "high": boot["high"], "n": n, "seeds": seeds,
           "per_seed": [{"seed": k, "value": t / c} for k, (t, c) in sorted(per_seed_sum.items()) if c]}
    if clustered:
        out["n_clusters"] = boot["n_clusters"]
    return out


def _unit_contrast(metric: Metric, folds: list[dict[str, list[Space]]], treatment: str, control: str,
                   seed: int) -> dict:
    ts, cs, labels, sizes = [], [], [], []
    for fold in folds:
        (t, c), _, lab = _unit_arrays(metric, fold, [treatment, control])
        ts.append(t)
        cs.append(c)
        labels.append(lab)
        sizes.append(t.shape[1])
    n = sum(sizes)
    if n < 2:
        return {"not_measurable": f"fewer than two units ({metric.unit}) have a value in both models"}
    diffs = np.concatenate([t.mean(axis=0) - c.mean(axis=0) for t, c in zip(ts, cs)])
    clusters = _pooled_clusters(labels, sizes)
    if len(np.unique(clusters)) < 2:
        return {"not_measurable": f"fewer than two clusters of units ({metric.unit})"}
    test = stats.cluster_randomization_test(diffs, clusters if metric.cluster is not None else None,
                                            n_resamples=UNIT_RESAMPLES, seed=seed)
    ci = stats.seed_unit_bootstrap(ts, cs, labels, n_resamples=UNIT_RESAMPLES, seed=seed)
    mde, basis = detectable_difference(ts, cs, clusters, control, treatment)
    what = "cluster" if metric.cluster is not None else "unit"
    out = {"effect": float(diffs.mean()), "low": ci["low"], "high": ci["high"], "p": test["p_value"],
           "p_resamples": test["n_resamples"], "p_exact": test["exact"], "n": n,
           "changed": int((diffs != 0).sum()), "wins": int((diffs > 0).sum()), "losses": int((diffs < 0).sum()),
           "mde": mde, "mde_basis": basis, "seeds": ci["seeds"],
           "test": f"paired randomisation test on the seed-averaged per-{what} differences ({what} signs flipped); "
                   f"bootstrap over {what}s and training seeds"}
    if metric.cluster is not None:
        out["n_clusters"] = test["n_clusters"]
    return out


# ------------------------------------------------------------------------------------------- set metrics
def _set_fns(metric: Metric, spaces: Sequence[Space], memo: _Memo) -> list[Callable[[np.ndarray], float]]:
    return [lambda idx, s=s: memo(metric, s, np.asarray(idx, dtype=np.int64)) for s in spaces]


def _set_level(metric: Metric, folds: list[dict[str, list[Space]]], arm: str, memo: _Memo, seed: int) -> dict:
    sizes = [int(metric.units(f[arm][0])) for f in folds]
    boot = stats.seed_fold_bootstrap([_set_fns(metric, f[arm], memo) for f in folds], None, sizes,
                                     n_resamples=SET_RESAMPLES, seed=seed)
    out = {"value": _finite(boot["effect"]), "low": _finite(boot["low"]), "high": _finite(boot["high"]),
           "per_fold": [_finite(v) for v in boot["per_fold"]], "n": int(sum(sizes)),
           "seeds": [len(f[arm]) for f in folds],
           "per_fold_seed": [[_finite(v) for v in ts] for ts, _ in boot["per_seed"]]}
    if metric.reference is not None:
        out["isotropic_reference"] = float(np.mean([metric.reference(metric.units(f[arm][0]),
                                                                     f[arm][0].queries.shape[1]) for f in folds]))
    return out


def _set_contrast(metric: Metric, folds: list[dict[str, list[Space]]], treatment: str, control: str,
                  memo: _Memo, seed: int) -> dict:
    sizes = [int(metric.units(f[control][0])) for f in folds]
    boot = stats.seed_fold_bootstrap([_set_fns(metric, f[treatment], memo) for f in folds],
                                     [_set_fns(metric, f[control], memo) for f in folds], sizes,
                                     n_resamples=SET_RESAMPLES, seed=seed)
    per_seed = boot["per_seed"]
    rule = stats.replicate_rule([t for t, _ in per_seed], [c for _, c in per_seed], boot["effect"])
    return {"effect": _finite(boot["effect"]), "low": _finite(boot["low"]), "high": _finite(boot["high"]),
            "p": _finite(boot["p_value"]), "p_resamples": int(boot["n_valid"]), "p_exact": False,
            "n": int(sum(sizes)), "per_fold": [_finite(v) for v in boot["per_fold"]],
            "per_fold_seed": [{"treatment": [_finite(v) for v in t], "control": [_finite(v) for v in c]}
                              for t, c in per_seed],
            "dropped": int(boot["n_dropped"]), "seeds": [[len(t), len(c)] for t, c in per_seed],
            "replicates": {k: (_finite(v) if isinstance(v, float) else v) for k, v in rule.items()},
            "seed_gap": _finite(rule["seed_gap"]),
            "test": "per-fold seed-averaged differences, bootstrap over units inside each fold and over training "
                    "seeds; replicate rule over (fold, seed pair)"}


# ------------------------------------------------------------------------------------------------ public
def level(metric: Metric, folds: Folds, arm: str, memo: _Memo | None = None, seed: int = 0) -> dict:
    """The arm's value on ``metric`` with its 95 % CI (see the module docstring)."""
    folds = as_seed_lists(folds)
    if metric.kind == "unit":
        return _unit_level(metric, folds, arm, seed)
    return _set_level(metric, folds, arm, memo or _Memo(), seed)


def contrast(metric: Metric, folds: Folds, treatment: str, control: str, memo: _Memo | None = None,
             seed: int = 0) -> dict:
    """Effect of ``treatment`` - ``control`` on ``metric`` with its 95 % CI and two-sided p-value."""
    folds = as_seed_lists(folds)
    if metric.kind == "unit":
        return _unit_contrast(metric, folds, treatment, control, seed)
    return _set_contrast(metric, folds, treatment, control, memo or _Memo(), seed)


def compare(folds: Folds, arms: Sequence[str], contrasts: Sequence[tuple[str, str, str]], *,
            claims_from: tuple[str, str] = ("dance", "ance"), seed: int = 0,
            log: Callable[[str], None] = logger.info) -> dict:
    """Levels of every arm, every contrast ``(treatment, control, description)`` whose arms are present, and the
    claims' verdicts from the contrast ``claims_from`` (treatment, control: DANCE - ANCE). JSON-able.

    ``folds``: per fold, per arm, the list of its spaces (one per training seed; a bare Space is one seed).
    Runs with one BLAS thread: thousands of small products and eigenproblems, for which a multi-threaded BLAS
    mostly spins on a busy machine."""
    with single_threaded_blas():
        return _compare(folds, arms, contrasts, claims_from=claims_from, seed=seed, log=log)


def _compare(folds: Folds, arms: Sequence[str], contrasts: Sequence[tuple[str, str, str]], *,
             claims_from: tuple[str, str], seed: int, log: Callable[[str], None]) -> dict:
    folds = as_seed_lists(folds)
    memo = _Memo()
    present = [a for a in arms if all(a in f for f in folds)]
    levels, unmeasurable = {}, {}
    for metric in METRICS:
        if all(_n_units(metric, s) == 0 for f in folds for a in present for s in f[a]):
            continue        # e.g. no held-out statements: the metric is left out
        log(f"levels: {metric.key}")
        unmeasurable[metric.key] = not_measurable(metric, [{a: f[a] for a in present} for f in folds], memo)
        levels[metric.key] = {arm: level(metric, folds, arm, memo, seed) for arm in present}
    done = []
    for treatment, control, what in contrasts:
        if treatment not in present or control not in present:
            continue
        rows = {}
        for metric in METRICS:
            if metric.claim is None and metric.kind == "set":
                continue
            if metric.key not in levels:
                continue
            log(f"contrast {treatment} - {control}: {metric.key}")
            reason = unmeasurable[metric.key]
            rows[metric.key] = {"not_measurable": reason} if reason else contrast(metric, folds, treatment, control,
                                                                                  memo, seed)
        done.append({"treatment": treatment, "control": control, "what": what, "metrics": rows})
    main = [c for c in done if (c["treatment"], c["control"]) == tuple(claims_from)]
    claims = decide_claims(main[0]["metrics"]) if main else decide_claims(None)
    info = {m.key: {"label": m.label, "claim": m.claim, "direction": m.direction, "primary": m.primary,
                    "kind": m.kind, "unit": m.unit, "note": m.note, "clustered": m.cluster is not None,
                    "not_measurable": unmeasurable.get(m.key)} for m in METRICS if m.key in levels}
    return {"levels": levels, "contrasts": done, "claims": claims, "metric_info": info,
            "ranking_keys": [k for k in RANKING_KEYS if k in levels], "claims_from": list(claims_from),
            "seeds": {arm: [len(f[arm]) for f in folds] for arm in present},
            "settings": {"unit_resamples": UNIT_RESAMPLES, "set_resamples": SET_RESAMPLES,
                         "p_floor_unit": stats.p_floor(UNIT_RESAMPLES), "p_floor_set": stats.p_floor(SET_RESAMPLES),
                         "seed": seed, "sampling_ks": list(SAMPLING_KS), "alpha": ALPHA, "power": POWER,
                         "confidence": 0.95}}


NOT_COMPARED = "not compared"


def decide_claims(rows: dict[str, dict] | None) -> list[dict]:
    """Per claim: Holm over its primary metrics, each metric's verdict, the claim's verdict. ``rows`` None (no
    DANCE - ANCE contrast among the inputs): every verdict is ``not compared`` and only the levels are shown."""
    if rows is None:
        return [{"claim": claim, "text": text, "verdict": NOT_COMPARED,
                 "rows": [{"key": m.key, "label": m.label, "primary": m.primary, "direction": m.direction,
                           "effect": None, "low": None, "high": None, "p": None, "p_holm": None,
                           "p_resamples": None, "verdict": NOT_COMPARED, "reason": None, "replicates": None}
                          for m in METRICS if m.claim == claim]}
                for claim, text in CLAIM_TEXT.items()]
    claims = []
    for claim, text in CLAIM_TEXT.items():
        metrics = [m for m in METRICS if m.claim == claim]
        primary = [m for m in metrics if m.primary]
        p_values = np.array([rows.get(m.key, {}).get("p") if rows.get(m.key, {}).get("p") is not None else np.nan
                             for m in primary], dtype=float)
        adjusted = dict(zip((m.key for m in primary), stats.holm(p_values))) if primary else {}
        out_rows = []
        for m in metrics:
            row = rows.get(m.key, {"not_measurable": "not computed for these inputs"})
            replicates = row.get("replicates")
            if row.get("not_measurable"):
                verdict, p_adj = stats.NOT_MEASURABLE, None
            else:
                p_adj = _finite(adjusted.get(m.key)) if m.primary else row.get("p")
                verdict = stats.verdict(_nan(row.get("low")), _nan(row.get("high")), _nan(p_adj), m.direction,
                                        replicates_ok=None if replicates is None else bool(replicates["passed"]))
            out_rows.append({"key": m.key, "label": m.label, "primary": m.primary, "direction": m.direction,
                             "kind": m.kind, "effect": row.get("effect"), "low": row.get("low"),
                             "high": row.get("high"), "p": row.get("p"), "p_holm": p_adj if m.primary else None,
                             "p_resamples": row.get("p_resamples"), "p_exact": row.get("p_exact"),
                             "verdict": verdict, "reason": row.get("not_measurable"), "replicates": replicates,
                             "seed_gap": row.get("seed_gap")})
        claims.append({"claim": claim, "text": text, "rows": out_rows,
                       "verdict": stats.claim_verdict([r["verdict"] for r in out_rows if r["primary"]])})
    return claims


def _nan(value) -> float:
    return float("nan") if value is None else float(value)
