"""Build every exported variant with timm's and torchvision's own EfficientNet builders and measure it.

Run by tests/scenarios/test_library_exports.py with the python of the library venv
(library_venv.py), never with the project's: it imports torch, timm and torchvision, not scalesearch.

    python check_library_exports.py EXPORTS.json  ->  measurements as JSON on standard output

EXPORTS.json: {"num_classes": N, "timm": [variant, ...], "torchvision": [variant, ...]}, the variants
as `scalesearch export --format timm|torchvision` lists them. Per library and variant it reports the
parameter count, the output shape of one forward pass (batch 1, 3 channels, the variant's resolution,
eval mode, no grad), the FLOPs torch's own counter (torch.utils.flop_counter.FlopCounterMode, 2
flops per multiply-add) counts in that pass, by operator, and what that counter leaves out and fvcore
(the family's counter) counts: the output elements of every batch norm, and of the last one, which is
the feature map the global pool averages.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from timm.models.efficientnet import _gen_efficientnet
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf


def build(library: str, variant: dict[str, Any], num_classes: int) -> tuple[torch.nn.Module, int]:
    """The variant built as the export's usage lines say, and its input side in pixels."""
    if library == "timm":
        model = _gen_efficientnet("efficientnet_b0", pretrained=False, num_classes=num_classes, **variant["kwargs"])
        channels, height, width = variant["input_size"]
        assert channels == 3 and height == width, variant["input_size"]
        return model, height
    setting, _ = _efficientnet_conf("efficientnet_b0", **variant["conf_kwargs"])
    model = EfficientNet(setting, variant["dropout"], last_channel=variant["last_channel"], num_classes=num_classes)
    return model, variant["resolution"]


def measure(library: str, variant: dict[str, Any], num_classes: int) -> dict[str, Any]:
    start = time.perf_counter()
    model, side = build(library, variant, num_classes)
    model.eval()
    norms: list[int] = []  # output elements of each batch norm, in call order (timm's BatchNormAct2d included)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(lambda _module, _inputs, out: norms.append(out.numel()))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        output = model(torch.randn(1, 3, side, side))
    by_op = {str(op): int(count) for op, count in counter.get_flop_counts()["Global"].items()}
    return {
        "name": variant["name"],
        "params": sum(p.numel() for p in model.parameters()),
        "output_shape": list(output.shape),
        "finite": bool(torch.isfinite(output).all()),
        "resolution": side,
        "torch_flops": int(counter.get_total_flops()),
        "torch_flops_by_op": by_op,
        "batchnorm_elements": sum(norms),
        "pooled_elements": norms[-1],
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(path: str) -> None:
    exports = json.loads(Path(path).read_text(encoding="utf-8"))
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__},
        "cuda_available": torch.cuda.is_available(),
    }
    for library in ("timm", "torchvision"):
        result[library] = [measure(library, v, exports["num_classes"]) for v in exports[library]]
    json.dump(result, sys.stdout, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
