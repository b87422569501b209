"""The precision of the training step (``optim.precision``), chosen by measurement on the CPU.

``fp32`` trains in float32; ``bf16`` / ``fp16`` run the forward pass under ``torch.autocast`` (fp16 only on CUDA,
with a gradient scaler); ``auto`` is the GPU's autocast on CUDA, and on a CPU: bf16 when the CPU has native
bfloat16 (:func:`dance_analysis.encode.bf16_hardware`) and a timing of the run's first micro-batch, forward and
backward in both precisions in paired rounds (order alternating, median of the per-round ratios), shows a gain of at
least :data:`MIN_SPEEDUP`; float32 otherwise, or when the bf16 loss of that batch is not finite. The decision
(:class:`~dance_analysis.encode.PrecisionDecision`, scope ``training``) is logged, written into every checkpoint's
``trainer_state.json`` and kept on resume. The torch generator is restored after the timing, so the run's dropout
draws do not depend on it.

Whether bf16 steps train as well as fp32 ones is not measured at run time: ``bench/train_step.py --precisions fp32
bf16`` compares the loss trajectories over 50 steps with the spread of two fp32 runs (see BENCHMARKS.md).

On CUDA, ``auto`` is bf16 autocast on GPUs that support bfloat16 (Ampere and newer: A100, H100, RTX 30xx and later)
and fp16 autocast with a gradient scaler on older ones (V100, T4); the paper trained in fp16.

``optim.precision: fp32`` is honoured by the refreshes as well: a recipe that trains in fp32 and does not set
``mining.encode_precision`` encodes its refreshes in fp32 too, on the CPU and on CUDA (where ``auto`` would be the
GPU's autocast); the value is set when the recipe is read
(:func:`dance_analysis.training.config.recipe_from_dict`), so the run's ``config.yaml`` and the async miner hold
it. A value the recipe gives, ``auto`` included, is taken as given. :func:`resolved_precisions` says what both
settings resolve to on this machine (``dance-train --print-config``, ``dance-doctor``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from ..device import amp_dtype
from ..encode import PrecisionDecision, bf16_hardware
from ..errors import DanceError
from .optim import autocast_dtype

logger = logging.getLogger(__name__)

#: Paired timed rounds (after one warm-up of each precision).
ROUNDS = 3
#: Least median speed-up (float32 / bf16 time of the same step) at which ``auto`` trains in bf16 on the CPU.
MIN_SPEEDUP = 1.05

_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(decision: PrecisionDecision) -> torch.dtype | None:
    """The autocast dtype of a decision (``None``: float32)."""
    return _DTYPES[decision.precision]


def needs_measurement(requested: str, device: torch.device) -> bool:
    """True when ``optim.precision`` ``requested`` on ``device`` is decided by timing the first step."""
    return requested == "auto" and torch.device(device).type == "cpu" and bf16_hardware(device)[0]


def fixed_precision(requested: str, device: torch.device, reason: str = "requested") -> PrecisionDecision:
    """The decision of a precision that needs no measurement (``fp32``, ``bf16``, ``fp16``; ``auto`` on CUDA or
    on a CPU without native bf16)."""
    device = torch.device(device)
    hardware = bf16_hardware(device)[1] if device.type in ("cpu", "cuda") else ""
    dtype = autocast_dtype(requested, device)
    if requested == "auto":
        reason = "CUDA autocast" if device.type == "cuda" else "no native bf16"
    return PrecisionDecision(_NAMES[dtype], requested, reason, device.type, hardware, scope="training")


def kept_train_precision(record: dict | None, where: str, requested: str, device) -> PrecisionDecision:
    """The training precision a resumed run keeps: ``record`` (what checkpoint ``where`` wrote); without one (a
    run from before the measurement) what ``requested`` meant then: ``auto`` was float32 on the CPU."""
    if record:
        return PrecisionDecision.from_dict(record, reason=f"kept from {where}")
    device = torch.device(device)
    if requested == "auto" and device.type == "cpu":
        return PrecisionDecision("fp32", "auto", f"kept from {where} (recorded before the measurement)", "cpu",
                                 bf16_hardware(device)[1], scope="training")
    return fixed_precision(requested, device)


def paired_timings(run: Callable[[torch.dtype | None], float], rounds: int = ROUNDS
                   ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Time ``run(dtype)`` (one forward and backward; returns its loss) for float32 and bfloat16 in ``rounds``
    paired rounds, after one warm-up each, the order alternating. Returns the seconds per precision and the
    loss of each precision's last call."""
    losses: dict[str, float] = {}
    for dtype in (None, torch.bfloat16):
        run(dtype)
    timings: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(max(1, int(rounds))):
        for dtype in ((None, torch.bfloat16) if r % 2 == 0 else (torch.bfloat16, None)):
            started = time.perf_counter()
            losses[_NAMES[dtype]] = float(run(dtype))
            timings[_NAMES[dtype]].append(time.perf_counter() - started)
    return timings, losses


def measure_train_precision(run: Callable[[torch.dtype | None], float], device,
                            rounds: int = ROUNDS) -> PrecisionDecision:
    """``auto`` on a CPU with native bf16: time ``run`` (see :func:`paired_timings`) and pick bf16 when its median
    speed-up is at least :data:`MIN_SPEEDUP` and its loss is finite. The torch generator state is restored."""
    device = torch.device(device)
    if device.type != "cpu":
        raise DanceError(f"the training precision is measured on the CPU only, not on {device}")
    hardware = bf16_hardware(device)[1]
    state = torch.random.get_rng_state()
    try:
        timings, losses = paired_timings(run, rounds)
    finally:
        torch.random.set_rng_state(state)
    measured = PrecisionDecision("fp32", "auto", "", "cpu", hardware,
                                 {name: tuple(values) for name, values in timings.items()},
                                 {"bf16": {f"loss_{name}": round(value, 6) for name, value in losses.items()}},
                                 "training")
    speedup = measured.speedup or 0.0
    if not math.isfinite(losses.get("bf16", math.nan)):
        precision, reason = "fp32", "the bf16 loss of the timed batch is not finite"
    elif speedup < MIN_SPEEDUP:
        precision, reason = "fp32", f"bf16 not faster (x{speedup:.2f} < x{MIN_SPEEDUP:.2f})"
    else:
        precision, reason = "bf16", "measured: faster"
    decision = PrecisionDecision(precision, "auto", reason, "cpu", hardware, measured.timings, measured.agreement,
                                 "training")
    logger.info("%s", decision.describe())
    return decision


def _recipe_device(recipe) -> torch.device:
    """The device ``optim.device`` resolves to here (CUDA only when torch sees a GPU)."""
    wanted = str(recipe.optim.device).strip().lower()
    if wanted != "cpu" and torch.cuda.is_available():
        return torch.device(wanted if wanted.startswith("cuda") else "cuda")
    return torch.device("cpu")


def _cuda_autocast(device: torch.device) -> str:
    if amp_dtype(device) == torch.bfloat16:
        return "bf16 autocast (the GPU supports bf16)"
    return "fp16 autocast (the GPU has no bf16)"


def resolved_precisions(recipe, device=None) -> dict[str, str]:
    """What ``optim.precision`` and ``mining.encode_precision`` of ``recipe`` resolve to on ``device`` (default:
    the device the recipe trains on here), as text: ``{"optim.precision": ..., "mining.encode_precision": ...}``.
    A value that needs a timing says what the timing decides between."""
    device = torch.device(device) if device is not None else _recipe_device(recipe)
    cuda = device.type == "cuda"
    native = bf16_hardware(device)[0] if device.type in ("cpu", "cuda") else False
    train = recipe.optim.precision
    if train == "fp32":
        train_text = "fp32"
    elif train == "fp16":
        train_text = ("fp16 autocast with a gradient scaler" if cuda
                      else "not possible here: fp16 needs a CUDA device (use fp32 or bf16)")
    elif train == "bf16":
        train_text = "bf16 autocast" if native or not cuda else "not possible here: the GPU has no bf16"
    elif cuda:
        train_text = _cuda_autocast(device) + (", with a gradient scaler" if amp_dtype(device) == torch.float16
                                               else "")
    else:
        train_text = "bf16 if the first step times it faster, else fp32" if native else "fp32 (no native bf16)"
    encode = recipe.mining.encode_precision
    if encode == "fp32":
        encode_text = "fp32"
    elif encode in ("bf16", "bf16-weights"):
        encode_text = encode if native or not cuda else "not possible here: the GPU has no bf16"
    elif cuda:
        encode_text = _cuda_autocast(device)
    else:
        encode_text = ("bf16 or bf16-weights if the first refresh times it faster and its top-20 neighbours agree "
                       "with fp32 (>= 0.99), else fp32" if native else "fp32 (no native bf16)")
    return {"optim.precision": train_text, "mining.encode_precision": encode_text}


def machine_note(recipe) -> str:
    """YAML comment lines for ``--print-config``: the machine, and what the recipe's precisions resolve to here."""
    device = _recipe_device(recipe)
    native, hardware = bf16_hardware(device)
    resolved = resolved_precisions(recipe, device)
    lines = [f"# this machine: {hardware} (native bf16: {'yes' if native else 'no'}); training on {device}",
             f"# mining.encode_precision {recipe.mining.encode_precision}: {resolved['mining.encode_precision']}",
             f"# optim.precision {recipe.optim.precision}: {resolved['optim.precision']}",
             "# (decisions and their timings are logged and recorded in the run's checkpoints)"]
    return "\n".join(lines) + "\n"
