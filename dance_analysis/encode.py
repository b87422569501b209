"""Batched encoding of token caches and texts into :class:`~dance_analysis.embeddings.Embeddings`.

Texts are encoded longest first, in batches padded only to the longest text of the batch (the lengths are
known from the token cache, so neighbours in the sorted order have nearly equal lengths and almost no padding
is computed). The forward pass runs under ``torch.inference_mode``; on CUDA under autocast (bfloat16 where
the GPU supports it, else float16), on CPU in float32. Vectors come back in the caller's order, as float32 or
float16, in memory or written straight into a memory-mapped ``.npy`` file (atomically, with its id file).

On CPU, the linear layers (about three quarters of the work) can run through oneDNN instead of the default BLAS
(on some processors, AMD ones in particular, oneDNN's float32 matrix products are much faster). The first
encoding call checks once per process that oneDNN gives the same results (within float32 rounding) and is
faster on a layer of typical size, and uses it only then. ``DANCE_CPU_LINEAR=default`` turns this off,
``DANCE_CPU_LINEAR=onednn`` forces it (when it works).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from typing import Iterator, Protocol, Sequence

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
_CPU_LINEAR: dict[str, str] = {}  # threads -> "onednn" | "default", decided once per process


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def cpu_linear_backend() -> str:
    """``"onednn"`` when float32 linear layers on the CPU run faster through oneDNN than through the default
    BLAS (and give the same results within 1e-5 relative), else ``"default"``. Decided once per process and
    thread count by a short check (~0.1 s); ``DANCE_CPU_LINEAR=default|onednn`` overrides it."""
    choice = os.environ.get("DANCE_CPU_LINEAR", "auto").strip().lower()
    if choice in ("default", "off", "blas", "mkl"):
        return "default"
    key = f"{torch.get_num_threads()}-{choice}"
    if key in _CPU_LINEAR:
        return _CPU_LINEAR[key]
    backend = "default"
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(512, 384, generator=generator)
        weight = torch.randn(1536, 384, generator=generator) / 20
        bias = torch.randn(1536, generator=generator)
        with torch.inference_mode():
            reference = F.linear(x, weight, bias)
            same = torch.allclose(_onednn_linear(x, weight, bias), reference, rtol=1e-5, atol=1e-5 * float(
                reference.abs().max()))
            if same and choice == "onednn":
                backend = "onednn"
            elif same:
                timings: dict[str, list[float]] = {"default": [], "onednn": []}
                for _ in range(3):
                    for name, fn in (("default", F.linear), ("onednn", _onednn_linear)):
                        started = time.perf_counter()
                        fn(x, weight, bias)
                        timings[name].append(time.perf_counter() - started)
                if min(timings["onednn"]) < 0.95 * min(timings["default"]):
                    backend = "onednn"
    except Exception as exc:  # the private oneDNN op is missing or refuses: keep the default
        logger.debug("oneDNN linear unavailable: %s", exc)
    _CPU_LINEAR[key] = backend
    return backend


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
def fast_cpu_kernels(device: torch.device) -> Iterator[None]:
    """Inside ``torch.inference_mode``: run CPU float32 linear layers through oneDNN when
    :func:`cpu_linear_backend` chose it; a no-op on other devices."""
    if torch.device(device).type != "cpu" or cpu_linear_backend() != "onednn":
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
                   chunk: int = 4096, progress: bool = False) -> "TextTokens":
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
        with target_array as result, torch.inference_mode(), autocast(target), fast_cpu_kernels(target):
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
