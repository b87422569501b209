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
"""

from __future__ import annotations

import contextlib
import itertools
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

from .device import autocast, pick_device
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
                   chunk: int = 4096, progress: bool = False) -> TextTokens:
        """Tokenise ``texts`` as ``tokenizer(text, truncation=True, max_length=max_length)`` does."""
        if len(ids) != len(texts):
            raise DanceError(f"{len(ids)} ids but {len(texts)} texts (expected one id per text)")
        pieces: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        bar = tqdm(total=len(texts), desc="tokenize", unit="text", disable=None if progress else True)
        for start in range(0, len(texts), chunk):
            batch = [str(t) for t in texts[start:start + chunk]]
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
                  indices: Sequence[int] | np.ndarray | None = None) -> Embeddings:
    """Encode the rows of a token cache (all, or ``indices`` in that order) as ``side`` ("query" | "doc").

    Rows are processed longest first in batches of ``batch_size`` padded to their longest row, and returned in
    the original order. ``dtype``: float32 or float16 output. ``out``: a path prefix; the vectors are written
    into ``out.npy`` (a memmap, filled batch by batch) and the ids into ``out.ids.npy``, both atomically, and
    the returned Embeddings memory-map them. ``device``: "auto" / None (the model's device if it is not the
    CPU, else CUDA when available), "cpu", "cuda[:N]"; the model is moved there. The model's train/eval mode
    is restored afterwards.
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
        # The kernel check times this model's linear layers at a typical batch of this workload.
        kernels = fast_cpu_kernels(target, workload_linear_shapes(model, batch_size, lengths)
                                   if target.type == "cpu" else None)
        with target_array as result, torch.inference_mode(), autocast(target), kernels:
            for start in range(0, n, batch_size):
                positions = order[start:start + batch_size]
                input_ids, attention_mask = cache.batch(rows[positions])
                if target.type != "cpu":
                    input_ids = input_ids.to(target, non_blocking=non_blocking)
                    attention_mask = attention_mask.to(target, non_blocking=non_blocking)
                vectors = model.encode(input_ids, attention_mask, side)
                result[positions] = vectors.to(dtype=torch_dtype).cpu().numpy()
                bar.update(len(positions))
            if out is not None:
                write_npy_atomic(ids_path(out), ids)
    finally:
        bar.close()
        model.train(was_training)
    return Embeddings(ids, result) if out is None else Embeddings.load(out, mmap=True)


def encode_texts(model: DualEncoder, ids: Sequence[str], texts: Sequence[str], side: str, *,
                 batch_size: int = 64, dtype=np.float32, out: str | os.PathLike | None = None, device=None,
                 progress: bool = True, indices: Sequence[int] | np.ndarray | None = None) -> Embeddings:
    """Encode ``texts`` (with their ``ids``) as ``side``: tokenised with the model's tokenizer and the side's
    max length, then encoded as :func:`encode_tokens` does (same options, same order)."""
    model = _unwrap(model)
    tokens = TextTokens.from_texts(ids, texts, model.tokenizer, model.config.max_length(side))
    return encode_tokens(model, tokens, side, batch_size=batch_size, dtype=dtype, out=out, device=device,
                         progress=progress, indices=indices)
