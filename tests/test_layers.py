"""The package's folders are its layers: each imports only the layers below it, and no module import
circles back to itself. Every import counts, inside functions and under TYPE_CHECKING too: a deferred
import is still a dependency. CONTRIBUTING.md ("Layout") says what each layer is for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scalesearch"
# Lowest first. `commands` and the top-level modules (cli, __main__, __init__) may import anything.
LAYERS = ["core", "data", "models", "config", "planning", "training", "outputs", "execution", "validation", "search"]
TOP = len(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def import_graph() -> dict[str, set[str]]:
    """module → the scalesearch modules it imports (a `from package import module` names the module)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("scalesearch"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scalesearch"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
        graph[module] = {target for target in targets if target != module and target in modules}
    return graph


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {LAYERS[layer_of(module)]}) imports {target}"
        for module, targets in import_graph().items()
        if layer_of(module) < TOP
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_circles() -> None:
    graph = import_graph()
    # A package's __init__ importing its own modules is how a package exposes them, not a circle.
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    circles, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state[target] == 1:
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif state[target] == 0:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module)
    assert circles == []


def test_every_module_sits_in_a_layer_or_at_the_top() -> None:
    top_level = {module_name(path) for path in PACKAGE.glob("*.py")}
    assert top_level == {"scalesearch", "scalesearch.__main__", "scalesearch.cli"}
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == {
        *LAYERS,
        "commands",
    }


def test_plain_specs_import_no_torch() -> None:
    """ModelSpec and its kind are shared by many layers: importing them must not import torch."""
    code = "import sys, scalesearch.models.spec, scalesearch.core.scaling; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# Read by commands that never train (report, plot, export, --help) or imported by every Ray worker
# before it trains: importing them must not import torch (about 2 s). Torch-importing modules are
# imported inside their functions, as their comments say.
LIGHT = [
    "scalesearch.cli",
    *(f"scalesearch.commands.{name}" for name in ("data", "export", "family", "plot", "report", "search", "train")),
    *(f"scalesearch.core.{name}" for name in ("atomic", "errors", "machine", "scaling", "tables")),
    "scalesearch.models.spec",
    "scalesearch.models.measure",
    *(f"scalesearch.config.{name}" for name in ("recipe", "settings", "spaces")),
    *(f"scalesearch.planning.{name}" for name in ("calibration", "planner")),
    *(
        f"scalesearch.outputs.{name}"
        for name in ("export", "family_table", "plots", "report", "runs", "verdict", "views")
    ),
    *(f"scalesearch.execution.{name}" for name in ("cluster", "runner")),
    "scalesearch.validation.validate",
    *(f"scalesearch.search.{name}" for name in ("confirm", "driver", "finish", "proposals", "rounds", "tuning")),
]


def test_light_modules_import_no_torch() -> None:
    code = f"import sys; [__import__(m) for m in {LIGHT!r}]; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
