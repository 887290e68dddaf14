"""What a model costs: parameters and FLOPs measured with fvcore.

Convention (the paper's, and fvcore's): one fused multiply-add counts as one flop, at batch size 1,
at the variant's own resolution. fvcore counts convolutions, matmuls, batch norm and pooling, and
counts elementwise ops (SiLU, sigmoid, mul, add) as zero; those are recorded as `uncounted_ops`
instead of being printed as warnings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

FLOPS_CONVENTION = "fvcore: 1 multiply-add = 1 flop, batch 1, at the variant's resolution"


@dataclass(frozen=True)
class Cost:
    """Measured cost of one model variant."""

    params: int  # trainable and frozen parameters
    flops: int  # multiply-adds at batch 1 (fvcore convention)
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # op name -> occurrences fvcore skipped


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, *, resolution: int, in_channels: int) -> tuple[int, dict[str, int]]:
    """fvcore FLOPs of one image at `resolution`, and the ops it left uncounted."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    image = torch.zeros(1, in_channels, resolution, resolution, device=device)
    analysis = FlopCountAnalysis(model, image)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    # fvcore also logs through the "fvcore" logger while tracing; keep it off the terminal.
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            flops = int(analysis.total())
            uncounted = {str(op): int(n) for op, n in sorted(analysis.unsupported_ops().items())}
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return flops, uncounted


def measure_cost(model: nn.Module, *, resolution: int, in_channels: int) -> Cost:
    """Parameters and FLOPs of `model` for one `in_channels` x `resolution`² image."""
    flops, uncounted = count_flops(model, resolution=resolution, in_channels=in_channels)
    return Cost(params=count_params(model), flops=flops, uncounted_ops=uncounted)
