"""The user's own model: a space naming `builder: MODULE:ATTRIBUTE`, loaded by importlib, measured.

Fast: the example (examples/small_cnn.py + .yaml) loads, its depth and width are measured on the
built network, `scalesearch family` and `scalesearch train` run it on digits, and every mistake in
a builder ends with one line. Slow: search, validate and export of the example, and the builder's
module shipped to Ray workers that cannot see its folder.
"""

from __future__ import annotations

import json
import pickle
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest
from torch import nn

from scalesearch.cli import main
from scalesearch.config.spaces import load_space, space_from_text
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients
from scalesearch.execution import cluster
from scalesearch.models.families import Family, ModelSpec, StageInfo
from scalesearch.models.families.custom import BuilderFamily

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "small_cnn.yaml"
BASE_LAYERS = 2 + 3 + 4  # examples/small_cnn.yaml: blocks [2, 3, 4], one conv each
BASE_CHANNELS = 8 + 16 + 32  # channels [16, 32, 64] at the proxy's width 0.5


def _unique(prefix: str) -> str:
    """A module name no other test uses: imported modules stay in sys.modules."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _space(tmp_path: Path, module_source: str, builder: str = "build", extra: str = "") -> Path:
    """A space file in tmp_path whose builder is a fresh module written next to it."""
    name = _unique("user_model")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_source))
    path = tmp_path / "space.yaml"
    path.write_text(f"family: custom\nbuilder: {name}:{builder}\nproxy: {{resolution: 8}}\n{extra}")
    return path


GOOD_BUILDER = """
    from torch import nn

    def build(*, width_mult, depth_mult, num_classes, in_channels, hidden=8):
        width = max(1, round(hidden * width_mult))
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(max(1, round(2 * depth_mult)) - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""


def test_example_loads_and_is_measured() -> None:
    space = load_space(EXAMPLE)
    family = space.proxy_family
    assert isinstance(family, BuilderFamily) and space.family_name == "custom"
    assert space.builder == "small_cnn:build" and space.builder_root == str(EXAMPLE.parent)
    base = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=10, in_channels=1)
    assert family.total_blocks(base) == BASE_LAYERS
    assert family.total_channels(base) == BASE_CHANNELS
    assert family.stages(base) == [StageInfo("stage1", 8, 2), StageInfo("stage2", 16, 3), StageInfo("stage3", 32, 4)]
    # Deeper is measured as deeper, not wider; wider as wider, not deeper.
    deeper = space.scaled_proxy(Coefficients(2.0, 1.0, 1.0), 1.0, num_classes=10, in_channels=1)
    assert (family.total_blocks(deeper), family.total_channels(deeper)) == (2 * BASE_LAYERS, BASE_CHANNELS)
    wider = space.scaled_proxy(Coefficients(1.0, 2.0, 1.0), 1.0, num_classes=10, in_channels=1)
    assert (family.total_blocks(wider), family.total_channels(wider)) == (BASE_LAYERS, 2 * BASE_CHANNELS)
    # A family pickles by name (what Ray does with it) and measures the same after the trip.
    again = pickle.loads(pickle.dumps(family))
    assert again.total_blocks(deeper) == 2 * BASE_LAYERS


def test_family_command_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["family", "--space", str(EXAMPLE), "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15",
            "--phis", "0,1", "--format", "json"]  # fmt: skip
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    b0, b1 = table["variants"]
    assert [s["repeats"] for s in b0["stages"]] == [2, 3, 4]
    assert [s["channels"] for s in b0["stages"]] == [16, 32, 64]
    assert b1["resolution"] > b0["resolution"] and b1["params"] > b0["params"] and b1["flops"] > b0["flops"]


def test_train_command_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--space", str(EXAMPLE), "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15",
            "--epochs", "2", "--threads", "1", "--format", "json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["space"] == "small_cnn" and summary["dataset"] == "digits"
    assert len(summary["epochs"]) == 2
    assert summary["final_val_accuracy"] > 0.5  # digits, 10 classes: chance is 0.1


def test_a_family_subclass_as_builder(tmp_path: Path) -> None:
    source = """
        from torch import nn
        from scalesearch.models.families import Family, StageInfo

        class Tiny(Family):
            def build(self, spec):
                width = int(self.architecture["width"] * spec.width_mult)
                return nn.Sequential(nn.Conv2d(spec.in_channels, width, 1), nn.Flatten(),
                                     nn.LazyLinear(spec.num_classes))

            def stages(self, spec):
                return [StageInfo("stage1", int(self.architecture["width"] * spec.width_mult), 1)]
    """
    space = load_space(_space(tmp_path, source, "Tiny", "architecture: {width: 4}\n"))
    assert isinstance(space.family, Family) and not isinstance(space.family, BuilderFamily)
    assert space.family.total_channels(ModelSpec(width_mult=2.0)) == 8


def _error(tmp_path: Path, source: str, builder: str = "build", extra: str = "") -> str:
    with pytest.raises(UserError) as info:
        load_space(_space(tmp_path, source, builder, extra))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    return message


def test_builder_mistakes_end_with_one_line(tmp_path: Path) -> None:
    assert "has no attribute 'make'" in _error(tmp_path, GOOD_BUILDER, "make")
    assert "not callable" in _error(tmp_path, "build = 3\n")
    assert "importing" in _error(tmp_path, "raise RuntimeError('boom at import')\n")
    assert "boom at import" in _error(tmp_path, "raise RuntimeError('boom at import')\n")
    assert "No module named 'not_installed_anywhere'" in _error(tmp_path, "import not_installed_anywhere\n")
    assert "SyntaxError" in _error(tmp_path, "def build(:\n")
    returns_text = "def build(*, width_mult, depth_mult, num_classes, in_channels):\n    return 'a model'\n"
    assert "returned a str, not a torch nn.Module" in _error(tmp_path, returns_text)
    raises = "def build(*, width_mult, depth_mult, num_classes, in_channels):\n    raise ValueError('no such width')\n"
    assert "raised ValueError: no such width" in _error(tmp_path, raises)
    no_depth = "def build(*, width_mult, num_classes, in_channels):\n    pass\n"
    assert "must take the keyword argument(s) depth_mult" in _error(tmp_path, no_depth)
    assert "architecture keys ['colour'] are not parameters" in _error(
        tmp_path, GOOD_BUILDER, extra="architecture: {colour: 1}\n"
    )
    needs = "def build(*, width_mult, depth_mult, num_classes, in_channels, kernel):\n    pass\n"
    assert "needs argument(s) kernel" in _error(tmp_path, needs)
    one_layer = (
        "from torch import nn\n"
        "def build(*, width_mult, depth_mult, num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    assert "at least two" in _error(tmp_path, one_layer)  # found when the space loads (one forward pass)
    broken_forward = (
        "from torch import nn\n"
        "def build(*, width_mult, depth_mult, num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels + 1, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    assert "forward pass on a (1, 3, 8, 8) input raised RuntimeError" in _error(tmp_path, broken_forward)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("family: custom\n", "'family: custom' needs 'builder: MODULE:FUNCTION'"),
        ("family: efficientnet\nbuilder: m:build\n", "'builder' goes with 'family: custom'"),
        ("builder: 'os.system(\"ls\")'\n", "'builder' must be MODULE:ATTRIBUTE"),
        ("builder: build\n", "'builder' must be MODULE:ATTRIBUTE"),
        ("builder: no_such_module_here:build\n", "no module named 'no_such_module_here'"),
        ("family: efficientnet\nbuilder_path: src\n", "'builder_path' goes with 'builder'"),
    ],
)
def test_bad_builder_entries(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        load_space(path)
    assert "\n" not in str(info.value)


def test_builder_path_is_relative_to_the_space(tmp_path: Path) -> None:
    name = _unique("nested_model")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{name}.py").write_text(textwrap.dedent(GOOD_BUILDER))
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "space.yaml"
    path.write_text(f"builder: {name}:build\nbuilder_path: ../src\nproxy: {{resolution: 8}}\n")
    space = load_space(path)
    assert space.builder_root == str(tmp_path / "src")
    assert space.proxy_family.total_blocks(ModelSpec(resolution=8, depth_mult=1.0)) == 2


def test_space_from_text_without_the_file_finds_the_module_on_the_path(tmp_path: Path) -> None:
    """What a worker on another machine does: the space's text, a folder that does not exist there."""
    space = load_space(EXAMPLE)  # imports small_cnn, as py_modules would on a worker
    again = space_from_text(space.source, path="/nowhere/on/this/machine/small_cnn.yaml")
    assert again.builder_root == "/nowhere/on/this/machine"
    spec = ModelSpec(resolution=12, in_channels=1, num_classes=10, width_mult=0.5)
    assert isinstance(again.proxy_family.build(spec), nn.Module)


def test_code_runtime_env_ships_folder_modules_only(tmp_path: Path) -> None:
    space = load_space(EXAMPLE)
    assert cluster.code_runtime_env(space) == {"py_modules": [str(EXAMPLE.parent / "small_cnn.py")]}
    assert cluster.code_runtime_env(load_space("efficientnet_b0")) is None
    assert cluster.code_runtime_env(None) is None

    class Installed:
        def builder_module(self) -> str:
            return "torch.nn"  # in site-packages: installed on every node, not shipped

    assert cluster.code_runtime_env(Installed()) is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Slow: the whole flow on the example, and the module shipped to workers


@pytest.mark.slow
def test_search_validate_export_on_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["search", "--space", str(EXAMPLE), "--trials", "3", "--epochs", "1", "--concurrency", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    from scalesearch.outputs.runs import read_trials

    rows = read_trials(out / "trials.csv").values()
    assert sum(r["stage"] == "search" for r in rows) == 3 and any(r["stage"] == "confirm" for r in rows)
    best = json.loads((out / "best.json").read_text())
    assert best["space"] == "small_cnn"
    family = json.loads((out / "family.json").read_text())
    assert [s["repeats"] for s in family["variants"][0]["stages"]] == [2, 3, 4]
    capsys.readouterr()

    assert main(["validate", str(out), "--phis", "0,1", "--seeds", "1", "--epochs", "1", "--quiet"]) == 0
    assert (out / "validation.csv").is_file()
    capsys.readouterr()

    assert main(["export", str(out), "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["coefficients"]["alpha"] == pytest.approx(best["alpha"])


@pytest.mark.slow
def test_builder_module_is_shipped_to_ray_workers(tmp_path: Path) -> None:
    """Workers rebuild the space from its text at a path that does not exist: the module can only
    come from the runtime env ray_session sets up (py_modules), as on another machine."""
    import ray

    from scalesearch.config.settings import SearchSettings

    name = _unique("shipped_cnn")
    shutil.copy(ROOT / "examples" / "small_cnn.py", tmp_path / f"{name}.py")
    text = EXAMPLE.read_text().replace("builder: small_cnn:build", f"builder: {name}:build")
    (tmp_path / "space.yaml").write_text(text)
    space = load_space(tmp_path / "space.yaml")

    def build_on_worker(source: str) -> tuple[str, int]:
        remote = space_from_text(source, path="/not/on/this/worker/space.yaml")
        spec = ModelSpec(resolution=12, in_channels=1, num_classes=10, width_mult=0.5)
        return type(remote.proxy_family.build(spec)).__name__, remote.proxy_family.total_blocks(spec)

    settings = SearchSettings(space_path=space.path, dataset="digits", concurrency=1)
    with cluster.ray_session(settings, space=space):
        result = ray.get(ray.remote(num_cpus=1)(build_on_worker).remote(space.source))
    assert result == ("Sequential", BASE_LAYERS)
    # The control: without the space, nothing ships and the worker cannot find the module.
    with cluster.ray_session(settings), pytest.raises(Exception, match=f"no module named '{name}'"):
        ray.get(ray.remote(num_cpus=1)(build_on_worker).remote(space.source))
