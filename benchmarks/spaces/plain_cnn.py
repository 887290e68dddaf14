"""A plain CNN whose receptive field grows only with depth: the depth-critical known answer's network.

Every layer is a 3x3 conv-BN-ReLU at stride 1, then global average pooling and a linear classifier. A
network of L layers sees 2L + 1 pixels across and no more, whatever its width or its input size, so a
relation between two marks farther apart than that is invisible to it: after the pooling it only has
sums of what each unit saw, and "same or different" is not a sum of per-mark terms. Width adds channels
(not reach); resolution spreads the same marks over more pixels (less reach, in the image's own units).
Used by `plain_cnn.yaml` (benchmarks/corner_datasets.py, depth_reach).
"""

from __future__ import annotations

from torch import nn


def build(
    *,
    width_mult: float,
    depth_mult: float,
    num_classes: int,
    in_channels: int,
    dropout: float = 0.0,
    channels: int = 8,
    layers: int = 3,
) -> nn.Module:
    """`layers` x depth_mult conv layers (rounded half up, at least 1) of `channels` x width_mult channels
    (rounded to a multiple of 2, at least 2)."""
    width = max(2, 2 * round(channels * width_mult / 2))
    body: list[nn.Module] = []
    previous = in_channels
    for _ in range(max(1, int(layers * depth_mult + 0.5))):
        body += [nn.Conv2d(previous, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        previous = width
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, num_classes)]
    return nn.Sequential(*body, *head)
