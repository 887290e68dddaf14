"""From shares on the simplex to concrete networks on the budget: what the search can really train.

At proxy scale rounding moves cost far from the formula: channels snap to a divisor, repeats to
whole blocks, feature maps to whole pixels. Correcting a proposal by moving a dimension it did not
ask for trains something else than was proposed. So the planner works the other way round:

1. `realizable_set` enumerates the concrete networks whose measured cost lies on the budget band
   (target^φ ± tolerance over the base): for every distinct block layout (depth) and every
   resolution it takes the base width and the width whose cost is nearest the budget, and keeps
   those inside the band, measured (FLOPs by fvcore).
2. Every network carries its *realized* multipliers and shares (below); `nearest` maps requested
   shares to the network whose realized shares are nearest (L∞ on the simplex), so a proposal never
   trades a dimension it asked for against another when the set covers the simplex, and `coverage`
   says how well it does: the largest distance from any point of the simplex to its nearest network.
3. `calibrate` (scalesearch.planning.calibration) plans a family's variant at full scale (B1..B7 of the target
   base) onto its budget
   target^φ by moving along the rule's own direction, so the variant keeps the chosen shares.

Realized multipliers of a network (what it *is*, against the base it scales), each defined by its
effect on the cost, since at proxy scale the nominal multipliers lie: blocks differ in cost by
stage, channels round per stage while depthwise, squeeze and head layers grow with width at
different powers, and after a stride only whole feature-map pixels count. With M = conv + linear
multiply-adds at batch 1 (forward hooks), and the network's own depth D, width W and resolution R:
- depth d = M(D, base width, base resolution) / M(base);
- width w = √(M(D, W, base resolution) / M(D, base width, base resolution));
- resolution r = √(M(D, W, R) / M(D, W, base resolution)).
So d·w²·r² is exactly the network's MACs ratio to the base: the realized shares (log d, 2·log w,
2·log r), normalised to sum 1 (`scaling.realized_shares`), say where the budget really went.
The nominal multipliers (blocks, channels, pixels) are recorded beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from scalesearch.core.atomic import atomic_write_json
from scalesearch.core.errors import UserError
from scalesearch.core.machine import available_memory, default_cache_dir
from scalesearch.core.scaling import (
    Coefficients,
    Shares,
    coefficients_from_shares,
    compute_shares,
    realized_shares,
    share_distance,
    simplex_lattice,
)
from scalesearch.models.measure import (  # noqa: F401  (measurer_for and latency_ratio are used through planner too)
    MEMORY_SHARE,
    Measurer,
    count_macs,
    latency_ratio,
    measurer_for,
    memory_estimate,
)
from scalesearch.models.spec import ModelSpec
from scalesearch.planning.calibration import Calibrated, calibrate, check_fits, width_for  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from scalesearch.config.spaces import SearchSpace
    from scalesearch.models.families import Family
    from scalesearch.models.spec import ModelSpec

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

# Bump when the enumeration changes, so cached sets are rebuilt.
PLANNER_VERSION = 2
# Depth levels are found by stepping the depth multiplier this finely (relative to the base).
DEPTH_STEP = 0.01
# The coverage lattice on the simplex.
COVERAGE_STEP = 0.02


@dataclass(frozen=True)
class Network:
    """One concrete network on the budget band: what a trial trains, with what it really is."""

    spec: ModelSpec
    params: int
    flops: int  # fvcore, batch 1, at the network's resolution
    ratio: float  # the constraint cost of this network over the base's
    constraint: str  # the cost the budget is on (flops, params, activations, latency)
    depth: float  # realized depth multiplier (blocks / base blocks)
    width: float  # realized width multiplier (see the module docstring)
    resolution: float  # realized resolution multiplier (pixels / base pixels)
    flops_ratio: float  # fvcore FLOPs over the base's, whatever the constraint

    @property
    def shares(self) -> Shares:
        """The realized shares on the simplex."""
        return realized_shares(self.depth, self.width, self.resolution)

    def coefficients(self, target: float) -> Coefficients:
        """The realized coefficients, normalised onto α·β²·γ² = target (`ratio` says what was measured)."""
        return coefficients_from_shares(self.shares, target=target)

    @property
    def key(self) -> str:
        """A short identity: networks with the same key are the same network."""
        spec = self.spec
        text = (
            f"{spec.width_mult:.6f}/{spec.depth_mult:.6f}/{spec.resolution}/{spec.dropout}/{self.params}/{self.flops}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def row(self, target: float) -> dict[str, Any]:
        """The network's columns of trials.csv (realized values at full precision)."""
        shares = self.shares
        coefficients = self.coefficients(target)
        return {
            "network": self.key,
            "realized_depth": self.depth,
            "realized_width": self.width,
            "realized_resolution": self.resolution,
            "realized_share_depth": shares.depth,
            "realized_share_width": shares.width,
            "realized_share_resolution": shares.resolution,
            "alpha": coefficients.alpha,
            "beta": coefficients.beta,
            "gamma": coefficients.gamma,
            "depth_mult": self.spec.depth_mult,
            "width_mult": self.spec.width_mult,
            "resolution": self.spec.resolution,
            "params": self.params,
            "flops": self.flops,
            "flops_ratio": self.flops_ratio,
            "constraint": self.constraint,
            "constraint_ratio": self.ratio,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the disk cache and `search --dry-run --format json`)."""
        return {**asdict(self), "spec": asdict(self.spec)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Network:
        """Inverse of to_dict."""

        return cls(**{**data, "spec": ModelSpec(**data["spec"])})


@dataclass(frozen=True)
class RealizableSet:
    """The networks on one budget band, and how well they cover the shares simplex."""

    networks: tuple[Network, ...]
    goal: float  # target^φ
    tolerance: float
    phi: float
    constraint: str

    @cached_property
    def coverage(self) -> float:
        """The largest share distance from a point of the simplex to its nearest network (1.0: empty)."""
        if not self.networks:
            return 1.0
        points = [n.shares for n in self.networks]
        return max(min(share_distance(p, q) for q in points) for p in simplex_lattice(COVERAGE_STEP))

    def nearest(self, shares: Shares) -> Network:
        """The network whose realized shares are nearest `shares` (L∞, then L2, then closest to budget)."""
        if not self.networks:
            raise UserError(f"no network of this space meets the budget {self.goal:g} ± {self.tolerance:.0%}")

        def key(network: Network) -> tuple[float, float, float, str]:
            mine = network.shares
            l2 = (
                (mine.depth - shares.depth) ** 2
                + (mine.width - shares.width) ** 2
                + (mine.resolution - shares.resolution) ** 2
            )
            return share_distance(mine, shares), l2, abs(network.ratio / self.goal - 1.0), network.key

        return min(self.networks, key=key)

    def spread(self, count: int) -> list[Network]:
        """`count` networks spread evenly over the simplex (farthest-point order from the corners;
        deterministic), or all of them when there are no more than `count`."""
        remaining = sorted(self.networks, key=lambda n: (n.shares.depth, n.shares.width, n.key))
        if count >= len(remaining):
            return remaining
        chosen: list[Network] = []
        corners = [Shares(1, 0, 0), Shares(0, 1, 0), Shares(0, 0, 1)]
        for corner in corners:
            if len(chosen) < count:
                best = min(remaining, key=lambda n: (share_distance(n.shares, corner), n.key))
                chosen.append(best)
                remaining.remove(best)
        while len(chosen) < count and remaining:
            best = max(remaining, key=lambda n: (min(share_distance(n.shares, c.shares) for c in chosen), n.key))
            chosen.append(best)
            remaining.remove(best)
        return chosen


# --------------------------------------------------------------------------------------------------
# Measuring networks (scalesearch.models.measure) for a budget


def _ratio_functions(
    measurer: Measurer, base: ModelSpec, constraint: str
) -> tuple[Callable[[ModelSpec], float], Callable[[ModelSpec], float]]:
    """(fast ratio used while searching, the ratio that decides the band) for `constraint`."""
    if constraint == "flops":
        base_macs, base_flops = measurer.macs(base), measurer.measured(base)[1]
        return (lambda s: measurer.macs(s) / base_macs), (lambda s: measurer.measured(s)[1] / base_flops)
    if constraint == "params":
        base_params = measurer.params(base)
        exact = lambda s: measurer.params(s) / base_params  # noqa: E731
        return exact, exact
    if constraint == "activations":
        base_activations = measurer.activations(base)
        exact = lambda s: measurer.activations(s) / base_activations  # noqa: E731
        return exact, exact
    if constraint == "latency":
        timed = lambda s: latency_ratio(measurer.family, base, s)  # noqa: E731
        return timed, timed
    from scalesearch.models.cost import constraint_names

    raise UserError(f"unknown constraint {constraint!r} (choose from {', '.join(constraint_names())})")


# --------------------------------------------------------------------------------------------------
# The realizable set


def proxy_base(space: SearchSpace, *, num_classes: int, in_channels: int) -> ModelSpec:
    """The proxy base network (φ = 0) the search's budgets are measured against."""
    return space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=num_classes, in_channels=in_channels)


def realizable_set(
    space: SearchSpace,
    *,
    num_classes: int,
    in_channels: int,
    phi: float = 1.0,
    constraint: str = "flops",
    use_cache: bool = True,
) -> RealizableSet:
    """Every network of the space's proxy on the band target^φ ± tolerance (see the module docstring).

    The set depends only on the space file, the classes and channels, φ and the constraint, so it is
    cached on disk (JSON, keyed by the space's content); latency sets are timed afresh every time.
    """
    cache_path = _cache_path(space, num_classes, in_channels, phi, constraint)
    if use_cache and cache_path and constraint != "latency":
        cached = _read_cache(cache_path)
        if cached is not None:
            return cached
    found = _enumerate(space, num_classes=num_classes, in_channels=in_channels, phi=phi, constraint=constraint)
    if use_cache and cache_path and constraint != "latency":
        _write_cache(cache_path, found)
    return found


def _enumerate(space: SearchSpace, *, num_classes: int, in_channels: int, phi: float, constraint: str) -> RealizableSet:
    from scalesearch.models.cost import torch_threads

    # Counting is a stream of tiny forward passes: one thread is fastest, and on a loaded machine
    # more threads spin against each other (measured: 18 ms per count alone, 250 ms under load).
    with torch_threads(1):
        return _enumerate_networks(space, num_classes=num_classes, in_channels=in_channels, phi=phi,
                                   constraint=constraint)  # fmt: skip


def _enumerate_networks(
    space: SearchSpace, *, num_classes: int, in_channels: int, phi: float, constraint: str
) -> RealizableSet:
    family = space.proxy_family
    measurer = measurer_for(family, in_channels)
    base = proxy_base(space, num_classes=num_classes, in_channels=in_channels)
    # An absurd phi (train --phi 40) would step through 2^40 depth levels, and 1e308 overflows: refuse
    # it first with the memory its largest networks need (weights grow with depth and width², the
    # largest activation with width and resolution², all up to the budget), as `family` does.
    try:
        goal, tolerance = space.target**phi, space.tolerance
        top = goal * (1.0 + tolerance)
        need: float = memory_estimate(family, base, top, 1.0, math.sqrt(top))
    except OverflowError:
        need = math.inf
    have = available_memory()
    if have is not None and need > MEMORY_SHARE * have:
        size = f"about {need / 1e9:,.1f} GB" if math.isfinite(need) else "more memory than a float can count"
        raise UserError(
            f"phi={phi:g} asks for proxies at {space.target:g}^{phi:g} times the base's cost, which need {size} to "
            f"measure, more than {MEMORY_SHARE:.0%} of the {have / 1e9:.1f} GB available; choose a smaller phi"
        )
    fast, exact = _ratio_functions(measurer, base, constraint)
    top = goal * (1.0 + tolerance)
    dropout = space.proxy.dropout.at(phi)

    specs: dict[tuple[Any, ...], ModelSpec] = {}
    for depth_spec in _depth_levels(space, base, top):
        resolution = base.resolution
        while resolution <= base.resolution * math.sqrt(top) + space.proxy.resolution_multiple:
            level = replace(depth_spec, resolution=resolution, dropout=dropout)
            resolution += space.proxy.resolution_multiple
            at_base_width = fast(level)
            if at_base_width > top:
                break
            options = [level] if abs(at_base_width / goal - 1.0) <= tolerance else []
            widened = width_for(level, goal, at_base_width, fast)
            if widened is not None:
                options.append(widened)
            for spec in options:
                specs.setdefault(_identity(family, spec), spec)
    networks = []
    for spec in specs.values():
        ratio = exact(spec)
        if abs(ratio / goal - 1.0) > tolerance:
            continue
        params, flops = measurer.measured(spec)
        depth, width, resolution_mult = measurer.realized(spec, base)
        if max(depth, width, resolution_mult) <= 1.0:
            continue  # the base itself (only possible with a budget band that contains 1)
        networks.append(
            Network(
                spec=spec,
                params=params,
                flops=flops,
                ratio=ratio,
                constraint=constraint,
                depth=depth,
                width=width,
                resolution=resolution_mult,
                flops_ratio=flops / measurer.measured(base)[1],
            )
        )
    networks.sort(key=lambda n: (n.shares.depth, n.shares.width, n.key))
    return RealizableSet(tuple(networks), goal=goal, tolerance=tolerance, phi=phi, constraint=constraint)


def _depth_levels(space: SearchSpace, base: ModelSpec, top: float) -> list[ModelSpec]:
    """One spec per distinct block layout from the base depth up to `top` × the base's blocks."""
    family = space.proxy_family
    levels: dict[tuple[int, ...], ModelSpec] = {}
    steps = int(math.ceil((top - 1.0) / DEPTH_STEP))
    for step in range(steps + 1):
        spec = replace(base, depth_mult=base.depth_mult * (1.0 + step * DEPTH_STEP))
        layout = tuple(stage.repeats for stage in family.stages(spec))
        if family.total_blocks(spec) > top * family.total_blocks(base):
            break
        levels.setdefault(layout, spec)
    return list(levels.values())


def _identity(family: Family, spec: ModelSpec) -> tuple[Any, ...]:
    """What makes two specs the same network: their stages and resolution."""
    return (tuple((s.channels, s.repeats) for s in family.stages(spec)), spec.resolution, spec.dropout)


def _cache_path(space: SearchSpace, num_classes: int, in_channels: int, phi: float, constraint: str) -> str | None:

    try:
        with open(space.path, "rb") as handle:
            content = handle.read()
    except OSError:
        return None
    identity = f"|{num_classes}|{in_channels}|{phi:g}|{constraint}|{space.target}|{space.tolerance}|v{PLANNER_VERSION}"
    key = hashlib.sha256(content + identity.encode()).hexdigest()[:24]
    return os.path.join(default_cache_dir(), "realizable", f"{space.name}-{key}.json")


def _read_cache(path: str) -> RealizableSet | None:
    """The cached set, or None when it is missing or damaged (then it is rebuilt)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return RealizableSet(
            networks=tuple(Network.from_dict(n) for n in data["networks"]),
            goal=float(data["goal"]),
            tolerance=float(data["tolerance"]),
            phi=float(data["phi"]),
            constraint=str(data["constraint"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: str, found: RealizableSet) -> None:
    """Best effort: a cache that cannot be written only costs time next run."""

    data = {
        "goal": found.goal,
        "tolerance": found.tolerance,
        "phi": found.phi,
        "constraint": found.constraint,
        "networks": [n.to_dict() for n in found.networks],
    }
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, data)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# Planning one proposal, and a family's variants at full scale


def plan(
    space: SearchSpace,
    shares: Shares,
    *,
    num_classes: int,
    in_channels: int,
    phi: float = 1.0,
    constraint: str = "flops",
) -> Network:
    """The realizable network at φ nearest the requested `shares`."""
    found = realizable_set(space, num_classes=num_classes, in_channels=in_channels, phi=phi, constraint=constraint)
    return found.nearest(shares)


def share_error(requested: Shares, network: Network) -> float:
    """How far the network trained lies from the shares that were asked for (L∞)."""
    return share_distance(requested, network.shares)


def requested_shares(coefficients: Coefficients, target: float) -> Shares:
    """The shares a set of coefficients asks for, normalised onto the simplex."""
    shares = compute_shares(coefficients, target=target)
    total = shares.total
    if total <= 0:
        raise UserError("coefficients of all 1 ask for no scaling")
    return Shares(shares.depth / total, shares.width / total, shares.resolution / total)


def describe(found: RealizableSet) -> list[dict[str, Any]]:
    """Rows for listing a realizable set: shares, multipliers and measured cost of each network."""
    rows = []
    for network in found.networks:
        shares = network.shares
        rows.append(
            {
                "network": network.key,
                "share_depth": round(shares.depth, 3),
                "share_width": round(shares.width, 3),
                "share_resolution": round(shares.resolution, 3),
                "depth": round(network.depth, 4),
                "width": round(network.width, 4),
                "resolution": network.spec.resolution,
                "params": network.params,
                "flops": network.flops,
                "ratio": round(network.ratio, 4),
            }
        )
    return rows
