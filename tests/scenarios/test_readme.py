"""Every `scalesearch` command the README shows runs as written, with tiny sizes where a flag allows.

Run in a scratch folder holding what the commands name: small image folders (`my_images`,
`my_photos`), copies of the curated runs under `results/` and of `examples/`. The `ray start` and
`--address HEAD:6379` lines need a cluster: tests/execution/test_cluster.py starts a real one exactly as the
README says and searches on it. `make run` / `make test` are what CI itself runs.
"""

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalesearch.cli import main

ROOT = Path(__file__).resolve().parents[2]
# Flags appended to shrink a command (argparse keeps the last value of a repeated flag).
TINY = {
    "search": ["--trials", "2", "--epochs", "1", "--confirm-top", "0", "--family-phis", "0-1", "--concurrency", "1"],
    "train": ["--epochs", "1"],
    "validate": ["--seeds", "1", "--epochs", "1", "--phis", "0,1", "--concurrency", "1"],
}
NEEDS_CLUSTER = ("HEAD:6379",)


def readme_commands() -> list[str]:
    """The `scalesearch ...` lines of the README's bash blocks, comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command.startswith("scalesearch ") and not any(marker in command for marker in NEEDS_CLUSTER):
                lines.append(command)
    return lines


def image_folder(path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (path / label).mkdir(parents=True)
        for index in range(8):
            pixels = rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
            pixels[:, :6] = 255 if label == "cats" else 0
            Image.fromarray(pixels).save(path / label / f"{index}.png")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    image_folder(folder / "my_images")
    image_folder(folder / "my_photos")
    shutil.copytree(ROOT / "examples", folder / "examples")
    for run in ("default", "default-seed1"):
        shutil.copytree(ROOT / "results" / run, folder / "results" / run)
    return folder


def test_the_readme_names_the_curated_runs_it_uses():
    for command in readme_commands():
        for word in shlex.split(command):
            if word.startswith("results/") and word not in ("results/mine",):
                assert (ROOT / word).is_dir(), f"{command}: {word} is not in the repository"


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, scratch, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    words = shlex.split(command)
    redirect = None
    if ">" in words:
        redirect = words[words.index(">") + 1]
        words = words[: words.index(">")]
    argv = words[1:] + TINY.get(words[1], [])
    status = main(argv)
    out, err = capsys.readouterr()
    if "--gpus-per-trial" in words:
        assert status == 2 and "GPU" in err and err.count("\n") == 1  # no GPU here: one clear line
        return
    assert status == 0, err
    if redirect:
        (scratch / redirect).write_text(out)
        assert out
