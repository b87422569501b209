"""dance-doctor: what this machine offers dance-analysis, and whether the recipes given can run here.

    dance-doctor
    dance-doctor train/msmarco-doc-ance-firstp.yaml --set data.collection=data/msmarco-doc/manifest.yaml
    dance-doctor train/rag24-dance.yaml --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import DanceError
from .common import user_errors_exit_2

DESCRIPTION = __doc__.split("\n\n")[0]

EPILOG = """\
Without a recipe it prints the machine: torch and its CUDA build, the GPUs torch sees with their bf16 / fp16
support, which faiss package is installed and whether faiss sees the GPUs (faiss-cpu and faiss-gpu-cu12 write the
same faiss package: with both installed the CPU files may win), the CPU's native bf16 and the CPU kernel decision
of encoding (oneDNN or the default BLAS, timed here unless --no-timing), thread counts, the cache folder
($DANCE_CACHE) and its free disk. With recipes (and --set overrides, applied to every recipe) it also says what
each one resolves to here (device, precisions, async miner placement, search backend) and what stops it.

Exit status: 0 every recipe given can run here (or none given), 1 a recipe cannot run here (each reason is
printed), 2 a recipe cannot be read.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dance-doctor", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", metavar="RECIPE", nargs="*", help="training recipes (YAML) to check")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value (repeatable; applied to every recipe)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-timing", action="store_true",
                        help="skip the CPU kernel timing (a few seconds); report only DANCE_CPU_LINEAR")
    return parser


# ----------------------------------------------------------------------------------------------- the machine

def torch_report() -> dict[str, Any]:
    """torch's version and CUDA build, and every GPU it sees with its bf16 / fp16 support."""
    import torch

    report: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                              "cudnn": None, "cuda_available": bool(torch.cuda.is_available()), "gpus": []}
    if report["cuda_available"]:
        report["cudnn"] = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            major, minor = props.major, props.minor
            report["gpus"].append({
                "index": index, "name": props.name, "capability": f"{major}.{minor}",
                "memory_gb": round(props.total_memory / 2**30, 1),
                # bf16 autocast needs Ampere (8.0) or newer; fp16 tensor cores Volta (7.0) or newer.
                "bf16": major >= 8, "fp16": major >= 7,
            })
    return report


def faiss_report(torch_gpus: int) -> dict[str, Any]:
    """Which faiss distributions are installed, which build is active and how many GPUs it sees; ``problem``
    names what stops a GPU search (:func:`dance_analysis.index.faiss_gpu_problem`), ``warning`` a fragile state."""
    # numpy: dance-doctor --help stays fast
    from .. import index

    packages = index.faiss_packages()
    report: dict[str, Any] = {"packages": packages, "version": None, "module": None, "gpu_build": False,
                              "gpus": 0, "problem": None, "warning": None}
    try:
        faiss = index.import_faiss()
    except DanceError as exc:
        report["problem"] = str(exc)
        return report
    report["version"] = getattr(faiss, "__version__", None)
    report["module"] = str(Path(faiss.__file__).parent)
    report["gpu_build"] = hasattr(faiss, "StandardGpuResources")
    report["gpus"] = index._faiss_gpus()
    report["problem"] = index.faiss_gpu_problem(torch_gpus)
    gpu_packages = [name for name in packages if name in index.FAISS_GPU_PACKAGES]
    if "faiss-cpu" in packages and gpu_packages and not report["problem"]:
        report["warning"] = (f"faiss-cpu and {gpu_packages[0]} are both installed and write the same faiss package "
                             f"(the {'GPU' if report['gpu_build'] else 'CPU'} files are active now); keep one: pip "
                             f"uninstall -y faiss-cpu {gpu_packages[0]} && pip install {gpu_packages[0]} (GPU "
                             f"machines) or faiss-cpu")
    elif torch_gpus and not gpu_packages:
        report["warning"] = ("torch sees GPUs but faiss is the CPU build: GPU searches run as torch.mm + topk; the "
                             "gpu extra (faiss-gpu-cu12, without faiss-cpu) searches in faiss")
    return report


def cpu_report(timing: bool) -> dict[str, Any]:
    """Native bf16 of the CPU (its flags) and the CPU kernel decision of float32 encoding."""
    # torch: dance-doctor --help stays fast
    from ..encode import bf16_hardware, cpu_linear_decision

    native, hardware = bf16_hardware("cpu")
    report: dict[str, Any] = {"processor": platform.processor() or platform.machine(), "bf16_native": native,
                              "flags": hardware, "DANCE_CPU_LINEAR": os.environ.get("DANCE_CPU_LINEAR", "auto")}
    if timing:
        decision = cpu_linear_decision()
        report["linear_kernels"] = {"backend": decision.backend, "reason": decision.reason,
                                    "describe": decision.describe()}
    return report


def threads_report() -> dict[str, Any]:
    """CPU counts and the thread settings torch, OpenMP and faiss run with."""
    import torch

    report: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
    }
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM"):
        report[name] = os.environ.get(name)
    try:
        # numpy: dance-doctor --help stays fast
        from ..index import import_faiss

        report["faiss_threads"] = int(import_faiss().omp_get_max_threads())
    except (DanceError, AttributeError):
        report["faiss_threads"] = None
    return report


def cache_report() -> dict[str, Any]:
    """The cache root (``$DANCE_CACHE`` or the user cache) and the free disk where it lies."""
    # numpy: dance-doctor --help stays fast
    from ..data.cache import CACHE_ENV, cache_root

    root = cache_root()
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return {"DANCE_CACHE": os.environ.get(CACHE_ENV), "root": str(root), "exists": root.exists(),
            "free_gb": round(usage.free / 1e9, 1), "total_gb": round(usage.total / 1e9, 1)}


def machine_report(timing: bool = True) -> dict[str, Any]:
    """Everything :func:`main` prints about the machine, as a JSON-able dict."""
    torch_part = torch_report()
    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch_part,
            "faiss": faiss_report(len(torch_part["gpus"])), "cpu": cpu_report(timing),
            "threads": threads_report(), "cache": cache_report()}


# ----------------------------------------------------------------------------------------------- the recipes

def _collection_problem(collection: Any) -> str | None:
    """A collection given as a file or folder path that does not exist here."""
    if not isinstance(collection, str):
        return None
    looks_like_path = collection.endswith((".yaml", ".yml", ".json")) or "/" in collection
    if looks_like_path and not collection.startswith(("irds:", "hf:")) and not Path(collection).exists():
        return f"data.collection {collection}: not found here"
    return None


def recipe_report(recipe, machine: dict[str, Any]) -> dict[str, Any]:
    """What ``recipe`` resolves to on this machine and every reason it cannot run here (``problems``)."""
    import torch

    # torch: dance-doctor --help stays fast
    from ..device import pick_device

    # torch: dance-doctor --help stays fast
    from ..training.precision import resolved_precisions

    problems: list[str] = []
    report: dict[str, Any] = {"name": recipe.name}
    try:
        device = pick_device(recipe.optim.device)
    except DanceError as exc:
        problems.append(f"optim.device {recipe.optim.device}: {exc}")
        device = torch.device("cpu")
    report["device"] = str(device)
    resolved = resolved_precisions(recipe, device)
    report["precision"] = resolved
    asked = {"optim.precision": recipe.optim.precision, "mining.encode_precision": recipe.mining.encode_precision}
    problems += [f"{key} {asked[key]}: {text}" for key, text in resolved.items() if text.startswith("not possible")]
    gpus = len(machine["torch"]["gpus"])
    if recipe.mining.mode == "async":
        # numpy: dance-doctor --help stays fast
        from ..training.async_refresh import place_miner

        try:
            report["miner"] = place_miner(recipe.mining.device, 1 if device.type == "cuda" else 0, gpus)
        except DanceError as exc:
            problems.append(f"mining.device {recipe.mining.device}: {exc}")
    gpu_search = device.type == "cuda" or str(report.get("miner", "cpu")).startswith("cuda")
    faiss = machine["faiss"]
    if faiss["version"] is None:
        problems.append(faiss["problem"])
        report["search"] = None
    elif gpu_search:
        if faiss["problem"]:
            problems.append(faiss["problem"])
        report["search"] = "faiss GPU" if faiss["gpus"] else "torch.mm + topk on CUDA (faiss has no GPU support)"
    else:
        report["search"] = "faiss CPU"
    if "wandb" in recipe.log.report_to:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            problems.append("log.report_to names wandb but it is not installed: pip install 'dance-analysis[wandb]'")
    collection = _collection_problem(recipe.data.collection)
    if collection:
        problems.append(collection)
    report["problems"] = problems
    return report


# ----------------------------------------------------------------------------------------------- output

def _text(machine: dict[str, Any], recipes: list[dict[str, Any]]) -> str:
    t, f, c, th, ca = machine["torch"], machine["faiss"], machine["cpu"], machine["threads"], machine["cache"]
    lines = [f"python {machine['python']} on {machine['platform']}",
             f"torch {t['version']} (CUDA build: {t['cuda_build'] or 'none, CPU only'}; cuDNN {t['cudnn']}); "
             f"CUDA available: {'yes' if t['cuda_available'] else 'no'}; GPUs: {len(t['gpus'])}"]
    for gpu in t["gpus"]:
        lines.append(f"  cuda:{gpu['index']} {gpu['name']} (capability {gpu['capability']}, {gpu['memory_gb']} GB): "
                     f"bf16 {'yes' if gpu['bf16'] else 'no'}, fp16 {'yes' if gpu['fp16'] else 'no'}")
    packages = ", ".join(f"{name} {version}" for name, version in f["packages"].items()) or "none"
    lines.append(f"faiss: installed {packages}; active {f['version']} ({'GPU' if f['gpu_build'] else 'CPU'} build, "
                 f"{f['module']}); faiss sees {f['gpus']} GPU(s)")
    if f["problem"]:
        lines.append(f"  PROBLEM: {f['problem']}")
    if f["warning"]:
        lines.append(f"  warning: {f['warning']}")
    lines.append(f"CPU: {c['processor']}; native bf16: {'yes' if c['bf16_native'] else 'no'} ({c['flags']})")
    if "linear_kernels" in c:
        lines.append(f"CPU kernels of float32 encoding: {c['linear_kernels']['describe']}")
    lines.append(f"  DANCE_CPU_LINEAR={c['DANCE_CPU_LINEAR']}")
    lines.append(f"threads: {th['usable_cpus']} usable CPUs of {th['cpu_count']}; torch {th['torch_threads']} "
                 f"(interop {th['torch_interop_threads']}), faiss {th['faiss_threads']}; "
                 + ", ".join(f"{k}={th[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")))
    lines.append(f"cache: {ca['root']} (DANCE_CACHE={ca['DANCE_CACHE'] or 'unset'}; "
                 f"{'exists' if ca['exists'] else 'not created yet'}); free disk {ca['free_gb']} GB of "
                 f"{ca['total_gb']} GB")
    for r in recipes:
        lines.append(f"recipe {r['source']} ({r.get('name')}):")
        if "device" in r:
            lines.append(f"  trains on {r['device']}; optim.precision -> {r['precision']['optim.precision']}; "
                         f"mining.encode_precision -> {r['precision']['mining.encode_precision']}")
            lines.append(f"  search: {r['search']}" + (f"; async miner on {r['miner']}" if "miner" in r else ""))
        lines += [f"  CANNOT RUN HERE: {p}" for p in r["problems"]] or ["  can run here"]
    return "\n".join(lines) + "\n"


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # yaml, numpy: dance-doctor --help stays fast
    from ..training.config import load_recipe

    recipes = [load_recipe(path, args.overrides) for path in args.recipes]   # unreadable: exit 2, before the rest
    machine = machine_report(timing=not args.no_timing)
    reports = [{"source": str(path), **recipe_report(recipe, machine)} for path, recipe in zip(args.recipes, recipes)]
    if args.json:
        sys.stdout.write(json.dumps({"machine": machine, "recipes": reports}, default=str) + "\n")
    else:
        sys.stdout.write(_text(machine, reports))
    return 1 if any(r["problems"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
