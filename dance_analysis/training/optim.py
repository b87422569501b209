"""The optimiser and the learning-rate schedule of ``dance-train``, and the autocast precision.

AdamW (biases and other 1-d parameters without weight decay) with a linear warm-up over ``optim.warmup_steps``
followed by a linear decay to 0 at ``optim.max_steps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..device import amp_dtype
from ..errors import DanceError
from .config import Recipe


def linear_schedule(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at step s: s / warmup during warm-up, then linear decay to 0 at ``max_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(max_steps - step) / float(max(1, max_steps - warmup_steps)))

    return factor


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm / 1-d parameters get no weight decay."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    opt = recipe.optim
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr, betas=(opt.beta1, opt.beta2),
                             eps=opt.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """The :func:`linear_schedule` of ``recipe.optim`` on ``optimizer``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             linear_schedule(recipe.optim.warmup_steps, recipe.optim.max_steps))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``optim.precision`` on ``device`` (``None``: full fp32)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        return amp_dtype(device)
    if precision == "fp16":
        if device.type != "cuda":
            raise DanceError("optim.precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        return torch.float16
    return torch.bfloat16
