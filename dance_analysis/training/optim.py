"""The optimiser and the learning-rate schedule of ``dance-train``, and the autocast precision.

``optim.optimizer``: ``adamw`` (torch) or ``lamb`` (``pytorch_optimizer.Lamb``, set up as the LAMB of the ANCE and
DANCE reference runs: no bias correction, the weight decay added to the Adam step, and each tensor's step scaled by
its trust ratio ||w|| / ||step|| with ||w|| clamped to [0, 10]; You et al., "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", ICLR 2020, algorithm 2). Biases and other 1-d parameters get no weight
decay. The learning rate rises linearly over ``optim.warmup_steps``, then falls linearly to 0 at
``optim.decay_steps`` (``None``: ``optim.max_steps``); the reference runs decay towards a step far beyond the end
of training, so their rate stays almost constant after the warm-up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..device import amp_dtype
from ..errors import DanceError
from .config import Recipe


def linear_schedule(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at step s: s / warmup during warm-up, then linear decay to 0 at ``max_steps`` (the
    recipe's ``optim.decay_steps``, or ``optim.max_steps``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(max_steps - step) / float(max(1, max_steps - warmup_steps)))

    return factor


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW or LAMB (``optim.optimizer``, see the module docstring); biases and LayerNorm / 1-d parameters get no
    weight decay, frozen parameters are left out."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    opt = recipe.optim
    groups = [g for g in ({"params": decay, "weight_decay": opt.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if opt.optimizer == "lamb":
        try:
            from pytorch_optimizer import Lamb
        except ImportError as exc:  # a dependency of the package; missing only in a broken install
            raise DanceError("optim.optimizer lamb needs the package pytorch-optimizer "
                             "(pip install pytorch-optimizer)") from exc
        # The reference LAMB: Adam moments without bias correction (adam_debias=True keeps the step size at lr
        # instead of lr / (1 - beta1^t)), the weight decay added to the Adam step (weight_decouple=False), trust
        # ratio ||w|| / ||step|| with ||w|| clamped at 10 (Lamb.clamp).
        return Lamb(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decouple=False,
                    grad_averaging=True, adam=False, pre_norm=False, rectify=False, adam_debias=True)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """The :func:`linear_schedule` of ``recipe.optim`` (warm-up, then linear decay to 0 at ``optim.decay_steps``
    or ``optim.max_steps``) on ``optimizer``."""
    opt = recipe.optim
    end = opt.decay_steps if opt.decay_steps is not None else opt.max_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(opt.warmup_steps, end))


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
