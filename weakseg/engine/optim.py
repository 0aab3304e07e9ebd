"""Optimizer, learning-rate schedule and precision of a training run (``recipe.train``).

- ``recipe.train.optimizer``: AdamW/Adam/SGD; biases and normalisation weights (1-D parameters)
  get no weight decay; ``lr_factors`` scales the rate of named parts of the strategy (its
  ``parameter_groups()``, e.g. a CKS collaborator at 3x).
- schedules: ``constant``, ``cosine`` or ``finetune`` (the CKS paper's schedule: ``lr`` (1e-3) and
  then ``finetune_lr`` (2e-4) for the steps after ``finetune_start`` of the run), times an optional
  linear warm-up. The rate is a function of the step, so a resumed run gets the right one.
- precision: ``bf16`` autocasts the forward pass to bfloat16 (CUDA or CPU), ``fp32`` does not,
  ``auto`` means bf16 on CUDA and fp32 on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from weakseg.errors import WeaksegError


def build_optimizer(
    module: nn.Module, cfg: Any, parts: Mapping[str, nn.Module] | None = None, strategy_name: str = ""
) -> torch.optim.Optimizer:
    """``recipe.train.optimizer`` -> a torch optimizer; 1-D parameters (biases, norms) get no weight decay.

    ``parts`` are the strategy's named parameter groups (:meth:`~weakseg.strategy.StrategyModule.parameter_groups`);
    a part named in ``cfg.lr_factors`` trains at that multiple of the scheduled rate. Each torch parameter
    group carries its ``lr_factor``, which :meth:`LRSchedule.apply` honours. Without factors the groups
    are the two weight-decay groups alone, as before factors existed (old checkpoints resume).
    """
    factors = dict(getattr(cfg, "lr_factors", None) or {})
    parts = dict(parts or {})
    unknown = sorted(set(factors) - set(parts))
    if unknown:
        known = ", ".join(parts) or "none"
        who = f"strategy {strategy_name!r}" if strategy_name else "the strategy"
        raise WeaksegError(
            f"recipe.train.optimizer.lr_factors: unknown part {', '.join(map(repr, unknown))}; {who} names: {known}"
        )
    factor_of: dict[int, float] = {}
    for name, part in parts.items():
        if name in factors:
            for p in part.parameters():
                factor_of.setdefault(id(p), float(factors[name]))
    grouped: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in module.parameters():
        if p.requires_grad:
            grouped.setdefault((factor_of.get(id(p), 1.0), p.ndim <= 1), []).append(p)
    if not grouped:
        raise WeaksegError("the strategy has no trainable parameters; declare `trainable = False` on it")
    groups = []
    for (factor, no_decay), params in sorted(grouped.items()):
        group: dict[str, Any] = {"params": params, "lr_factor": factor}
        if no_decay:
            group["weight_decay"] = 0.0
        groups.append(group)
    if cfg.type == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.type == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.type == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise WeaksegError(f"recipe.train.optimizer.type: unknown optimizer {cfg.type!r}; use adamw, adam or sgd")


@attrs.define
class LRSchedule:
    """Learning rate of each step: ``lr * factor(step)`` for every parameter group.

    ``finetune`` keeps ``lr`` and switches to ``finetune_lr`` at ``finetune_start * steps`` (the CKS
    paper trains at 1e-3, then fine-tunes at 2e-4); ``cosine`` decays to 0 at the last step;
    ``constant`` keeps ``lr``. A linear warm-up over ``warmup_steps`` multiplies any of them.
    The rate is recomputed from the step, so a resumed (or extended) run gets the right one.
    """

    lr: float
    total_steps: int
    schedule: str = "constant"
    finetune_lr: float = 2e-4
    finetune_start: float = 0.8
    warmup_steps: int = 0

    @classmethod
    def from_recipe(cls, train: Any) -> LRSchedule:
        opt = train.optimizer
        return cls(
            lr=opt.lr,
            total_steps=train.steps,
            schedule=opt.schedule,
            finetune_lr=opt.finetune_lr,
            finetune_start=opt.finetune_start,
            warmup_steps=opt.warmup_steps,
        )

    def __call__(self, step: int) -> float:
        if self.schedule == "finetune":
            lr = self.finetune_lr if step >= math.floor(self.finetune_start * self.total_steps) else self.lr
        elif self.schedule == "cosine":
            t = min(step / max(self.total_steps, 1), 1.0)
            lr = 0.5 * self.lr * (1.0 + math.cos(math.pi * t))
        else:
            lr = self.lr
        if self.warmup_steps > 0 and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's rate to the scheduled one times its ``lr_factor``; returns the scheduled rate."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_factor", 1.0))
        return lr

    def state_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype for ``precision`` on ``device``, or ``None`` for float32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("fp32", "auto"):
        return None
    raise WeaksegError(f"recipe.train.precision: unknown precision {precision!r}; use fp32, bf16 or auto")
