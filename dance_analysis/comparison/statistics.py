"""From the arms' spaces to levels, paired contrasts and the claims' verdicts.

- Level of an arm on a metric: ``unit`` metrics, the mean over the pooled units with a bootstrap 95 % CI;
  ``set`` metrics, the mean over folds of the per-fold value, CI from the bootstrap inside each fold.
- Contrast (treatment - control) on a metric: ``unit`` metrics, the paired two-sided randomisation test and the
  paired bootstrap CI over the pooled units (units with a missing value in either arm are left out), plus the
  smallest difference the design detects with 80 % power; ``set`` metrics, :func:`~dance_analysis.analysis.stats.
  fold_bootstrap` of the per-fold differences (the same resampled units for both arms).
- Claims (contrast DANCE - ANCE): Holm's correction over each claim's primary metrics; a metric is
  ``reproduced`` when its CI excludes 0 on the side the paper predicts and its adjusted p < 0.05, ``contradicted``
  when the CI excludes 0 on the other side, ``inconclusive`` otherwise, ``not measurable here`` when the design
  cannot move it (:func:`~dance_analysis.analysis.stats.verdict`, ``claim_verdict``). Supporting metrics get a
  verdict from their unadjusted p and do not decide the claim.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

import numpy as np

from ..analysis import stats
from .measures import METRICS, RANKING_KEYS, Metric
from .spaces import SAMPLING_KS, Space

logger = logging.getLogger(__name__)

#: Resamples: randomisation test and bootstrap of pooled units; bootstrap inside folds for set statistics.
UNIT_RESAMPLES = 10_000
SET_RESAMPLES = 1_000

CLAIM_TEXT = {
    "C1": "ANCE queries, trained only to align to documents, are coarsely positioned: an anisotropic query space; "
          "DANCE's query space is more isotropic.",
    "C2": "DANCE concentrates query embeddings closer to the document representations.",
    "C3": "DANCE makes the document distribution more discriminative.",
    "C4": "DANCE's concentrated queries receive more uniform negative-sampling probabilities in the query "
          "retrieval task, so more queries get optimised.",
    "C5": "A smoother, more uniform embedding space and better ranking.",
}


class _Memo:
    """Per-(arm, fold, units) values of set statistics, so that the contrasts sharing an arm share its work."""

    def __init__(self) -> None:
        self.values: dict[tuple, float] = {}

    def __call__(self, metric: Metric, space: Space, idx: np.ndarray) -> float:
        key = (metric.key, space.arm, space.units.fold, hashlib.blake2b(idx.tobytes(), digest_size=12).digest())
        if key not in self.values:
            try:
                self.values[key] = float(metric.compute(space, idx))
            except (ValueError, FloatingPointError):
                self.values[key] = float("nan")
        return self.values[key]


def not_measurable(metric: Metric, folds: Sequence[dict[str, Space]]) -> str | None:
    """Why the design cannot move ``metric`` (None when it can)."""
    if metric.key.startswith("sampling.pi_"):
        k = int(metric.key.rsplit("@", 1)[1])
        for spaces in folds:
            space = next(iter(spaces.values()))
            pool = len(space.units.pool_rows)
            excluded = int(space.units.pool_excluded.sum(axis=1).max(initial=0))
            if k + excluded >= pool:
                where = f" in fold {space.units.fold}" if len(folds) > 1 else ""
                return (f"K = {k} candidates plus up to {excluded} judged queries cover the whole pool of {pool} "
                        f"queries{where}: every query is a candidate whatever the model")
    return None


def _pooled(metric: Metric, folds: Sequence[dict[str, Space]], arm: str) -> np.ndarray:
    return np.concatenate([np.asarray(metric.values(spaces[arm]), dtype=np.float64) for spaces in folds])


def level(metric: Metric, folds: Sequence[dict[str, Space]], arm: str, memo: _Memo, seed: int = 0) -> dict:
    """The arm's value on ``metric`` with its 95 % CI (see the module docstring)."""
    if metric.kind == "unit":
        x = _pooled(metric, folds, arm)
        x = x[np.isfinite(x)]
        if x.size < 2:
            return {"value": float(x.mean()) if x.size else None, "low": None, "high": None, "n": int(x.size)}
        ci = stats.paired_bootstrap_ci(np.zeros_like(x), x, n_resamples=UNIT_RESAMPLES, seed=seed)
        return {"value": float(x.mean()), "low": ci["low"], "high": ci["high"], "n": int(x.size)}
    spaces = [f[arm] for f in folds]
    fns = [_set_fn(metric, s, memo) for s in spaces]
    boot = stats.fold_bootstrap(fns, [metric.units(s) for s in spaces],
                                n_resamples=SET_RESAMPLES, seed=seed)
    out = {"value": _finite(boot["effect"]), "low": _finite(boot["low"]), "high": _finite(boot["high"]),
           "per_fold": [_finite(v) for v in boot["per_fold"]], "n": int(sum(metric.units(s) for s in spaces))}
    if metric.reference is not None:
        out["isotropic_reference"] = float(np.mean([metric.reference(metric.units(s), s.queries.shape[1])
                                                    for s in spaces]))
    return out


def _set_fn(metric: Metric, space: Space, memo: _Memo) -> Callable[[np.ndarray], float]:
    return lambda idx: memo(metric, space, np.asarray(idx, dtype=np.int64))


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def contrast(metric: Metric, folds: Sequence[dict[str, Space]], treatment: str, control: str, memo: _Memo,
             seed: int = 0) -> dict:
    """Effect of ``treatment`` - ``control`` on ``metric`` with its 95 % CI and two-sided p-value."""
    if metric.kind == "unit":
        a, b = _pooled(metric, folds, control), _pooled(metric, folds, treatment)
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
        if a.size < 2:
            return {"not_measurable": f"fewer than two units ({metric.unit}) have a value in both models"}
        test = stats.paired_randomization_test(a, b, n_resamples=UNIT_RESAMPLES, seed=seed)
        ci = stats.paired_bootstrap_ci(a, b, n_resamples=UNIT_RESAMPLES, seed=seed)
        diffs = b - a
        return {"effect": float(diffs.mean()), "low": ci["low"], "high": ci["high"], "p": test["p_value"],
                "n": int(keep.sum()), "changed": int((diffs != 0).sum()), "wins": int((diffs > 0).sum()),
                "losses": int((diffs < 0).sum()),
                "mde": _finite(stats.min_detectable_difference(diffs)) if diffs.size > 2 else None,
                "test": "paired randomisation test and paired bootstrap over pooled units"}
    fns = []
    for spaces in folds:
        t, c = _set_fn(metric, spaces[treatment], memo), _set_fn(metric, spaces[control], memo)
        fns.append(lambda idx, t=t, c=c: t(idx) - c(idx))
    sizes = [metric.units(spaces[control]) for spaces in folds]
    boot = stats.fold_bootstrap(fns, sizes, n_resamples=SET_RESAMPLES, seed=seed)
    return {"effect": _finite(boot["effect"]), "low": _finite(boot["low"]), "high": _finite(boot["high"]),
            "p": _finite(boot["p_value"]), "n": int(sum(sizes)),
            "per_fold": [_finite(v) for v in boot["per_fold"]], "dropped": int(boot.get("n_dropped", 0)),
            "test": "per-fold paired differences, bootstrap over units inside each fold"}


def compare(folds: Sequence[dict[str, Space]], arms: Sequence[str], contrasts: Sequence[tuple[str, str, str]], *,
            claims_from: tuple[str, str] = ("dance", "ance"), seed: int = 0,
            log: Callable[[str], None] = logger.info) -> dict:
    """Levels of every arm, every contrast ``(treatment, control, description)`` whose arms are present, and the
    claims' verdicts from the contrast ``claims_from`` (treatment, control: DANCE - ANCE). JSON-able."""
    memo = _Memo()
    present = set(arms)
    levels = {}
    for metric in METRICS:
        log(f"levels: {metric.key}")
        levels[metric.key] = {arm: level(metric, folds, arm, memo, seed) for arm in arms}
    done = []
    for treatment, control, what in contrasts:
        if treatment not in present or control not in present:
            continue
        rows = {}
        for metric in METRICS:
            if metric.claim is None and metric.kind == "set":
                continue
            if control == "zero-shot" and metric.claim not in (None, "C5") and not metric.key.startswith("q2d."):
                continue
            log(f"contrast {treatment} - {control}: {metric.key}")
            reason = not_measurable(metric, folds)
            rows[metric.key] = {"not_measurable": reason} if reason else contrast(metric, folds, treatment, control,
                                                                                  memo, seed)
        done.append({"treatment": treatment, "control": control, "what": what, "metrics": rows})
    main = [c for c in done if (c["treatment"], c["control"]) == tuple(claims_from)]
    claims = decide_claims(main[0]["metrics"]) if main else decide_claims(None)
    info = {m.key: {"label": m.label, "claim": m.claim, "direction": m.direction, "primary": m.primary,
                    "kind": m.kind, "unit": m.unit, "note": m.note} for m in METRICS}
    return {"levels": levels, "contrasts": done, "claims": claims, "metric_info": info,
            "ranking_keys": list(RANKING_KEYS), "claims_from": list(claims_from),
            "settings": {"unit_resamples": UNIT_RESAMPLES, "set_resamples": SET_RESAMPLES,
                         "seed": seed, "sampling_ks": list(SAMPLING_KS), "alpha": 0.05, "confidence": 0.95}}


NOT_COMPARED = "not compared"


def decide_claims(rows: dict[str, dict] | None) -> list[dict]:
    """Per claim: Holm over its primary metrics, each metric's verdict, the claim's verdict. ``rows`` None (no
    DANCE - ANCE contrast among the inputs): every verdict is ``not compared`` and only the levels are shown."""
    if rows is None:
        return [{"claim": claim, "text": text, "verdict": NOT_COMPARED,
                 "rows": [{"key": m.key, "label": m.label, "primary": m.primary, "direction": m.direction,
                           "effect": None, "low": None, "high": None, "p": None, "p_holm": None,
                           "verdict": NOT_COMPARED, "reason": None} for m in METRICS if m.claim == claim]}
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
            row = rows.get(m.key, {})
            if row.get("not_measurable"):
                verdict, p_adj = stats.NOT_MEASURABLE, None
            else:
                p_adj = _finite(adjusted.get(m.key)) if m.primary else row.get("p")
                verdict = stats.verdict(_nan(row.get("low")), _nan(row.get("high")), _nan(p_adj), m.direction)
            out_rows.append({"key": m.key, "label": m.label, "primary": m.primary, "direction": m.direction,
                             "effect": row.get("effect"), "low": row.get("low"), "high": row.get("high"),
                             "p": row.get("p"), "p_holm": p_adj if m.primary else None, "verdict": verdict,
                             "reason": row.get("not_measurable")})
        claims.append({"claim": claim, "text": text, "rows": out_rows,
                       "verdict": stats.claim_verdict([r["verdict"] for r in out_rows if r["primary"]])})
    return claims


def _nan(value) -> float:
    return float("nan") if value is None else float(value)
