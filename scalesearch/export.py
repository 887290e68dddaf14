"""Coefficients → a scaled family (B0, B1, ...) with measured cost, and its renderings.

`family_table` returns plain data (the stable JSON schema); `render_family` turns it into a text
table, JSON, YAML or Markdown. Used by `scalesearch family` and by every search run's family.json.

`rule_export` turns a finished run into the discovered rule as data, and `render_export` writes it as
JSON, YAML, a standalone Python module, or the arguments timm and torchvision take (`scalesearch export`).
"""

from __future__ import annotations

import json
import math
import pprint
import string
from collections.abc import Callable, Sequence
from typing import Any

from scalesearch.errors import UserError
from scalesearch.runs import Run, read_run, run_space  # noqa: F401  (re-exported for callers)
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
        from scalesearch.planner import check_fits

        validate_coefficients(coefficients, target=space.target, tolerance=space.tolerance)
        check_fits(space, coefficients, phis, num_classes=num_classes, in_channels=in_channels)

    def spec_at(phi: float) -> ModelSpec:
        if coefficients is None:
            variant = space.reference[int(phi)]
            return space.reference_spec(variant, num_classes=num_classes, in_channels=in_channels)
        if calibrated:
            from scalesearch.planner import calibrate

            return calibrate(space, coefficients, phi, num_classes=num_classes, in_channels=in_channels).spec
        return space.scaled_spec(coefficients, phi, num_classes=num_classes, in_channels=in_channels)

    def measure(spec: ModelSpec) -> tuple[Any, list[Any]]:
        model = space.family.build(spec)
        return measure_cost(model, resolution=spec.resolution, in_channels=in_channels), space.family.stages(spec)

    def measure_more(spec: ModelSpec) -> dict[str, Any]:
        from scalesearch.cost import measure_activations, measure_latency, measure_train_memory

        model = space.family.build(spec)
        image = {"resolution": spec.resolution, "in_channels": in_channels}
        return {
            "activations": measure_activations(model, **image),
            "latency_batch1_s": measure_latency(model, **image, batch_size=1, device=device),
            "latency_throughput_s": measure_latency(model, **image, batch_size=FAMILY_THROUGHPUT_BATCH, device=device),
            "throughput_batch": FAMILY_THROUGHPUT_BATCH,
            "peak_train_memory_bytes": measure_train_memory(
                model, **image, batch_size=FAMILY_MEMORY_BATCH, device=device, num_classes=num_classes
            ),
            "memory_batch": FAMILY_MEMORY_BATCH,
            "cost_device": device,
        }

    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        # More threads than free cores makes CPU timings erratic (spinning workers wait on each other).
        torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()
    prefix = space.variant_prefix
    try:
        base_cost, _ = measure(spec_at(0.0))
        variants = []
        for phi in phis:
            spec = spec_at(phi)
            cost, stages = (base_cost, None) if phi == 0 else measure(spec)
            stages = stages if stages is not None else space.family.stages(spec)
            row = {
                "name": space.reference[int(phi)].name if coefficients is None else variant_name(phi, prefix),
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
                rule = space.scaled_spec(coefficients, phi, num_classes=num_classes, in_channels=in_channels)
                row["rule"] = {
                    "depth_mult": round(rule.depth_mult, 6),
                    "width_mult": round(rule.width_mult, 6),
                    "resolution": rule.resolution,
                }
                row["calibrated"] = spec != rule
            if costs:
                row.update(measure_more(spec))
            variants.append(row)
            if on_variant is not None:
                on_variant(row)
    finally:
        torch.set_num_threads(previous_threads)
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
    extra: dict[str, Any] = {}
    if costs:
        from scalesearch.cost import ACTIVATIONS_CONVENTION, MEMORY_CONVENTION

        extra["cost_conventions"] = {
            "activations": ACTIVATIONS_CONVENTION,
            "latency": f"median of 5 forward passes after 2 warm-up, on {device}, {used_threads} "
            f"torch thread(s); batch 1 and batch {FAMILY_THROUGHPUT_BATCH}",
            "memory": f"{MEMORY_CONVENTION}; batch {FAMILY_MEMORY_BATCH}",
        }
    return {
        "space": space.name,
        "family": space.family_name,
        "coefficients": coefficient_block,
        "rule": "reference" if coefficients is None else ("compound, calibrated" if calibrated else "compound"),
        "rule_description": (
            f"the published, hand-adjusted table in {space.name}"
            if coefficients is None
            else "depth = alpha^phi, width = beta^phi, resolution = gamma^phi, "
            f"resolution rounded to a multiple of {space.base.resolution_multiple}, "
            "channels to the family's divisor, repeats up"
            + (
                f"; each variant then moved along the rule's direction (and width) until its FLOPs are "
                f"target^phi within ±{space.tolerance / 2:.1%} (MACs), the pure rule's multipliers under 'rule'"
                if calibrated
                else ""
            )
        ),
        "flops_convention": FLOPS_CONVENTION,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "variants": variants,
        **extra,
    }


def _summary_rows(family: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for v in family["variants"]:
        row = {**v, "gflops": round(v["flops"] / 1e9, 4) if v["flops"] >= 1e7 else v["flops"] / 1e9}
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
    has_costs = bool(family["variants"]) and "latency_batch1_s" in family["variants"][0]
    if has_costs:
        columns = [*columns, *COST_TABLE_COLUMNS]
    cost_note = ""
    if has_costs:
        conventions = family.get("cost_conventions", {})
        cost_note = (
            f"mactivations: millions of {conventions.get('activations', 'activations')}; latency_ms / "
            f"throughput_ms: {conventions.get('latency', 'measured latency')}; train_memory_mb: "
            f"{conventions.get('memory', 'peak training-step memory')}.\n"
        )
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
            + cost_note
        )
    raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


# --------------------------------------------------------------------------------------------------
# A finished run, and its rule as data for other tools

EXPORT_FORMATS = ("json", "yaml", "python", "timm", "torchvision")
EXPORT_VARIANT_KEYS = (
    "name",
    "phi",
    "depth_mult",
    "width_mult",
    "resolution",
    "dropout",
    "stages",
    "params",
    "flops",
    "flops_ratio",
)
# The stages of EfficientNet-B0 (Tan & Le 2019, Table 1) as (expand, kernel, stride, channels, repeats),
# with stem 32 and head 1280: timm's and torchvision's B0..B7 builders scale exactly this network.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def inline_stages(space: SearchSpace) -> list[tuple[str, int, int]] | None:
    """The base stages as (name, channels, repeats) when the inline rule reproduces the family's.

    The standalone module scales channels with make_divisible(c·w, divisor) and repeats with
    ceil(r·d) (stem and head keep one), the official EfficientNet rules. Families that round
    otherwise (depth_rounding "total", ResNet, ViT) return None, and the module leaves stages out.
    """
    from scalesearch.families.efficientnet import EfficientNetFamily

    family = space.family
    if not isinstance(family, EfficientNetFamily) or family.depth_rounding != "ceil":
        return None
    return (
        [("stem", family.stem_channels, 1)]
        + [(f"stage{i}", stage.channels, stage.repeats) for i, stage in enumerate(family.stage_table, start=1)]
        + [("head", family.head_channels, 1)]
    )


def _scale_inline(stages: Sequence[tuple[str, int, int]], width: float, depth: float, divisor: int) -> list[dict]:
    """Stages scaled by the inline rule, with scalesearch's own rounding helpers (to check the module's)."""
    from scalesearch.scaling import make_divisible, round_repeats

    return [
        {
            "name": name,
            "channels": make_divisible(channels * width, divisor=divisor),
            "repeats": repeats if name in ("stem", "head") else round_repeats(repeats, depth),
        }
        for name, channels, repeats in stages
    ]


def _is_b0(space: SearchSpace) -> bool:
    """Whether the space's base network is EfficientNet-B0 itself (what timm and torchvision scale)."""
    from scalesearch.families.efficientnet import EfficientNetFamily

    family = space.family
    if not isinstance(family, EfficientNetFamily):
        return False
    table = tuple((s.expand, s.kernel, s.stride, s.channels, s.repeats) for s in family.stage_table)
    return table == B0_STAGES and (family.stem_channels, family.head_channels) == (32, 1280)


def rule_export(run: Run) -> dict[str, Any]:
    """The run's rule and family as plain data: what `scalesearch export` renders in every format.

    Holds the rule ("compound": α^φ, β^φ, γ^φ with the rounding stated; "reference": a table), the
    coefficients, the base it scales (resolution, its rounding multiple, the dropout rule, the
    channel divisor and, when the inline rule reproduces them, the base stages), where the rule came
    from (dataset, trial, accuracy), and family.json's variants.
    """
    if run.family is None:
        raise UserError(f"{run.path / 'family.json'} not found: the run did not finish writing its family")
    space = run_space(run)
    family = run.family
    divisor = int(getattr(space.family, "channel_divisor", 8))
    stages = inline_stages(space)
    if stages is not None:
        for variant in family["variants"]:
            width, depth = variant["width_mult"], variant["depth_mult"]
            if _scale_inline(stages, width, depth, divisor) != variant["stages"]:
                stages = None  # the family rounds differently from the inline rule: leave stages out
                break
    rule = space.base.dropout
    dropout = {"base": rule.base, "increment": rule.increment, "every_phi": rule.every_phi, "max": rule.maximum}
    return {
        "scalesearch_export": 1,
        "rule": family["rule"],
        "rule_description": family["rule_description"],
        "coefficients": family["coefficients"],
        "space": family["space"],
        "family": family["family"],
        "base_is_efficientnet_b0": _is_b0(space),
        "source": {
            "run": run.path.name,
            "dataset": run.best.get("dataset"),
            "trial": run.best.get("trial"),
            "metric": run.best.get("metric"),
            "value": run.best.get("value"),
        },
        "base": {
            "width_mult": space.base.width_mult,
            "depth_mult": space.base.depth_mult,
            "resolution": space.base.resolution,
            "resolution_multiple": space.base.resolution_multiple,
            "dropout": dropout,
            "channel_divisor": divisor,
            "stages": None if stages is None else [{"name": n, "channels": c, "repeats": r} for n, c, r in stages],
        },
        "flops_convention": family["flops_convention"],
        "num_classes": family["num_classes"],
        "in_channels": family["in_channels"],
        "variants": [{key: v.get(key) for key in EXPORT_VARIANT_KEYS} for v in family["variants"]],
    }


def _rule_line(data: dict[str, Any]) -> str:
    """Which rule produced the variants, in one line (every export format states it)."""
    if data["rule"] == "reference":
        return f"rule: reference table ({data['rule_description']})"
    c = data["coefficients"]
    return (
        f"rule: compound formula, alpha={c['alpha']:.6g} beta={c['beta']:.6g} gamma={c['gamma']:.6g} "
        f"({data['rule_description']})"
    )


def render_export(data: dict[str, Any], fmt: str) -> str:
    """The exported rule as 'json', 'yaml', 'python' (a standalone module), 'timm' or 'torchvision'."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return f"# {_rule_line(data)}\n" + str(yaml.safe_dump(data, sort_keys=False))
    if fmt == "python":
        return _python_module(data)
    if fmt in ("timm", "torchvision"):
        return _library_arguments(data, fmt)
    raise UserError(f"unknown export format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})")


def _library_arguments(data: dict[str, Any], library: str) -> str:
    """Per variant, the keyword arguments timm's or torchvision's EfficientNet builder takes, as YAML.

    Data only: neither library is imported. Resolution is an input size (a transform), not a model
    argument, so it is listed beside the arguments.
    """
    import yaml

    if data["family"] != "efficientnet":
        raise UserError(f"--format {library} applies to EfficientNet spaces; this run's family is {data['family']}")
    if library == "timm":
        variants = [
            {
                "name": v["name"],
                "phi": v["phi"],
                "kwargs": {
                    "channel_multiplier": v["width_mult"],
                    "depth_multiplier": v["depth_mult"],
                    "drop_rate": v["dropout"],
                },
                "input_size": [3, v["resolution"], v["resolution"]],
            }
            for v in data["variants"]
        ]
        usage = [
            "from timm.models.efficientnet import _gen_efficientnet",
            "v = <one entry of variants>",
            'model = _gen_efficientnet("efficientnet_b0", pretrained=False, num_classes=..., **v["kwargs"])',
            'train and evaluate at v["input_size"] (timm rounds channels with divisor 8 and repeats with ceil)',
        ]
    else:
        variants = [
            {
                "name": v["name"],
                "phi": v["phi"],
                "conf_kwargs": {"width_mult": v["width_mult"], "depth_mult": v["depth_mult"]},
                "dropout": v["dropout"],
                "resolution": v["resolution"],
            }
            for v in data["variants"]
        ]
        usage = [
            "from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf",
            "v = <one entry of variants>",
            'setting, last_channel = _efficientnet_conf("efficientnet_b0", **v["conf_kwargs"])',
            'model = EfficientNet(setting, v["dropout"], last_channel=last_channel, num_classes=...)',
            'train and evaluate at v["resolution"] px (torchvision sizes the head as 4 x the last stage)',
        ]
    header = [f"{library} arguments for the {data['space']} family found by scalesearch", _rule_line(data)]
    if not data["base_is_efficientnet_b0"]:
        header.append(
            f"NOTE: this space's base is not EfficientNet-B0, but {library}'s builder scales B0: the "
            "multipliers carry over, the architecture does not"
        )
    header += ["usage:", *(f"  {line}" for line in usage)]
    body = {"library": library, "rule": data["rule"], "coefficients": data["coefficients"], "variants": variants}
    return "".join(f"# {line}\n" for line in header) + str(yaml.safe_dump(body, sort_keys=False))


_MODULE = string.Template('''\
"""The $space family found by scalesearch, as a standalone module (Python standard library only).

$rule_line
Source: run $run, dataset $dataset, trial $trial ($metric $value).

    from $module_name import scaled_config
    scaled_config(1)  # {"name": ..., "depth_mult": ..., "width_mult": ..., "resolution": ..., "dropout": ...}

Generated by `scalesearch export RUN_DIR --format python`; scalesearch is not needed to run it.
"""

import math

RULE = $rule  # "compound[, calibrated]": VARIANTS where measured, else the formula; "reference": VARIANTS
RULE_DESCRIPTION = $rule_description
ALPHA = $alpha  # depth multiplier per step of phi
BETA = $beta  # width multiplier per step of phi
GAMMA = $gamma  # resolution multiplier per step of phi
BASE_WIDTH_MULT = $base_width  # the base network's own width (phi = 0)
BASE_DEPTH_MULT = $base_depth  # the base network's own depth (phi = 0)
BASE_RESOLUTION = $base_resolution  # input side in pixels at phi = 0
RESOLUTION_MULTIPLE = $multiple  # scaled resolutions are rounded to a multiple of this
DROPOUT = $dropout  # base + increment * floor(phi / every_phi), capped at max
CHANNEL_DIVISOR = $divisor  # channels are multiples of this, never more than 10% below the exact value
# (name, base channels, base repeats); stem and head are not repeated. None: this family rounds
# differently from the inline rules, so stages are left to the family's own builder.
BASE_STAGES = $stages
# The variants the run measured (params and FLOPs at $num_classes classes, $in_channels input channels).
VARIANTS = $variants


def make_divisible(value, divisor=CHANNEL_DIVISOR):
    """Round to the nearest multiple of divisor; add one divisor if that lost more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def round_resolution(value, multiple=RESOLUTION_MULTIPLE):
    """Round a resolution to the nearest multiple of `multiple` (at least one multiple)."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def dropout_at(phi):
    """Dropout of the variant at phi."""
    steps = math.floor(phi / DROPOUT["every_phi"] + 1e-9)
    return round(min(DROPOUT["max"], DROPOUT["base"] + DROPOUT["increment"] * steps), 4)


def scaled_config(phi):
    """The variant at phi (any phi >= 0 for the compound rule): multipliers, resolution, dropout, stages."""
    phi = float(phi)
    if not math.isfinite(phi) or phi < 0:
        raise ValueError(f"phi must be a finite number >= 0, got {phi}")
    # A measured variant (the reference table, or the compound rule calibrated onto its FLOPs budget).
    for variant in VARIANTS:
        if variant["phi"] == phi:
            return {key: variant[key] for key in ("name", "phi", "depth_mult", "width_mult", "resolution",
                                                  "dropout", "stages")}
    if not RULE.startswith("compound"):
        raise ValueError(f"the reference table has no variant at phi {phi:g}")
    # Any other phi: the pure compound formula (not calibrated onto its budget; see RULE_DESCRIPTION).
    depth = BASE_DEPTH_MULT * ALPHA**phi
    width = BASE_WIDTH_MULT * BETA**phi
    config = {
        "name": $prefix + f"{phi:g}",
        "phi": phi,
        "depth_mult": round(depth, 6),
        "width_mult": round(width, 6),
        "resolution": round_resolution(BASE_RESOLUTION * GAMMA**phi),
        "dropout": dropout_at(phi),
        "stages": None,
    }
    if BASE_STAGES is not None:
        config["stages"] = [
            {
                "name": name,
                "channels": make_divisible(channels * width),
                "repeats": repeats if name in ("stem", "head") else int(math.ceil(repeats * depth)),
            }
            for name, channels, repeats in BASE_STAGES
        ]
    return config


if __name__ == "__main__":
    import json

    print(json.dumps([scaled_config(variant["phi"]) for variant in VARIANTS], indent=2))
''')


def _docstring_safe(value: Any) -> str:
    """`value` as text that cannot end or break the module's docstring (backslashes, quotes)."""
    return str(value).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _python_module(data: dict[str, Any]) -> str:
    """A self-contained module with `scaled_config(phi) -> dict` (the rounding rules inline)."""
    coefficients = data["coefficients"] or {"alpha": math.nan, "beta": math.nan, "gamma": math.nan}
    base = data["base"]
    stages = None if base["stages"] is None else [(s["name"], s["channels"], s["repeats"]) for s in base["stages"]]
    prefix = data["variants"][0]["name"].rstrip("0123456789.") if data["variants"] else "B"
    source = data["source"]

    def literal(value: Any) -> str:
        # pprint writes Python literals; repr of a float round-trips exactly, so the module's
        # arithmetic starts from the very numbers scalesearch used.
        return pprint.pformat(value, width=110, sort_dicts=False)

    return _MODULE.substitute(
        space=_docstring_safe(data["space"]),
        rule_line=_docstring_safe(_rule_line(data)),
        run=_docstring_safe(source["run"]),
        dataset=_docstring_safe(source["dataset"]),
        trial=source["trial"],
        metric=source["metric"],
        value=f"{source['value']:.4f}" if isinstance(source["value"], float) else source["value"],
        module_name=f"{data['space']}_family".replace("-", "_"),
        rule=literal(data["rule"]),
        rule_description=literal(data["rule_description"]),
        alpha=repr(float(coefficients["alpha"])),
        beta=repr(float(coefficients["beta"])),
        gamma=repr(float(coefficients["gamma"])),
        base_width=repr(float(base["width_mult"])),
        base_depth=repr(float(base["depth_mult"])),
        base_resolution=base["resolution"],
        multiple=base["resolution_multiple"],
        dropout=literal(base["dropout"]),
        divisor=base["channel_divisor"],
        stages=literal(stages),
        num_classes=data["num_classes"],
        in_channels=data["in_channels"],
        variants=literal(data["variants"]),
        prefix=literal(prefix),
    )
