"""A finished run's discovered rule as data, and its renderings (`scalesearch export`).

`rule_export` turns a run folder into the rule and its family as plain data; `render_export` writes
it as JSON, YAML, a standalone Python module (`scaled_config(phi)`, standard library only), or the
arguments timm's and torchvision's builders take. What a family knows about itself (its channel
divisor, the base stages an inline rule reproduces, whether it is EfficientNet-B0, which libraries
build it) comes from the family's own methods (`families.base.Family`).
"""

from __future__ import annotations

import math
import pprint
import string
from collections.abc import Sequence
from typing import Any

from scalesearch.core.errors import UserError
from scalesearch.core.scaling import make_divisible, round_repeats
from scalesearch.outputs.family_table import VARIANT_KEYS, evidence_line, render_data
from scalesearch.outputs.runs import Run, run_space

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

EXPORT_FORMATS = ("json", "yaml", "python", "timm", "torchvision")
EXPORT_VARIANT_KEYS = (*VARIANT_KEYS, "stages", "params", "flops", "flops_ratio", "upsampling", "check")


def _scale_inline(stages: Sequence[tuple[str, int, int]], width: float, depth: float, divisor: int) -> list[dict]:
    """Stages scaled by the inline rule, with scalesearch's own rounding helpers (to check the module's)."""

    return [
        {
            "name": name,
            "channels": make_divisible(channels * width, divisor=divisor),
            "repeats": repeats if name in ("stem", "head") else round_repeats(repeats, depth),
        }
        for name, channels, repeats in stages
    ]


def _checked_inline_stages(
    stages: list[tuple[str, int, int]] | None, variants: Sequence[dict[str, Any]], divisor: int
) -> list[tuple[str, int, int]] | None:
    """The family's inline base stages when the inline rule reproduces every variant's stages, else None."""
    if stages is None:
        return None
    for variant in variants:
        if _scale_inline(stages, variant["width_mult"], variant["depth_mult"], divisor) != variant["stages"]:
            return None  # the family rounds differently from the inline rule: leave stages out
    return stages


def rule_export(run: Run) -> dict[str, Any]:
    """The run's rule and family as plain data: what `scalesearch export` renders in every format.

    Holds the rule ("compound": α^φ, β^φ, γ^φ with the rounding stated; "reference": a table), the
    coefficients, the base it scales (resolution, its rounding multiple, the dropout rule, the
    channel divisor and, when the inline rule reproduces them, the base stages), where the rule came
    from (dataset, trial, accuracy), and family.json's variants.
    """
    if run.family is None:
        raise UserError(f"{run.path / 'family.json'} not found: the run did not finish writing its family")
    family = run.family
    needed = ("rule", "rule_description", "coefficients", "space", "family", "flops_convention", "num_classes",
              "in_channels")  # fmt: skip
    missing = [key for key in needed if key not in family]
    missing += sorted(
        {key for v in family["variants"] for key in ("width_mult", "depth_mult", "stages") if key not in v}
    )
    if missing:
        raise UserError(f"{run.path / 'family.json'}: damaged: missing {', '.join(missing)}")
    space = run_space(run)
    divisor = space.family.channel_divisor
    stages = _checked_inline_stages(space.family.inline_stages(), family["variants"], divisor)
    rule = space.base.dropout
    dropout = {"base": rule.base, "increment": rule.increment, "every_phi": rule.every_phi, "max": rule.maximum}
    return {
        "scalesearch_export": 1,
        "rule": family["rule"],
        "rule_description": family["rule_description"],
        "coefficients": family["coefficients"],
        "space": family["space"],
        "family": family["family"],
        "base_is_efficientnet_b0": space.family.is_efficientnet_b0(),
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
            "resolution": family.get("base_resolution", space.base.resolution),
            "resolution_multiple": space.base.resolution_multiple,
            "dropout": dropout,
            "channel_divisor": divisor,
            "stages": None if stages is None else [{"name": n, "channels": c, "repeats": r} for n, c, r in stages],
        },
        "flops_convention": family["flops_convention"],
        "num_classes": family["num_classes"],
        "in_channels": family["in_channels"],
        "variants": [{key: v.get(key) for key in EXPORT_VARIANT_KEYS} for v in family["variants"]],
        "evidence": family.get("evidence"),
        "evidence_line": evidence_line(family),
    }


def _rule_line(data: dict[str, Any]) -> str:
    """Which rule produced the variants, in one line (every export format states it)."""
    if data["rule"] == "reference":
        return f"rule: reference table ({data['rule_description']})"
    c = data["coefficients"]
    evidence = data.get("evidence_line")
    return (
        f"rule: compound formula, alpha={c['alpha']:.6g} beta={c['beta']:.6g} gamma={c['gamma']:.6g} "
        f"({data['rule_description']})" + (f"; evidence: {evidence}" if evidence else "")
    )


def render_export(data: dict[str, Any], fmt: str) -> str:
    """The exported rule as 'json', 'yaml', 'python' (a standalone module), 'timm' or 'torchvision'."""
    # YAML carries the rule line as a comment (JSON has no comments; the other formats state it themselves).
    as_data = render_data(data, fmt, comment=_rule_line(data) if fmt == "yaml" else "")
    if as_data is not None:
        return as_data
    if fmt == "python":
        return _python_module(data)
    if fmt in LIBRARY_USAGE:
        return _library_arguments(data, fmt)
    raise UserError(f"unknown export format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})")


# Per library: how to build a variant with that library's builder (the family declares which
# libraries build it: Family.library_builders).
LIBRARY_USAGE = {
    "timm": [
        "from timm.models.efficientnet import _gen_efficientnet",
        "v = <one entry of variants>",
        'model = _gen_efficientnet("efficientnet_b0", pretrained=False, num_classes=..., **v["kwargs"])',
        'train and evaluate at v["input_size"] (timm rounds channels with divisor 8 and repeats with ceil;',
        "its head is 1280 x channel_multiplier rounded the same way, the family's head)",
    ],
    "torchvision": [
        "from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf",
        "v = <one entry of variants>",
        'setting, _ = _efficientnet_conf("efficientnet_b0", **v["conf_kwargs"])',
        'model = EfficientNet(setting, v["dropout"], last_channel=v["last_channel"], num_classes=...)',
        'train and evaluate at v["resolution"] px (last_channel: the family\'s head width; left out,',
        "torchvision would size the head as 4 x the last stage, not 1280 x width)",
    ],
}
# What tests/scenarios/test_library_exports.py checked (slow suite): every B0..B7 variant of a
# (1.2, 1.1, 1.15) family built with each library's builder from these arguments.
LIBRARY_VERIFIED = (
    "verified (torch 2.13.0, torchvision 0.28.0, timm 1.0.31; tests/scenarios/test_library_exports.py): "
    "built as above, every variant of a (1.2, 1.1, 1.15) B0..B7 family has family.json's params exactly "
    "and gives (1, num_classes) at its resolution"
)
# The family's FLOPs counter, and how torch's own counter relates to it (measured by that test).
LIBRARY_FLOPS = (
    "flops: fvcore's count (1 multiply-add = 1 flop, batch 1, at the variant's resolution). "
    "torch.utils.flop_counter.FlopCounterMode counts 2 per multiply-add, convolutions and linear layers "
    "only: half its count was 1.5-3.4% below flops (B7..B0 of that family), the difference being exactly "
    "the batch norms (2 per element) and the global pool (1 per element), which fvcore counts"
)


def _head_channels(v: dict[str, Any]) -> int:
    """The variant's head width (its "head" stage): torchvision's `last_channel`."""
    return next(stage["channels"] for stage in v["stages"] if stage["name"] == "head")


def _library_variant(library: str, v: dict[str, Any]) -> dict[str, Any]:
    """One exported variant as `library`'s builder takes it (resolution beside, as an input size)."""
    if library == "timm":
        return {
            "name": v["name"],
            "phi": v["phi"],
            "kwargs": {
                "channel_multiplier": v["width_mult"],
                "depth_multiplier": v["depth_mult"],
                "drop_rate": v["dropout"],
            },
            "input_size": [3, v["resolution"], v["resolution"]],
            "params": v["params"],
            "flops": v["flops"],
            **_marks(v),
        }
    return {
        "name": v["name"],
        "phi": v["phi"],
        "conf_kwargs": {"width_mult": v["width_mult"], "depth_mult": v["depth_mult"]},
        "last_channel": _head_channels(v),
        "dropout": v["dropout"],
        "resolution": v["resolution"],
        "params": v["params"],
        "flops": v["flops"],
        **_marks(v),
    }


def _marks(v: dict[str, Any]) -> dict[str, Any]:
    """What backs a variant (family_table.with_evidence): upsampling, and the check at its φ."""
    return {key: v[key] for key in ("upsampling", "check") if v.get(key) is not None}


def _library_arguments(data: dict[str, Any], library: str) -> str:
    """Per variant, the keyword arguments timm's or torchvision's builder takes, as YAML.

    Data only: neither library is imported. Resolution is an input size (a transform), not a model
    argument, so it is listed beside the arguments. UserError for a family no such builder builds.
    """
    import yaml

    from scalesearch.models.families import available_families, get_family

    if library not in get_family(data["family"]).library_builders:
        built = [name for name in available_families() if library in get_family(name).library_builders]
        raise UserError(
            f"--format {library} applies to spaces of the {' or '.join(built)} family; this run's family is "
            f"{data['family']}"
        )
    header = [f"{library} arguments for the {data['space']} family found by scalesearch", _rule_line(data)]
    if not data["base_is_efficientnet_b0"]:
        header.append(
            f"NOTE: this space's base is not EfficientNet-B0, but {library}'s builder scales B0: the "
            "multipliers carry over, the architecture does not"
        )
    else:
        header.append(LIBRARY_VERIFIED)
    header += [
        "usage:",
        *(f"  {line}" for line in LIBRARY_USAGE[library]),
        f"params: family.json's, at {data['num_classes']} classes and {data['in_channels']} input channels",
        LIBRARY_FLOPS,
    ]
    variants = [_library_variant(library, v) for v in data["variants"]]
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
# The data's native side in px (None: unknown): a variant above it is upsampling, pixels the data lacks.
DATA_NATIVE_PX = $native
# What `scalesearch validate` said of the rule against the best single dimension at each phi it checked
# (at proxy scale); a phi not listed is unchecked.
CHECKS = $checks


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
            return {key: variant.get(key) for key in ("name", "phi", "depth_mult", "width_mult", "resolution",
                                                      "dropout", "stages", "upsampling", "check")}
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
    resolution = config["resolution"]
    config["upsampling"] = None if DATA_NATIVE_PX is None else resolution > DATA_NATIVE_PX
    config["check"] = "base" if phi == 0 else CHECKS.get(phi, "unchecked")
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
    evidence = data.get("evidence") or {}
    checked = [v for v in data["variants"] if v.get("check") not in (None, "base", "unchecked")]
    checks = {float(v["phi"]): v["check"] for v in checked}

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
        native=literal(evidence.get("data_native_px")),
        checks=literal(checks),
    )
