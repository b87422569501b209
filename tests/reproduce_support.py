"""Checks of a `make reproduce` report folder, shared by the tiny end-to-end experiment (test_reproduce.py) and
the committed results in reports/rag24 (test_committed_reports.py).

Each check recomputes what the folder states from an independent source: the README tables from metrics.json,
the ranking levels of every arm and training seed from its TREC run file with ir-measures / trec_eval (and the
seed-averaged level as the mean of the seeds'), the main paired test from per_unit.csv with scipy and its CI with
a bootstrap over units and seeds written here from its definition.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

#: The arms of the experiment (the checks read the arms and run files of a folder from its metrics.json).
ARMS = ("minilm", "start", "ance", "dance-stage1", "dance", "dance-control")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NUMBER = r"(-?[\d.]+|n/a)"


def markdown_table(text: str, first_header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with ``| first_header |``: first cell -> other cells."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.startswith(f"| {first_header} |"):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) != {"-"}:
                rows[cells[0]] = cells[1:]
    return rows


def value_ci(cell: str) -> tuple[float, float, float]:
    """``"0.6667 [0.6012, 0.7300]"`` (an optional ``p=...`` after it) -> (0.6667, 0.6012, 0.7300)."""
    match = re.match(r"([+-]?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2)), float(match.group(3))


def _arm_labels(metrics: dict) -> dict[str, str]:
    """name -> label of the arms that have levels."""
    present = set(next(iter(metrics["levels"].values())))
    return {a["name"]: a["label"] for a in metrics["experiment"]["arms"] if a["name"] in present}


def check_readme_tables(report: Path, readmes: list[Path]) -> None:
    """The ranking table of every README in ``readmes`` holds each arm's seed-averaged level and 95 % CI of
    metrics.json."""
    metrics = json.loads((report / "metrics.json").read_text())
    labels = _arm_labels(metrics)
    keys = metrics["ranking_keys"]
    for path in readmes:
        table = markdown_table(path.read_text(), "model")
        assert set(table) == set(labels.values()), path
        for arm, label in labels.items():
            for key, cell in zip(keys, table[label]):
                level = metrics["levels"][key][arm]
                value, low, high = value_ci(cell)
                assert value == pytest.approx(level["value"], abs=5e-5), (path, arm, key)
                assert low == pytest.approx(level["low"], abs=5e-5) and high == pytest.approx(level["high"], abs=5e-5)
                assert low <= value <= high, (path, arm, key)


def expected_verdict(row: dict) -> str:
    """The metric rule from the numbers: CI excludes 0 and (Holm-adjusted for primary) p < 0.05, in the predicted
    direction or the other; a set metric whose replicate rule fails is inconclusive."""
    p = row["p_holm"] if row["primary"] else row["p"]
    excludes = row["low"] > 0 or row["high"] < 0
    predicted = (row["low"] > 0) == (row["direction"] == "higher")
    decided = excludes and p < 0.05
    if decided and row.get("replicates") is not None and not row["replicates"]["passed"]:
        return "inconclusive"
    return ("reproduced" if decided and predicted else "contradicted" if decided and not predicted
            else "inconclusive")


def expected_claim_verdict(primary: list[str]) -> str:
    """The symmetric claim rule."""
    measurable = [v for v in primary if v != "not measurable here"]
    if not measurable:
        return "not measurable here"
    if "reproduced" in measurable and "contradicted" not in measurable:
        return "reproduced"
    if "contradicted" in measurable and "reproduced" not in measurable:
        return "contradicted"
    return "inconclusive"


def check_claims_table(report: Path) -> None:
    """The README's claims table lists every claim metric of metrics.json with its effect, CI, p-values and the
    verdicts; the verdicts follow the rules from the numbers (recomputed here); no p-value is shown finer than its
    resampling allows."""
    metrics = json.loads((report / "metrics.json").read_text())
    text = (report / "README.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| claim |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    lines = [line for line in text.splitlines() if re.match(r"\| C\d \|", line)]
    rows = [(claim, row) for claim in metrics["claims"] for row in claim["rows"]]
    assert len(lines) == len(rows)
    for line, (claim, row) in zip(lines, rows):
        cell = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert cell["claim"] == claim["claim"] and cell["metric verdict"] == row["verdict"]
        assert cell["claim verdict"] == claim["verdict"]
        if row["effect"] is not None:
            effect, low, high = value_ci(cell["effect [95 % CI]"])
            assert effect == pytest.approx(row["effect"], abs=5e-5) and low == pytest.approx(row["low"], abs=5e-5)
            assert high == pytest.approx(row["high"], abs=5e-5)
        resamples = row.get("p_resamples")
        for column, key in (("p", "p"), ("p (Holm)", "p_holm")):
            p = row[key]
            if p is not None and resamples and not row.get("p_exact") and p < 1 / (resamples + 1):
                assert cell[column] == f"< 1/{resamples + 1}", (row["key"], cell[column])
            elif p is not None:
                assert float(cell[column]) == pytest.approx(p, rel=1e-3, abs=5e-5), (row["key"], column)
        if row["reason"] is None and (row["p_holm"] if row["primary"] else row["p"]) is not None \
                and row["low"] is not None:
            assert row["verdict"] == expected_verdict(row), row["key"]
        if row["reason"] is not None:
            assert row["verdict"] == "not measurable here" and row["p_holm"] is None
    for claim in metrics["claims"]:
        assert claim["verdict"] == expected_claim_verdict([r["verdict"] for r in claim["rows"] if r["primary"]])


def run_queries(path: Path) -> list[str]:
    """Query ids of a TREC run file, in first-seen order."""
    seen: dict[str, None] = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            seen.setdefault(line.split()[0], None)
    return list(seen)


def _level_of(metrics: dict, key: str, arm: str, seed) -> float:
    level = metrics["levels"][key][arm]
    if seed is None:
        return level["value"]
    return next(p["value"] for p in level["per_seed"] if p["seed"] == seed)


def check_run_files(report: Path, qrels: dict[str, dict[str, int]]) -> int:
    """Every run file of metrics.json's ``files.runs`` (``runs/<arm>-seed<k>.trec.gz`` per trained arm and seed,
    ``runs/<arm>.trec.gz`` per untrained arm) covers each tested query once and scores, with ir-measures on
    ``qrels`` (the real queries' judgments), that arm and seed's pooled level in metrics.json: nDCG@10 and R@100
    with ir-measures, MRR@10 as trec_eval's recip_rank cut at rank 10 (ir-measures' own RR@k breaks score ties
    another way); the seed-averaged level of each arm is the mean of its seeds' levels. Returns the number of run
    files checked."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    metrics = json.loads((report / "metrics.json").read_text())
    min_rel = metrics["collection"]["min_relevance"]
    evaluable = {q for q, docs in qrels.items() if any(g >= min_rel for g in docs.values())}
    qrel_list = [ir_measures.Qrel(q, d, int(g)) for q in evaluable for d, g in qrels[q].items()]
    tested = sum(f["test_queries"] for f in metrics["folds"])
    assert tested == len(evaluable)
    files = metrics["files"]["runs"]
    assert sorted(p.name for p in (report / "runs").iterdir()) == sorted(files)
    checked = 0
    scored_by: dict[str, dict[str, list[float]]] = {}
    for name, spec in files.items():
        arm, seed = spec["arm"], spec["seed"]
        path = report / "runs" / name
        queries = run_queries(path)
        assert len(queries) == len(set(queries)) == tested and set(queries) == evaluable, path
        run_lines = list(ir_measures.read_trec_run(str(path)))
        scored = ir_measures.calc_aggregate([nDCG @ 10, R(rel=min_rel) @ 100], qrel_list, run_lines)
        rr = {m.query_id: m.value for m in ir_measures.pytrec_eval.iter_calc([RR(rel=min_rel)], qrel_list, run_lines)}
        mrr10 = np.mean([v if v > 0 and round(1 / v) <= 10 else 0.0 for v in (rr.get(q, 0.0) for q in evaluable)])
        values = {"q2d.nDCG@10": scored[nDCG @ 10], "q2d.R@100": scored[R(rel=min_rel) @ 100], "q2d.MRR@10": mrr10}
        for key, value in values.items():
            assert value == pytest.approx(_level_of(metrics, key, arm, seed), abs=1e-9), (path, key)
            scored_by.setdefault(arm, {}).setdefault(key, []).append(value)
        checked += 1
    for arm, by_key in scored_by.items():
        for key, values in by_key.items():
            assert np.mean(values) == pytest.approx(metrics["levels"][key][arm]["value"], abs=1e-9), (arm, key)
    return checked


def per_unit(report: Path, metric: str, arm: str) -> dict[tuple[str, str], dict[str, float]]:
    """``(fold, unit) -> {seed: value}`` of ``metric`` for ``arm`` from per_unit.csv."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    with open(report / "per_unit.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["metric"] == metric and row["arm"] == arm:
                out.setdefault((row["fold"], row["unit"]), {})[row["seed"]] = float(row["value"])
    return out


def two_stage_bootstrap(treatment: list[np.ndarray], control: list[np.ndarray], n_resamples: int = 2000,
                        seed: int = 1) -> tuple[float, float]:
    """95 % percentile CI of the pooled mean of seed-averaged differences, written from its definition: per
    replicate and fold, draw the units and each arm's seeds with replacement; a seed mean is rescaled about the
    arm's mean by sqrt(S / (S - 1)) (so its variance is the unbiased one); unclustered units."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_resamples):
        total, count = 0.0, 0
        for t, c in zip(treatment, control):
            n = t.shape[1]
            units = rng.integers(0, n, n)
            arm_means = []
            for m in (t, c):
                s = m.shape[0]
                mean = m[:, units].mean(axis=0)
                if s > 1:
                    drawn = m[rng.integers(0, s, s)][:, units].mean(axis=0)
                    mean = mean + np.sqrt(s / (s - 1)) * (drawn - mean)
                arm_means.append(mean)
            total += float((arm_means[0] - arm_means[1]).sum())
            count += n
        reps.append(total / count)
    low, high = np.quantile(reps, [0.025, 0.975])
    return float(low), float(high)


def check_main_contrast_with_scipy(report: Path, metric: str = "q2d.MRR@10") -> None:
    """The claims contrast's effect, p-value and CI of ``metric`` in metrics.json agree with what per_unit.csv
    gives here: each unit's value averaged over the arm's seeds; scipy's paired permutation test on the
    differences; the CI of scipy's paired bootstrap when both arms have one seed, else of the two-stage bootstrap
    over units and seeds written above (Monte Carlo tolerances)."""
    from scipy import stats

    metrics = json.loads((report / "metrics.json").read_text())
    treatment, control = metrics["claims_from"]
    row = next(c for c in metrics["contrasts"]
               if c["treatment"] == treatment and c["control"] == control)["metrics"][metric]
    a, b = per_unit(report, metric, control), per_unit(report, metric, treatment)
    assert set(a) == set(b)
    keys = sorted(a)
    x = np.array([np.mean(list(a[k].values())) for k in keys])
    y = np.array([np.mean(list(b[k].values())) for k in keys])
    keep = np.isfinite(x) & np.isfinite(y)
    assert row["n"] == int(keep.sum()) and row["effect"] == pytest.approx(float((y - x)[keep].mean()), abs=1e-12)
    x, y = x[keep], y[keep]
    if np.all(x == y):
        assert row["p"] == 1.0
        return
    res = stats.permutation_test((y - x,), np.mean, permutation_type="samples", n_resamples=9999,
                                 alternative="two-sided", random_state=1)
    n_eff = min(10_000, 2 ** int((x != y).sum()))
    tol = 4 * np.sqrt(max(res.pvalue * (1 - res.pvalue), 1e-4) / n_eff) + 2e-3
    assert row["p"] == pytest.approx(res.pvalue, abs=tol)
    seeds = {len(v) for side in (a, b) for v in side.values()}
    if seeds == {1}:
        boot = stats.bootstrap((x, y), lambda u, v, axis=-1: np.mean(v - u, axis=axis), paired=True,
                               method="percentile", n_resamples=9999, random_state=1)
        low, high = boot.confidence_interval.low, boot.confidence_interval.high
    else:
        folds = sorted({k[0] for k in keys})
        kept = [k for k, ok in zip(keys, keep) if ok]
        mats = []
        for side in (b, a):
            mats.append([np.array([[side[k][s] for k in kept if k[0] == f] for s in sorted(side[kept[0]])])
                         for f in folds])
        low, high = two_stage_bootstrap(mats[0], mats[1])
    width = max(high - low, 1e-9)
    assert row["low"] == pytest.approx(low, abs=0.12 * width)
    assert row["high"] == pytest.approx(high, abs=0.12 * width)


# ------------------------------------------------------------------------------ a synthetic experiment
def topic_collection(n_topics=16, statements=5, n_docs=160, name="topics"):
    """Real queries t00..t15 (each its own topic), statements tNN.sK citing their topic's passages (grades 2 / 3
    for the real query's own passages, 1 for a third, 0 for a fourth). Returns ``(collection, doc_ids)``."""
    from dance_analysis.data.collection import Collection, InMemoryCorpus

    doc_ids = [f"d{i:03d}" for i in range(n_docs)]
    queries, qrels, topics = {}, {}, {}
    for t in range(n_topics):
        tid = f"t{t:02d}"
        own = [doc_ids[(10 * t + j) % n_docs] for j in range(4)]
        queries[tid], topics[tid] = "query", tid
        qrels[tid] = {own[0]: 2, own[1]: 3, own[2]: 1, own[3]: 0}
        for k in range(statements):
            sid = f"{tid}.s{k}"
            queries[sid], topics[sid] = "statement", tid
            qrels[sid] = {own[k % 2]: 2, own[2]: 1}
    coll = Collection(name, InMemoryCorpus(doc_ids, ["text"] * n_docs), queries, qrels, {}, min_relevance=2,
                      topics=topics)
    return coll, doc_ids


def synthetic_experiment(seeds=(1, 2), n_topics=16, statements=5, n_docs=160, dim=10):
    """A collection with topics (real queries tNN, statements tNN.sK) and two folds of spaces: per fold, ``start``
    (one model) and ``ance`` / ``dance`` (one model per training seed), made from a common base plus an arm shift
    plus seed noise. Returns ``(collection, folds)`` as the experiment's evaluation hands them to the statistics."""
    from dance_analysis.comparison import build_space, fold_units
    from dance_analysis.data.splits import topic_splits
    from dance_analysis.embeddings import Embeddings

    rng = np.random.default_rng(7)
    coll, doc_ids = topic_collection(n_topics, statements, n_docs, name="synthetic-topics")
    queries, qrels, topics = coll.queries, coll.qrels, coll.topics
    qids = np.array(sorted(queries))
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    base = np.stack([docs[[int(d[1:]) for d, g in qrels[q].items() if g >= 2]].mean(axis=0) for q in qids])
    base = base + rng.normal(0, 0.8, base.shape).astype(np.float32)
    corpus_ids = np.array(doc_ids)
    real = sorted(q for q, t in topics.items() if q == t)
    half = len(real) // 2
    folds = []
    for fold in range(2):
        test, train = (real[:half], real[half:]) if fold == 0 else (real[half:], real[:half])
        units = fold_units(coll, fold, topic_splits({"train": train, "dev": train, "test": test}, topics),
                           corpus_ids, qids)
        per_arm = {}
        for arm, shift, arm_seeds in (("start", 0.0, [None]), ("ance", 0.3, list(seeds)), ("dance", 0.6, list(seeds))):
            spaces = []
            for s in arm_seeds:
                noise = np.random.default_rng([fold, s or 0, int(shift * 10)]).normal(0, 0.2, base.shape)
                q = (base * (1 + shift) + noise).astype(np.float32)
                spaces.append(build_space(arm, units, Embeddings(corpus_ids, docs), Embeddings(qids, q), 1.0, coll,
                                          seed=s))
            per_arm[arm] = spaces
        folds.append(per_arm)
    return coll, folds
