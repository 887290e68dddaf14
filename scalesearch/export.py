"""Coefficients → a scaled family (B0, B1, ...) with measured cost, and its renderings.

`family_table` returns plain data (the stable JSON schema); `render_family` turns it into a text
table, JSON, YAML or Markdown. Used by `scalesearch family` and by every search run's family.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from scalesearch.errors import UserError
from scalesearch.scaling import Coefficients, compute_shares, validate_coefficients
from scalesearch.spaces import SearchSpace

FORMATS = ("table", "json", "yaml", "markdown")
TABLE_COLUMNS = [
    "name",
    "phi",
    "depth_mult",
    "width_mult",
    "resolution",
    "dropout",
    "params",
    "gflops",
    "flops_ratio",
    "theoretical_ratio",
]


def variant_name(phi: float, prefix: str = "B") -> str:
    """B0, B1, ... for whole φ; B2.5 for fractional φ."""
    return f"{prefix}{phi:g}"


def family_table(
    space: SearchSpace,
    coefficients: Coefficients | None,
    phis: Sequence[float],
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    on_variant: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build and measure each variant; `coefficients=None` means the space's published reference table.

    Returns the JSON-ready family: coefficients, rule ("compound" or "reference"), the FLOPs
    convention, and one entry per φ with multipliers, stages, params, FLOPs, the FLOPs ratio to φ = 0
    and (compound only) the theoretical ratio (α·β²·γ²)^φ.
    """
    from scalesearch.cost import FLOPS_CONVENTION, measure_cost
    from scalesearch.families import ModelSpec

    if coefficients is None:
        if not space.reference:
            raise UserError(f"search space {space.name!r} has no published reference table")
        for phi in phis:
            if phi != int(phi) or not 0 <= phi < len(space.reference):
                last = len(space.reference) - 1
                raise UserError(f"the reference table has variants 0-{last}; phi {phi:g} is not one of them")
    else:
        validate_coefficients(coefficients, target=space.target, tolerance=space.tolerance)

    def spec_at(phi: float) -> ModelSpec:
        if coefficients is None:
            variant = space.reference[int(phi)]
            return space.reference_spec(variant, num_classes=num_classes, in_channels=in_channels)
        return space.scaled_spec(coefficients, phi, num_classes=num_classes, in_channels=in_channels)

    def measure(spec: ModelSpec) -> tuple[Any, list[Any]]:
        model = space.family.build(spec)
        return measure_cost(model, resolution=spec.resolution, in_channels=in_channels), space.family.stages(spec)

    base_cost, _ = measure(spec_at(0.0))
    variants = []
    for phi in phis:
        spec = spec_at(phi)
        cost, stages = (base_cost, None) if phi == 0 else measure(spec)
        stages = stages if stages is not None else space.family.stages(spec)
        row = {
            "name": space.reference[int(phi)].name if coefficients is None else variant_name(phi, space.variant_prefix),
            "phi": phi,
            "depth_mult": round(spec.depth_mult, 6),
            "width_mult": round(spec.width_mult, 6),
            "resolution": spec.resolution,
            "dropout": spec.dropout,
            "stages": [{"name": s.name, "channels": s.channels, "repeats": s.repeats} for s in stages],
            "params": cost.params,
            "flops": cost.flops,
            "flops_ratio": round(cost.flops / base_cost.flops, 4),
            "theoretical_ratio": None if coefficients is None else round(coefficients.product**phi, 4),
            "uncounted_ops": cost.uncounted_ops,
        }
        variants.append(row)
        if on_variant is not None:
            on_variant(row)
    coefficient_block = None
    if coefficients is not None:
        shares = compute_shares(coefficients, target=space.target)
        coefficient_block = {
            **coefficients.as_dict(),
            "target": space.target,
            "tolerance": space.tolerance,
            "product": round(coefficients.product, 6),
            "shares": {
                "depth": round(shares.depth, 4),
                "width": round(shares.width, 4),
                "resolution": round(shares.resolution, 4),
            },
        }
    return {
        "space": space.name,
        "family": space.family_name,
        "coefficients": coefficient_block,
        "rule": "reference" if coefficients is None else "compound",
        "rule_description": (
            f"the published, hand-adjusted table in {space.name}"
            if coefficients is None
            else "depth = alpha^phi, width = beta^phi, resolution = gamma^phi, "
            f"resolution rounded to a multiple of {space.base.resolution_multiple}, "
            "channels to the family's divisor, repeats up"
        ),
        "flops_convention": FLOPS_CONVENTION,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "variants": variants,
    }


def _summary_rows(family: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for v in family["variants"]:
        rows.append({**v, "gflops": round(v["flops"] / 1e9, 4) if v["flops"] >= 1e7 else v["flops"] / 1e9})
    return rows


def _header(family: dict[str, Any]) -> str:
    c = family["coefficients"]
    if c is None:
        return f"{family['space']}: {family['rule_description']}"
    return (
        f"{family['space']}: alpha={c['alpha']:.4g} beta={c['beta']:.4g} gamma={c['gamma']:.4g} "
        f"(alpha*beta^2*gamma^2 = {c['product']:.4f}, target {c['target']:g}); rule: compound"
    )


def render_family(family: dict[str, Any], fmt: str) -> str:
    """The family as 'table' (text), 'json', 'yaml' or 'markdown'."""
    from scalesearch.tables import markdown_table, text_table

    if fmt == "json":
        return json.dumps(family, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(family, sort_keys=False))
    rows = _summary_rows(family)
    columns = TABLE_COLUMNS if family["coefficients"] is not None else TABLE_COLUMNS[:-1]
    stage_lines = [
        f"{v['name']}: " + " ".join(f"{s['channels']}x{s['repeats']}" for s in v["stages"]) for v in family["variants"]
    ]
    if fmt == "markdown":
        return (
            f"**{_header(family)}**\n\nFLOPs: {family['flops_convention']}.\n\n"
            + markdown_table(rows, columns)
            + "\n\nStages (channels x repeats, stem ... head):\n\n"
            + "\n".join(f"- {line}" for line in stage_lines)
            + "\n"
        )
    if fmt == "table":
        return (
            _header(family)
            + "\n\n"
            + text_table(rows, columns)
            + "\n\nstages (channels x repeats, stem ... head):\n"
            + "\n".join(f"  {line}" for line in stage_lines)
            + f"\nFLOPs: {family['flops_convention']}\n"
        )
    raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
