"""The recipe's init (models.initialization): official leaves the family's model alone, fan_in gives the
first logits one scale whatever the head's width, zero starts every residual block as the identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalesearch.config.spaces import load_space
from scalesearch.models.initialization import initialize
from scalesearch.models.spec import ModelSpec
from scalesearch.planning.planner import proxy_base

SPACES = ["efficientnet_b0", "resnet18", "vit_tiny"]


def build(space_name: str, width: float = 1.0, *, classes: int = 10, seed: int = 0) -> tuple[nn.Module, ModelSpec]:
    space = load_space(space_name)
    base = proxy_base(space, num_classes=classes, in_channels=3)
    spec = ModelSpec(**{**vars(base), "width_mult": base.width_mult * width})
    torch.manual_seed(seed)
    return space.proxy_family.build(spec), spec


def logit_std(model: nn.Module, resolution: int) -> float:
    model.train()  # batch statistics: every width's features reach the head at one scale
    with torch.no_grad():
        return float(model(torch.randn(64, 3, resolution, resolution)).std())


def test_official_leaves_the_model_as_built() -> None:
    model, _ = build("efficientnet_b0")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initialize(model, "official")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fan_in_gives_the_first_logits_one_scale_whatever_the_heads_width() -> None:
    """EfficientNet's official classifier init (±1/sqrt(classes)) makes a twice-as-wide head start with
    larger logits; fan_in (±1/sqrt(features)) does not."""
    ratios = {}
    for init in ("official", "fan_in"):
        stds = []
        for width in (1.0, 2.0):
            runs = []
            for seed in range(3):
                model, spec = build("efficientnet_b0", width, seed=seed)
                runs.append(logit_std(initialize(model, init), spec.resolution))
            stds.append(sum(runs) / len(runs))
        ratios[init] = stds[1] / stds[0]
    head = (
        build("efficientnet_b0", 2.0)[0].classifier[-1].in_features
        / build("efficientnet_b0")[0].classifier[-1].in_features
    )
    assert ratios["official"] == pytest.approx(head**0.5, rel=0.2)  # sqrt(406 / 192) = 1.45
    assert ratios["fan_in"] == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("space_name", SPACES)
def test_fan_in_redraws_only_the_classifier(space_name: str) -> None:
    model, _ = build(space_name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initialize(model, "fan_in")
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    bound = classifier.in_features**-0.5
    assert classifier.weight.abs().max() <= bound and classifier.weight.abs().max() > 0.9 * bound
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    names = {name for name, module in model.named_modules() if module is classifier}
    assert changed <= {f"{name}.weight" for name in names} | {f"{name}.bias" for name in names}
    assert any(k.endswith("weight") for k in changed)


@pytest.mark.parametrize("space_name", SPACES)
def test_zero_starts_from_uniform_logits_with_every_residual_block_the_identity(space_name: str) -> None:
    model, spec = build(space_name)
    initialize(model, "zero").eval()
    blocks = [m for m in model.modules() if callable(getattr(m, "branch_end", None))]
    assert blocks, "the family marks its residual blocks"
    x = torch.randn(2, 3, spec.resolution, spec.resolution)
    with torch.no_grad():
        assert torch.count_nonzero(model(x)) == 0
    identities = 0
    for block in blocks:
        ends = block.branch_end()
        if ends is None:  # an MBConv that changes shape has no residual
            continue
        inputs: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, seen: dict = inputs) -> None:
            seen.update(x=args[0], out=out)

        handle = block.register_forward_hook(keep)
        with torch.no_grad():
            model(x)
        handle.remove()
        if inputs["out"].shape != inputs["x"].shape:  # a ResNet block whose shortcut is a strided conv
            continue
        assert torch.allclose(inputs["out"], torch.relu(inputs["x"]) if space_name == "resnet18" else inputs["x"])
        identities += 1
    assert identities > 0


def test_a_custom_model_gets_its_classifier_zeroed_and_nothing_else() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    conv = model[0].weight.clone()
    initialize(model, "zero")
    assert torch.count_nonzero(model[-1].weight) == 0 and torch.equal(model[0].weight, conv)
    with pytest.raises(ValueError, match="unknown init"):
        initialize(model, "xavier")
