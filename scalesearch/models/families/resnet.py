"""ResNet (He et al., 2016) with basic or bottleneck blocks, scaled by width and depth.

Layer for layer this is torchvision's `resnet18`/`resnet50` ("v1.5": the stride of a bottleneck
stage sits on its 3x3 conv, not on the first 1x1), which is what makes the published parameter
counts (11,689,512 and 25,557,032) reproduce exactly. Width multiplies every stage's channels
(and the stem's); depth multiplies the blocks per stage. The stage table comes from a search-space
YAML (`search_spaces/resnet18.yaml`, `search_spaces/resnet50.yaml`).

Architecture keys (all validated in `ResNetFamily.__init__`):

- `block`: `basic` (two 3x3 convs, output = channels) or `bottleneck` (1x1, 3x3, 1x1 with the
  output 4x the stage's channels).
- `stem`: `imagenet` (7x7/2 conv, BN, ReLU, 3x3/2 max pool: 4x downsampling) or `cifar`
  (3x3/1 conv, BN, ReLU, no pool), the usual stem for 32 px images, where `imagenet` would leave
  an 8x8 image as a single pixel after the stem.
- `stem_channels`: the stem conv's output channels at width 1.0 (64).
- `stages`: a list of `{channels, repeats, stride}`; `channels` is the block width (the bottleneck's
  inner width), `stride` that of the stage's first block.
- `channel_divisor` (default 8) and `depth_rounding` (`ceil` or `total`, default `ceil`): the same
  rounding rules and overrides as the EfficientNet family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalesearch.core.scaling import make_divisible
from scalesearch.models.families.architecture import (
    DEPTH_ROUNDING,
    check_keys,
    choice,
    positive_int,
    scale_stage_depths,
    shapes_only,
    stage_rows,
)
from scalesearch.models.families.base import Family, ModelSpec, StageInfo, register_family

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")
BOTTLENECK_EXPANSION = 4  # a bottleneck's output is 4x its inner width (He et al. 2016, Table 1)
ARCHITECTURE_KEYS = {"block", "stem", "stem_channels", "stages", "channel_divisor", "depth_rounding"}


@dataclass(frozen=True)
class ResNetStage:
    """One stage of the base network: `repeats` blocks of width `channels`."""

    channels: int  # block width at width 1.0 (a bottleneck's output is 4x this)
    repeats: int  # blocks at depth 1.0
    stride: int  # stride of the stage's first block (on its 3x3 conv)


def parse_resnet_stages(raw: Any) -> list[ResNetStage]:
    """Validate the `stages:` list of a ResNet architecture."""
    return [ResNetStage(**row) for row in stage_rows(raw, ("channels", "repeats", "stride"))]


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv without bias ('same' padding for odd kernels) and batch norm: ResNet's unit."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        self.out_channels = width
        self.body = nn.Sequential(*_conv_bn(in_ch, width, 3, stride), nn.ReLU(inplace=True), *_conv_bn(width, width, 3))
        self.shortcut = _shortcut(in_ch, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def branch_end(self) -> nn.Module:
        """The body's last batch norm (torchvision's zero_init_residual), for `init: zero`."""
        return self.body[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, v1.5), 1x1 expand to 4x width; residual as BasicBlock."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * BOTTLENECK_EXPANSION
        self.out_channels = out_ch
        self.body = nn.Sequential(
            *_conv_bn(in_ch, width, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(width, out_ch, 1),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def branch_end(self) -> nn.Module:
        """The body's last batch norm (torchvision's zero_init_residual), for `init: zero`."""
        return self.body[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when the shape is kept; else torchvision's 1x1 strided conv + BN ("option B")."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))


class ResNetModel(nn.Module):
    """Stem, residual stages, global average pool, dropout, linear classifier."""

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_family("resnet")
class ResNetFamily(Family):
    """ResNet built from a stage table; ResNet-18/50 live in search_spaces/resnet18.yaml, resnet50.yaml."""

    def __init__(self, architecture: Mapping[str, Any]) -> None:
        super().__init__(architecture)
        check_keys(architecture, ARCHITECTURE_KEYS, "architecture (resnet)")
        self.block = choice(architecture, "block", BLOCKS, "basic")
        self.stem = choice(architecture, "stem", STEMS, "imagenet")
        self.depth_rounding = choice(architecture, "depth_rounding", DEPTH_ROUNDING, "ceil")
        self.stem_channels = positive_int(architecture, "stem_channels", "architecture")
        self.stage_table = parse_resnet_stages(architecture.get("stages"))
        self.channel_divisor = positive_int({"channel_divisor": 8, **architecture}, "channel_divisor", "architecture")

    def _width(self, base: int, spec: ModelSpec) -> int:
        return make_divisible(base * spec.width_mult, divisor=self.channel_divisor)

    def stages(self, spec: ModelSpec) -> list[StageInfo]:
        """Stem and stage1..stageN with their scaled output channels and repeats.

        A bottleneck stage reports its output channels (4x its width), what the next stage sees.
        """
        repeats = scale_stage_depths([s.repeats for s in self.stage_table], spec.depth_mult, self.depth_rounding)
        expansion = BOTTLENECK_EXPANSION if self.block == "bottleneck" else 1
        infos = [StageInfo("stem", self._width(self.stem_channels, spec), 1)]
        for index, (stage, count) in enumerate(zip(self.stage_table, repeats), start=1):
            infos.append(StageInfo(f"stage{index}", self._width(stage.channels, spec) * expansion, count))
        return infos

    def build(self, spec: ModelSpec) -> nn.Module:
        """ResNet at `spec`, initialized like torchvision (He fan-out convs, unit batch norm)."""
        repeats = scale_stage_depths([s.repeats for s in self.stage_table], spec.depth_mult, self.depth_rounding)
        stem_ch = self._width(self.stem_channels, spec)
        stem: list[nn.Module]
        if self.stem == "imagenet":
            stem = [*_conv_bn(spec.in_channels, stem_ch, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [*_conv_bn(spec.in_channels, stem_ch, 3, 1), nn.ReLU(inplace=True)]
        block_type = Bottleneck if self.block == "bottleneck" else BasicBlock
        blocks: list[nn.Module] = []
        in_ch = stem_ch
        for stage, count in zip(self.stage_table, repeats):
            width = self._width(stage.channels, spec)
            for repeat in range(count):
                block = block_type(in_ch, width, stage.stride if repeat == 0 else 1)
                blocks.append(block)
                in_ch = block.out_channels
        model = ResNetModel(
            stem=nn.Sequential(*stem),
            blocks=nn.Sequential(*blocks),
            classifier=nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(in_ch, spec.num_classes)),
        )
        _init_weights(model)
        return model


def _init_weights(model: nn.Module) -> None:
    """torchvision's ResNet initialization; the classifier keeps PyTorch's default Linear init."""
    if shapes_only(model):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
