"""From requested coefficients to a fair proxy candidate.

Rounding moves measured FLOPs far from the theory at proxy scale: channels snap to a divisor,
repeats to whole blocks, feature maps to whole pixels after each stride. Comparing candidates whose
real budgets differ by 1.5x would just reward the biggest model. So every candidate is measured
at φ = 1 against the proxy base, and when its measured FLOPs ratio misses the target by more than
the tolerance, its resolution (the finest-grained dimension) is moved to the value whose measured
ratio is closest to the target. Requested and realized multipliers are both recorded; a candidate
that no resolution can bring within tolerance is infeasible and is not trained.

The constrained cost need not be FLOPs (`--constraint`): parameters, activations (conv/linear output
elements) or measured latency take FLOPs' place with the same meaning, ×target per step of φ within
the tolerance. FLOPs keep their fast path (a hook estimate ranks the correction's variants, fvcore
decides). Params and activations are exact counts, so they correct like FLOPs with the counts
themselves. Latency is measured, never estimated: at proxy scale FLOPs do not predict it (a proxy's
forward pass is dominated by per-layer overhead, so depth costs far more time than FLOPs say), so
each variant's latency ratio is timed against the proxy base directly (`latency_ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from scalesearch.errors import UserError
from scalesearch.families import ModelSpec
from scalesearch.scaling import Coefficients, compute_shares
from scalesearch.spaces import SearchSpace, load_space

CONSTRAINTS = ("flops", "latency", "activations", "params")
# Latency ratio measurement: one thread (a trial's own share of the machine, and the least noisy on a
# shared box), base and candidate timed in alternation so that a change of load hits both alike.
LATENCY_THREADS = 1
LATENCY_WARMUP = 3
LATENCY_REPEATS = 15


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
    constraint: str = "flops"  # the cost the budget is on (CONSTRAINTS)
    constraint_ratio: float = 0.0  # that cost of the candidate / that cost of the proxy base

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
            "constraint": self.constraint,
            "constraint_ratio": round(self.constraint_ratio, 4),
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
    constraint: str = "flops",
) -> Candidate:
    """Scale the proxy base by `coefficients` at `phi` (the search uses φ = 1), measure it, and correct
    its resolution (then width) until the measured ratio of the `constraint` cost (flops, latency,
    activations, params) to the proxy base is within tolerance of target^φ."""
    if constraint not in CONSTRAINTS:
        raise UserError(f"unknown constraint {constraint!r} (choose from {', '.join(CONSTRAINTS)})")
    if constraint != "flops":
        return _plan_on_cost(space, coefficients, num_classes=num_classes, in_channels=in_channels, phi=phi,
                             correct=correct, constraint=constraint)  # fmt: skip
    base_spec = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=num_classes, in_channels=in_channels)
    base_flops = _measure(space.path, base_spec)[1]
    spec = space.scaled_proxy(coefficients, phi, num_classes=num_classes, in_channels=in_channels)
    flops = _measure(space.path, spec)[1]
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

        # Half the tolerance for the estimate leaves room for its small disagreement with fvcore.
        spec, est_flops = _correct_resolution(space, spec, est_flops, goal, est_miss, tolerance / 2)
        if est_miss(est_flops) > tolerance / 2:
            # At proxy scale one pixel moves the deepest feature maps by 25% or more; width (channels
            # in steps of the divisor) is then the finer dimension, so it takes the last few percent.
            spec = _correct_width(space, spec, est_flops, goal, est_miss)
        flops = _measure(space.path, spec)[1]
        corrected = True
    corrected = corrected and spec != space.scaled_proxy(
        coefficients, phi, num_classes=num_classes, in_channels=in_channels
    )
    return _candidate(space, coefficients, spec, base_spec, corrected, "flops", flops / base_flops, target)


def _candidate(
    space: SearchSpace,
    coefficients: Coefficients,
    spec: ModelSpec,
    base_spec: ModelSpec,
    corrected: bool,
    constraint: str,
    ratio: float,
    target: float,
) -> Candidate:
    """The planned candidate: realized multipliers against the base, feasibility of `ratio` vs target."""
    _, base_flops, base_blocks, base_channels = _measure(space.path, base_spec)
    params, flops, blocks, channels = _measure(space.path, spec)
    feasible = abs(ratio / target - 1.0) <= space.tolerance
    name = "FLOPs" if constraint == "flops" else constraint
    return Candidate(
        coefficients=coefficients,
        spec=spec,
        realized_depth=blocks / base_blocks,
        realized_width=channels / base_channels,
        realized_resolution=spec.resolution / base_spec.resolution,
        params=params,
        flops=flops,
        base_flops=base_flops,
        flops_ratio=flops / base_flops,
        corrected=corrected,
        feasible=feasible,
        reason="" if feasible else f"measured {name} ratio {ratio:.2f} is outside {target:g} ± {space.tolerance:.0%}",
        constraint=constraint,
        constraint_ratio=ratio,
    )


def _plan_on_cost(
    space: SearchSpace,
    coefficients: Coefficients,
    *,
    num_classes: int,
    in_channels: int,
    phi: float,
    correct: bool,
    constraint: str,
) -> Candidate:
    """plan_candidate for a budget on params, activations or latency: the same correction and
    feasibility rule as for FLOPs, driven by the measured ratio of that cost to the proxy base."""
    base_spec = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=num_classes, in_channels=in_channels)
    requested = space.scaled_proxy(coefficients, phi, num_classes=num_classes, in_channels=in_channels)
    target, tolerance = space.target**phi, space.tolerance
    ratio_of = _ratio_function(space, base_spec, constraint)
    spec, ratio = requested, ratio_of(requested)
    if correct and abs(ratio / target - 1.0) > tolerance:
        spec, ratio = _correct_on_cost(space, requested, ratio, target, tolerance, ratio_of)
        if constraint == "latency" and spec != requested:
            # The correction kept the variant whose timing happened to land closest to the goal, which
            # biases its ratio towards the goal; a fresh timing decides feasibility.
            ratio = ratio_of(spec)
    return _candidate(space, coefficients, spec, base_spec, spec != requested, constraint, ratio, target)


@lru_cache(maxsize=1024)
def _activations(space_path: str, spec: ModelSpec) -> int:
    """Conv/linear output elements of a proxy spec at batch 1; cached (an exact count)."""
    from scalesearch.cost import measure_activations

    model = _space(space_path).proxy_family.build(spec)
    return measure_activations(model, resolution=spec.resolution, in_channels=spec.in_channels)


def latency_ratio(space: SearchSpace, base_spec: ModelSpec, spec: ModelSpec) -> float:
    """Measured batch-1 CPU latency of `spec`'s proxy over the base's: medians of LATENCY_REPEATS
    alternating timings on LATENCY_THREADS thread(s), after warm-up."""
    from scalesearch.cost import measure_latency_ratio

    family = space.proxy_family
    return measure_latency_ratio(
        family.build(spec),
        family.build(base_spec),
        resolutions=(spec.resolution, base_spec.resolution),
        in_channels=spec.in_channels,
        threads=LATENCY_THREADS,
        warmup=LATENCY_WARMUP,
        repeats=LATENCY_REPEATS,
    )


def _ratio_function(space: SearchSpace, base_spec: ModelSpec, constraint: str) -> Callable[[ModelSpec], float]:
    """spec -> its `constraint` cost over the proxy base's."""
    if constraint == "params":
        base = _estimate(space.path, base_spec)[0]
        return lambda spec: _estimate(space.path, spec)[0] / base
    if constraint == "activations":
        base = _activations(space.path, base_spec)
        return lambda spec: _activations(space.path, spec) / base
    return lambda spec: latency_ratio(space, base_spec, spec)


def _correct_on_cost(
    space: SearchSpace,
    spec: ModelSpec,
    ratio: float,
    target: float,
    tolerance: float,
    ratio_of: Callable[[ModelSpec], float],
) -> tuple[ModelSpec, float]:
    """Resolution, then width, moved until `ratio_of` meets target within tolerance (else the closest miss).

    Resolution: up to three rounds of the guess "cost grows with resolution²" from the closest variant
    so far, trying the guess and its neighbours (a cost that does not move with resolution, such as a
    CNN's params, leaves the requested resolution). Then width by bisection within ±30%, assuming the
    cost grows with width. Never below the proxy base in either dimension.
    """
    multiple, lowest = space.proxy.resolution_multiple, space.proxy.resolution

    def miss(value: float) -> float:
        return abs(value / target - 1.0)

    tried = {spec.resolution: ratio}
    current = spec.resolution
    for _ in range(3):
        if miss(tried[current]) <= tolerance:
            break
        guess = current * math.sqrt(target / max(tried[current], 1e-9))
        center = max(lowest, int(round(guess / multiple)) * multiple)
        for step in (-1, 0, 1):
            resolution = center + step * multiple
            if resolution >= lowest and resolution not in tried:
                tried[resolution] = ratio_of(replace(spec, resolution=resolution))
        best = min(tried, key=lambda r: (miss(tried[r]), abs(r - spec.resolution)))
        if best == current:
            break
        current = best
    meeting = [r for r in tried if miss(tried[r]) <= tolerance]
    if meeting:
        chosen = min(meeting, key=lambda r: (abs(r - spec.resolution), miss(tried[r])))
        return replace(spec, resolution=chosen), tried[chosen]
    spec = replace(spec, resolution=current)
    closest: tuple[float, ModelSpec, float] = (miss(tried[current]), spec, tried[current])
    low, high = max(space.proxy.width_mult, spec.width_mult * 0.7), spec.width_mult * 1.3
    for _ in range(8):
        middle = replace(spec, width_mult=(low + high) / 2)
        value = ratio_of(middle)
        if miss(value) < closest[0]:
            closest = (miss(value), middle, value)
        if miss(value) <= tolerance:
            break
        if value < target:
            low = middle.width_mult
        else:
            high = middle.width_mult
    return closest[1], closest[2]


def _correct_resolution(
    space: SearchSpace, spec: ModelSpec, flops: int, goal: float, miss: Any, tolerance: float
) -> tuple[ModelSpec, int]:
    """The resolution near the one FLOPs predict (∝ resolution²) that meets the goal within tolerance
    and stays closest to the requested resolution (else the closest miss). Never below the proxy
    base's resolution: a candidate is not made smaller than the base in any dimension."""
    multiple = space.proxy.resolution_multiple
    lowest = space.proxy.resolution
    guess = spec.resolution * math.sqrt(goal / flops)
    center = max(lowest, int(round(guess / multiple)) * multiple)
    tried = {spec.resolution: flops}
    for step in range(-2, 3):
        resolution = center + step * multiple
        if resolution >= lowest and resolution not in tried:
            tried[resolution] = _estimate(space.path, replace(spec, resolution=resolution))[1]
    meeting = [r for r in tried if miss(tried[r]) <= tolerance]
    under = [r for r in tried if tried[r] <= goal]
    if meeting:
        best = min(meeting, key=lambda r: (abs(r - spec.resolution), miss(tried[r])))
    elif under:
        # No pixel lands on the budget: take the largest resolution under it and let width (which
        # only grows) close the gap.
        best = max(under)
    else:
        best = min(tried, key=lambda r: (miss(tried[r]), abs(r - spec.resolution)))
    return replace(spec, resolution=best), tried[best]


def _correct_width(space: SearchSpace, spec: ModelSpec, flops: int, goal: float, miss: Any) -> ModelSpec:
    """Bisect the width multiplier within ±30% for estimated FLOPs closest to goal (FLOPs grow with width)."""
    best = (miss(flops), spec)
    # Not below the proxy base's width, for the same reason as resolution.
    low, high = max(space.proxy.width_mult, spec.width_mult * 0.7), spec.width_mult * 1.3
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
