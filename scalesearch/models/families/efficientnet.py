"""EfficientNet (Tan & Le, 2019): MBConv blocks with squeeze-excitation, scaled by width and depth.

The base stages come from a search-space YAML (`search_spaces/efficientnet_b0.yaml`), so the same
code builds B0..B7 and any proxy. Layer for layer it matches the official TF model and torchvision's
`efficientnet_b*`, which is what makes the published parameter counts reproduce exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalesearch.core.errors import UserError
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
B0_STEM_HEAD = (32, 1280)
ARCHITECTURE_KEYS = {
    "stem_channels",
    "head_channels",
    "stages",
    "se_ratio",
    "stochastic_depth",
    "channel_divisor",
    "depth_rounding",
    "stem_stride",
    "strides",
}


@dataclass(frozen=True)
class MBConvStage:
    """One stage of the base network: `repeats` MBConv blocks of the same shape."""

    expand: int  # expansion ratio of the inverted bottleneck (1 for MBConv1, 6 for MBConv6)
    kernel: int  # depthwise kernel size
    stride: int  # stride of the stage's first block
    channels: int  # output channels at width 1.0
    repeats: int  # blocks at depth 1.0


def parse_stages(raw: Any) -> list[MBConvStage]:
    """Validate the `stages:` list of an EfficientNet architecture."""
    return [MBConvStage(**row) for row in stage_rows(raw, ("expand", "kernel", "stride", "channels", "repeats"))]


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool, reduce to `squeeze` channels, SiLU, expand, sigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(nn.functional.silu(self.reduce(scale)))
        return x * torch.sigmoid(scale)


def conv_bn_act(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv (no bias), batch norm, optional SiLU; 'same' padding for odd kernels."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, squeeze-excitation, 1x1 project."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        expand: int,
        kernel: int,
        stride: int,
        se_ratio: float,
        drop_prob: float,
    ) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(in_ch, hidden, 1))
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, groups=hidden))
        # SE width is a ratio of the block's INPUT channels, not the expanded ones (official model).
        layers.append(SqueezeExcitation(hidden, max(1, int(in_ch * se_ratio))))
        layers.append(conv_bn_act(hidden, out_ch, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_prob = drop_prob

    def branch_end(self) -> nn.Module | None:
        """The projection's batch norm: zeroed by `init: zero` (models.initialization) when the block is residual."""
        project = self.block[-1]  # conv_bn_act(hidden, out_ch, 1, act=False): conv, batch norm
        assert isinstance(project, nn.Sequential)
        return project[1] if self.use_residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if not self.use_residual:
            return out
        if self.training and self.drop_prob > 0.0:
            # Stochastic depth: drop the whole residual branch per sample, rescale the kept ones.
            keep = 1.0 - self.drop_prob
            mask = torch.empty(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device).bernoulli_(keep)
            out = out * mask / keep
        return out + x


class EfficientNetModel(nn.Module):
    """Stem, MBConv stages, 1x1 head, global pool, dropout, linear classifier."""

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, head: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_family("efficientnet")
class EfficientNetFamily(Family):
    """EfficientNet built from a stage table; the B0 table lives in search_spaces/efficientnet_b0.yaml."""

    library_builders = ("timm", "torchvision")

    def __init__(self, architecture: Mapping[str, Any]) -> None:
        super().__init__(architecture)
        check_keys(architecture, ARCHITECTURE_KEYS, "architecture (efficientnet)")
        self.stage_table = parse_stages(architecture.get("stages"))
        # Proxies on tiny images keep more of the spatial map: fewer strides, same blocks otherwise.
        self.stem_stride = positive_int(
            {"stem_stride": architecture.get("stem_stride", 2)}, "stem_stride", "architecture"
        )
        strides = architecture.get("strides")
        if strides is not None:
            if not isinstance(strides, list) or len(strides) != len(self.stage_table):
                raise UserError(f"architecture.strides must list one stride per stage ({len(self.stage_table)})")
            self.stage_table = [
                MBConvStage(
                    s.expand,
                    s.kernel,
                    positive_int({"stride": v}, "stride", "architecture.strides"),
                    s.channels,
                    s.repeats,
                )
                for s, v in zip(self.stage_table, strides)
            ]
        self.stem_channels = positive_int(architecture, "stem_channels", "architecture")
        self.head_channels = positive_int(architecture, "head_channels", "architecture")
        self.channel_divisor = int(architecture.get("channel_divisor", 8))
        self.se_ratio = float(architecture.get("se_ratio", 0.25))
        self.stochastic_depth = float(architecture.get("stochastic_depth", 0.2))
        self.depth_rounding = choice(architecture, "depth_rounding", DEPTH_ROUNDING, "ceil")
        if self.channel_divisor < 1:
            raise UserError("architecture.channel_divisor must be >= 1")
        if not 0.0 < self.se_ratio <= 1.0:
            raise UserError("architecture.se_ratio must be in (0, 1]")
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise UserError("architecture.stochastic_depth must be in [0, 1)")

    def inline_stages(self) -> list[tuple[str, int, int]] | None:
        """Stem, stage1..stageN and head at width and depth 1; None with depth_rounding "total"."""
        if self.depth_rounding != "ceil":
            return None
        return (
            [("stem", self.stem_channels, 1)]
            + [(f"stage{i}", stage.channels, stage.repeats) for i, stage in enumerate(self.stage_table, start=1)]
            + [("head", self.head_channels, 1)]
        )

    def is_efficientnet_b0(self) -> bool:
        """Whether the stage table, stem and head are B0's (B0_STAGES, B0_STEM_HEAD)."""
        table = tuple((s.expand, s.kernel, s.stride, s.channels, s.repeats) for s in self.stage_table)
        return table == B0_STAGES and (self.stem_channels, self.head_channels) == B0_STEM_HEAD

    def _channels(self, base: int, spec: ModelSpec) -> int:
        return make_divisible(base * spec.width_mult, divisor=self.channel_divisor)

    def stages(self, spec: ModelSpec) -> list[StageInfo]:
        """Stem, the MBConv stages (stage1..stageN) and head, with their scaled channels and repeats."""
        repeats = scale_stage_depths([s.repeats for s in self.stage_table], spec.depth_mult, self.depth_rounding)
        infos = [StageInfo("stem", self._channels(self.stem_channels, spec), 1)]
        for index, (stage, count) in enumerate(zip(self.stage_table, repeats), start=1):
            infos.append(StageInfo(f"stage{index}", self._channels(stage.channels, spec), count))
        infos.append(StageInfo("head", self._channels(self.head_channels, spec), 1))
        return infos

    def build(self, spec: ModelSpec) -> nn.Module:
        """EfficientNet at `spec`; stochastic depth rises linearly with block index to its maximum."""
        infos = self.stages(spec)
        stem_ch, head_ch = infos[0].channels, infos[-1].channels
        total = sum(info.repeats for info in infos[1:-1])
        blocks: list[nn.Module] = []
        in_ch = stem_ch
        index = 0
        for stage, info in zip(self.stage_table, infos[1:-1]):
            for repeat in range(info.repeats):
                blocks.append(
                    MBConv(
                        in_ch,
                        info.channels,
                        expand=stage.expand,
                        kernel=stage.kernel,
                        stride=stage.stride if repeat == 0 else 1,
                        se_ratio=self.se_ratio,
                        drop_prob=self.stochastic_depth * index / total,
                    )
                )
                in_ch = info.channels
                index += 1
        model = EfficientNetModel(
            stem=conv_bn_act(spec.in_channels, stem_ch, 3, stride=self.stem_stride),
            blocks=nn.Sequential(*blocks),
            head=conv_bn_act(in_ch, head_ch, 1),
            classifier=nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(head_ch, spec.num_classes)),
        )
        _init_weights(model)
        return model


def _init_weights(model: nn.Module) -> None:
    """The official initialization: fan-out normal convs, uniform linear, unit batch norm."""
    if shapes_only(model):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.out_features)
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)
