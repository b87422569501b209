"""Batched encoding of token caches and texts into :class:`~dance_analysis.embeddings.Embeddings`.

Texts are encoded longest first, in batches padded only to the longest text of the batch (the lengths are
known from the token cache, so neighbours in the sorted order have nearly equal lengths and almost no padding
is computed). The forward pass runs under ``torch.inference_mode``; on CUDA under autocast (bfloat16 where
the GPU supports it, else float16), on CPU in float32. Vectors come back in the caller's order, as float32 or
float16, in memory or written straight into a memory-mapped ``.npy`` file (atomically, with its id file).

On CPU, the linear layers (about three quarters of the work) can run through oneDNN instead of the default BLAS
(on some processors, AMD ones in particular, oneDNN's float32 matrix products are much faster). Before encoding,
:func:`cpu_linear_decision` checks that oneDNN gives the same results (within float32 rounding) on the model's
own linear layers at the workload's batch size, and times both kernels in interleaved rounds (medians, so that
another job on the machine does not tip the choice); oneDNN is used only when it is faster. The decision and its
timings are logged at INFO and made once per process, thread count and shape. ``DANCE_CPU_LINEAR=default``
turns this off, ``DANCE_CPU_LINEAR=onednn`` forces it (when it works).

Reduced precision (``precision`` of :func:`encode_tokens`, ``mining.encode_precision``, ``--precision``):
``fp32`` computes in float32 (on the CPU bit for bit as without the option); ``bf16`` runs the forward pass under
``torch.autocast`` with bfloat16 (weights stay float32: the matrix products run in bf16, the residual stream and
the normalisations in float32); ``bf16-weights`` encodes with a bfloat16 copy of the model (no casts at run time,
everything in bf16: faster, a little less exact). The output vectors are float32 (or the ``dtype`` asked) in every
case. ``auto`` picks a reduced precision only where it is safe and pays, decided by :func:`choose_precision`: the
hardware must have native bfloat16 (:func:`bf16_hardware`: the CPU flags ``avx512_bf16`` / ``amx_bf16``, or a
CUDA GPU that supports it); a short timing on the workload's own batches must show a gain (paired rounds: every
probe batch is encoded in fp32, bf16 and bf16-weights back to back, the order alternating; a candidate gains when
the median of its per-batch ratios to fp32 is at least :data:`MIN_SPEEDUP`); and the agreement guard must pass: on
a probe of the texts (:data:`PROBE_SIZE`), the top-k neighbours of every probe query among the probe documents
computed from the candidate's vectors must overlap those from float32 vectors by at least
:data:`AGREEMENT_THRESHOLD` (k: the depth mining uses, at most 20). The fastest candidate that passes runs;
otherwise float32 (with a warning when a faster one failed the guard). The decision (:class:`PrecisionDecision`:
precision, reason, CPU flags, timings, agreement) is logged at INFO and, for a call without an explicit decision,
made once per process and model. On CUDA, ``auto`` is the GPU's autocast (bfloat16 where supported, else
float16) as before the option. ``precision=None`` takes the value of the enclosing :func:`encoding_precision`
block (the command-line tools set it from ``--precision``); outside any block the CPU computes in float32 and
CUDA in its autocast precision, as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from .device import amp_dtype, autocast, pick_device
from .embeddings import Embeddings, as_id_array, ids_path, new_npy_memmap, vectors_path, write_npy_atomic
from .errors import DanceError
from .model import DualEncoder, _check_side

logger = logging.getLogger(__name__)

OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
#: A MiniLM layer at a typical batch, timed when the caller names no shapes: (rows, in, out) of each linear layer.
DEFAULT_LINEAR_SHAPES = ((512, 384, 384), (512, 384, 1536), (512, 1536, 384))
#: Alternating timed rounds of both kernels per decision (the median of each decides).
LINEAR_ROUNDS = 7
_MAX_ROWS = 1024  # rows of the timed products are capped (and bucketed to powers of two) to bound the check
_CPU_LINEAR: dict[tuple, LinearDecision] = {}  # (threads, choice, shapes) -> decision, once per process

#: Encode precisions a caller can ask for.
PRECISIONS = ("fp32", "bf16", "bf16-weights", "auto")
#: What a computation can run in (``fp16``: CUDA autocast on GPUs without bf16).
COMPUTE_PRECISIONS = ("fp32", "bf16", "bf16-weights", "fp16")
#: The reduced precisions ``auto`` measures on a CPU with native bf16, in order of preference at equal speed.
CANDIDATES = ("bf16", "bf16-weights")
#: CPU flags that mean native bfloat16 arithmetic (x86: AVX512-BF16, AMX-BF16; Arm: the BF16 extension).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: CPU flags shown beside a decision (what the answer depends on).
REPORTED_CPU_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "bf16")
#: Texts of each side encoded in both precisions by the agreement guard and the timing.
PROBE_SIZE = 256
#: Neighbours compared by the agreement guard (at most; the depth mining uses when it is smaller).
AGREEMENT_K = 20
#: Least top-k neighbour overlap (bf16 against float32) at which ``auto`` keeps bf16.
AGREEMENT_THRESHOLD = 0.99
#: Least median speed-up (float32 time / bf16 time of the same batch) at which ``auto`` picks bf16.
MIN_SPEEDUP = 1.05
_PRECISION: dict[tuple, PrecisionDecision] = {}  # workload key -> decision of encode_tokens(precision="auto")
_SCOPE: contextvars.ContextVar[PrecisionScope | None] = contextvars.ContextVar("dance_encode_precision",
                                                                               default=None)


@dataclass(frozen=True)
class LinearDecision:
    """Which kernel runs float32 CPU linear layers at inference, and the measurement behind the choice.

    ``backend`` is ``"onednn"`` or ``"default"``; ``reason`` says why (``measured``, ``DANCE_CPU_LINEAR=...``,
    ``oneDNN unavailable``, ``oneDNN results differ``); ``shapes`` are the ``(rows, in, out)`` products timed;
    ``timings`` holds, per kernel, the seconds of each round (one product of every shape), the rounds of the two
    kernels interleaved and their order alternating; ``medians`` are the medians of those rounds.
    """

    backend: str
    reason: str
    shapes: tuple[tuple[int, int, int], ...] = ()
    timings: dict[str, tuple[float, ...]] = field(default_factory=dict)
    threads: int = 1

    @property
    def medians(self) -> dict[str, float]:
        return {name: float(statistics.median(values)) for name, values in self.timings.items() if values}

    def describe(self) -> str:
        """One line: the choice, why, and the median times (e.g. for a log or a benchmark)."""
        text = f"CPU linear layers: {self.backend} ({self.reason}"
        medians = self.medians
        if len(medians) == 2:
            rounds = len(self.timings["default"])
            text += (f"; median of {rounds} alternating rounds on {len(self.shapes)} shape(s) "
                     f"{', '.join('x'.join(map(str, s)) for s in self.shapes)} with {self.threads} thread(s): "
                     f"default {medians['default'] * 1e3:.1f} ms, onednn {medians['onednn'] * 1e3:.1f} ms, "
                     f"ratio {medians['default'] / max(medians['onednn'], 1e-12):.2f}")
        return text + ")"


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear_shapes(model: torch.nn.Module, rows: int) -> tuple[tuple[int, int, int], ...]:
    """The distinct ``(rows, in, out)`` products of ``model``'s float32 linear layers for a batch of ``rows``
    token vectors (rows bucketed to a power of two, at most 1,024, so that similar batches share a decision and
    the check stays short)."""
    bucket = int(2 ** round(math.log2(max(1, min(int(rows), _MAX_ROWS)))))
    dims = sorted({(m.in_features, m.out_features) for m in model.modules()
                   if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32})
    return tuple((bucket, i, o) for i, o in dims)


def workload_linear_shapes(model: torch.nn.Module, batch_size: int,
                           lengths: Sequence[int] | np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """:func:`linear_shapes` at a typical batch of a workload: ``batch_size`` texts of the median length."""
    lengths = np.asarray(lengths)
    typical_rows = min(int(batch_size), max(1, len(lengths))) * (int(np.median(lengths)) if len(lengths) else 1)
    return linear_shapes(model, typical_rows)


def _time_round(fn, inputs) -> float:
    started = time.perf_counter()
    for x, weight, bias in inputs:
        fn(x, weight, bias)
    return time.perf_counter() - started


def cpu_linear_decision(shapes: Sequence[tuple[int, int, int]] | None = None, *,
                        rounds: int = LINEAR_ROUNDS) -> LinearDecision:
    """Decide whether float32 linear layers on the CPU run through oneDNN or the default BLAS, for products of
    ``shapes`` (``(rows, in, out)``; default :data:`DEFAULT_LINEAR_SHAPES`, a MiniLM layer).

    oneDNN must give the same results (within 1e-5 relative) on every shape. Then both kernels are timed in
    ``rounds`` interleaved rounds (one product of every shape per round, the order of the two kernels alternating
    from round to round, after one warm-up each), so that a change in the machine's load hits both alike; oneDNN
    is chosen when its median round is at least 5 % faster. Decided once per process, thread count and shapes;
    the decision and its timings are logged (INFO). ``DANCE_CPU_LINEAR=default|onednn`` overrides the choice.
    """
    choice = os.environ.get("DANCE_CPU_LINEAR", "auto").strip().lower()
    threads = torch.get_num_threads()
    if choice in ("default", "off", "blas", "mkl"):
        return LinearDecision("default", f"DANCE_CPU_LINEAR={choice}", threads=threads)
    shapes = tuple(tuple(int(v) for v in s) for s in (shapes or DEFAULT_LINEAR_SHAPES))
    key = (threads, choice, shapes)
    if key in _CPU_LINEAR:
        return _CPU_LINEAR[key]
    decision = LinearDecision("default", "oneDNN unavailable", shapes, threads=threads)
    try:
        generator = torch.Generator().manual_seed(0)
        inputs = [(torch.randn(rows, d_in, generator=generator), torch.randn(d_out, d_in, generator=generator) / 20,
                   torch.randn(d_out, generator=generator)) for rows, d_in, d_out in shapes]
        with torch.inference_mode():
            same = True
            for x, weight, bias in inputs:
                reference = F.linear(x, weight, bias)
                same = same and torch.allclose(_onednn_linear(x, weight, bias), reference, rtol=1e-5,
                                               atol=1e-5 * float(reference.abs().max()))
            if not same:
                decision = LinearDecision("default", "oneDNN results differ", shapes, threads=threads)
            elif choice == "onednn":
                decision = LinearDecision("onednn", "DANCE_CPU_LINEAR=onednn", shapes, threads=threads)
            else:
                kernels = {"default": F.linear, "onednn": _onednn_linear}
                for fn in kernels.values():
                    _time_round(fn, inputs)
                timings: dict[str, list[float]] = {name: [] for name in kernels}
                for r in range(max(1, int(rounds))):
                    for name in (("default", "onednn") if r % 2 == 0 else ("onednn", "default")):
                        timings[name].append(_time_round(kernels[name], inputs))
                medians = {name: statistics.median(values) for name, values in timings.items()}
                backend = "onednn" if medians["onednn"] < 0.95 * medians["default"] else "default"
                decision = LinearDecision(backend, "measured", shapes,
                                          {name: tuple(values) for name, values in timings.items()}, threads)
    except Exception as exc:  # the private oneDNN op is missing or refuses: keep the default
        logger.debug("oneDNN linear unavailable: %s", exc)
    logger.info("%s", decision.describe())
    _CPU_LINEAR[key] = decision
    return decision


def cpu_linear_backend(shapes: Sequence[tuple[int, int, int]] | None = None) -> str:
    """``"onednn"`` or ``"default"``: the backend :func:`cpu_linear_decision` chose for ``shapes``."""
    return cpu_linear_decision(shapes).backend


class _OneDNNLinearMode(TorchFunctionMode):
    """Routes float32 CPU ``F.linear`` calls (inference only) to oneDNN's fused matmul + bias."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0]
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2
                    and weight.dtype == torch.float32 and weight.dim() == 2
                    and (bias is None or bias.dtype == torch.float32) and not torch.is_grad_enabled()):
                return _onednn_linear(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_cpu_kernels(device: torch.device,
                     shapes: Sequence[tuple[int, int, int]] | None = None) -> Iterator[None]:
    """Inside ``torch.inference_mode``: run CPU float32 linear layers through oneDNN when
    :func:`cpu_linear_decision` chose it for ``shapes`` (the workload's products, see :func:`linear_shapes`);
    a no-op on other devices."""
    if torch.device(device).type != "cpu" or cpu_linear_backend(shapes) != "onednn":
        yield
        return
    with _OneDNNLinearMode():
        yield


# ------------------------------------------------------------------------------------------ reduced precision

def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on Arm); empty when the file
    cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def bf16_hardware(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """``(native, description)``: whether ``device`` computes bfloat16 natively, and what that answer rests on.

    CPU: one of :data:`NATIVE_BF16_FLAGS` among the flags of ``/proc/cpuinfo`` (without the file, torch's own
    oneDNN check, which also accepts an emulation on AVX-512, is reported but not trusted); CUDA: the GPU
    supports bfloat16 (compute capability 8.0 or newer); other devices: no.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        native = bool(torch.cuda.is_bf16_supported())
        return native, f"CUDA capability {major}.{minor}" + ("" if native else " (no bf16)")
    if device.type != "cpu":
        return False, f"{device.type}: not checked"
    flags = cpu_flags()
    if not flags:
        try:
            emulated = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            emulated = False
        return False, f"CPU flags unreadable; oneDNN bf16 {'available' if emulated else 'unavailable'}"
    shown = [flag for flag in REPORTED_CPU_FLAGS if flag in flags]
    native = any(flag in flags for flag in NATIVE_BF16_FLAGS)
    return native, "CPU flags: " + (" ".join(shown) if shown else "no avx512 / amx / bf16")


@dataclass(frozen=True)
class PrecisionDecision:
    """The precision an encoding (or a training step) runs in, and the evidence behind the choice.

    ``precision`` is what runs (:data:`COMPUTE_PRECISIONS`: ``fp32``; ``bf16``: autocast; ``bf16-weights``: a
    bfloat16 copy of the model; ``fp16``: CUDA autocast without bf16); ``requested`` what was asked; ``reason``
    why; ``device`` the device type; ``hardware`` what :func:`bf16_hardware` found; ``timings`` the seconds of each
    probe batch per precision (paired: batch ``i`` of every list encoded the same texts back to back);
    ``agreement`` per reduced precision the guard's numbers (``mean_cosine`` of the probe vectors, ``overlap`` of
    the top-``k`` neighbours, ``k``, ``queries``, ``docs``; a training step: the loss of the timed batch in each
    precision). ``scope`` says what runs in it: ``encode`` or ``training``.
    """

    precision: str
    requested: str
    reason: str
    device: str = "cpu"
    hardware: str = ""
    timings: dict[str, tuple[float, ...]] = field(default_factory=dict)
    agreement: dict[str, dict[str, float]] | None = None
    scope: str = "encode"

    @property
    def speedups(self) -> dict[str, float]:
        """Per reduced precision, the median over the probe batches of float32 time / its time."""
        fp32 = self.timings.get("fp32", ())
        return {name: float(statistics.median(a / max(b, 1e-12) for a, b in zip(fp32, values)))
                for name, values in self.timings.items()
                if name != "fp32" and fp32 and len(values) == len(fp32)}

    @property
    def speedup(self) -> float | None:
        """The speed-up of the precision chosen, or (float32 chosen) of the fastest one measured; ``None`` when
        nothing was measured."""
        speedups = self.speedups
        if not speedups:
            return None
        return speedups.get(self.precision, max(speedups.values()))

    def to_dict(self) -> dict:
        """A JSON-able record (for ``refresh.json``, the trainer state and the metrics log)."""
        record = {"precision": self.precision, "requested": self.requested, "reason": self.reason,
                  "device": self.device, "hardware": self.hardware, "scope": self.scope}
        if self.timings:
            record["timings"] = {name: [round(v, 5) for v in values] for name, values in self.timings.items()}
            record["speedups"] = {name: round(v, 4) for name, v in self.speedups.items()}
            record["speedup"] = round(self.speedup, 4) if self.speedup is not None else None
        if self.agreement is not None:
            record["agreement"] = {name: dict(values) for name, values in self.agreement.items()}
        return record

    @classmethod
    def from_dict(cls, record: dict, reason: str | None = None) -> PrecisionDecision:
        """The decision of a :meth:`to_dict` record (``reason`` replaces the recorded one when given). A record
        with one flat agreement (written before bf16 weights were measured) is read as that of bf16."""
        if not isinstance(record, dict) or record.get("precision") not in COMPUTE_PRECISIONS:
            raise DanceError(f"not a precision record: {record!r}")
        agreement = record.get("agreement") or None
        if agreement and not all(isinstance(v, dict) for v in agreement.values()):
            agreement = {"bf16": dict(agreement)}
        return cls(str(record["precision"]), str(record.get("requested", record["precision"])),
                   reason or str(record.get("reason", "")), str(record.get("device", "cpu")),
                   str(record.get("hardware", "")),
                   {k: tuple(float(x) for x in v) for k, v in (record.get("timings") or {}).items()},
                   {k: dict(v) for k, v in agreement.items()} if agreement else None,
                   str(record.get("scope", "encode")))

    def describe(self) -> str:
        """One line: the choice, why, and the numbers (for a log or a benchmark)."""
        text = f"{self.scope} precision: {self.precision} (requested {self.requested}; {self.reason}"
        if self.hardware:
            text += f"; {self.hardware}"
        speedups, agreement = self.speedups, self.agreement or {}
        if speedups:
            first = next(iter(agreement.values()), {})
            probe = (f" on {int(first['queries'])} x {int(first['docs'])} probe texts" if "queries" in first
                     else "")
            text += (f"; {len(self.timings['fp32'])} paired round(s){probe}, median fp32 "
                     f"{statistics.median(self.timings['fp32']) * 1e3:.0f} ms")
            for name, speedup in speedups.items():
                text += f"; {name} x{speedup:.2f}"
                numbers = agreement.get(name)
                if numbers and "overlap" in numbers:
                    text += (f" (mean cosine {numbers['mean_cosine']:.5f}, top-{int(numbers['k'])} overlap "
                             f"{numbers['overlap']:.4f})")
                elif numbers:
                    text += " (" + ", ".join(f"{key} {value:.4f}" for key, value in numbers.items()) + ")"
        return text + ")"


def check_precision(precision: str) -> str:
    """``precision`` lower-cased, or a :class:`DanceError` naming the valid values."""
    value = str(precision).strip().lower()
    if value not in PRECISIONS:
        raise DanceError(f"unknown encode precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return value


@dataclass
class PrecisionScope:
    """What an :func:`encoding_precision` block asked for and what its encodings ran in: ``used`` maps each side
    to the precisions it was encoded in, ``decisions`` are the ``auto`` decisions made inside the block."""

    requested: str
    used: dict[str, list[str]] = field(default_factory=dict)
    decisions: list[PrecisionDecision] = field(default_factory=list)

    def note(self, side: str, precision: str, decision: PrecisionDecision | None = None) -> None:
        """Record that ``side`` was encoded in ``precision`` (and the decision behind it)."""
        if precision not in self.used.setdefault(side, []):
            self.used[side].append(precision)
        if decision is not None and decision not in self.decisions:
            self.decisions.append(decision)

    def describe(self) -> str:
        """``encoded in doc bf16, query bf16`` (or ``nothing encoded``)."""
        if not self.used:
            return "nothing encoded"
        return "encoded in " + ", ".join(f"{side} {'/'.join(p)}" for side, p in self.used.items())

    def to_dict(self) -> dict:
        """A JSON-able record (e.g. for a command's ``metrics.json``)."""
        record: dict = {"requested": self.requested, "used": {k: list(v) for k, v in self.used.items()}}
        if self.decisions:
            record["decisions"] = [d.to_dict() for d in self.decisions]
        return record


@contextlib.contextmanager
def encoding_precision(precision: str) -> Iterator[PrecisionScope]:
    """Inside the block, encodings that name no precision (``precision=None``) use ``precision`` (``fp32``,
    ``bf16`` or ``auto``); yields the :class:`PrecisionScope` that records what they ran in. The command-line
    tools wrap their work in it."""
    scope = PrecisionScope(check_precision(precision))
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def precision_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision on ``device``: nothing for ``fp32``; bfloat16 autocast for
    ``bf16`` and ``bf16-weights`` (whose weights are bfloat16 already: autocast then only matters where a float32
    tensor meets them, e.g. a head after mean pooling); float16 autocast for ``fp16``."""
    device = torch.device(device)
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def bf16_copy(model: DualEncoder) -> DualEncoder:
    """A copy of ``model`` with bfloat16 weights (``bf16-weights``: no casts at run time, the residual stream
    in bfloat16 too), in eval mode; the model itself is left as it is."""
    import copy

    clone = copy.deepcopy(model)
    clone.to(torch.bfloat16)
    return clone.eval()


def _forward(model: DualEncoder, cache: TokenSource, rows: np.ndarray, side: str, device: torch.device,
             precision: str, shapes) -> np.ndarray:
    """float32 vectors of ``rows`` (one batch) in ``precision``, as :func:`encode_tokens` computes them
    (``bf16-weights``: ``model`` is the :func:`bf16_copy`)."""
    input_ids, attention_mask = cache.batch(rows)
    if device.type != "cpu":
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    kernels = (fast_cpu_kernels(device, shapes) if precision == "fp32" and device.type == "cpu"
               else contextlib.nullcontext())
    with torch.inference_mode(), precision_context(precision, device), kernels:
        vectors = model.encode(input_ids, attention_mask, side)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return vectors.float().cpu().numpy()


def _probe_rows(total: int, size: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Up to ``size`` rows spread evenly over ``rows`` (default ``0 .. total - 1``)."""
    pool = np.arange(total, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(pool) <= size:
        return pool
    return pool[np.unique(np.linspace(0, len(pool) - 1, size).round().astype(np.int64))]


def _paired_encode(models: dict[str, DualEncoder], cache: TokenSource, rows: np.ndarray, side: str,
                   device: torch.device, batch_size: int, timed: bool = True):
    """Encode ``rows`` in each precision of ``models`` (precision -> the model that runs it), batch by batch
    (longest first, as :func:`encode_tokens`), the precisions of one batch back to back, their order reversed
    from batch to batch. Returns ``(vectors per precision, seconds of each batch per precision)``; a few rows of
    the first batch warm every precision up untimed."""
    precisions = tuple(models)
    reference = models[precisions[0]]
    lengths = np.asarray(cache.lengths)[rows].astype(np.int64)
    order = np.argsort(-lengths, kind="stable")
    shapes = workload_linear_shapes(reference, batch_size, lengths) if device.type == "cpu" else None
    out = {p: np.empty((len(rows), reference.dim), dtype=np.float32) for p in precisions}
    timings: dict[str, list[float]] = {p: [] for p in precisions}
    if timed and len(rows):
        for precision, model in models.items():
            _forward(model, cache, rows[order[:min(8, batch_size)]], side, device, precision, shapes)
    for number, start in enumerate(range(0, len(rows), batch_size)):
        positions = order[start:start + batch_size]
        for precision in (precisions if number % 2 == 0 else tuple(reversed(precisions))):
            began = time.perf_counter()
            out[precision][positions] = _forward(models[precision], cache, rows[positions], side, device,
                                                 precision, shapes)
            if timed:
                timings[precision].append(time.perf_counter() - began)
    return out, timings


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def agreement(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], k: int, *,
              same_side: bool = False) -> dict[str, float]:
    """How well ``candidate`` vectors (queries, docs) reproduce the ``reference`` ones (typically bf16 against
    float32 encodings of the same texts).

    ``mean_cosine``: the mean cosine between each candidate vector and its reference (queries and documents);
    ``overlap``: the mean over queries of |top-k(candidate) ∩ top-k(reference)| / k, where top-k are the indices
    of the k highest inner products of a query with the documents (``same_side``: the queries are the documents
    themselves and a text is not its own neighbour); ``k`` is cut to the documents available.
    """
    (ref_q, ref_d), (cand_q, cand_d) = reference, candidate
    cosines = np.concatenate([np.sum(_unit(ref_q) * _unit(cand_q), axis=1),
                              np.sum(_unit(ref_d) * _unit(cand_d), axis=1)])
    docs = len(ref_d) - (1 if same_side else 0)
    k = max(1, min(int(k), docs)) if docs > 0 else 0
    overlap = 1.0
    if k and len(ref_q):
        def top(q: np.ndarray, d: np.ndarray) -> np.ndarray:
            scores = q.astype(np.float64) @ d.astype(np.float64).T
            if same_side:
                np.fill_diagonal(scores, -np.inf)
            return np.argsort(-scores, axis=1, kind="stable")[:, :k]

        ref_top, cand_top = top(ref_q, ref_d), top(cand_q, cand_d)
        overlap = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ref_top, cand_top)]))
    return {"mean_cosine": float(np.mean(cosines)) if len(cosines) else 1.0, "overlap": overlap, "k": int(k),
            "queries": int(len(ref_q)), "docs": int(len(ref_d))}


def choose_precision(model, docs: TokenSource, requested: str = "auto", *, device=None,
                     queries: TokenSource | None = None, doc_rows=None, query_rows=None, batch_size: int = 64,
                     k: int = AGREEMENT_K, probe: int = PROBE_SIZE) -> PrecisionDecision:
    """Decide the precision of encoding ``docs`` (and ``queries``) with ``model`` on ``device`` (see the module
    docstring); logs the decision at INFO.

    ``fp32`` / ``bf16`` / ``bf16-weights`` are taken as asked (bf16 on a CUDA GPU without it is a
    :class:`DanceError`). ``auto``: CUDA uses its autocast precision; elsewhere bf16 needs :func:`bf16_hardware`,
    then up to ``probe`` rows of ``docs`` (of ``doc_rows``) and of ``queries`` (of ``query_rows``) are encoded in
    float32 and in each of :data:`CANDIDATES` in batches of ``batch_size`` (the timing: paired rounds; the guard:
    :func:`agreement` at ``k`` = min(``k``, :data:`AGREEMENT_K`)); the fastest candidate whose median speed-up is at
    least :data:`MIN_SPEEDUP` and whose overlap is at least :data:`AGREEMENT_THRESHOLD` is chosen, else float32.
    Without ``queries`` the probe documents are their own queries.
    """
    model = _unwrap(model)
    requested = check_precision(requested)
    target = torch.device(device) if device is not None else model.device
    native, hardware = bf16_hardware(target) if target.type in ("cpu", "cuda") else (False, "")
    if requested == "fp32":
        return PrecisionDecision("fp32", "fp32", "requested", target.type, hardware)
    if requested in CANDIDATES:
        if target.type == "cuda" and not native:
            raise DanceError(f"{requested} was requested but the GPU does not support bf16 ({hardware}); use fp32 "
                             f"or auto")
        if target.type not in ("cpu", "cuda"):
            raise DanceError(f"{requested} encoding runs on the CPU or a CUDA GPU, not on {target.type}")
        decision = PrecisionDecision(requested, requested, "requested" if native or target.type != "cpu" else
                                     "requested (no native bf16: emulated, likely slower)", target.type, hardware)
        logger.info("%s", decision.describe())
        return decision
    if target.type == "cuda":
        dtype = amp_dtype(target)
        decision = PrecisionDecision("bf16" if dtype == torch.bfloat16 else "fp16", "auto", "CUDA autocast",
                                     target.type, hardware)
    elif not native:
        decision = PrecisionDecision("fp32", "auto", "no native bf16", target.type, hardware)
    else:
        decision = _measure(model, docs, queries, doc_rows, query_rows, target, batch_size, k, probe, hardware)
    logger.info("%s", decision.describe())
    return decision


def _measure(model, docs, queries, doc_rows, query_rows, target, batch_size, k, probe, hardware):
    was_training = model.training
    model.eval()
    if model.device != target:
        model.to(target)
    try:
        d_rows = _probe_rows(len(docs), probe, doc_rows)
        if len(d_rows) == 0:
            return PrecisionDecision("fp32", "auto", "nothing to measure", target.type, hardware)
        models = {"fp32": model, "bf16": model, "bf16-weights": bf16_copy(model)}
        models = {name: models[name] for name in ("fp32", *CANDIDATES)}
        d_vectors, timings = _paired_encode(models, docs, d_rows, "doc", target, batch_size)
        if queries is not None:
            q_rows = _probe_rows(len(queries), probe, query_rows)
            q_vectors, _ = _paired_encode(models, queries, q_rows, "query", target, batch_size, timed=False)
        else:
            q_vectors = d_vectors
        numbers = {name: agreement((q_vectors["fp32"], d_vectors["fp32"]), (q_vectors[name], d_vectors[name]),
                                   min(int(k), AGREEMENT_K), same_side=queries is None) for name in CANDIDATES}
    finally:
        model.train(was_training)
    numbers = {name: {key: (round(v, 6) if isinstance(v, float) else v) for key, v in values.items()}
               for name, values in numbers.items()}
    measured = PrecisionDecision("fp32", "auto", "", target.type, hardware,
                                 {name: tuple(values) for name, values in timings.items()}, numbers)
    speedups = measured.speedups
    faster = [name for name in CANDIDATES if speedups[name] >= MIN_SPEEDUP]
    agreeing = [name for name in faster if numbers[name]["overlap"] >= AGREEMENT_THRESHOLD]
    if agreeing:
        precision = max(agreeing, key=lambda name: speedups[name])
        reason = "measured: the fastest in agreement"
    elif faster:
        precision = "fp32"
        reason = ("reduced precision disagrees with fp32: " + ", ".join(
            f"{name} top-{numbers[name]['k']} overlap {numbers[name]['overlap']:.4f}" for name in faster)
            + f" < {AGREEMENT_THRESHOLD}; falling back to fp32")
        logger.warning("encode precision: %s", reason)
    else:
        precision = "fp32"
        reason = "bf16 not faster (" + ", ".join(f"{name} x{speedups[name]:.2f}" for name in CANDIDATES) + \
            f" < x{MIN_SPEEDUP:.2f})"
    return PrecisionDecision(precision, "auto", reason, target.type, hardware, measured.timings, numbers)


def _workload_decision(model: DualEncoder, cache: TokenSource, rows: np.ndarray, side: str,
                       target: torch.device, batch_size: int) -> PrecisionDecision:
    """:func:`choose_precision` ``auto`` for an encoding that names no decision, made once per process, device,
    thread count, batch size and model (its options and shape), by the first workload of at least two probes of
    texts (the probe texts are their own queries); a smaller one takes that decision, or float32 when none was
    made (measuring would cost more than it saves)."""
    key = (str(target), torch.get_num_threads(), int(batch_size), model.dim,
           json.dumps(model.config.to_dict(), sort_keys=True, default=str),
           sum(int(p.numel()) for p in model.parameters()))
    if key in _PRECISION:
        return _PRECISION[key]
    if len(rows) < 2 * PROBE_SIZE:
        return PrecisionDecision("fp32", "auto", f"{len(rows)} {side} texts: too few to measure", target.type,
                                 bf16_hardware(target)[1])
    _PRECISION[key] = choose_precision(model, cache, "auto", device=target, doc_rows=rows, batch_size=batch_size)
    return _PRECISION[key]


def _resolve(precision, model, cache, rows, side, target, batch_size) -> str:
    """The precision an :func:`encode_tokens` call runs in: ``fp32``, ``bf16``, ``fp16`` or ``legacy`` (no
    option named: float32 on the CPU, the autocast of :func:`dance_analysis.device.autocast` elsewhere); noted in
    the enclosing :class:`PrecisionScope`."""
    scope = _SCOPE.get()
    if isinstance(precision, PrecisionDecision):
        mode, decision = precision.precision, precision
    elif precision is None and scope is None:
        return "legacy"
    else:
        mode, decision = _requested_mode(check_precision(precision if precision is not None else scope.requested),
                                         model, cache, rows, side, target, batch_size)
    if scope is not None:
        shown = mode if mode != "legacy" else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(target),
                                                                                              "fp32")
        scope.note(side, shown, decision)
    return mode


def _requested_mode(precision, model, cache, rows, side, target, batch_size):
    if precision == "auto":
        if target.type == "cuda":
            return "legacy", None
        if not bf16_hardware(target)[0]:
            return "fp32", None
        decision = _workload_decision(model, cache, rows, side, target, batch_size)
        return decision.precision, decision
    if precision in CANDIDATES:
        if target.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DanceError(f"{precision} was requested but the GPU does not support bf16; use fp32 or auto")
        if target.type not in ("cpu", "cuda"):
            raise DanceError(f"{precision} encoding runs on the CPU or a CUDA GPU, not on {target.type}")
    return precision, None


class TokenSource(Protocol):
    """What encoding reads from a token cache (``dance_analysis.data.tokens.TokenCache`` provides it)."""

    ids: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


class TextTokens:
    """Token ids of a list of texts held in one flat int32 array, with the reading API of a token cache.

    Built by :meth:`from_texts` (tokenised in chunks, truncated to ``max_length``), so a long list of texts
    costs 4 bytes per token rather than Python lists.
    """

    def __init__(self, ids: np.ndarray, flat: np.ndarray, offsets: np.ndarray, pad_id: int):
        self.ids = as_id_array(ids)
        self.flat = flat
        self.offsets = offsets
        self.lengths = np.diff(offsets).astype(np.int32)
        self.pad_id = int(pad_id)
        if len(self.lengths) != len(self.ids):
            raise DanceError(f"{len(self.ids)} ids but {len(self.lengths)} token sequences")

    @classmethod
    def from_texts(cls, ids: Sequence[str], texts: Sequence[str], tokenizer, max_length: int,
                   chunk: int = 4096, progress: bool = False, prompt: str = "") -> TextTokens:
        """Tokenise ``texts`` as ``tokenizer(prompt + text, truncation=True, max_length=max_length)`` does."""
        if len(ids) != len(texts):
            raise DanceError(f"{len(ids)} ids but {len(texts)} texts (expected one id per text)")
        pieces: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        bar = tqdm(total=len(texts), desc="tokenize", unit="text", disable=None if progress else True)
        for start in range(0, len(texts), chunk):
            batch = [prompt + str(t) for t in texts[start:start + chunk]]
            encoded = tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]
            lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
            total = int(lengths[-1].sum())
            pieces.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=total))
            bar.update(len(batch))
        bar.close()
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return cls(np.asarray(ids), flat, offsets, tokenizer.pad_token_id)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def get(self, i: int) -> np.ndarray:
        """Token ids of row ``i``."""
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [B, L], attention_mask [B, L])`` as int64 tensors, padded to the longest row."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        width = int(lengths.max()) if len(indices) else 0
        input_ids = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        for row, (index, length) in enumerate(zip(indices.tolist(), lengths.tolist())):
            start = self.offsets[index]
            input_ids[row, :length] = self.flat[start:start + length]
            mask[row, :length] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(mask)


def _unwrap(model) -> DualEncoder:
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    if not isinstance(inner, DualEncoder):
        raise DanceError(f"expected a DualEncoder, got {type(model).__name__}")
    return inner


def encode_tokens(model: DualEncoder, cache: TokenSource, side: str, *, batch_size: int = 64,
                  dtype=np.float32, out: str | os.PathLike | None = None, device=None, progress: bool = True,
                  indices: Sequence[int] | np.ndarray | None = None,
                  precision: str | PrecisionDecision | None = None) -> Embeddings:
    """Encode the rows of a token cache (all, or ``indices`` in that order) as ``side`` ("query" | "doc").

    Rows are processed longest first in batches of ``batch_size`` padded to their longest row, and returned in
    the original order. ``dtype``: float32 or float16 output. ``out``: a path prefix; the vectors are written
    into ``out.npy`` (a memmap, filled batch by batch) and the ids into ``out.ids.npy``, both atomically, and
    the returned Embeddings memory-map them. ``device``: "auto" / None (the model's device if it is not the
    CPU, else CUDA when available), "cpu", "cuda[:N]"; the model is moved there. The model's train/eval mode
    is restored afterwards. ``precision``: ``fp32``, ``bf16``, ``auto`` or a :class:`PrecisionDecision` (see the
    module docstring; ``None``: that of the enclosing :func:`encoding_precision` block); the vectors are float32
    (or ``dtype``) whatever the precision of the computation.
    """
    model = _unwrap(model)
    _check_side(side)
    dtype = np.dtype(dtype)
    if dtype not in OUTPUT_DTYPES:
        raise DanceError(f"output dtype must be float32 or float16, got {dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DanceError(f"batch_size must be a positive integer, got {batch_size!r}")
    total = len(cache)
    if indices is None:
        rows = np.arange(total, dtype=np.int64)
    else:
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= total):
            raise DanceError(f"indices must lie in [0, {total}), got values from {rows.min()} to {rows.max()}")
    ids = as_id_array(np.asarray(cache.ids)[rows])
    lengths = np.asarray(cache.lengths)[rows].astype(np.int64)
    limit = model.config.max_length(side)
    if lengths.size and int(lengths.max()) > limit:
        raise DanceError(f"the token cache holds {side} sequences of up to {int(lengths.max())} tokens, but the "
                         f"model's {side}_max_length is {limit}; rebuild the cache with max_length={limit}")
    if lengths.size and int(lengths.min()) < 1:
        raise DanceError(f"the token cache holds an empty {side} sequence (expected at least one token)")

    if device is None or (isinstance(device, str) and device == "auto"):
        target = model.device if model.device.type != "cpu" else pick_device("auto")
    else:
        target = pick_device(device)
    if model.device != target:
        model.to(target)

    mode = _resolve(precision, model, cache, rows, side, target, batch_size)
    n = len(rows)
    order = np.argsort(-lengths, kind="stable")
    # The vectors go into a memmap of out.npy (renamed into place once complete, after the ids) or into memory.
    target_array = (new_npy_memmap(vectors_path(out), (n, model.dim), dtype) if out is not None
                    else contextlib.nullcontext(np.empty((n, model.dim), dtype=dtype)))

    was_training = model.training
    model.eval()
    non_blocking = target.type == "cuda"
    torch_dtype = torch.float16 if dtype == np.float16 else torch.float32
    bar = tqdm(total=n, desc=f"encode {side}", unit=side, disable=None if progress else True)
    try:
        # The kernel check times this model's linear layers at a typical batch of this workload (float32 only:
        # the oneDNN route would bypass autocast).
        kernels = (fast_cpu_kernels(target, workload_linear_shapes(model, batch_size, lengths)
                                    if target.type == "cpu" else None) if mode in ("fp32", "legacy")
                   else contextlib.nullcontext())
        amp = autocast(target) if mode == "legacy" else precision_context(mode, target)
        encoder = bf16_copy(model) if mode == "bf16-weights" else model
        with target_array as result, torch.inference_mode(), amp, kernels:
            for start in range(0, n, batch_size):
                positions = order[start:start + batch_size]
                input_ids, attention_mask = cache.batch(rows[positions])
                if target.type != "cpu":
                    input_ids = input_ids.to(target, non_blocking=non_blocking)
                    attention_mask = attention_mask.to(target, non_blocking=non_blocking)
                vectors = encoder.encode(input_ids, attention_mask, side)
                result[positions] = vectors.float().to(dtype=torch_dtype).cpu().numpy()
                bar.update(len(positions))
            if out is not None:
                write_npy_atomic(ids_path(out), ids)
    finally:
        bar.close()
        model.train(was_training)
    return Embeddings(ids, result) if out is None else Embeddings.load(out, mmap=True)


def encode_texts(model: DualEncoder, ids: Sequence[str], texts: Sequence[str], side: str, *,
                 batch_size: int = 64, dtype=np.float32, out: str | os.PathLike | None = None, device=None,
                 progress: bool = True, indices: Sequence[int] | np.ndarray | None = None,
                 precision: str | PrecisionDecision | None = None) -> Embeddings:
    """Encode ``texts`` (with their ``ids``) as ``side``: each after the model's prompt for the side, tokenised
    with the model's tokenizer and the side's max length, then encoded as :func:`encode_tokens` does (same
    options, same order)."""
    model = _unwrap(model)
    tokens = TextTokens.from_texts(ids, texts, model.tokenizer, model.config.max_length(side),
                                   prompt=model.config.prompt(side))
    return encode_tokens(model, tokens, side, batch_size=batch_size, dtype=dtype, out=out, device=device,
                         progress=progress, indices=indices, precision=precision)
