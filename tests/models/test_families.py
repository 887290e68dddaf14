"""EfficientNet family: golden B0..B7 parameter counts and FLOPs, rounding, the registry."""

import pytest
import torch

from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.models.cost import count_params, measure_cost
from scalesearch.models.families import Family, ModelSpec, available_families, get_family, register_family
from scalesearch.models.families.architecture import scale_stage_depths

# torchvision efficientnet_b0..b7 (REFERENCE.md): exact parameter counts at 1000 classes, 3 channels.
GOLDEN_PARAMS = [5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784, 43_040_704, 66_347_960]
# Published GFLOPs (multiply-adds). torchvision's figures where measured at the variant's own
# resolution; B2's torchvision figure (1.088) is at 288 px, so the paper's 1.0 B at 260 px is used.
GOLDEN_GFLOPS = [0.386, 0.687, 1.0, 1.827, 4.394, 10.266, 19.068, 37.746]


@pytest.fixture(scope="module")
def space():
    return load_space("efficientnet_b0")


def test_reference_table_is_the_published_one(space):
    names = [v.name for v in space.reference]
    assert names == [f"B{i}" for i in range(8)]
    assert [v.resolution for v in space.reference] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert [v.dropout for v in space.reference] == [0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5]


@pytest.mark.parametrize("index", range(8))
def test_golden_parameter_counts(space, index):
    spec = space.reference_spec(space.reference[index])
    assert count_params(space.family.build(spec)) == GOLDEN_PARAMS[index]


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_golden_flops_within_five_percent(space, index):
    variant = space.reference[index]
    cost = measure_cost(space.family.build(space.reference_spec(variant)), resolution=variant.resolution, in_channels=3)
    assert cost.flops / 1e9 == pytest.approx(GOLDEN_GFLOPS[index], rel=0.05)
    # Elementwise ops are recorded, not counted (fvcore's convention).
    assert "aten::sigmoid" in cost.uncounted_ops


@pytest.mark.slow
@pytest.mark.parametrize("index", [4, 5, 6, 7])
def test_golden_flops_within_five_percent_large(space, index):
    variant = space.reference[index]
    cost = measure_cost(space.family.build(space.reference_spec(variant)), resolution=variant.resolution, in_channels=3)
    assert cost.flops / 1e9 == pytest.approx(GOLDEN_GFLOPS[index], rel=0.05)


def test_b0_structure_matches_table_1(space):
    stages = space.family.stages(ModelSpec())
    assert [(s.channels, s.repeats) for s in stages] == [
        (32, 1),
        (16, 1),
        (24, 2),
        (40, 2),
        (80, 3),
        (112, 3),
        (192, 4),
        (320, 1),
        (1280, 1),
    ]


def test_any_variant_builds_and_runs(space):
    spec = ModelSpec(width_mult=0.3, depth_mult=0.4, resolution=20, num_classes=7, in_channels=1, dropout=0.1)
    model = space.family.build(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 20, 20))
    assert out.shape == (2, 7)


def test_squeeze_excitation_uses_block_input_channels(space):
    model = space.family.build(ModelSpec())
    first_mbconv6 = model.blocks[1]  # stage 2, in 16 channels, expanded to 96
    se = first_mbconv6.block[2]
    assert se.reduce.in_channels == 96 and se.reduce.out_channels == 4  # 16 // 4, not 96 // 4


def test_stochastic_depth_rises_linearly_to_its_maximum(space):
    model = space.family.build(ModelSpec())
    probs = [block.drop_prob for block in model.blocks]
    assert probs[0] == 0.0
    assert probs == sorted(probs)
    assert probs[-1] == pytest.approx(0.2 * 15 / 16)


def test_total_depth_rounding_follows_the_multiplier():
    repeats = [1, 2, 2, 3, 3, 4, 1]
    assert scale_stage_depths(repeats, 1.0, "total") == repeats
    assert sum(scale_stage_depths(repeats, 1.2, "total")) == 19  # 16 * 1.2 = 19.2
    assert sum(scale_stage_depths(repeats, 0.5, "total")) == 8
    assert sum(scale_stage_depths(repeats, 0.5, "ceil")) == 10  # ceil overshoots at small depth
    assert min(scale_stage_depths(repeats, 0.1, "total")) == 1


def test_registry_refuses_silent_overwrite_and_names_known_families():
    assert "efficientnet" in available_families()
    with pytest.raises(UserError, match="unknown model family 'nope'.*efficientnet"):
        get_family("nope")
    with pytest.raises(ValueError, match="already registered"):

        @register_family("efficientnet")
        class Impostor(Family):
            def build(self, spec):
                raise NotImplementedError

            def stages(self, spec):
                return []
