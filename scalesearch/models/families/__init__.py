"""Scalable model families. Importing this package registers every built-in family."""

from scalesearch.models.families import custom as _custom  # noqa: F401  (registers "custom": a user's builder)
from scalesearch.models.families import efficientnet as _efficientnet  # noqa: F401  (registers "efficientnet")
from scalesearch.models.families import resnet as _resnet  # noqa: F401  (registers "resnet")
from scalesearch.models.families import vit as _vit  # noqa: F401  (registers "vit")
from scalesearch.models.families.base import (
    Family,
    ModelSpec,
    StageInfo,
    available_families,
    get_family,
    register_family,
)

__all__ = ["Family", "ModelSpec", "StageInfo", "available_families", "get_family", "register_family"]
