"""Installs anywhere: the wheel carries the shipped spaces, `python -m scalesearch` is the command.

Fast: the package list in pyproject.toml is complete, spaces are found by name (and through
$SCALESEARCH_SPACES), the CLI's exit statuses. Slow: the wheel built and installed into a fresh venv
(torch, then the wheel with its dependencies from the index), used from another folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scalesearch import cli
from scalesearch.cli import main
from scalesearch.config import spaces
from scalesearch.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))


def test_every_package_is_in_the_wheel_list() -> None:
    """pyproject.toml lists packages by hand (a mapped package defeats `packages.find`): a new
    sub-package of scalesearch must be added there, or the wheel would lack it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "scalesearch").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    assert mapping == {"scalesearch.search_spaces": "search_spaces"}
    assert pyproject["tool"]["setuptools"]["package-data"]["scalesearch.search_spaces"] == ["*.yaml"]


def test_shipped_spaces_are_found_by_name() -> None:
    assert spaces.shipped_spaces() == SHIPPED
    for name in SHIPPED:
        assert spaces.load_space(name).name == name


def test_spaces_env_replaces_the_shipped_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / "tests" / "fixtures" / "tiny_space.yaml", tmp_path / "mine.yaml")
    monkeypatch.setenv(spaces.SPACES_ENV, str(tmp_path))
    assert spaces.shipped_spaces() == ["mine"]
    assert spaces.load_space("mine").name == "tiny"
    with pytest.raises(UserError, match="one of: mine"):
        spaces.load_space("efficientnet_b0")


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_python_dash_m_is_the_command(tmp_path: Path) -> None:
    done = _run("-m", "scalesearch", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in cli.COMMANDS:
        assert name in done.stdout
    assert done.stdout.startswith("usage: scalesearch ")
    bad = _run("-m", "scalesearch", "family", "--space", "no_such_space", "--reference", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_exit_statuses(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # no command: the help, and "not done"
    capsys.readouterr()

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    from scalesearch.commands import data

    monkeypatch.setattr(data, "run", interrupted)
    assert main(["data", "digits"]) == 130
    err = capsys.readouterr().err
    assert err == "scalesearch data: interrupted\n"


def test_train_space_defaults_like_the_other_commands() -> None:
    # The README's example, exactly: no --space.
    argv = shlex.split("train --dataset digits --alpha 1.2 --beta 1.1 --gamma 1.15 --epochs 5")
    args = cli.build_parser().parse_args(argv)
    # None means "not given" (so --from can refuse an explicit --space); it resolves to the shipped default.
    train_help = cli.build_parser()._subparsers._actions[-1].choices["train"].format_help()  # type: ignore[union-attr]
    assert args.space is None and "default: efficientnet_b0" in " ".join(train_help.split())
    search_args = cli.build_parser().parse_args(["search"])
    assert search_args.space == spaces.DEFAULT_SPACE


# --------------------------------------------------------------------------------------------------
# Slow: a real wheel in a fresh venv


def _wheel(tmp_path: Path, python: str, env: dict[str, str]) -> Path:
    """Build the wheel with `python` (build isolation: setuptools comes from the index) from a copy of
    the source, so the build's egg-info and build/ folders stay out of this checkout."""
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=junk)
    dist = tmp_path / "dist"
    subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(source)],
                   check=True, cwd=tmp_path, env=env)  # fmt: skip
    [wheel] = dist.glob("scalesearch-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_elsewhere(tmp_path: Path) -> None:
    # Nothing of this checkout or of the test's own environment may leak into the fresh venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", spaces.SPACES_ENV, "RAY_ADDRESS")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python, command = str(venv / "bin" / "python"), str(venv / "bin" / "scalesearch")
    # torch first, pinned, from the CPU index when TORCH_INDEX says where (as the Makefile does).
    index = os.environ.get("TORCH_INDEX")
    torch = [python, "-m", "pip", "install", "--quiet", "torch==2.13.0", *(["--index-url", index] if index else [])]
    subprocess.run(torch, check=True, env=env)
    wheel = _wheel(tmp_path, python, env)
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED:
        assert f"scalesearch/search_spaces/{name}.yaml" in names
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
        return done.stdout

    where = run(python, "-c", "import scalesearch; print(scalesearch.__file__)")
    assert str(venv) in where and str(ROOT) not in where  # the installed copy, not this checkout
    assert "B7" in run(command, "family", "--reference")
    assert "images: 1,797" in run(command, "data", "digits")
    assert "usage: scalesearch" in run(python, "-m", "scalesearch", "--help")
    shutil.copy(ROOT / "tests" / "fixtures" / "tiny_space.yaml", elsewhere / "tiny.yaml")
    out = elsewhere / "run"
    run(command, "search", "--space", "tiny.yaml", "--trials", "2", "--epochs", "1", "--concurrency", "1",
        "--out", str(out), "--quiet")  # fmt: skip
    assert (out / "best.json").is_file()
    # The shipped default space, by name, outside any checkout.
    assert "final val accuracy" in run(
        command, "train", "--alpha", "1", "--beta", "1", "--gamma", "1", "--phi", "0", "--epochs", "1"
    )  # fmt: skip  (φ = 0: the proxy base itself)
