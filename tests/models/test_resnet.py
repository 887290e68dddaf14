"""ResNet family: golden ResNet-18/50 parameter counts, torchvision's layout, validation, the CLI."""

import json

import pytest
import torch
from torch import nn

from scalesearch.cli import main
from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import PAPER_POINT, Coefficients
from scalesearch.models.cost import count_params, measure_cost
from scalesearch.models.families import ModelSpec, available_families, get_family
from scalesearch.models.families.resnet import Bottleneck

PAPER = Coefficients(*PAPER_POINT)
# torchvision resnet18 / resnet50: exact parameter counts at 1000 classes, 3 channels, 224 px.
GOLDEN_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}
# Published multiply-adds at 224 px (torchvision: 1.81 and 4.09 GFLOPs); fvcore also counts
# batch norm and pooling, which adds about 1%.
GOLDEN_GFLOPS = {"resnet18": 1.81, "resnet50": 4.09}
RESNET18_STAGES = [{"channels": c, "repeats": 2, "stride": s} for c, s in [(64, 1), (128, 2), (256, 2), (512, 2)]]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_golden_parameter_counts_and_flops(name):
    space = load_space(name)
    spec = space.reference_spec(space.reference[0])
    model = space.family.build(spec)
    assert count_params(model) == GOLDEN_PARAMS[name]
    cost = measure_cost(model, resolution=224, in_channels=3)
    assert cost.flops / 1e9 == pytest.approx(GOLDEN_GFLOPS[name], rel=0.02)


def test_resnet50_layout_is_torchvisions_v1_5():
    space = load_space("resnet50")
    model = space.family.build(ModelSpec())
    stem_conv = model.stem[0]
    assert (stem_conv.kernel_size, stem_conv.stride, stem_conv.out_channels) == ((7, 7), (2, 2), 64)
    assert isinstance(model.stem[-1], nn.MaxPool2d)
    bottlenecks = [b for b in model.blocks if isinstance(b, Bottleneck)]
    assert len(bottlenecks) == 16
    first_of_stage2 = bottlenecks[3]
    strides = [m.stride for m in first_of_stage2.body if isinstance(m, nn.Conv2d)]
    assert strides == [(1, 1), (2, 2), (1, 1)]  # v1.5: the stride sits on the 3x3 conv
    # A 1x1 conv + BN shortcut exactly where the shape changes: the first block of every stage.
    shortcuts = [not isinstance(b.shortcut, nn.Identity) for b in bottlenecks]
    assert shortcuts == [i in (0, 3, 7, 13) for i in range(16)]
    assert model.classifier[-1].in_features == 2048


def test_stages_report_scaled_output_channels_and_repeats():
    r18, r50 = load_space("resnet18").family, load_space("resnet50").family
    assert [(s.channels, s.repeats) for s in r18.stages(ModelSpec())] == [
        (64, 1),
        (64, 2),
        (128, 2),
        (256, 2),
        (512, 2),
    ]
    assert [(s.channels, s.repeats) for s in r50.stages(ModelSpec())] == [
        (64, 1),
        (256, 3),
        (512, 4),
        (1024, 6),
        (2048, 3),
    ]
    scaled = r18.stages(ModelSpec(width_mult=1.1, depth_mult=1.2))
    # make_divisible(64 * 1.1 = 70.4) = 72; ceil(2 * 1.2) = 3 blocks per stage.
    assert [(s.channels, s.repeats) for s in scaled] == [(72, 1), (72, 3), (144, 3), (280, 3), (560, 3)]


def test_depth_rounding_and_divisor_overrides():
    family = get_family("resnet")(
        {"stem_channels": 64, "stages": RESNET18_STAGES, "depth_rounding": "total", "channel_divisor": 2}
    )
    stages = family.stages(ModelSpec(width_mult=0.125, depth_mult=1.2))
    assert sum(s.repeats for s in stages[1:]) == 10  # 8 * 1.2 = 9.6 -> 10 (ceil would give 12)
    assert [s.channels for s in stages] == [8, 8, 16, 32, 64]


def test_cifar_stem_proxy_runs_on_small_grayscale_images():
    space = load_space("resnet18")
    spec = space.scaled_proxy(PAPER, 1.0, num_classes=10, in_channels=1)
    model = space.proxy_family.build(spec)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    model.eval()
    with torch.no_grad():
        for side in (8, 16, spec.resolution):
            assert model(torch.randn(2, 1, side, side)).shape == (2, 10)


def test_bottleneck_proxy_builds_and_trains_one_step():
    space = load_space("resnet50")
    spec = space.scaled_proxy(PAPER, 0.0, num_classes=10, in_channels=1)
    model = space.proxy_family.build(spec)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"stem_channels": 64, "stages": RESNET18_STAGES, "blocks": "basic"}, "unknown keys.*blocks"),
        ({"stem_channels": 64, "stages": RESNET18_STAGES, "block": "wide"}, "block must be one of"),
        ({"stem_channels": 64, "stages": RESNET18_STAGES, "stem": "deep"}, "stem must be one of"),
        ({"stem_channels": 64, "stages": RESNET18_STAGES, "depth_rounding": "up"}, "depth_rounding"),
        ({"stem_channels": 64, "stages": RESNET18_STAGES, "channel_divisor": 0}, "channel_divisor"),
        ({"stem_channels": 64, "stages": []}, "non-empty list"),
        ({"stem_channels": 64, "stages": [{"channels": 64, "repeats": 2}]}, "'stride' must be a positive"),
        ({"stem_channels": 64, "stages": [{"channels": 64, "repeats": 2, "stride": 1, "k": 3}]}, "unknown"),
        ({"stages": RESNET18_STAGES}, "stem_channels"),
    ],
)
def test_bad_architectures_raise_user_errors(architecture, message):
    with pytest.raises(UserError, match=message):
        get_family("resnet")(architecture)


def test_families_are_registered():
    assert {"efficientnet", "resnet", "vit"} <= set(available_families())


def test_family_command_works_on_the_resnet18_space(capsys):
    status = main(
        [
            "family",
            "--space",
            "search_spaces/resnet18.yaml",
            "--alpha",
            "1.2",
            "--beta",
            "1.1",
            "--gamma",
            "1.15",
            "--phis",
            "0-1",
            "--format",
            "json",
        ]
    )
    out, _ = capsys.readouterr()
    assert status == 0
    family = json.loads(out)
    assert family["family"] == "resnet"
    base, scaled = family["variants"]
    assert base["params"] == GOLDEN_PARAMS["resnet18"]
    assert scaled["rule"]["resolution"] == 256  # the pure rule; the variant itself is planned onto 2x
    assert abs(scaled["flops_ratio"] / 2 - 1) <= 0.05
    assert scaled["flops"] > base["flops"]
