"""Optimizer, learning-rate schedule and the non-finite guard.

Everything here counts *optimizer* steps (not micro-batches), so the schedule is the same at
any world size and accumulation.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch

from qa_core.errors import QAError

NO_DECAY_PATTERN = re.compile(r"(bias|LayerNorm\.weight|layer_norm\.weight|norm\.weight)$")


def optimizer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Groups: no weight decay on biases and normalisation weights (frozen params left out)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if NO_DECAY_PATTERN.search(name) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(name: str, model: torch.nn.Module, learning_rate: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer called ``name`` (transformers' ``--optim`` names) over the model's groups.

    ``adamw_torch`` is ``torch.optim.AdamW`` with PyTorch's default implementation choice
    (a per-parameter loop on CPU), ``adamw_torch_foreach`` / ``adamw_torch_fused`` ask for
    the multi-tensor and the fused kernels; ``adafactor`` is transformers' Adafactor with a
    fixed learning rate (our schedule drives it).
    """
    groups = optimizer_param_groups(model, weight_decay)
    kernels = {"adamw_torch": {}, "adamw_torch_foreach": {"foreach": True},
               "adamw_torch_fused": {"fused": True}}
    if name in kernels:
        return torch.optim.AdamW(groups, lr=learning_rate, **kernels[name])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=learning_rate, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_lambda(kind: str, warmup_steps: int,
              total_steps: int | None) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up then linear/cosine/constant decay to 0
    (``kind``: one of ``settings.LR_SCHEDULES``, which the flag's choices enforce).
    ``total_steps`` None: the run's length is not planned yet (a time budget plans it after the
    warm-up), so no step decays."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1) if warmup_steps else 1.0
        if kind == "constant" or total_steps is None:
            return 1.0
        progress = min((step - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress
    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int,
                    total_steps: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    """``optimizer`` may be accelerate's wrapper: the schedule drives the torch optimizer."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return torch.optim.lr_scheduler.LambdaLR(inner, lr_lambda(kind, warmup_steps, total_steps))


class NonFiniteLossError(QAError):
    pass


class NonFiniteGuard:
    """Counts optimizer steps skipped in a row for non-finite losses or gradients (the run's
    total is ``RunState.nonfinite_steps``); too many in a row stop the run."""

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0

    def update(self, finite: bool, step: int) -> bool:
        """Record one optimizer step; returns True when it was non-finite (and so skipped)."""
        if finite:
            self.consecutive = 0
            return False
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} optimizer steps in a row had non-finite losses or gradients "
                f"(at optimizer step {step}); stopping. "
                "Lower the learning rate, use bf16 instead of fp16, or check the data."
            )
        return True
