"""From requested coefficients to a fair proxy candidate.

Rounding moves measured FLOPs far from the theory at proxy scale: channels snap to a divisor,
repeats to whole blocks, feature maps to whole pixels after each stride. Comparing candidates whose
real budgets differ by 1.5x would just reward the biggest model. So every candidate is measured
at φ = 1 against the proxy base, and when its measured FLOPs ratio misses the target by more than
the tolerance, its resolution (the finest-grained dimension) is moved to the value whose measured
ratio is closest to the target. Requested and realized multipliers are both recorded; a candidate
that no resolution can bring within tolerance is infeasible and is not trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from scalesearch.families import ModelSpec
from scalesearch.scaling import Coefficients, compute_shares
from scalesearch.spaces import SearchSpace, load_space


@dataclass(frozen=True)
class Candidate:
    """A proxy variant ready to train (or rejected), with requested and realized multipliers."""

    coefficients: Coefficients
    spec: ModelSpec  # what is trained: the scaled proxy, resolution possibly corrected
    realized_depth: float  # blocks / base blocks
    realized_width: float  # summed stage channels / base channels
    realized_resolution: float  # resolution / base resolution
    params: int
    flops: int
    base_flops: int
    flops_ratio: float  # measured flops / base flops
    corrected: bool  # resolution (and if need be width) was moved to meet the target
    feasible: bool  # measured ratio within tolerance of the target
    reason: str  # why infeasible, else ""

    def row(self, target: float) -> dict[str, Any]:
        """The candidate's columns of trials.csv."""
        shares = compute_shares(self.coefficients, target=target)
        return {
            "alpha": self.coefficients.alpha,
            "beta": self.coefficients.beta,
            "gamma": self.coefficients.gamma,
            "product": round(self.coefficients.product, 6),
            "share_depth": round(shares.depth, 4),
            "share_width": round(shares.width, 4),
            "share_resolution": round(shares.resolution, 4),
            "realized_depth": round(self.realized_depth, 4),
            "realized_width": round(self.realized_width, 4),
            "realized_resolution": round(self.realized_resolution, 4),
            "depth_mult": round(self.spec.depth_mult, 6),
            "width_mult": round(self.spec.width_mult, 6),
            "resolution": self.spec.resolution,
            "corrected": self.corrected,
            "params": self.params,
            "flops": self.flops,
            "flops_ratio": round(self.flops_ratio, 4),
        }


@lru_cache(maxsize=8)
def _space(space_path: str) -> SearchSpace:
    """The space at `space_path`, parsed once per process."""
    return load_space(space_path)


@lru_cache(maxsize=256)
def _measure(space_path: str, spec: ModelSpec) -> tuple[int, int, int, int]:
    """(params, flops, total blocks, total channels) of a proxy spec, FLOPs by fvcore; cached."""
    from scalesearch.cost import measure_cost

    space = _space(space_path)
    family = space.proxy_family
    cost = measure_cost(family.build(spec), resolution=spec.resolution, in_channels=spec.in_channels)
    return cost.params, cost.flops, family.total_blocks(spec), family.total_channels(spec)


@lru_cache(maxsize=1024)
def _estimate(space_path: str, spec: ModelSpec) -> tuple[int, int, int, int]:
    """Like _measure, but FLOPs are conv + linear multiply-adds counted by forward hooks.

    fvcore traces the model (about a second per call); the correction searches try a dozen
    variants per candidate, so they rank with this fast count, and the result is measured by fvcore.
    """
    import torch
    from torch import nn

    space = _space(space_path)
    family = space.proxy_family
    model = family.build(spec).eval()
    macs = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.inference_mode():
        model(torch.zeros(1, spec.in_channels, spec.resolution, spec.resolution))
    for handle in handles:
        handle.remove()
    params = sum(p.numel() for p in model.parameters())
    return params, macs, family.total_blocks(spec), family.total_channels(spec)


def plan_candidate(
    space: SearchSpace,
    coefficients: Coefficients,
    *,
    num_classes: int,
    in_channels: int,
    phi: float = 1.0,
    correct: bool = True,
) -> Candidate:
    """Scale the proxy base by `coefficients` at `phi` (the search uses φ = 1), measure it, and correct
    its resolution (then width) until the measured FLOPs ratio is within tolerance of target^φ."""
    base_spec = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=num_classes, in_channels=in_channels)
    _, base_flops, base_blocks, base_channels = _measure(space.path, base_spec)
    spec = space.scaled_proxy(coefficients, phi, num_classes=num_classes, in_channels=in_channels)
    params, flops, blocks, channels = _measure(space.path, spec)
    target, tolerance = space.target**phi, space.tolerance

    def miss(value: int) -> float:
        return abs(value / base_flops / target - 1.0)

    corrected = False
    if correct and miss(flops) > tolerance:
        # Search with the fast estimate (ratios of estimates track fvcore's within a percent or two),
        # then measure the chosen variant with fvcore: that figure decides feasibility.
        est_base = _estimate(space.path, base_spec)[1]
        est_flops = _estimate(space.path, spec)[1]
        goal = target * est_base

        def est_miss(value: int) -> float:
            return abs(value / goal - 1.0)

        spec, est_flops = _correct_resolution(space, spec, est_flops, goal, est_miss)
        if est_miss(est_flops) > tolerance / 2:
            # At proxy scale one pixel moves the deepest feature maps by 25% or more; width (channels
            # in steps of the divisor) is then the finer dimension, so it takes the last few percent.
            spec = _correct_width(space, spec, est_flops, goal, est_miss)
        params, flops, blocks, channels = _measure(space.path, spec)
        corrected = True
    corrected = corrected and spec != space.scaled_proxy(
        coefficients, phi, num_classes=num_classes, in_channels=in_channels
    )
    ratio = flops / base_flops
    feasible = miss(flops) <= tolerance
    return Candidate(
        coefficients=coefficients,
        spec=spec,
        realized_depth=blocks / base_blocks,
        realized_width=channels / base_channels,
        realized_resolution=spec.resolution / base_spec.resolution,
        params=params,
        flops=flops,
        base_flops=base_flops,
        flops_ratio=ratio,
        corrected=corrected,
        feasible=feasible,
        reason="" if feasible else f"measured FLOPs ratio {ratio:.2f} is outside {target:g} ± {tolerance:.0%}",
    )


def _correct_resolution(
    space: SearchSpace, spec: ModelSpec, flops: int, goal: float, miss: Any
) -> tuple[ModelSpec, int]:
    """The resolution near the one FLOPs predict (∝ resolution²) whose estimated FLOPs are closest to goal."""
    multiple = space.proxy.resolution_multiple
    guess = spec.resolution * math.sqrt(goal / flops)
    center = max(multiple, int(round(guess / multiple)) * multiple)
    tried = {spec.resolution: flops}
    for step in range(-2, 3):
        resolution = center + step * multiple
        if resolution >= multiple and resolution not in tried:
            tried[resolution] = _estimate(space.path, replace(spec, resolution=resolution))[1]
    best = min(tried, key=lambda r: (miss(tried[r]), abs(r - spec.resolution)))
    return replace(spec, resolution=best), tried[best]


def _correct_width(space: SearchSpace, spec: ModelSpec, flops: int, goal: float, miss: Any) -> ModelSpec:
    """Bisect the width multiplier within ±30% for estimated FLOPs closest to goal (FLOPs grow with width)."""
    best = (miss(flops), spec)
    low, high = spec.width_mult * 0.7, spec.width_mult * 1.3
    for _ in range(10):
        middle = replace(spec, width_mult=(low + high) / 2)
        m_flops = _estimate(space.path, middle)[1]
        if miss(m_flops) < best[0]:
            best = (miss(m_flops), middle)
        if m_flops < goal:
            low = middle.width_mult
        else:
            high = middle.width_mult
    return best[1]
