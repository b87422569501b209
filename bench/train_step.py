"""Benchmark of the trainer's overhead: time per optimizer step of dance-train against a bare loop.

Both sides train the same starting weights on the same batches (the first N global batches of the negatives
mined at step 0). The dance-train side runs the trainer's own step and its per-step bookkeeping (gradient
clipping, learning-rate schedule, NaN checks, the JSONL metrics line, TensorBoard scalars, the progress bar);
the bare side only tokenizes the batch from the token cache, encodes queries and documents, computes the same
loss, calls backward and AdamW's step. Blocks of steps alternate between the two sides so that a change in the
machine's load affects both alike; the medians are compared. Refreshes are not part of a step; their share of
the wall time of a real run is read from its summary.json (--run-dir).
Target (issue 3): overhead at most 10 % outside refreshes.

``--precisions fp32 bf16`` instead compares training precisions on the CPU: copies of the same starting weights
train on the same batches, one per precision under ``torch.autocast`` (fp32: none), plus a second fp32 copy whose
dropout draws differ (``fp32-reseeded``: the noise of the loss trajectory at full precision). Blocks of steps
alternate between the copies; the script prints the median step time of each, the speed-up over fp32, and how far
each loss trajectory lies from the fp32 one (mean and max absolute difference per step, and of the running mean
over 10 steps) next to that noise.

    python bench/train_step.py                                    # demo-dance recipe (MiniLM, rag24-sample)
    python bench/train_step.py --precisions fp32 bf16 --steps 50  # bf16 autocast training against fp32
    python bench/train_step.py --steps 30 --run-dir runs/demo-dance --json bench/train_step.json
    python bench/train_step.py --tiny                             # a tiny random encoder, a generated collection
    python bench/train_step.py --tiny --set log.every=10          # values read on the host every 10 steps

The trainer reads its logged values (losses, gradient norm, the non-finite check) on the host once per
``log.every`` steps (docs/scaling.md, "Host synchronisation"); the dance-train side logs every step it reads.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tiny_setup(root: Path) -> list[str]:
    sys.path.insert(0, str(REPO / "tests"))
    import train_support as ts

    manifest = ts.write_tiny_collection(root / "collection", n_docs=200, n_train=80, n_dev=10)
    encoder = ts.tiny_encoder(root / "model")
    return [f"data.collection={manifest}", f"model.backbone={encoder}", f"data.cache_dir={root / 'tokens'}",
            "model.temperature=0.5", "mining.top_k=50", "mining.n=8"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(REPO / "train" / "demo-dance.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per side (default: %(default)s)")
    parser.add_argument("--block", type=int, default=5, help="steps per alternating block (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per side first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny random encoder on a generated collection")
    parser.add_argument("--run-dir", default=None, help="a finished run: report its share of time in refreshes")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "bf16"),
                        help="compare training precisions instead of the trainer's overhead (see above)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")     # as dance-train sets it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np
    import torch

    from dance_analysis.training.config import load_recipe
    from dance_analysis.training.loop import InstanceStream, Trainer, build_optimizer
    from dance_analysis.training.refresher import SyncRefresher

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    overrides = list(args.overrides)
    if args.tiny:
        overrides = _tiny_setup(work) + overrides
    total = args.warmup + args.steps
    overrides += [f"optim.max_steps={total + 1}", f"mining.refresh_every={total + 1}", "log.progress=false",
                  "log.tensorboard=true"]
    recipe = load_recipe(args.recipe, overrides)

    trainer = Trainer(recipe, work / "run")
    trainer._setup()
    started = time.perf_counter()
    SyncRefresher(trainer).refresh()              # initial negatives (not measured)
    refresh_seconds = time.perf_counter() - started
    negatives = trainer.stream.negatives
    stream = InstanceStream(negatives, recipe.optim.seed)
    batches = [stream.take(recipe.optim.batch_size) for _ in range(total)]
    trainer.stream = InstanceStream(negatives, recipe.optim.seed)

    # The bare loop: its own copy of the starting weights and a plain AdamW.
    bare_model = copy.deepcopy(trainer.model)
    bare_model.train()
    bare_opt = build_optimizer(bare_model, recipe)
    objective = trainer.objective  # the recipe's loss, the very object the trainer calls
    data = trainer.data
    use_qneg = objective.uses_query_negatives

    def bare_step(rows: np.ndarray) -> float:
        t0 = time.perf_counter()
        bare_opt.zero_grad(set_to_none=True)
        q_rows = data.train_query_rows[rows[:, 0]]
        if use_qneg:
            q_rows = np.concatenate([q_rows, data.train_query_rows[rows[:, 3]]])
        q_ids, q_mask = data.query_tokens.batch(q_rows)
        d_ids, d_mask = data.doc_tokens.batch(np.concatenate([rows[:, 1], rows[:, 2]]))
        q_emb = bare_model.encode(q_ids, q_mask, "query")
        d_emb = bare_model.encode(d_ids, d_mask, "doc")
        m = len(rows)
        loss, _ = objective(q_emb[:m], d_emb[:m], d_emb[m:], q_emb[m:] if use_qneg else None)
        loss.backward()
        bare_opt.step()
        return time.perf_counter() - t0

    def trainer_step() -> float:
        t0 = time.perf_counter()
        for record in trainer._train_step():    # the steps whose values reached the host (every log.every steps)
            trainer.log.log(record)
        return time.perf_counter() - t0

    if args.precisions:
        result = compare_precisions(args, recipe, trainer, batches)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0

    for i in range(args.warmup):
        bare_step(batches[i])
        trainer_step()
    times = {"dance-train": [], "bare": []}
    for start in range(args.warmup, total, args.block):
        stop = min(total, start + args.block)
        for i in range(start, stop):
            times["bare"].append(bare_step(batches[i]))
        for _ in range(start, stop):
            times["dance-train"].append(trainer_step())
    trainer.log.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    result = {
        "recipe": recipe.name, "steps": args.steps, "batch_size": recipe.optim.batch_size,
        "threads": torch.get_num_threads(),
        "median_step_seconds": {k: round(v, 4) for k, v in med.items()},
        "mean_step_seconds": {k: round(v, 4) for k, v in mean.items()},
        "overhead_percent_median": round(100.0 * (med["dance-train"] - med["bare"]) / med["bare"], 2),
        "overhead_percent_mean": round(100.0 * (mean["dance-train"] - mean["bare"]) / mean["bare"], 2),
        "initial_refresh_seconds": round(refresh_seconds, 2),
    }
    if args.run_dir:
        summary = json.loads((Path(args.run_dir) / "summary.json").read_text())
        result["run"] = {"run_dir": args.run_dir, "wall_seconds": summary["wall_seconds"],
                         "train_seconds": summary["train_seconds"], "refresh_seconds": summary["refresh_seconds"],
                         "refresh_share_percent": round(100.0 * summary["refresh_share"], 1)}
    print(f"{recipe.name}: {args.steps} steps of {recipe.optim.batch_size} instances, "
          f"{result['threads']} thread(s)")
    print(f"  bare forward/backward loop  median {med['bare']:.4f}s  mean {mean['bare']:.4f}s per step")
    print(f"  dance-train step            median {med['dance-train']:.4f}s  mean {mean['dance-train']:.4f}s per step")
    print(f"  overhead                    {result['overhead_percent_median']:+.1f}% (median), "
          f"{result['overhead_percent_mean']:+.1f}% (mean); target <= 10%")
    if "run" in result:
        r = result["run"]
        print(f"  {r['run_dir']}: {r['wall_seconds']:.0f}s wall, {r['refresh_share_percent']:.0f}% in refreshes "
              f"and checkpoints ({r['refresh_seconds']:.0f}s), {r['train_seconds']:.0f}s in training steps")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def compare_precisions(args, recipe, trainer, batches) -> dict:
    """Train copies of the starting weights side by side, one per precision (and a re-seeded fp32 copy)."""
    import numpy as np
    import torch

    from dance_analysis.encode import bf16_hardware
    from dance_analysis.training.loop import build_optimizer

    data, objective = trainer.data, trainer.objective
    use_qneg = objective.uses_query_negatives
    arms = {name: {"dtype": None if name.startswith("fp32") else torch.bfloat16, "seed": 1 if name == "fp32-reseeded"
                   else 0} for name in dict.fromkeys(["fp32", *args.precisions, "fp32-reseeded"])}
    for arm in arms.values():
        arm["model"] = copy.deepcopy(trainer.model)
        arm["model"].train()
        arm["opt"] = build_optimizer(arm["model"], recipe)
        arm["times"], arm["losses"] = [], []

    def step(arm: dict, index: int, rows: np.ndarray) -> None:
        torch.manual_seed(10_000 * arm["seed"] + index)         # the dropout draws of this arm and step
        t0 = time.perf_counter()
        arm["opt"].zero_grad(set_to_none=True)
        q_rows = data.train_query_rows[rows[:, 0]]
        if use_qneg:
            q_rows = np.concatenate([q_rows, data.train_query_rows[rows[:, 3]]])
        q_ids, q_mask = data.query_tokens.batch(q_rows)
        d_ids, d_mask = data.doc_tokens.batch(np.concatenate([rows[:, 1], rows[:, 2]]))
        model = arm["model"]
        with (torch.autocast("cpu", dtype=arm["dtype"]) if arm["dtype"] is not None else contextlib.nullcontext()):
            q_emb = model.encode(q_ids, q_mask, "query")
            d_emb = model.encode(d_ids, d_mask, "doc")
        m = len(rows)
        q_emb, d_emb = q_emb.float(), d_emb.float()
        loss, _ = objective(q_emb[:m], d_emb[:m], d_emb[m:], q_emb[m:] if use_qneg else None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip or float("inf"))
        arm["opt"].step()
        elapsed = time.perf_counter() - t0
        if index >= args.warmup:
            arm["times"].append(elapsed)
        arm["losses"].append(float(loss.detach()))

    names = list(arms)
    for start in range(0, len(batches), args.block):
        order = names if (start // args.block) % 2 == 0 else list(reversed(names))
        for name in order:
            for i in range(start, min(len(batches), start + args.block)):
                step(arms[name], i, batches[i])

    def smooth(values: np.ndarray) -> np.ndarray:
        return np.convolve(values, np.ones(10) / 10, mode="valid") if len(values) >= 10 else values

    reference = np.asarray(arms["fp32"]["losses"])
    medians = {name: statistics.median(arm["times"]) for name, arm in arms.items()}
    native, hardware = bf16_hardware("cpu")
    result = {"recipe": recipe.name, "steps": len(batches), "measured_steps": args.steps,
              "batch_size": recipe.optim.batch_size, "threads": torch.get_num_threads(), "hardware": hardware,
              "native_bf16": native, "arms": {}}
    print(f"{recipe.name}: {len(batches)} steps of {recipe.optim.batch_size} instances per copy ({args.warmup} "
          f"unmeasured), blocks of {args.block} alternating, {torch.get_num_threads()} thread(s); {hardware}")
    for name, arm in arms.items():
        losses = np.asarray(arm["losses"])
        diff, smooth_diff = np.abs(losses - reference), np.abs(smooth(losses) - smooth(reference))
        entry = {"median_step_seconds": round(medians[name], 4),
                 "speedup_over_fp32": round(medians["fp32"] / medians[name], 3),
                 "loss_first": round(float(losses[0]), 4), "loss_last10_mean": round(float(losses[-10:].mean()), 4),
                 "loss_abs_diff_mean": round(float(diff.mean()), 4), "loss_abs_diff_max": round(float(diff.max()), 4),
                 "smoothed_abs_diff_max": round(float(smooth_diff.max()), 4), "losses": [round(v, 5) for v in losses]}
        result["arms"][name] = entry
        print(f"  {name:<14} step median {entry['median_step_seconds']:.3f}s  x{entry['speedup_over_fp32']:.2f}  "
              f"loss {entry['loss_first']:.4f} -> last-10 mean {entry['loss_last10_mean']:.4f}  |loss - fp32| mean "
              f"{entry['loss_abs_diff_mean']:.4f} max {entry['loss_abs_diff_max']:.4f} (10-step mean: max "
              f"{entry['smoothed_abs_diff_max']:.4f})")
    print("  fp32-reseeded = fp32 with other dropout draws: the noise against which the bf16 trajectory is judged")
    return result


if __name__ == "__main__":
    sys.exit(main())
