"""A family's variants at full scale (B1..B7 of the target base): each planned onto its budget
target^φ by moving along the rule's own direction, then width, then a few pixels; and whether
measuring a variant fits in memory at all. Also `width_for`, the width search the planner's
enumeration shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from scalesearch.core.errors import UserError
from scalesearch.core.machine import available_memory
from scalesearch.core.scaling import Coefficients
from scalesearch.models.measure import MEMORY_SHARE, measurer_for, memory_estimate

if TYPE_CHECKING:
    from scalesearch.config.spaces import SearchSpace
    from scalesearch.models.spec import ModelSpec

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

# Width search steps (Newton on cost ∝ width², inside a bracket).
WIDTH_STEPS = 8


def width_for(
    level: ModelSpec, goal: float, at_base_width: float, ratio: Callable[[ModelSpec], float]
) -> ModelSpec | None:
    """The wider variant of `level` whose ratio is nearest `goal`: Newton steps on cost ∝ width²
    inside a shrinking bracket (cost grows with width), a handful of measurements."""
    if at_base_width >= goal:
        return None
    low, high = 1.0, math.sqrt(goal / max(at_base_width, 1e-9)) * 1.5
    factor, value = 1.0, at_base_width
    best: tuple[float, ModelSpec] | None = None
    for _ in range(WIDTH_STEPS):
        guess = factor * math.sqrt(goal / value)
        factor = guess if low < guess < high else (low + high) / 2
        spec = replace(level, width_mult=level.width_mult * factor)
        value = ratio(spec)
        miss = abs(value / goal - 1.0)
        if best is None or miss < best[0]:
            best = (miss, spec)
        if miss < 0.005 or high - low < 1e-3:
            break
        if value < goal:
            low = factor
        else:
            high = factor
    return best[1] if best is not None else None


@dataclass(frozen=True)
class Calibrated:
    """A full-scale variant planned onto its budget: the rule's spec and the calibrated one."""

    rule: ModelSpec  # depth = α^φ, width = β^φ, resolution = γ^φ, rounded as the family rounds
    spec: ModelSpec  # the variant on its budget (the rule's spec when that already meets it)
    effective_phi: float  # the φ along the rule's direction the calibrated variant sits at


def calibrate(
    space: SearchSpace,
    coefficients: Coefficients,
    phi: float,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> Calibrated:
    """Move the rule's variant at φ along the rule's own direction (α^t, β^t, γ^t), then width alone,
    until its MACs over the target base's are within half the tolerance of target^φ.

    The paper's authors adjusted B1..B7 by hand for the same reason: rounding repeats up and
    resolutions to a multiple of 4 makes the pure rule overshoot (B1 2.2x instead of 2x).
    """
    family = space.family
    measurer = measurer_for(family, in_channels)
    rule = space.scaled_spec(coefficients, phi, num_classes=num_classes, in_channels=in_channels)
    if phi == 0:
        return Calibrated(rule=rule, spec=rule, effective_phi=0.0)
    base = space.scaled_spec(coefficients, 0.0, num_classes=num_classes, in_channels=in_channels)
    base_macs = measurer.macs(base)
    goal, band = space.target**phi, space.tolerance / 2

    def at(t: float) -> ModelSpec:
        return replace(
            space.scaled_spec(coefficients, t, num_classes=num_classes, in_channels=in_channels), dropout=rule.dropout
        )

    def ratio(spec: ModelSpec) -> float:
        return measurer.macs(spec) / base_macs

    def miss(spec: ModelSpec) -> float:
        return ratio(spec) / goal - 1.0

    missed, t, spec = _along_rule(rule, phi, coefficients.product, at=at, miss=miss, band=band)
    if missed > band:
        spec = _finer_fit(space, spec, rule, goal, ratio=ratio, miss=miss)
    return Calibrated(rule=rule, spec=spec, effective_phi=t)


def _along_rule(
    rule: ModelSpec,
    phi: float,
    product: float,
    *,
    at: Callable[[float], ModelSpec],
    miss: Callable[[ModelSpec], float],
    band: float,
) -> tuple[float, float, ModelSpec]:
    """The variant `at(t)` nearest its budget, as (|miss|, t, spec): Newton steps on t from φ along
    the rule's direction, inside a shrinking bracket, until one is within `band` (12 steps at most)."""
    step = math.log(max(product, 1.0 + 1e-6))
    t, spec = phi, rule
    best = (abs(miss(rule)), phi, rule)
    low, high = max(0.0, phi - 2.0), phi + 2.0
    for _ in range(12):
        if best[0] <= band:
            break
        error = miss(spec)
        if error > 0:
            high = min(high, t)
        else:
            low = max(low, t)
        # A Newton step on log(cost) ∝ t·log(product), kept inside the bracket.
        guess = t - math.log1p(error) / step
        t = guess if low < guess < high else (low + high) / 2
        spec = at(t)
        if abs(miss(spec)) < best[0]:
            best = (abs(miss(spec)), t, spec)
    return best


def _finer_fit(
    space: SearchSpace,
    spec: ModelSpec,
    rule: ModelSpec,
    goal: float,
    *,
    ratio: Callable[[ModelSpec], float],
    miss: Callable[[ModelSpec], float],
) -> ModelSpec:
    """`spec`, or a variant of it by width and then a few pixels of resolution, nearest its budget
    (ties: the resolution nearest the rule's).

    Whole blocks can straddle the band; channels are the finer knob, and when a channel step (a
    divisor of 8 across many blocks) is still too coarse, a few pixels of resolution are."""
    narrower = replace(spec, width_mult=spec.width_mult * 0.9)
    widened = width_for(narrower, goal, ratio(narrower), ratio)
    options = [spec, *([widened] if widened else [])]
    multiple = space.base.resolution_multiple
    nudged = [
        replace(option, resolution=option.resolution + step * multiple)
        for option in options
        for step in (0, -1, 1, -2, 2, -3, 3)
        if option.resolution + step * multiple >= space.base.resolution
    ]
    return min(nudged, key=lambda s: (round(abs(miss(s)), 3), abs(s.resolution - rule.resolution)))


def check_fits(
    space: SearchSpace,
    coefficients: Coefficients,
    phis: Sequence[float],
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> None:
    """UserError, with the estimate, when measuring the family's largest variant would not fit in memory."""
    if not phis:
        return
    phi = max(phis)
    base = space.scaled_spec(coefficients, 0.0, num_classes=num_classes, in_channels=in_channels)
    try:
        depth, width, resolution = (value**phi for value in (coefficients.alpha, coefficients.beta, coefficients.gamma))
    except OverflowError:  # 1.2 ** 100000: far beyond any memory
        raise UserError(f"the variant at phi={phi:g} is too large to measure (its multipliers overflow); "
                        "choose smaller --phis") from None  # fmt: skip
    need, have = memory_estimate(space.family, base, depth, width, resolution), available_memory()
    if have is not None and need > MEMORY_SHARE * have:
        raise UserError(
            f"the variant at phi={phi:g} needs about {need / 1e9:,.1f} GB to measure, more than "
            f"{MEMORY_SHARE:.0%} of the {have / 1e9:.1f} GB available; choose smaller --phis"
        )
