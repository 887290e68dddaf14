"""ViT family: parameters against a hand formula, attention FLOPs against a hand count, width in heads."""

import pytest
import torch

from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import PAPER_POINT, Coefficients
from scalesearch.models.cost import count_params, measure_cost
from scalesearch.models.families import ModelSpec, get_family
from scalesearch.models.families.vit import Attention

PAPER = Coefficients(*PAPER_POINT)
VIT_TI = {"patch_size": 16, "embed_dim": 192, "depth": 12, "head_dim": 64, "mlp_ratio": 4}


def hand_params(*, dim, layers, tokens, classes, in_channels, patch, mlp_ratio=4):
    """Parameters of a pre-norm ViT with a class token, from its layer shapes."""
    hidden = mlp_ratio * dim
    patch_embed = in_channels * patch * patch * dim + dim  # conv weight + bias
    embeddings = dim + (tokens + 1) * dim  # class token + position embedding (class token included)
    attention = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)  # qkv + output projection
    mlp = (dim * hidden + hidden) + (hidden * dim + dim)
    layer_norms = 2 * 2 * dim
    head = 2 * dim + dim * classes + classes  # final LayerNorm + classifier
    return patch_embed + embeddings + layers * (attention + mlp + layer_norms) + head


def hand_flops(*, dim, layers, tokens, classes, in_channels, patch, mlp_ratio=4, layer_norm=True):
    """Multiply-adds of one image: patch conv, per layer qkv 3ND², attention 2N²D, proj ND², MLP 2N·D·rD.

    N counts the class token. With `layer_norm`, fvcore's convention for LayerNorm (5 flops per
    element, affine) is added for the 2 norms per layer and the final one.
    """
    n = tokens + 1
    patch_embed = tokens * dim * in_channels * patch * patch
    per_layer = 3 * n * dim**2 + 2 * n**2 * dim + n * dim**2 + 2 * n * dim * (mlp_ratio * dim)
    norms = (2 * layers + 1) * 5 * n * dim if layer_norm else 0
    return patch_embed + layers * per_layer + dim * classes + norms


@pytest.fixture(scope="module")
def vit_ti():
    return get_family("vit")(VIT_TI)


def test_vit_ti_parameters_match_the_hand_formula_and_timm(vit_ti):
    model = vit_ti.build(ModelSpec())
    expected = hand_params(dim=192, layers=12, tokens=196, classes=1000, in_channels=3, patch=16)
    assert expected == 5_717_416  # timm vit_tiny_patch16_224
    assert count_params(model) == expected


@pytest.mark.parametrize(
    ("width", "depth", "resolution", "in_channels", "heads", "layers"),
    [(1.1, 1.2, 256, 3, 3, 15), (1.2, 1.0, 64, 1, 4, 12), (0.1, 0.5, 32, 1, 1, 6)],
)
def test_scaled_parameters_match_the_hand_formula(vit_ti, width, depth, resolution, in_channels, heads, layers):
    spec = ModelSpec(width_mult=width, depth_mult=depth, resolution=resolution, num_classes=10, in_channels=in_channels)
    assert vit_ti.heads(spec) == heads and vit_ti.layers(spec) == layers
    expected = hand_params(
        dim=heads * 64,
        layers=layers,
        tokens=(resolution // 16) ** 2,
        classes=10,
        in_channels=in_channels,
        patch=16,
    )
    assert count_params(vit_ti.build(spec)) == expected


def test_attention_flops_are_counted_exactly(vit_ti):
    cost = measure_cost(vit_ti.build(ModelSpec()), resolution=224, in_channels=3)
    shape = {"dim": 192, "layers": 12, "tokens": 196, "classes": 1000, "in_channels": 3, "patch": 16}
    assert cost.flops == hand_flops(**shape)  # 1,258,411,200: timm lists ViT-Ti/16 at 1.26 GMACs
    # Without fvcore's LayerNorm estimate the hand count is still within 1%.
    assert cost.flops == pytest.approx(hand_flops(**shape, layer_norm=False), rel=0.01)
    assert not any("attention" in op for op in cost.uncounted_ops)
    assert "aten::softmax" in cost.uncounted_ops  # elementwise, zero by fvcore's convention


def test_fused_attention_would_go_uncounted(vit_ti, monkeypatch):
    """Why the family uses explicit matmuls: fvcore skips scaled_dot_product_attention entirely."""

    def fused(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    monkeypatch.setattr(Attention, "forward", fused)
    cost = measure_cost(vit_ti.build(ModelSpec(resolution=64)), resolution=64, in_channels=3)
    shape = {"dim": 192, "layers": 12, "tokens": 16, "classes": 1000, "in_channels": 3, "patch": 16}
    assert cost.flops == hand_flops(**shape) - 12 * 2 * 17**2 * 192
    assert any("scaled_dot_product" in op for op in cost.uncounted_ops)


def test_proxy_flops_match_the_hand_count():
    space = load_space("vit_tiny")
    spec = space.scaled_proxy(PAPER, 1.0, num_classes=10, in_channels=1)
    family = space.proxy_family
    cost = measure_cost(family.build(spec), resolution=spec.resolution, in_channels=1)
    expected = hand_flops(
        dim=family.dim(spec),
        layers=family.layers(spec),
        tokens=family.tokens(spec),
        classes=10,
        in_channels=1,
        patch=4,
    )
    assert cost.flops == expected


def test_width_moves_in_whole_heads(vit_ti):
    dims = [vit_ti.dim(ModelSpec(width_mult=w)) for w in (0.1, 1.0, 1.1, 1.2, 1.5, 2.0)]
    assert dims == [64, 192, 192, 256, 320, 384]  # heads 1, 3, 3 (3.3), 4 (3.6), 5 (4.5 rounds up), 6


def test_space_rounds_resolutions_to_the_patch_size():
    space = load_space("vit_tiny")
    assert space.base.resolution_multiple == 16
    for phi in (1.0, 2.0, 3.5):
        spec = space.scaled_spec(PAPER, phi)
        assert spec.resolution % 16 == 0
        space.family.tokens(spec)  # valid: no error
    proxy = space.scaled_proxy(PAPER, 1.0, in_channels=1)
    assert proxy.resolution % 4 == 0


def test_proxy_runs_forward_and_backward():
    space = load_space("vit_tiny")
    spec = space.scaled_proxy(PAPER, 0.0, num_classes=10, in_channels=1)
    model = space.proxy_family.build(spec)
    out = model(torch.randn(3, 1, spec.resolution, spec.resolution))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert model.pos_embed.grad is not None and model.cls_token.grad is not None


def test_resolution_off_the_patch_grid_is_a_user_error(vit_ti):
    with pytest.raises(UserError, match="not a multiple of the patch size 16"):
        vit_ti.build(ModelSpec(resolution=100))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heads": 3}, "unknown keys.*heads"),
        ({"embed_dim": 100}, "multiple of head_dim"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"mlp_ratio": "four"}, "mlp_ratio"),
        ({"patch_size": 0}, "patch_size"),
        ({"depth": 2.5}, "depth"),
        ({"depth_rounding": "floor"}, "depth_rounding"),
    ],
)
def test_bad_architectures_raise_user_errors(changes, message):
    with pytest.raises(UserError, match=message):
        get_family("vit")({**VIT_TI, **changes})
