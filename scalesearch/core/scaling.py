"""Compound-scaling math, pure Python (no torch).

EfficientNet (Tan & Le, 2019) scales depth d = α^φ, width w = β^φ and resolution r = γ^φ under
α·β²·γ² ≈ T (T = 2), because FLOPs of a conv net grow with d·w²·r². Taking log_T of the
constraint gives the "compute shares" s_d = log_T α, s_w = 2·log_T β, s_r = 2·log_T γ, which sum
to log_T(α·β²·γ²) ≈ 1: the simplex is an exact parameterization of the constraint surface.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from scalesearch.core.errors import UserError

DEFAULT_TARGET = 2.0  # each step of φ doubles FLOPs (the paper's choice)
DEFAULT_TOLERANCE = 0.05  # |α·β²·γ² / T − 1| allowed; the paper's (1.2, 1.1, 1.15) has product 1.920 (−4%)
PAPER_POINT = (1.2, 1.1, 1.15)  # Tan & Le 2019, Section 3.3


@dataclass(frozen=True)
class Coefficients:
    """The per-step multipliers of depth (alpha), width (beta) and resolution (gamma)."""

    alpha: float
    beta: float
    gamma: float

    @property
    def product(self) -> float:
        """α·β²·γ²: the theoretical FLOPs multiplier of one step of φ."""
        return self.alpha * self.beta**2 * self.gamma**2

    def as_dict(self) -> dict[str, float]:
        """The coefficients as a plain mapping (for JSON)."""
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}


@dataclass(frozen=True)
class Shares:
    """The fraction of each FLOPs doubling spent on depth, width and resolution."""

    depth: float
    width: float
    resolution: float

    @property
    def total(self) -> float:
        """log_T of the product; 1.0 exactly on the constraint surface."""
        return self.depth + self.width + self.resolution


def validate_coefficients(
    coefficients: Coefficients,
    *,
    target: float = DEFAULT_TARGET,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Coefficients:
    """Return `coefficients` unchanged if each is ≥ 1 and the product is within tolerance of target.

    Raises UserError with the reason otherwise: a coefficient below 1 would shrink the model as φ
    grows, and a product far from the target breaks "each φ step costs ×target".
    """
    if target <= 1.0:
        raise UserError(f"the FLOPs target must be > 1, got {target:g}")
    if not 0.0 <= tolerance < 1.0:
        raise UserError(f"the tolerance must be in [0, 1), got {tolerance:g}")
    for name, value in coefficients.as_dict().items():
        if not math.isfinite(value) or value < 1.0:
            raise UserError(f"{name} must be a finite number >= 1, got {value:g}")
    product = coefficients.product
    if abs(product / target - 1.0) > tolerance + 1e-12:
        raise UserError(
            f"alpha*beta^2*gamma^2 = {product:.4f} is outside {target:g} ± {tolerance:.0%} "
            f"(alpha={coefficients.alpha:g}, beta={coefficients.beta:g}, gamma={coefficients.gamma:g})"
        )
    return coefficients


def compute_shares(coefficients: Coefficients, *, target: float = DEFAULT_TARGET) -> Shares:
    """Compute shares (log_T α, 2·log_T β, 2·log_T γ); log2 for the default T = 2."""
    log_t = math.log(target)
    return Shares(
        depth=math.log(coefficients.alpha) / log_t,
        width=2.0 * math.log(coefficients.beta) / log_t,
        resolution=2.0 * math.log(coefficients.gamma) / log_t,
    )


def coefficients_from_shares(shares: Shares, *, target: float = DEFAULT_TARGET) -> Coefficients:
    """Inverse of compute_shares: α = T^s_d, β = T^(s_w/2), γ = T^(s_r/2)."""
    for name, value in (("depth", shares.depth), ("width", shares.width), ("resolution", shares.resolution)):
        if value < 0.0:
            raise UserError(f"the {name} share must be >= 0, got {value:g}")
    return Coefficients(
        alpha=target**shares.depth,
        beta=target ** (shares.width / 2.0),
        gamma=target ** (shares.resolution / 2.0),
    )


def multipliers(coefficients: Coefficients, phi: float) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers α^φ, β^φ, γ^φ for any φ ≥ 0, fractional included."""
    if not math.isfinite(phi) or phi < 0.0:
        raise UserError(f"phi must be a finite number >= 0, got {phi:g}")
    return coefficients.alpha**phi, coefficients.beta**phi, coefficients.gamma**phi


def round_resolution(resolution: float, *, multiple: int = 4) -> int:
    """Round an input resolution to the nearest multiple of `multiple` (at least one multiple).

    Multiples of 4 keep strided stages aligned; proxies at tiny resolutions use multiple=1 so the
    realized resolution follows the requested one closely.
    """
    if multiple < 1:
        raise UserError(f"the resolution multiple must be >= 1, got {multiple}")
    return max(multiple, int(math.floor(resolution / multiple + 0.5)) * multiple)


def make_divisible(value: float, *, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `value`.

    The official EfficientNet/MobileNet rule (TF `round_filters`, torchvision `_make_divisible`):
    round to nearest, then add one divisor if that lost more than 10%.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def round_channels(channels: int, width_mult: float, *, divisor: int = 8) -> int:
    """Scale a base channel count by the width multiplier with make_divisible."""
    return make_divisible(channels * width_mult, divisor=divisor)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """Scale a stage's block count by the depth multiplier, rounding up (the official rule)."""
    return int(math.ceil(repeats * depth_mult))


def grid_candidates(
    *,
    alpha_range: tuple[float, float] = (1.0, 2.0),
    beta_range: tuple[float, float] = (1.0, 1.5),
    gamma_range: tuple[float, float] = (1.0, 1.5),
    step: float = 0.05,
    target: float = DEFAULT_TARGET,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[Coefficients]:
    """Lattice points (α, β, γ) within the bounds, in steps of `step`, whose product lies within tolerance.

    The paper's grid and code were never published; NNI's example used steps of 0.1 on these bounds.
    The default step 0.05 contains the paper's point (1.2, 1.1, 1.15). Sorted by (α, β, γ).
    """
    if step <= 0:
        raise UserError(f"the grid step must be > 0, got {step:g}")

    def axis(bounds: tuple[float, float], name: str) -> list[float]:
        low, high = bounds
        if low < 1.0 or high < low:
            raise UserError(f"the {name} range must satisfy 1 <= low <= high, got [{low:g}, {high:g}]")
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        # Round to 6 decimals so 1.15 is 1.15, not 1.1500000000000001.
        return [round(low + i * step, 6) for i in range(count)]

    points = []
    for alpha, beta, gamma in itertools.product(
        axis(alpha_range, "alpha"), axis(beta_range, "beta"), axis(gamma_range, "gamma")
    ):
        candidate = Coefficients(alpha, beta, gamma)
        if abs(candidate.product / target - 1.0) <= tolerance + 1e-12:
            points.append(candidate)
    return points


def parse_phis(text: str) -> list[float]:
    """Parse `--phis`: a range "0-7" (integers, inclusive) or a list "0,1,2.5"."""
    text = text.strip()
    try:
        if "," not in text and "-" in text.lstrip("-"):
            low_text, high_text = text.split("-", 1)
            low, high = int(low_text), int(high_text)
            if high < low:
                raise UserError(f"phi range {text!r} is empty (high < low)")
            values = [float(v) for v in range(low, high + 1)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"cannot read phis {text!r}: give a range like 0-7 or a list like 0,1,2.5") from None
    if not values:
        raise UserError("no phi values given")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise UserError(f"phi must be a finite number >= 0, got {value:g}")
    return values


def realized_shares(depth: float, width: float, resolution: float) -> Shares:
    """The shares of a concrete network from its realized multipliers, normalised onto the simplex:
    (log d, 2·log w, 2·log r) / their sum. The base network itself (all 1) has no direction: ValueError."""
    logs = [math.log(max(depth, 1e-12)), 2.0 * math.log(max(width, 1e-12)), 2.0 * math.log(max(resolution, 1e-12))]
    # A dimension realized slightly below its base (rounding) counts as not scaled, not as negative.
    logs = [max(0.0, value) for value in logs]
    total = sum(logs)
    if total <= 0.0:
        raise ValueError("the base network has no scaling direction")
    return Shares(logs[0] / total, logs[1] / total, logs[2] / total)


def share_distance(a: Shares, b: Shares) -> float:
    """How far apart two points of the shares simplex are: the largest difference of one share (L∞)."""
    return max(abs(a.depth - b.depth), abs(a.width - b.width), abs(a.resolution - b.resolution))


def simplex_lattice(step: float = 0.02) -> list[Shares]:
    """Every point of the shares simplex on a lattice of `step` (corners included)."""
    count = round(1.0 / step)
    return [
        Shares(i / count, j / count, (count - i - j) / count) for i in range(count + 1) for j in range(count + 1 - i)
    ]
