"""Search spaces: a YAML file naming a family, its base architecture, the target base, the proxy base
the search trains, the constraint, and search/recipe defaults. Loaded once into frozen dataclasses.

A space can name the user's own model instead of a built-in family (see families/custom.py):

    family: custom                    # optional when `builder` is given
    builder: "small_cnn:build"        # MODULE:ATTRIBUTE: a function (or nn.Module class) taking
                                      #   width_mult, depth_mult, num_classes, in_channels
                                      #   [, resolution, dropout] and the `architecture` keys as
                                      #   keyword arguments, or a scalesearch Family subclass
    builder_path: "."                 # optional: folder searched first for MODULE, relative to this
                                      #   file (default: this file's folder); then the Python path

Shipped spaces (`efficientnet_b0`, ...) are found by name: in $SCALESEARCH_SPACES when set, else in the
checkout's search_spaces/ folder, else in the installed package (scalesearch.search_spaces).

Torch is not imported here; the family (which needs torch) is looked up on first use.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from scalesearch.core.errors import UserError
from scalesearch.core.scaling import (
    DEFAULT_TARGET,
    DEFAULT_TOLERANCE,
    Coefficients,
    multipliers,
    round_resolution,
)
from scalesearch.models.spec import ModelSpec

if TYPE_CHECKING:
    from scalesearch.models.families import Family
    from scalesearch.models.spec import ModelSpec

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

SPACES_ENV = "SCALESEARCH_SPACES"  # a folder of space files that replaces the shipped ones
DEFAULT_SPACE = "efficientnet_b0"
CUSTOM_FAMILY = "custom"
# MODULE:ATTRIBUTE, both dotted Python names: what importlib can import, nothing that runs code.
BUILDER_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
TOP_LEVEL_KEYS = {
    "name",
    "variant_prefix",
    "family",
    "builder",
    "builder_path",
    "architecture",
    "base",
    "reference",
    "proxy",
    "constraint",
    "search",
    "recipe",
}


@dataclass(frozen=True)
class DropoutRule:
    """Dropout as φ grows: base + increment·floor(φ / every_phi), capped (B0..B7: 0.2 → 0.5)."""

    base: float = 0.2
    increment: float = 0.0
    every_phi: float = 1.0
    maximum: float = 0.5

    def at(self, phi: float) -> float:
        """The dropout rate of the variant at φ."""
        return round(min(self.maximum, self.base + self.increment * math.floor(phi / self.every_phi + 1e-9)), 4)


@dataclass(frozen=True)
class BaseModel:
    """A base that coefficients scale: the target (B0 at 224) or the search's small proxy."""

    width_mult: float  # width of the base itself (1.0 for the target; < 1 for a cheap proxy)
    depth_mult: float  # depth of the base itself
    resolution: int  # input side in pixels at φ = 0
    resolution_multiple: int  # scaled resolutions are rounded to a multiple of this
    dropout: DropoutRule  # dropout at each φ
    architecture: Mapping[str, Any]  # the family's architecture for this base (proxy overrides merged in)


@dataclass(frozen=True)
class ReferenceVariant:
    """One row of a published, hand-tuned family table (EfficientNet B0..B7)."""

    name: str
    width_mult: float
    depth_mult: float
    resolution: int
    dropout: float


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file. Build models through `family` / `proxy_family`."""

    name: str
    path: str
    family_name: str
    base: BaseModel
    proxy: BaseModel
    reference: tuple[ReferenceVariant, ...]
    variant_prefix: str = "B"  # scaled variants are named prefix + phi: B0, B1, ... (EfficientNet's names)
    target: float = DEFAULT_TARGET
    tolerance: float = DEFAULT_TOLERANCE
    search: Mapping[str, Any] = field(default_factory=dict)  # defaults for `scalesearch search`
    recipe: Mapping[str, Any] = field(default_factory=dict)  # raw mapping for Recipe.from_mapping
    builder: str | None = None  # the user's MODULE:ATTRIBUTE when family is "custom"
    builder_root: str | None = None  # absolute folder searched first for the builder's module
    # The YAML text itself: a worker on another machine rebuilds the space with `space_from_text`
    # without the file (which exists only where the command ran).
    source: str = field(default="", repr=False, compare=False)

    @cached_property
    def family(self) -> Family:
        """The family built from the target base's architecture."""
        return self._make_family(self.base.architecture)

    @cached_property
    def proxy_family(self) -> Family:
        """The family built from the proxy's architecture (finer rounding, no stochastic depth)."""
        return self._make_family(self.proxy.architecture)

    def _make_family(self, architecture: Mapping[str, Any]) -> Family:
        if self.builder is not None:
            from scalesearch.models.families.custom import custom_family

            return custom_family(self.builder, architecture, root=self.builder_root)
        from scalesearch.models.families import get_family

        return get_family(self.family_name)(architecture)

    def builder_module(self) -> str | None:
        """The module a custom builder is imported from (what a cluster's workers need), or None."""
        return self.builder.partition(":")[0] if self.builder else None

    def with_base_resolution(self, resolution: int) -> SearchSpace:
        """This space with the target base at `resolution` px (the user's deployment resolution for B0)."""
        return replace(self, base=replace(self.base, resolution=resolution))

    def scaled_spec(
        self, coefficients: Coefficients, phi: float, *, num_classes: int = 1000, in_channels: int = 3
    ) -> ModelSpec:
        """The target base scaled by α^φ, β^φ, γ^φ (resolution rounded to the base's multiple)."""
        return _scale(self.base, coefficients, phi, num_classes, in_channels)

    def scaled_proxy(
        self, coefficients: Coefficients, phi: float = 1.0, *, num_classes: int = 10, in_channels: int = 3
    ) -> ModelSpec:
        """The proxy base scaled by α^φ, β^φ, γ^φ: what a search trial trains."""
        return _scale(self.proxy, coefficients, phi, num_classes, in_channels)

    def reference_spec(self, variant: ReferenceVariant, *, num_classes: int = 1000, in_channels: int = 3) -> ModelSpec:
        """A published variant as a ModelSpec."""

        return ModelSpec(
            width_mult=variant.width_mult,
            depth_mult=variant.depth_mult,
            resolution=variant.resolution,
            num_classes=num_classes,
            in_channels=in_channels,
            dropout=variant.dropout,
        )


def _scale(base: BaseModel, coefficients: Coefficients, phi: float, num_classes: int, in_channels: int) -> ModelSpec:

    depth, width, resolution = multipliers(coefficients, phi)
    return ModelSpec(
        width_mult=base.width_mult * width,
        depth_mult=base.depth_mult * depth,
        resolution=round_resolution(base.resolution * resolution, multiple=base.resolution_multiple),
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=base.dropout.at(phi),
    )


def spaces_dir() -> Path:
    """The folder of the shipped spaces: $SCALESEARCH_SPACES, the checkout's search_spaces/, or the
    installed package's copy (the wheel maps search_spaces/ to scalesearch.search_spaces)."""
    override = os.environ.get(SPACES_ENV)
    if override:
        return Path(override)
    # A source checkout (editable install or PYTHONPATH) reads the folder the docs point at.
    checkout = Path(__file__).resolve().parents[2] / "search_spaces"
    if (checkout / f"{DEFAULT_SPACE}.yaml").is_file():
        return checkout
    try:
        installed = importlib.resources.files("scalesearch.search_spaces")
    except ModuleNotFoundError:
        return checkout
    # A regular package (search_spaces/__init__.py) installed as files: a plain folder.
    return installed if isinstance(installed, Path) else checkout


def shipped_spaces() -> list[str]:
    """Names of the shipped spaces, sorted."""
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


def resolve_space_path(path_or_name: str | os.PathLike[str]) -> Path:
    """A file path as given, or the name of a shipped space (`efficientnet_b0`)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = spaces_dir() / f"{path_or_name}.yaml"
    if path.suffix == "" and shipped.is_file():
        return shipped
    if path.exists():
        raise UserError(f"search space {str(path)!r} is not a file")
    available = ", ".join(shipped_spaces()) or "none"
    raise UserError(f"search space {str(path_or_name)!r} not found (a YAML file, or one of: {available})")


def load_space(path_or_name: str | os.PathLike[str] = DEFAULT_SPACE) -> SearchSpace:
    """Read and validate a search-space YAML; UserError names the file and the problem."""
    path = resolve_space_path(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read: {error}") from None
    return space_from_text(text, path=path)


def space_from_text(text: str, *, path: str | os.PathLike[str]) -> SearchSpace:
    """A space from its YAML text, as if read from `path` (which need not exist on this machine: a
    custom builder's module is then found on the Python path, where a cluster's runtime env puts it)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        # safe_load refuses !!python/object and friends: say so plainly.
        raise UserError(f"{path}: refusing a YAML tag that would construct objects ({error.problem})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', error)}") from None
    try:
        space = _parse_space(raw, path, text)
        space.family  # noqa: B018  (validates the architecture now, not at first build)
        space.proxy_family  # noqa: B018
        if space.builder is not None:
            _check_builder(space)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return space


def _check_builder(space: SearchSpace) -> None:
    """Build the proxy base once, so a builder that fails or returns no module fails at load time; for a
    builder callable also run it (a forward pass that raises, or returns no (1, classes) logits) and
    check that width_mult and depth_mult change the network (else every candidate is the same one)."""
    spec = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=10, in_channels=3)
    family = space.proxy_family
    family.build(spec)
    measure = getattr(family, "weight_layers", None)  # a Family subclass counts its own stages
    if measure is None:
        return
    base = measure(spec)
    wider = measure(replace(spec, width_mult=2.0 * spec.width_mult))
    deeper = measure(replace(spec, depth_mult=2.0 * spec.depth_mult))
    if wider == base and deeper == base:
        raise UserError(
            f"builder {space.builder!r} ignores width_mult and depth_mult: doubling either builds the same network "
            f"({len(base) - 1} conv/linear layers before the classifier), so every candidate of a search would be "
            "one network at different resolutions; scale the layers' channels and count with them"
        )


def _mapping(raw: Any, what: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UserError(f"'{what}' must be a mapping, got {type(raw).__name__}")
    return raw


def _number(raw: Mapping[str, Any], key: str, default: float, what: str, *, minimum: float = 0.0) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise UserError(f"'{what}.{key}' must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _dropout_rule(raw: Any, what: str) -> DropoutRule:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return DropoutRule(base=_number({"dropout": raw}, "dropout", 0.0, what), maximum=float(raw))
    rule = _mapping(raw, f"{what}.dropout")
    unknown = set(rule) - {"base", "increment", "every_phi", "max"}
    if unknown:
        raise UserError(f"'{what}.dropout': unknown keys {sorted(unknown)}")
    parsed = DropoutRule(
        base=_number(rule, "base", 0.2, f"{what}.dropout"),
        increment=_number(rule, "increment", 0.0, f"{what}.dropout"),
        every_phi=_number(rule, "every_phi", 1.0, f"{what}.dropout", minimum=1e-6),
        maximum=_number(rule, "max", 0.5, f"{what}.dropout"),
    )
    if parsed.base >= 1.0 or parsed.maximum >= 1.0:
        raise UserError(f"'{what}.dropout' rates must be < 1")
    return parsed


def _base_model(raw: Mapping[str, Any], what: str, architecture: Mapping[str, Any], defaults: BaseModel | None):
    unknown = set(raw) - {
        "width_mult",
        "depth_mult",
        "resolution",
        "resolution_multiple",
        "dropout",
        "architecture",
    }
    if unknown:
        raise UserError(f"'{what}': unknown keys {sorted(unknown)}")
    resolution = raw.get("resolution", defaults.resolution if defaults else 224)
    multiple = raw.get("resolution_multiple", defaults.resolution_multiple if defaults else 4)
    for key, value in (("resolution", resolution), ("resolution_multiple", multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"'{what}.{key}' must be a positive integer, got {value!r}")
    overrides = _mapping(raw.get("architecture"), f"{what}.architecture")
    return BaseModel(
        width_mult=_number(raw, "width_mult", 1.0, what, minimum=1e-3),
        depth_mult=_number(raw, "depth_mult", 1.0, what, minimum=1e-3),
        resolution=resolution,
        resolution_multiple=multiple,
        dropout=_dropout_rule(raw.get("dropout", 0.2), what),
        architecture={**architecture, **overrides},
    )


def _builder(top: Mapping[str, Any], path: Path) -> tuple[str, str | None, str | None]:
    """(family name, builder, builder root) from the `family`, `builder` and `builder_path` keys."""
    family_name = top.get("family", CUSTOM_FAMILY if "builder" in top else None)
    if not isinstance(family_name, str) or not family_name:
        raise UserError("'family' must name a model family, e.g. efficientnet, or be 'custom' with a 'builder'")
    builder = top.get("builder")
    if builder is None:
        if family_name == CUSTOM_FAMILY:
            raise UserError("'family: custom' needs 'builder: MODULE:FUNCTION' (e.g. small_cnn:build)")
        if "builder_path" in top:
            raise UserError("'builder_path' goes with 'builder'")
        return family_name, None, None
    if family_name != CUSTOM_FAMILY:
        raise UserError(f"'builder' goes with 'family: custom' (or no family), not family {family_name!r}")
    if not isinstance(builder, str) or not BUILDER_PATTERN.match(builder.strip()):
        raise UserError(f"'builder' must be MODULE:ATTRIBUTE such as my_models.cnn:build, got {builder!r}")
    folder = top.get("builder_path", ".")
    if not isinstance(folder, str) or not folder:
        raise UserError(f"'builder_path' must be a folder (relative to the space file), got {folder!r}")
    root = (path.resolve().parent / folder).resolve()
    return family_name, builder.strip(), str(root)


def _parse_space(raw: Any, path: Path, text: str = "") -> SearchSpace:
    top = _mapping(raw, "the file")
    if not top:
        raise UserError("the file is empty")
    unknown = set(top) - TOP_LEVEL_KEYS
    if unknown:
        raise UserError(f"unknown top-level keys {sorted(unknown)} (known: {sorted(TOP_LEVEL_KEYS)})")
    family_name, builder, builder_root = _builder(top, path)
    architecture = _mapping(top.get("architecture"), "architecture")
    base = _base_model(_mapping(top.get("base"), "base"), "base", architecture, None)
    proxy = _base_model(_mapping(top.get("proxy"), "proxy"), "proxy", architecture, base)
    constraint = _mapping(top.get("constraint"), "constraint")
    target = _number(constraint, "target", DEFAULT_TARGET, "constraint", minimum=1.0 + 1e-9)
    tolerance = _number(constraint, "tolerance", DEFAULT_TOLERANCE, "constraint")
    if tolerance >= 1.0:
        raise UserError("'constraint.tolerance' must be < 1")
    reference_raw = top.get("reference") or []
    if not isinstance(reference_raw, list):
        raise UserError("'reference' must be a list of variants")
    reference = []
    for index, row in enumerate(reference_raw):
        row = _mapping(row, f"reference[{index}]")
        what = f"reference[{index}]"
        resolution = row.get("resolution")
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise UserError(f"'{what}.resolution' must be a positive integer")
        reference.append(
            ReferenceVariant(
                name=str(row.get("name", f"V{index}")),
                width_mult=_number(row, "width_mult", 1.0, what, minimum=1e-3),
                depth_mult=_number(row, "depth_mult", 1.0, what, minimum=1e-3),
                resolution=resolution,
                dropout=_number(row, "dropout", 0.2, what),
            )
        )
    return SearchSpace(
        name=str(top.get("name") or path.stem),
        path=str(path.resolve()),  # absolute: Ray workers run in other folders
        family_name=family_name,
        base=base,
        proxy=proxy,
        reference=tuple(reference),
        variant_prefix=str(top.get("variant_prefix", "B")),
        target=target,
        tolerance=tolerance,
        search=dict(_mapping(top.get("search"), "search")),
        recipe=dict(_mapping(top.get("recipe"), "recipe")),
        builder=builder,
        builder_root=builder_root,
        source=text,
    )
