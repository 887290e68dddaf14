"""What every scalable model family provides, and the registry that finds a family by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

from scalesearch.core.errors import UserError
from scalesearch.models.spec import ModelSpec, StageInfo


class Family(ABC):
    """A base architecture described as data, which builds scaled variants.

    Subclasses parse and validate their `architecture` mapping (from a search-space YAML) in
    __init__, raising UserError for bad values, so a bad file fails before any model is built.
    """

    name: ClassVar[str]
    # Channels are multiples of this (make_divisible). Families whose widths are not channels (ViT)
    # keep the default, which is what an exported rule states for them.
    channel_divisor: int = 8
    # Libraries whose own builder of this family takes the exported multipliers (`scalesearch export
    # --format timm|torchvision`); empty when no library builds it.
    library_builders: ClassVar[tuple[str, ...]] = ()

    def __init__(self, architecture: Mapping[str, Any]) -> None:
        self.architecture = dict(architecture)

    @abstractmethod
    def build(self, spec: ModelSpec) -> nn.Module:
        """A freshly initialized torch module for `spec`."""

    @abstractmethod
    def stages(self, spec: ModelSpec) -> list[StageInfo]:
        """The channels and repeats of each stage of `spec`, without building it."""

    def inline_stages(self) -> list[tuple[str, int, int]] | None:
        """The base stages as (name, channels, repeats) when the official rounding rules reproduce them.

        Those rules are channels = make_divisible(c·w, channel_divisor), repeats = ceil(r·d), stem
        and head kept at one: what an exported standalone module can compute inline. None (the
        default) for a family that rounds otherwise; the module then leaves stages to its builder.
        """
        return None

    def is_efficientnet_b0(self) -> bool:
        """Whether the base network is EfficientNet-B0 itself (the network timm and torchvision scale)."""
        return False

    def total_blocks(self, spec: ModelSpec) -> int:
        """Blocks in the scalable stages (stem and head excluded): the realized depth."""
        return sum(s.repeats for s in self.stages(spec) if s.name not in ("stem", "head"))

    def total_channels(self, spec: ModelSpec) -> int:
        """Summed channels of the scalable stages: the realized width."""
        return sum(s.channels for s in self.stages(spec) if s.name not in ("stem", "head"))


FamilyType = TypeVar("FamilyType", bound=type[Family])
_REGISTRY: dict[str, type[Family]] = {}


def register_family(name: str) -> Callable[[FamilyType], FamilyType]:
    """Class decorator adding a family under `name`; refuses to overwrite an existing one silently."""

    def decorator(cls: FamilyType) -> FamilyType:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"family {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_family(name: str) -> type[Family]:
    """The family class registered under `name`; UserError listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UserError(f"unknown model family {name!r} (known: {known})") from None


def available_families() -> list[str]:
    """Names of all registered families, sorted."""
    return sorted(_REGISTRY)
