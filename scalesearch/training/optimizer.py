"""The optimizer, its learning-rate schedule and one training step: what the training loop
(`scalesearch.training.trainer`) and the layout probe (`scalesearch.training.layout`) both run."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from scalesearch.config.recipe import Recipe


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float,
    autocast: Callable[[], AbstractContextManager[object]],
) -> torch.Tensor:
    """One optimizer step on one batch; returns the (detached) loss. Shared by training and the probe."""
    with autocast():
        loss = F.cross_entropy(model(inputs), targets, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW with weight decay on conv/linear weights only.

    Decaying batch-norm scales and biases only fights the normalization in small nets (as in timm's
    `param_groups_weight_decay`), so parameters with fewer than 2 dimensions are not decayed.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)


def lr_at(step: int, total_steps: int, warmup_steps: int, recipe: Recipe) -> float:
    """The learning rate at `step` (0-based) under the recipe's schedule.

    cosine: linear warm-up from 0 to lr, then a half cosine down to 0.
    onecycle: linear warm-up from lr/25 to lr, then linear decay to lr/10⁴ (Smith's one-cycle, with
    PyTorch OneCycleLR's default start and end factors).
    """
    peak = recipe.lr
    if recipe.schedule == "onecycle":
        start, end = peak / 25.0, peak / 1e4
        if step < warmup_steps:
            return start + (peak - start) * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return peak + (end - peak) * progress
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))
