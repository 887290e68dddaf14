"""Reading a family's `architecture:` mapping, depth rounding and when to skip weight init: what the
built-in families share.

Every check raises UserError naming the key, so a bad search-space file fails in one line before any
model is built. `scale_stage_depths` is the one depth rule of the stage-based families (EfficientNet,
ResNet) and of ViT's encoder depth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from scalesearch.core.errors import UserError
from scalesearch.core.scaling import round_repeats

DEPTH_ROUNDING = ("ceil", "total")


def positive_int(mapping: Mapping[str, Any], key: str, where: str) -> int:
    """`mapping[key]` when it is an integer >= 1 (not a bool); UserError naming `where` otherwise."""
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def choice(architecture: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    """A string option that must be one of `choices`."""
    value = architecture.get(key, default)
    if value not in choices:
        raise UserError(f"architecture.{key} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def check_keys(mapping: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """UserError listing the keys of `mapping` outside `known`, and the known ones."""
    unknown = set(mapping) - set(known)
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")


def stage_rows(raw: Any, keys: tuple[str, ...]) -> list[dict[str, int]]:
    """The `stages:` list of an architecture, each stage a mapping of `keys` to positive integers."""
    if not isinstance(raw, list) or not raw:
        raise UserError("architecture.stages must be a non-empty list of stages")
    rows = []
    for index, stage in enumerate(raw, start=1):
        where = f"architecture.stages[{index}]"
        if not isinstance(stage, Mapping):
            raise UserError(f"{where} must be a mapping, got {type(stage).__name__}")
        check_keys(stage, keys, where)
        rows.append({key: positive_int(stage, key, where) for key in keys})
    return rows


def scale_stage_depths(repeats: list[int], depth_mult: float, rounding: str) -> list[int]:
    """Blocks per stage at `depth_mult`.

    "ceil" is the official per-stage rule (B0..B7 need it). "total" rounds the total block count
    to nearest and hands the blocks to the stages with the largest fractional parts, so the
    realized depth follows the requested multiplier closely even on tiny proxies, where ceil of
    a handful of blocks jumps by 30% or more.
    """
    if rounding == "ceil":
        return [round_repeats(r, depth_mult) for r in repeats]
    ideal = [r * depth_mult for r in repeats]
    total = max(len(repeats), int(math.floor(sum(ideal) + 0.5)))
    scaled = [max(1, int(math.floor(x))) for x in ideal]
    # Largest remainders first, measured from what each stage already has (a stage lifted to its
    # one-block minimum has a negative remainder); ties go to later stages, which carry the most channels.
    order = sorted(range(len(ideal)), key=lambda i: (ideal[i] - scaled[i], i), reverse=True)
    position = 0
    while sum(scaled) < total:
        scaled[order[position % len(order)]] += 1
        position += 1
    while sum(scaled) > total:
        # Only possible when max(1, .) lifted stages; trim the largest stages.
        largest = max(range(len(scaled)), key=lambda i: (scaled[i], i))
        scaled[largest] -= 1
    return scaled


def shapes_only(model: Any) -> bool:
    """Whether `model` was built on the meta device (to count shapes and MACs): its weights hold no
    values, so initializing them is skipped (it was 80% of a MACs count)."""
    return bool(next(model.parameters()).is_meta)
