"""Device selection and mixed precision, shared by encoding, search and training.

``pick_device("auto")`` is CUDA when torch sees a GPU, CPU otherwise. On CUDA, :func:`autocast` runs the
forward pass in bfloat16 where the GPU supports it (Ampere and newer) and in float16 otherwise; on CPU it does
nothing, so results are computed in float32 there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import DanceError


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``requested``: ``"auto"`` / ``None`` (CUDA if available, else CPU), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Raises :class:`DanceError` when the requested device does not exist on this machine.
    """
    if requested is None or (isinstance(requested, str) and requested.strip().lower() == "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = requested if isinstance(requested, torch.device) else torch.device(str(requested).strip().lower())
    except (RuntimeError, ValueError) as exc:
        raise DanceError(f"unknown device {requested!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DanceError(f"device {requested!r} was requested but torch sees no CUDA GPU "
                             f"(use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DanceError(f"device {requested!r} was requested but only {torch.cuda.device_count()} "
                             f"CUDA GPU(s) are visible")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DanceError(f"device {requested!r} was requested but MPS is not available")
    elif device.type != "cpu":
        raise DanceError(f"unsupported device {requested!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype used on ``device``: bfloat16 on CUDA GPUs that support it, else float16; ``None``
    (no autocast, float32) on CPU and other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def needs_grad_scaler(device: torch.device | str, enabled: bool = True) -> bool:
    """True when training on ``device`` with :func:`autocast` needs a gradient scaler (float16 autocast)."""
    return enabled and amp_dtype(device) == torch.float16


@contextlib.contextmanager
def autocast(device: torch.device | str, enabled: bool = True) -> Iterator[None]:
    """Mixed-precision context for ``device``: ``torch.autocast`` with :func:`amp_dtype` on CUDA, a no-op
    elsewhere (or when ``enabled`` is false)."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield
