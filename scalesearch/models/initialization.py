"""How a proxy starts: the recipe's `init` applied to a freshly built model (config.recipe.Recipe.init).

- "official": the family's own initialization, untouched.
- "fan_in": the classifier (the model's last nn.Linear) drawn again, uniform ±1/sqrt(in_features),
  PyTorch's own default for nn.Linear. The first logits then have one scale whatever the head's width.
  EfficientNet's official classifier init is uniform ±1/sqrt(classes): fine for ImageNet's 1,000
  classes, but with 10 classes a head twice as wide starts with √2× larger random logits, which a
  proxy trained for a few epochs spends its first epochs undoing; a search could rank width low for a
  reason that vanishes with training.
- "zero": the classifier and the last layer of every residual branch start at zero (Goyal et al.
  2017, "zero γ"; torchvision's `zero_init_residual`, timm's `zero_init_last`): uniform logits, and
  each residual block starts as the identity, so a deeper candidate starts as its shallower self.

A block says which layer ends its residual branch (a tuple when it has two) with a `branch_end()`
method (the families' MBConv, BasicBlock, Bottleneck and EncoderBlock). A custom model gets the
classifier part, and the branch part for any of its modules that define `branch_end()`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def initialize(model: nn.Module, init: str) -> nn.Module:
    """`model` started as the recipe's `init` says ("official", "fan_in" or "zero"); returns it."""
    if init == "official":
        return model
    classifier = _classifier(model)
    if init == "fan_in":
        if classifier is not None:
            bound = 1.0 / math.sqrt(classifier.in_features)
            nn.init.uniform_(classifier.weight, -bound, bound)
            if classifier.bias is not None:
                nn.init.zeros_(classifier.bias)
        return model
    if init != "zero":
        raise ValueError(f"unknown init {init!r}")
    if classifier is not None:
        _zero(classifier, bias=True)
    for module in model.modules():
        end = getattr(module, "branch_end", None)
        if not callable(end):
            continue
        layers = end()
        for layer in layers if isinstance(layers, tuple) else (layers,):
            if layer is not None:
                _zero(layer, bias=False)
    return model


def _classifier(model: nn.Module) -> nn.Linear | None:
    """The model's last nn.Linear (every family's classifier), or None when it has none."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def _zero(layer: nn.Module, *, bias: bool) -> None:
    """Weight (a norm's γ or a linear's matrix) to zero; the bias too when asked (the classifier's)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__} has no weight to zero")
    nn.init.zeros_(weight)
    layer_bias = getattr(layer, "bias", None)
    if bias and isinstance(layer_bias, torch.Tensor):
        nn.init.zeros_(layer_bias)
