"""The user's own model as a scalable family: a builder named `MODULE:ATTRIBUTE` in a search space.

The builder is imported by module path with importlib (never exec or eval), first from the space's
`builder_path` folder (default: the space file's folder), then from the Python path, where a Ray
cluster's runtime env puts the module on workers of other machines (cluster.code_runtime_env).

Two kinds of builder:

- A callable (a function, or an `nn.Module` class) called with keyword arguments and returning an
  `nn.Module`: `width_mult`, `depth_mult`, `num_classes`, `in_channels` (required), `resolution` and
  `dropout` (passed when the callable names them), and every key of the space's `architecture`
  mapping (a proxy's `architecture` overrides are merged in, as for the built-in families)::

      def build(*, width_mult, depth_mult, num_classes, in_channels, resolution=32, dropout=0.0,
                channels=(16, 32, 64)) -> nn.Module: ...

- A subclass of `scalesearch.models.families.Family`, instantiated with the `architecture` mapping, which
  then does everything a built-in family does (its own stages and rounding).

The realized depth and width of a callable's model are measured, not assumed: one forward pass at
batch 1 records every `nn.Conv1d/2d/3d` and `nn.Linear` that runs (modules reused run once per
call). The last of them makes the logits, whose size the classes fix, so it is left out. Stages
are runs of consecutive weight layers whose outputs have the same size (a stride ends a stage),
each with the channels (convs) or features (linears) of its last layer. Depth is the number of
weight layers ("on the path"), width the summed channels of the stages: one number per stage, so a
deeper network is not counted as a wider one. Layers called as functions (attention's in-projection inside
`nn.MultiheadAttention`) are not seen: a model that relies on them can subclass Family instead.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalesearch.core.errors import UserError, first_line
from scalesearch.models.families.base import Family, ModelSpec, StageInfo, register_family

# ModelSpec fields every callable builder must take: without them the search could not scale the
# model (width, depth) or fit it to the dataset (classes, channels).
REQUIRED_ARGUMENTS = ("width_mult", "depth_mult", "num_classes", "in_channels")
SPEC_ARGUMENTS = tuple(f.name for f in fields(ModelSpec))
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
MEASURED_CACHE = 64  # specs whose measurement a family keeps (the planner asks for a few dozen)


def import_module(module_name: str, root: str | None) -> Any:
    """Import `module_name`, looking for its top-level package in `root` first, then on sys.path.

    The module is registered under its own name, so pickle finds its functions by reference as for
    any installed module. sys.path itself is left as it was.
    """
    top = module_name.split(".")[0]
    if top not in sys.modules and root is not None and Path(root).is_dir():
        importlib.invalidate_caches()  # a file written since the last import must be seen
        spec = importlib.machinery.PathFinder.find_spec(top, [root])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(top, None)
                raise
    return importlib.import_module(module_name)


def load_builder(target: str, *, root: str | None = None) -> Any:
    """The object named by `target` (MODULE:ATTRIBUTE); UserError with one line for every way it fails."""
    module_name, _, attribute = target.partition(":")
    where = f" (looked in {root} and on the Python path)" if root else " (looked on the Python path)"
    try:
        module = import_module(module_name, root)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UserError(f"builder {target!r}: no module named {missing!r}{where}") from None
        raise UserError(f"builder {target!r}: importing {module_name!r} failed: {first_line(error)}") from None
    except (Exception, SystemExit) as error:
        raise UserError(f"builder {target!r}: importing {module_name!r} raised {first_line(error)}") from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            origin = getattr(module, "__file__", None) or module_name
            raise UserError(f"builder {target!r}: {origin} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise UserError(
            f"builder {target!r} is not callable (a value of type {type(found).__name__}): name a function that "
            "returns an nn.Module, or a Family subclass"
        )
    return found


def custom_family(target: str, architecture: Mapping[str, Any], *, root: str | None = None) -> Family:
    """The family for a space's `builder`: the user's Family subclass, or a BuilderFamily around a callable."""
    builder = load_builder(target, root=root)
    if isinstance(builder, type) and issubclass(builder, Family):
        try:
            return builder(architecture)
        except UserError:
            raise
        except Exception as error:
            message = f"builder {target!r}: {builder.__name__}(architecture) raised {first_line(error)}"
            raise UserError(message) from None
    return BuilderFamily(architecture, builder=builder, target=target, root=root)


@dataclass(frozen=True)
class WeightLayer:
    """One conv or linear call of a forward pass."""

    kind: str  # "conv" or "linear"
    width: int  # output channels (conv) or features (linear)
    size: tuple[int, ...]  # spatial size of the output (empty for a linear)


@register_family("custom")
class BuilderFamily(Family):
    """A user's builder callable as a family; depth, width and stages measured on the built model."""

    def __init__(
        self,
        architecture: Mapping[str, Any],
        *,
        builder: Callable[..., Any] | None = None,
        target: str = "",
        root: str | None = None,
    ) -> None:
        super().__init__(architecture)
        if builder is None:
            raise UserError("'family: custom' needs 'builder: MODULE:FUNCTION' (e.g. small_cnn:build)")
        self.builder = builder
        self.target = target or getattr(builder, "__qualname__", repr(builder))
        self.root = root
        self.arguments = self._check_signature()
        self._measured: dict[ModelSpec, tuple[WeightLayer, ...]] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by name (MODULE:ATTRIBUTE) and re-imported where it is unpickled, like a function."""
        return (_unpickle, (self.target, dict(self.architecture), self.root))

    def _check_signature(self) -> tuple[str, ...]:
        """The ModelSpec fields the builder takes; UserError when it cannot take what it is called with."""
        try:
            signature = inspect.signature(self.builder)
        except (TypeError, ValueError):
            return SPEC_ARGUMENTS  # no signature to read (a C callable): pass everything
        parameters = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        named = {name for name, p in parameters.items()
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}  # fmt: skip
        call = f"{self.target}(width_mult, depth_mult, num_classes, in_channels[, resolution, dropout], **architecture)"
        missing = [name for name in REQUIRED_ARGUMENTS if name not in named and not takes_any]
        if missing:
            raise UserError(f"builder {self.target!r} must take the keyword argument(s) {', '.join(missing)}: "
                            f"it is called as {call}")  # fmt: skip
        clash = sorted(set(self.architecture) & set(SPEC_ARGUMENTS))
        if clash:
            raise UserError(f"architecture keys {clash} clash with the arguments scalesearch passes to the builder")
        unknown = sorted(key for key in self.architecture if key not in named and not takes_any)
        if unknown:
            raise UserError(f"architecture keys {unknown} are not parameters of {self.target}")
        given = set(self.architecture) | set(SPEC_ARGUMENTS)
        unmet = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty
                 and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
                 and name not in given]  # fmt: skip
        if unmet:
            raise UserError(f"builder {self.target!r} needs argument(s) {', '.join(unmet)} that neither the spec "
                            "nor 'architecture' gives")  # fmt: skip
        return SPEC_ARGUMENTS if takes_any else tuple(name for name in SPEC_ARGUMENTS if name in named)

    def build(self, spec: ModelSpec) -> nn.Module:
        """The builder's module for `spec`; UserError when it raises or returns something else."""
        arguments = {name: getattr(spec, name) for name in self.arguments}
        try:
            # What the builder prints is its own chatter, not the command's output (JSON on stdout).
            with contextlib.redirect_stdout(sys.stderr):
                model = self.builder(**arguments, **self.architecture)
        except UserError:
            raise
        except (Exception, SystemExit) as error:  # sys.exit() in a builder must not end the command silently
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in arguments.items())
            raise UserError(f"builder {self.target}({shown}) raised {first_line(error)}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"builder {self.target!r} returned a {type(model).__name__}, not a torch nn.Module")
        return model

    def weight_layers(self, spec: ModelSpec) -> tuple[WeightLayer, ...]:
        """The conv/linear calls of one forward pass at batch 1 (the classifier's last), cached per spec."""
        if spec in self._measured:
            return self._measured[spec]
        model = self.build(spec).eval()
        calls: list[WeightLayer] = []

        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            if isinstance(module, nn.Linear):
                calls.append(WeightLayer("linear", module.out_features, ()))
            else:
                calls.append(WeightLayer("conv", int(getattr(module, "out_channels", 0)), tuple(output.shape[2:])))

        handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
        image = torch.zeros(1, spec.in_channels, spec.resolution, spec.resolution)
        try:
            with torch.inference_mode(), contextlib.redirect_stdout(sys.stderr):
                output = model(image)
        except (Exception, SystemExit) as error:
            raise UserError(
                f"builder {self.target!r}: the model's forward pass on a {tuple(image.shape)} input raised "
                f"{first_line(error)}"
            ) from None
        finally:
            for handle in handles:
                handle.remove()
        # Training reads the output as logits, one per class: anything else would fail deep in the loss,
        # or (more outputs than classes) train without a word.
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, spec.num_classes):
            shape = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise UserError(
                f"builder {self.target!r}: the model returns {shape} for a {tuple(image.shape)} input; it must "
                f"return logits of shape (batch, num_classes) = (1, {spec.num_classes})"
            )
        if len(calls) < 2:
            raise UserError(
                f"builder {self.target!r}: its model runs {len(calls)} conv/linear layer(s); depth and width are "
                "measured on the convs and linears before the classifier, so it needs at least two"
            )
        if len(self._measured) >= MEASURED_CACHE:
            self._measured.pop(next(iter(self._measured)))
        self._measured[spec] = tuple(calls)
        return self._measured[spec]

    def _hidden(self, spec: ModelSpec) -> tuple[WeightLayer, ...]:
        # The last weight layer makes the logits: its size is the number of classes, not the width.
        return self.weight_layers(spec)[:-1]

    def stages(self, spec: ModelSpec) -> list[StageInfo]:
        """Runs of consecutive weight layers with the same output size: channels of the run's last layer
        (what the next run sees) and the number of layers in it. Measured on the built model."""
        groups: list[list[WeightLayer]] = []
        for layer in self._hidden(spec):
            if groups and (groups[-1][-1].kind, groups[-1][-1].size) == (layer.kind, layer.size):
                groups[-1].append(layer)
            else:
                groups.append([layer])
        return [
            StageInfo(f"{'stage' if group[0].kind == 'conv' else 'fc'}{index}", group[-1].width, len(group))
            for index, group in enumerate(groups, start=1)
        ]

    def total_blocks(self, spec: ModelSpec) -> int:
        """Weight layers (convs and linears) that run before the classifier: the realized depth."""
        return len(self._hidden(spec))

    def total_channels(self, spec: ModelSpec) -> int:
        """Summed channels of the stages (one number per stage, so deeper is not wider): the realized width."""
        return sum(stage.channels for stage in self.stages(spec))


def _unpickle(target: str, architecture: Mapping[str, Any], root: str | None) -> Family:
    """BuilderFamily.__reduce__'s other half."""
    return custom_family(target, architecture, root=root)
