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
3. `calibrate` plans a family's variant at full scale (B1..B7 of the target base) onto its budget
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from scalesearch.errors import UserError
from scalesearch.scaling import (
    Coefficients,
    Shares,
    coefficients_from_shares,
    compute_shares,
    realized_shares,
    share_distance,
    simplex_lattice,
)

if TYPE_CHECKING:
    from scalesearch.families import Family, ModelSpec
    from scalesearch.spaces import SearchSpace

# Bump when the enumeration changes, so cached sets are rebuilt.
PLANNER_VERSION = 2
# Depth levels are found by stepping the depth multiplier this finely (relative to the base).
DEPTH_STEP = 0.01
# Width bisection steps per (depth, resolution) level.
WIDTH_STEPS = 8
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
        from scalesearch.families import ModelSpec

        return cls(**{**data, "spec": ModelSpec(**data["spec"])})


@dataclass(frozen=True)
class RealizableSet:
    """The networks on one budget band, and how well they cover the shares simplex."""

    networks: tuple[Network, ...]
    goal: float  # target^φ
    tolerance: float
    phi: float
    constraint: str

    @property
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
# Measuring networks


class Measurer:
    """Costs of one family's networks for one input shape, cached by spec."""

    def __init__(self, family: Family, in_channels: int) -> None:
        self.family = family
        self.in_channels = in_channels
        self._macs: dict[ModelSpec, int] = {}
        self._fvcore: dict[ModelSpec, tuple[int, int]] = {}
        self._activations: dict[ModelSpec, int] = {}

    def macs(self, spec: ModelSpec) -> int:
        """Conv + linear multiply-adds at batch 1, by forward hooks (fast: no trace)."""
        if spec not in self._macs:
            self._macs[spec] = count_macs(self.family, spec)
        return self._macs[spec]

    def measured(self, spec: ModelSpec) -> tuple[int, int]:
        """(params, FLOPs) by fvcore: the figures a run reports."""
        if spec not in self._fvcore:
            from scalesearch.cost import measure_cost

            cost = measure_cost(self.family.build(spec), resolution=spec.resolution, in_channels=spec.in_channels)
            self._fvcore[spec] = (cost.params, cost.flops)
        return self._fvcore[spec]

    def params(self, spec: ModelSpec) -> int:
        """Parameters, counted without fvcore."""
        import torch

        with torch.device("meta"):
            model = self.family.build(spec)
        return sum(p.numel() for p in model.parameters())

    def activations(self, spec: ModelSpec) -> int:
        """Conv/linear output elements at batch 1 (exact)."""
        if spec not in self._activations:
            from scalesearch.cost import measure_activations

            model = self.family.build(spec)
            self._activations[spec] = measure_activations(
                model, resolution=spec.resolution, in_channels=spec.in_channels
            )
        return self._activations[spec]

    def realized(self, spec: ModelSpec, base: ModelSpec) -> tuple[float, float, float]:
        """(depth, width, resolution) multipliers of `spec` against `base`, each by its effect on
        MACs, taken in that order (see the module docstring): their d·w²·r² is the MACs ratio."""
        depth_only = replace(base, depth_mult=spec.depth_mult)
        no_resolution = replace(spec, resolution=base.resolution)
        depth = self.macs(depth_only) / self.macs(base)
        width = math.sqrt(self.macs(no_resolution) / self.macs(depth_only))
        resolution = math.sqrt(self.macs(spec) / self.macs(no_resolution))
        return depth, width, resolution


@lru_cache(maxsize=16)
def measurer_for(family: Family, in_channels: int) -> Measurer:
    """One Measurer per family object and input channels, so its caches live as long as the process."""
    return Measurer(family, in_channels)


def count_macs(family: Family, spec: ModelSpec) -> int:
    """Conv + linear multiply-adds of `spec` for one image; large models are built on the meta device,
    where the forward pass only propagates shapes."""
    import torch
    from torch import nn

    device = "meta" if spec.resolution * spec.width_mult >= 64 else "cpu"
    with torch.device(device):
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
    try:
        with torch.inference_mode():
            model(torch.zeros(1, spec.in_channels, spec.resolution, spec.resolution, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return macs


def latency_ratio(family: Family, base_spec: ModelSpec, spec: ModelSpec) -> float:
    """Measured batch-1 CPU latency of `spec` over `base_spec` (alternating timings on one thread)."""
    from scalesearch.cost import LATENCY_REPEATS, LATENCY_THREADS, LATENCY_WARMUP, measure_latency_ratio

    return measure_latency_ratio(
        family.build(spec),
        family.build(base_spec),
        resolutions=(spec.resolution, base_spec.resolution),
        in_channels=spec.in_channels,
        threads=LATENCY_THREADS,
        warmup=LATENCY_WARMUP,
        repeats=LATENCY_REPEATS,
    )


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
    from scalesearch.cost import constraint_names

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
    import torch

    # Counting is a stream of tiny forward passes: one thread is fastest, and on a loaded machine
    # more threads spin against each other (measured: 18 ms per count alone, 250 ms under load).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _enumerate_networks(
            space, num_classes=num_classes, in_channels=in_channels, phi=phi, constraint=constraint
        )
    finally:
        torch.set_num_threads(previous)


def _enumerate_networks(
    space: SearchSpace, *, num_classes: int, in_channels: int, phi: float, constraint: str
) -> RealizableSet:
    family = space.proxy_family
    measurer = measurer_for(family, in_channels)
    base = proxy_base(space, num_classes=num_classes, in_channels=in_channels)
    goal, tolerance = space.target**phi, space.tolerance
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
            widened = _width_for(level, goal, at_base_width, fast)
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


def _width_for(
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


def _identity(family: Family, spec: ModelSpec) -> tuple[Any, ...]:
    """What makes two specs the same network: their stages and resolution."""
    return (tuple((s.channels, s.repeats) for s in family.stages(spec)), spec.resolution, spec.dropout)


def _cache_path(space: SearchSpace, num_classes: int, in_channels: int, phi: float, constraint: str) -> str | None:
    from scalesearch.data import default_cache_dir

    try:
        with open(space.path, "rb") as handle:
            content = handle.read()
    except OSError:
        return None
    key = hashlib.sha256(
        content
        + f"|{num_classes}|{in_channels}|{phi:g}|{constraint}|{space.target}|{space.tolerance}|v{PLANNER_VERSION}".encode()
    ).hexdigest()[:24]
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
    from scalesearch.results import atomic_write_json

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

    def miss(spec: ModelSpec) -> float:
        return measurer.macs(spec) / base_macs / goal - 1.0

    step = math.log(max(coefficients.product, 1.0 + 1e-6))
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
    _, t, spec = best
    if best[0] > band:
        # Whole blocks can straddle the band; channels are the finer knob, and when a channel step
        # (a divisor of 8 across many blocks) is still too coarse, a few pixels of resolution are.
        narrower = replace(spec, width_mult=spec.width_mult * 0.9)
        widened = _width_for(
            narrower, goal, measurer.macs(narrower) / base_macs, lambda s: measurer.macs(s) / base_macs
        )
        options = [spec, *([widened] if widened else [])]
        multiple = space.base.resolution_multiple
        nudged = [
            replace(option, resolution=option.resolution + step * multiple)
            for option in options
            for step in (0, -1, 1, -2, 2, -3, 3)
            if option.resolution + step * multiple >= space.base.resolution
        ]
        spec = min(nudged, key=lambda s: (round(abs(miss(s)), 3), abs(s.resolution - rule.resolution)))
    return Calibrated(rule=rule, spec=spec, effective_phi=t)


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


def describe(found: RealizableSet, base_flops: int | None = None) -> list[dict[str, Any]]:
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


def spread_points(found: RealizableSet, count: int) -> Sequence[Network]:
    """An evenly spread subset of `count` networks (all when `count` is larger)."""
    return found.spread(count)


# Measuring a variant (fvcore traces a real forward pass at batch 1) needs its weights and about
# its activations in memory; refuse variants whose estimate exceeds this share of available memory.
MEMORY_SHARE = 0.5


def memory_estimate(family: Family, base: ModelSpec, depth: float, width: float, resolution: float) -> int:
    """Peak bytes of measuring `base` scaled by the multipliers: float32 weights (∝ d·w²) plus three
    times its largest layer output at batch 1 (∝ w·r²; a no-grad pass frees outputs as it goes), from
    one meta-device pass over the base: seconds even for a variant far too big to build."""
    import torch

    with torch.device("meta"):
        model = family.build(base).eval()
    weights = sum(p.numel() for p in model.parameters())
    largest = 0

    def count(module: Any, inputs: Any, output: Any) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, base.in_channels, base.resolution, base.resolution, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return int(4 * (weights * depth * width**2 + 3 * largest * width * resolution**2))


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or the physical total."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


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
    depth, width, resolution = (value**phi for value in (coefficients.alpha, coefficients.beta, coefficients.gamma))
    need, have = memory_estimate(space.family, base, depth, width, resolution), available_memory()
    if need > MEMORY_SHARE * have:
        raise UserError(
            f"the variant at phi={phi:g} needs about {need / 1e9:,.1f} GB to measure, more than "
            f"{MEMORY_SHARE:.0%} of the {have / 1e9:.1f} GB available; choose smaller --phis"
        )
