"""Plain descriptions of a network that many layers share: what to build (`ModelSpec`) and one stage of
it as family tables report it (`StageInfo`). No torch here, so planning, config and outputs can import
them at module top without paying for torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One concrete variant of a family: everything needed to build it."""

    width_mult: float = 1.0  # channels (CNN) or embedding dim (ViT) multiplier
    depth_mult: float = 1.0  # blocks per stage (CNN) or encoder layers (ViT) multiplier
    resolution: int = 224  # input image side in pixels
    num_classes: int = 1000  # classifier outputs; the published counts are for ImageNet's 1000
    in_channels: int = 3  # image channels: 3 for RGB, 1 for grayscale data such as digits
    dropout: float = 0.2  # dropout before the classifier (EfficientNet B0 uses 0.2)


@dataclass(frozen=True)
class StageInfo:
    """One stage of a built variant, as reported in family tables."""

    name: str
    channels: int
    repeats: int
