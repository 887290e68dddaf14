"""Coefficients → a scaled family (B0, B1, ...) with measured cost, and its renderings.

`family_table` builds and measures each variant and returns plain data (the stable JSON schema);
`render_family` turns it into a text table, JSON, YAML or Markdown. Used by `scalesearch family` and
by every search run's family.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients, compute_shares, validate_coefficients
from scalesearch.core.tables import markdown_table, text_table
from scalesearch.planning.planner import calibrate, check_fits

if TYPE_CHECKING:
    from scalesearch.config.spaces import SearchSpace
    from scalesearch.models.cost import Cost
    from scalesearch.models.spec import ModelSpec, StageInfo

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

FORMATS = ("table", "json", "yaml", "markdown")
# What defines a variant, first in every view of a family (the table here, export's variants).
VARIANT_KEYS = ("name", "phi", "depth_mult", "width_mult", "resolution", "dropout")
TABLE_COLUMNS = [*VARIANT_KEYS, "params", "gflops", "flops_ratio", "theoretical_ratio"]
# Extra columns of `family_table(..., costs=True)`, shown after the FLOPs ones.
COST_TABLE_COLUMNS = ["mactivations", "latency_ms", "throughput_ms", "train_memory_mb"]
# Batch sizes of the measured costs of a family (B7 at 600 px on a CPU: keep them small).
FAMILY_THROUGHPUT_BATCH = 8
FAMILY_MEMORY_BATCH = 2


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
    costs: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    calibrated: bool = True,
) -> dict[str, Any]:
    """Build and measure each variant; `coefficients=None` means the space's published reference table.

    Returns the JSON-ready family: coefficients, rule ("compound" or "reference"), the FLOPs
    convention, and one entry per φ with multipliers, stages, params, FLOPs, the FLOPs ratio to φ = 0
    and (compound only) the theoretical ratio (α·β²·γ²)^φ.

    `costs=True` also measures, on `device`, activations, latency at batch 1 and at
    FAMILY_THROUGHPUT_BATCH, and the peak memory of a training step at FAMILY_MEMORY_BATCH (opt-in:
    B7 at 600 px takes minutes on a CPU), with `threads` torch threads (default: torch's current
    count). The variants then carry those fields and `cost_conventions` says how they were measured.

    `calibrated=True` (default) plans each compound variant onto its budget target^φ at full scale
    (`planner.calibrate`: along the rule's own direction, then width), as the search plans its
    proxies; each variant records the pure rule's multipliers beside the calibrated ones.
    `calibrated=False` gives the pure rule.
    """
    from scalesearch.models.cost import FLOPS_CONVENTION, torch_threads

    _check_request(space, coefficients, phis, num_classes=num_classes, in_channels=in_channels)
    plan = _FamilyPlan(space, coefficients, calibrated=calibrated, num_classes=num_classes, in_channels=in_channels)
    # More threads than free cores makes CPU timings erratic (spinning workers wait on each other).
    with torch_threads(threads) as used_threads:
        variants = plan.rows(phis, costs=costs, device=device, on_variant=on_variant)
    extra = {"cost_conventions": _cost_conventions(device, used_threads)} if costs else {}
    return {
        "space": space.name,
        "family": space.family_name,
        "coefficients": None if coefficients is None else _coefficient_block(space, coefficients),
        "rule": "reference" if coefficients is None else ("compound, calibrated" if calibrated else "compound"),
        "rule_description": _rule_description(space, coefficients, calibrated),
        "flops_convention": FLOPS_CONVENTION,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "variants": variants,
        **extra,
    }


def _check_request(
    space: SearchSpace, coefficients: Coefficients | None, phis: Sequence[float], *, num_classes: int, in_channels: int
) -> None:
    """UserError for variants that cannot be built: a φ the reference table lacks, coefficients off
    the space's target, or variants too big to measure here."""
    if coefficients is None:
        if not space.reference:
            raise UserError(f"search space {space.name!r} has no published reference table")
        for phi in phis:
            if phi != int(phi) or not 0 <= phi < len(space.reference):
                last = len(space.reference) - 1
                raise UserError(f"the reference table has variants 0-{last}; phi {phi:g} is not one of them")
        return

    validate_coefficients(coefficients, target=space.target, tolerance=space.tolerance)
    check_fits(space, coefficients, phis, num_classes=num_classes, in_channels=in_channels)


class _FamilyPlan:
    """Which network each φ of a family is, and its measured row."""

    def __init__(
        self,
        space: SearchSpace,
        coefficients: Coefficients | None,
        *,
        calibrated: bool,
        num_classes: int,
        in_channels: int,
    ) -> None:
        self.space = space
        self.coefficients = coefficients
        self.calibrated = calibrated
        self.image = {"num_classes": num_classes, "in_channels": in_channels}

    def spec_at(self, phi: float) -> ModelSpec:
        """The reference table's variant, the calibrated variant or the pure rule's, at φ."""
        space, coefficients = self.space, self.coefficients
        if coefficients is None:
            return space.reference_spec(space.reference[int(phi)], **self.image)
        if self.calibrated:
            return calibrate(space, coefficients, phi, **self.image).spec
        return space.scaled_spec(coefficients, phi, **self.image)

    def measure(self, spec: ModelSpec) -> tuple[Cost, list[StageInfo]]:
        """Params and FLOPs of the built variant, and its stages."""
        from scalesearch.models.cost import measure_cost

        model = self.space.family.build(spec)
        cost = measure_cost(model, resolution=spec.resolution, in_channels=self.image["in_channels"])
        return cost, self.space.family.stages(spec)

    def row(self, phi: float, spec: ModelSpec, cost: Cost, base_cost: Cost, stages: list[StageInfo]) -> dict[str, Any]:
        """The variant's entry of family.json: multipliers, stages, cost, ratios (and the pure rule's multipliers)."""
        space, coefficients = self.space, self.coefficients
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
            "target_ratio": None if coefficients is None else round(space.target**phi, 4),
            "uncounted_ops": cost.uncounted_ops,
        }
        if coefficients is not None:
            rule = space.scaled_spec(coefficients, phi, **self.image)
            row["rule"] = {
                "depth_mult": round(rule.depth_mult, 6),
                "width_mult": round(rule.width_mult, 6),
                "resolution": rule.resolution,
            }
            row["calibrated"] = spec != rule
        return row

    def runtime_costs(self, spec: ModelSpec, device: str) -> dict[str, Any]:
        """Activations, latency and training memory of the variant on `device` (`costs=True`)."""
        from scalesearch.models.cost import measure_runtime_costs

        measured = measure_runtime_costs(
            self.space.family.build(spec),
            resolution=spec.resolution,
            in_channels=self.image["in_channels"],
            device=device,
            latency_batch=FAMILY_THROUGHPUT_BATCH,
            memory_batch=FAMILY_MEMORY_BATCH,
            num_classes=self.image["num_classes"],
        )
        return {**measured, "cost_device": device}

    def rows(
        self,
        phis: Sequence[float],
        *,
        costs: bool,
        device: str,
        on_variant: Callable[[dict[str, Any]], None] | None,
    ) -> list[dict[str, Any]]:
        """Each φ's row, measured in turn (φ = 0 is the base, measured once), with its runtime costs
        on `device` when `costs`; `on_variant` sees each row as it is done."""
        base_cost, _ = self.measure(self.spec_at(0.0))
        variants = []
        for phi in phis:
            spec = self.spec_at(phi)
            cost, stages = (base_cost, self.space.family.stages(spec)) if phi == 0 else self.measure(spec)
            row = self.row(phi, spec, cost, base_cost, stages)
            if costs:
                row.update(self.runtime_costs(spec, device))
            variants.append(row)
            if on_variant is not None:
                on_variant(row)
        return variants


def _coefficient_block(space: SearchSpace, coefficients: Coefficients) -> dict[str, Any]:
    """family.json's coefficients: α, β, γ, the target they meet, their product and compute shares."""
    shares = compute_shares(coefficients, target=space.target)
    return {
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


def _rule_description(space: SearchSpace, coefficients: Coefficients | None, calibrated: bool) -> str:
    """In words, how the variants were made: the published table, or the rule with its rounding."""
    if coefficients is None:
        return f"the published, hand-adjusted table in {space.name}"
    text = (
        "depth = alpha^phi, width = beta^phi, resolution = gamma^phi, "
        f"resolution rounded to a multiple of {space.base.resolution_multiple}, "
        "channels to the family's divisor, repeats up"
    )
    if calibrated:
        text += (
            f"; each variant then moved along the rule's direction (and width) until its FLOPs are "
            f"target^phi within ±{space.tolerance / 2:.1%} (MACs), the pure rule's multipliers under 'rule'"
        )
    return text


def _cost_conventions(device: str, threads: int) -> dict[str, str]:
    """How the costs of `costs=True` were measured."""
    from scalesearch.models.cost import ACTIVATIONS_CONVENTION, MEMORY_CONVENTION

    return {
        "activations": ACTIVATIONS_CONVENTION,
        "latency": f"median of 5 forward passes after 2 warm-up, on {device}, {threads} "
        f"torch thread(s); batch 1 and batch {FAMILY_THROUGHPUT_BATCH}",
        "memory": f"{MEMORY_CONVENTION}; batch {FAMILY_MEMORY_BATCH}",
    }


def with_evidence(
    family: dict[str, Any],
    *,
    native: int | None,
    searched_phi: float | None,
    checks: Mapping[float, str] | None = None,
) -> dict[str, Any]:
    """The family with what backs each variant, said plainly.

    Each variant gets `upsampling` (its resolution is above the data's native `native` px: pixels the
    data does not have) and `check`: what `scalesearch validate` said of the rule against the best
    single dimension at that φ at proxy scale ("better", "tied", "worse", "same network", "no call"),
    "base" for φ = 0, "unchecked" where no validation ran. The family's `evidence` block records the
    native size, the φ the search trained at, the φ values checked and up to which φ.
    """
    checks = dict(checks or {})
    variants = []
    for variant in family["variants"]:
        phi = float(variant["phi"])
        check = "base" if phi == 0 else checks.get(phi, "unchecked")
        upsampling = None if native is None else bool(variant["resolution"] > native)
        variants.append({**variant, "upsampling": upsampling, "check": check})
    evidence = {
        "data_native_px": native,
        "searched_phi": searched_phi,
        "checked_phis": sorted(checks),
        "checked_up_to_phi": max(checks) if checks else None,
        "meaning": (
            "check: scalesearch validate's verdict for the rule against the best single dimension at the "
            "same phi at proxy scale (the family's phi = k variant costs 2^k x B0, as the proxy checked at "
            "phi = k costs 2^k x the proxy base); unchecked: no validation at that phi. upsampling: the "
            "variant's resolution is above the data's native size"
        ),
    }
    return {**family, "variants": variants, "evidence": evidence}


def evidence_line(family: dict[str, Any]) -> str:
    """One line: the data's native size, how far the rule was checked and what the check said."""
    evidence = family.get("evidence")
    if not evidence:
        return ""
    checked = [v for v in family["variants"] if v.get("check") not in (None, "base", "unchecked")]
    unchecked = [v["name"] for v in family["variants"] if v.get("check") == "unchecked"]
    upsampled = [v["name"] for v in family["variants"] if v.get("upsampling")]
    parts = []
    if evidence.get("data_native_px"):
        parts.append(
            f"data {evidence['data_native_px']} px: "
            + (f"{', '.join(upsampled)} upsample (resolution above it)" if upsampled else "no variant upsamples")
        )
    if checked:
        said = ", ".join(f"phi {v['phi']:g} {v['check']}" for v in checked)
        parts.append(f"rule checked against single dimensions up to phi {evidence['checked_up_to_phi']:g} ({said})")
    else:
        parts.append("rule not checked against single dimensions (scalesearch validate)")
    if unchecked:
        parts.append(f"unchecked: {', '.join(unchecked)}")
    return "; ".join(parts)


def _summary_rows(family: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants with the table's derived columns (GFLOPs; MActivations, ms and MB when measured)."""
    rows = []
    for v in family["variants"]:
        row = {**v, "gflops": round(v["flops"] / 1e9, 4) if v["flops"] >= 1e7 else v["flops"] / 1e9}
        if "upsampling" in v:
            row["upsampling"] = "" if v["upsampling"] is None else ("yes" if v["upsampling"] else "no")
        if "latency_batch1_s" in v:
            row.update(
                mactivations=round(v["activations"] / 1e6, 3),
                latency_ms=round(v["latency_batch1_s"] * 1e3, 2),
                throughput_ms=round(v["latency_throughput_s"] * 1e3, 2),
                train_memory_mb=round(v["peak_train_memory_bytes"] / 2**20, 1),
            )
        rows.append(row)
    return rows


def _header(family: dict[str, Any]) -> str:
    """The table's first line: the space and its rule."""
    c = family["coefficients"]
    if c is None:
        return f"{family['space']}: {family['rule_description']}"
    return (
        f"{family['space']}: alpha={c['alpha']:.4g} beta={c['beta']:.4g} gamma={c['gamma']:.4g} "
        f"(alpha*beta^2*gamma^2 = {c['product']:.4f}, target {c['target']:g}); rule: {family['rule']}"
    )


def _cost_note(family: dict[str, Any]) -> str:
    """A line on how activations, latency and memory were measured ('' when they were not)."""
    conventions = family.get("cost_conventions", {})
    return (
        f"mactivations: millions of {conventions.get('activations', 'activations')}; latency_ms / "
        f"throughput_ms: {conventions.get('latency', 'measured latency')}; train_memory_mb: "
        f"{conventions.get('memory', 'peak training-step memory')}.\n"
    )


def render_data(data: dict[str, Any], fmt: str, *, comment: str = "") -> str | None:
    """`data` as 'json' or 'yaml' (YAML led by `comment` as a # line); None for any other format."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return (f"# {comment}\n" if comment else "") + str(yaml.safe_dump(data, sort_keys=False))
    return None


def render_family(family: dict[str, Any], fmt: str) -> str:
    """The family as 'table' (text), 'json', 'yaml' or 'markdown'."""

    as_data = render_data(family, fmt)
    if as_data is not None:
        return as_data
    rows = _summary_rows(family)
    columns = TABLE_COLUMNS if family["coefficients"] is not None else TABLE_COLUMNS[:-1]
    has_costs = bool(family["variants"]) and "latency_batch1_s" in family["variants"][0]
    if has_costs:
        columns = [*columns, *COST_TABLE_COLUMNS]
    if "evidence" in family:
        columns = [*columns, "upsampling", "check"]
    cost_note = _cost_note(family) if has_costs else ""
    evidence = evidence_line(family)
    stage_lines = [
        f"{v['name']}: " + " ".join(f"{s['channels']}x{s['repeats']}" for s in v["stages"]) for v in family["variants"]
    ]
    if fmt == "markdown":
        return (
            f"**{_header(family)}**\n\nFLOPs: {family['flops_convention']}.\n\n"
            + (f"Evidence: {evidence}.\n\n" if evidence else "")
            + markdown_table(rows, columns)
            + "\n\nStages (channels x repeats, stem ... head):\n\n"
            + "\n".join(f"- {line}" for line in stage_lines)
            + "\n"
            + (f"\n{cost_note}" if cost_note else "")
        )
    if fmt == "table":
        return (
            _header(family)
            + "\n\n"
            + text_table(rows, columns)
            + "\n\nstages (channels x repeats, stem ... head):\n"
            + "\n".join(f"  {line}" for line in stage_lines)
            + f"\nFLOPs: {family['flops_convention']}\n"
            + (f"evidence: {evidence}\n" if evidence else "")
            + cost_note
        )
    raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
