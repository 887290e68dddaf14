"""Measuring networks for planning, cheaply and many times over: conv + linear MACs by forward hooks
(on the meta device for big models), fvcore FLOPs and params for the figures a run reports,
activations, latency ratios, and how much memory measuring a full-scale variant would take.
Cached per family and spec, so a realizable set or a calibration measures each network once.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalesearch.models.families import Family
    from scalesearch.models.spec import ModelSpec

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).


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
            from scalesearch.models.cost import measure_cost

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
            from scalesearch.models.cost import measure_activations

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
    if device == "meta":
        _drop_normalization(model)
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


def _drop_normalization(model: Any) -> None:
    """Replace normalization layers (shape-preserving, no conv/linear MACs) by identities: on the meta
    device their decomposed kernels took two thirds of a MACs count."""
    from torch import nn

    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm):
            setattr(model, name, nn.Identity())
        else:
            _drop_normalization(child)


def latency_ratio(family: Family, base_spec: ModelSpec, spec: ModelSpec) -> float:
    """Measured batch-1 CPU latency of `spec` over `base_spec` (alternating timings on one thread)."""
    from scalesearch.models.cost import LATENCY_REPEATS, LATENCY_THREADS, LATENCY_WARMUP, measure_latency_ratio

    return measure_latency_ratio(
        family.build(spec),
        family.build(base_spec),
        resolutions=(spec.resolution, base_spec.resolution),
        in_channels=spec.in_channels,
        threads=LATENCY_THREADS,
        warmup=LATENCY_WARMUP,
        repeats=LATENCY_REPEATS,
    )


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
