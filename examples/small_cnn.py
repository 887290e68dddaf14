"""A small CNN as a scalesearch builder: the example of README's "Your own model".

scalesearch imports this file by name (`builder: small_cnn:build` in small_cnn.yaml, found next to
the YAML) and calls `build` with the scaled multipliers; it needs nothing from scalesearch. The
search measures what the built network really is (its conv layers and their channels), so the
rounding below is yours to choose.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build(
    *,
    width_mult: float,
    depth_mult: float,
    num_classes: int,
    in_channels: int,
    dropout: float = 0.0,
    channels: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (2, 3, 4),
) -> nn.Module:
    """Stages of 3x3 conv-BN-ReLU blocks (the first of each later stage halves the map), global average
    pooling and a linear classifier. Width multiplies every stage's channels (rounded to a multiple of
    2); depth multiplies the blocks per stage (rounded half up, at least 1). `resolution` is not a
    parameter: global pooling takes any image size."""
    layers: list[nn.Module] = []
    previous = in_channels
    for stage, (base_channels, base_blocks) in enumerate(zip(channels, blocks)):
        width = max(2, 2 * round(base_channels * width_mult / 2))
        for block in range(max(1, int(base_blocks * depth_mult + 0.5))):
            stride = 2 if stage > 0 and block == 0 else 1
            layers += [nn.Conv2d(previous, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, num_classes)]
    return nn.Sequential(*layers, *head)
