"""Vision Transformer (Dosovitskiy et al., 2021), scaled by layers, embedding width and image size.

Compound scaling carried over to a ViT (REFERENCE.md, "open questions"): depth multiplies the
encoder layers, width the embedding dimension, and resolution the image side at a fixed patch
size (so the token count grows with resolution²). The base (ViT-Ti/16 in
`search_spaces/vit_tiny.yaml`) follows timm's `vit_tiny_patch16_224` / DeiT-Ti: class token,
learned position embeddings, pre-norm LayerNorm blocks, GELU MLP, classifier on the class token.

Width keeps the head dimension fixed and changes the number of heads:
heads = max(1, round_half_up(embed_dim·w / head_dim)), embed_dim = heads·head_dim. That is how
the published ViT sizes grow (Ti 3, S 6, B 12 heads of 64), and it keeps attention well-formed at
every width; the price is that width moves in steps of one head.

Attention is written with explicit matmuls (q@kᵀ, softmax, attn@v) instead of
`scaled_dot_product_attention`: fvcore counts `aten::matmul` but not the fused kernel, so the
explicit form makes the 2·N²·D attention FLOPs visible to `scalesearch.models.cost`.

Architecture keys (validated in `ViTFamily.__init__`): `patch_size`, `embed_dim`, `depth`,
`head_dim`, `mlp_ratio`, `depth_rounding` (`ceil` or `total`, default `ceil`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from scalesearch.core.errors import UserError
from scalesearch.models.families.architecture import (
    DEPTH_ROUNDING,
    check_keys,
    choice,
    positive_int,
    scale_stage_depths,
    shapes_only,
)
from scalesearch.models.families.base import Family, ModelSpec, StageInfo, register_family

ARCHITECTURE_KEYS = {"patch_size", "embed_dim", "depth", "head_dim", "mlp_ratio", "depth_rounding"}
LAYER_NORM_EPS = 1e-6  # timm's and the original JAX ViT's epsilon


class Attention(nn.Module):
    """Multi-head self-attention with explicit matmuls, so FLOP counters see the N² terms."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (batch, heads, tokens, head_dim)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def branch_end(self) -> tuple[nn.Module, nn.Module]:
        """The attention's and the MLP's output projections, for `init: zero` (the block starts as the identity)."""
        return self.attn.proj, self.mlp[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTModel(nn.Module):
    """Patch embedding, class token, position embeddings, encoder blocks, final LN, linear head."""

    def __init__(
        self,
        *,
        in_channels: int,
        patch_size: int,
        tokens: int,
        dim: int,
        blocks: nn.Sequential,
        head: nn.Module,
    ) -> None:
        super().__init__()
        # A stride-p conv with a p x p kernel is the linear projection of flattened patches.
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = blocks
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_family("vit")
class ViTFamily(Family):
    """ViT built from (patch_size, embed_dim, depth, head_dim, mlp_ratio); ViT-Ti/16 in vit_tiny.yaml."""

    def __init__(self, architecture: Mapping[str, Any]) -> None:
        super().__init__(architecture)
        check_keys(architecture, ARCHITECTURE_KEYS, "architecture (vit)")
        self.patch_size = positive_int(architecture, "patch_size", "architecture")
        self.embed_dim = positive_int(architecture, "embed_dim", "architecture")
        self.depth = positive_int(architecture, "depth", "architecture")
        self.head_dim = positive_int(architecture, "head_dim", "architecture")
        mlp_ratio = architecture.get("mlp_ratio", 4)
        if (
            isinstance(mlp_ratio, bool)
            or not isinstance(mlp_ratio, int | float)
            or not math.isfinite(mlp_ratio)
            or mlp_ratio <= 0
        ):
            raise UserError(f"architecture.mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self.mlp_ratio = float(mlp_ratio)
        self.depth_rounding = choice(architecture, "depth_rounding", DEPTH_ROUNDING, "ceil")
        if self.embed_dim % self.head_dim:
            raise UserError(
                f"architecture.embed_dim ({self.embed_dim}) must be a multiple of head_dim ({self.head_dim})"
            )

    def heads(self, spec: ModelSpec) -> int:
        """Attention heads at `spec`: the scaled width in whole heads (half rounds up), at least 1."""
        return max(1, int(math.floor(self.embed_dim * spec.width_mult / self.head_dim + 0.5)))

    def dim(self, spec: ModelSpec) -> int:
        """Embedding dimension at `spec`: heads x head_dim."""
        return self.heads(spec) * self.head_dim

    def layers(self, spec: ModelSpec) -> int:
        """Encoder layers at `spec` (one stage, rounded by `depth_rounding`)."""
        return scale_stage_depths([self.depth], spec.depth_mult, self.depth_rounding)[0]

    def hidden(self, spec: ModelSpec) -> int:
        """MLP hidden width at `spec`: mlp_ratio x dim, rounded to an integer."""
        return int(round(self.mlp_ratio * self.dim(spec)))

    def tokens(self, spec: ModelSpec) -> int:
        """Patch tokens (class token excluded); UserError if the resolution is not a patch multiple."""
        if spec.resolution % self.patch_size:
            raise UserError(
                f"vit: resolution {spec.resolution} is not a multiple of the patch size {self.patch_size} "
                f"(set base.resolution_multiple / proxy.resolution_multiple to {self.patch_size})"
            )
        return (spec.resolution // self.patch_size) ** 2

    def stages(self, spec: ModelSpec) -> list[StageInfo]:
        """The patch embedding ("stem", dim channels) and the encoder (dim channels, layers repeats)."""
        dim = self.dim(spec)
        return [StageInfo("stem", dim, 1), StageInfo("encoder", dim, self.layers(spec))]

    def build(self, spec: ModelSpec) -> nn.Module:
        """ViT at `spec`, initialized like timm (truncated-normal 0.02 weights, zero biases)."""
        dim, heads, hidden = self.dim(spec), self.heads(spec), self.hidden(spec)
        blocks = nn.Sequential(*(EncoderBlock(dim, heads, hidden) for _ in range(self.layers(spec))))
        model = ViTModel(
            in_channels=spec.in_channels,
            patch_size=self.patch_size,
            tokens=self.tokens(spec),
            dim=dim,
            blocks=blocks,
            head=nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(dim, spec.num_classes)),
        )
        _init_weights(model)
        return model


def _init_weights(model: ViTModel) -> None:
    """timm's ViT init: trunc-normal(0.02) linears and position embedding, zero biases, unit LN."""
    if shapes_only(model):
        return
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.cls_token, std=1e-6)
