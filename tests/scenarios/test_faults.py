"""Faults a user can run into, each held to the contract of tests/BAD_INPUTS.md: one clear line on
stderr naming the problem, exit status 2 (130 for Ctrl-C, 143 for SIGTERM), no traceback, and
nothing lost or half-written. Each test names its case in BAD_INPUTS.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Each case runs the CLI in a fresh interpreter (about 2 s of start-up each, 74 s for the module):
# the slow suite's, which CI runs, as CONTRIBUTING's rule for subprocess scenarios says.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUN = ROOT / "results" / "default"
TINY_RUN = ROOT / "tests" / "fixtures" / "run_tiny"
TINY_SPACE = ROOT / "tests" / "fixtures" / "tiny_space.yaml"


def cli(*argv: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`scalesearch ARGV` in a subprocess, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "scalesearch", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], *needles: str, status: int = 2) -> str:
    """The command ended with `status` and exactly one line on stderr holding every needle."""
    err = result.stderr
    assert result.returncode == status, (result.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.endswith("\n"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes: what 'nothing lost or half-written' compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------------------------------
# Damaged run folders: plot, report, export, validate


@pytest.mark.parametrize(("key", "command"), [("value", "plot"), ("std", "plot"), ("alpha", "report"),
                                              ("measured_ratio", "report"), ("value", "report")])  # fmt: skip
def test_a_string_where_best_json_holds_a_number_is_one_line(tmp_path: Path, key: str, command: str) -> None:
    run = copy_run(DEFAULT_RUN, tmp_path)
    edit_json(run / "best.json", lambda best: best.__setitem__(key, "abc"))
    before = snapshot(run)
    argv = ["plot", str(run), "--out", str(tmp_path / "out.png")] if command == "plot" else ["report", str(run)]
    one_line(cli(*argv), "best.json", key, "should be a number", "'abc'")
    assert snapshot(run) == before and not (tmp_path / "out.png").exists()


def test_a_string_deep_in_best_json_is_named_by_its_place(tmp_path: Path) -> None:
    run = copy_run(DEFAULT_RUN, tmp_path)
    edit_json(run / "best.json", lambda best: best["confirm"]["candidates"][1].__setitem__("mean", "0.9"))
    one_line(cli("report", str(run)), "confirm.candidates[1].mean should be a number")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda family: family.__setitem__("variants", "x"), "not a scalesearch family.json"),
        (lambda family: family.clear(), "not a scalesearch family.json"),
        (lambda family: family["variants"][1].__setitem__("width_mult", "wide"), "variants[1].width_mult"),
        (lambda family: family.pop("rule"), "missing rule"),
        (lambda family: family["variants"][0].pop("stages"), "missing stages"),
    ],
)
def test_export_of_a_damaged_family_json_names_the_damage(tmp_path: Path, damage, message: str) -> None:
    run = copy_run(DEFAULT_RUN, tmp_path)
    edit_json(run / "family.json", damage)
    err = one_line(cli("export", str(run)), "family.json", "damaged", message)
    assert "not found" not in err
    (run / "family.json").write_text("[1]")  # valid JSON, not a family
    one_line(cli("export", str(run)), "family.json: damaged")


def test_plot_out_a_folder_or_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    run = copy_run(TINY_RUN, tmp_path)
    before = snapshot(run)
    (tmp_path / "frontier.png").mkdir()
    one_line(cli("plot", str(run), "--out", str(tmp_path / "frontier.png")), "is a folder")
    # /sys refuses new files even to root (sysfs); elsewhere a read-only mount gives EROFS, tested below.
    one_line(cli("plot", str(run), "--out", "/sys/frontier.png"), "cannot write /sys/frontier.png")
    assert snapshot(run) == before and list((tmp_path / "frontier.png").iterdir()) == []


@pytest.mark.parametrize("command", ["plot", "report"])
def test_a_read_only_file_system_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], command: str) -> None:  # fmt: skip
    import errno

    from scalesearch.cli import main
    from scalesearch.core import atomic as results

    run = copy_run(TINY_RUN, tmp_path)
    before = snapshot(run)

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(results.tempfile, "mkstemp", read_only)
    argv = ["plot", str(run), "--out", str(run / "mine.svg")] if command == "plot" else ["report", str(run)]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Read-only file system" in err and str(run) in err, err
    assert snapshot(run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_report_on_a_read_only_run_folder_is_one_line(tmp_path: Path) -> None:
    run = copy_run(TINY_RUN, tmp_path)
    before = snapshot(run)
    run.chmod(0o555)
    try:
        one_line(cli("report", str(run)), "cannot write", "Permission denied")
    finally:
        run.chmod(0o755)
    assert snapshot(run) == before


def test_report_out_naming_a_folder_is_one_line(tmp_path: Path) -> None:
    run = copy_run(TINY_RUN, tmp_path)
    (run / "report.md").mkdir()
    before = snapshot(run)
    one_line(cli("report", str(run)), "is a folder")
    assert snapshot(run) == before


def test_report_on_a_run_without_trials_csv_names_the_missing_file(tmp_path: Path) -> None:
    run = copy_run(DEFAULT_RUN, tmp_path)
    (run / "trials.csv").unlink()
    before = snapshot(run)
    one_line(cli("report", str(run)), "trials.csv not found")
    assert snapshot(run) == before  # no report saying "trials: 0", no redrawn plots


@pytest.mark.parametrize(("key", "value"), [("trials", "x"), ("trials", 0), ("cpus_per_trial", "two")])
@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_damaged_search_json_is_blamed_not_a_flag(tmp_path: Path, key: str, value: object, command: str) -> None:
    run = copy_run(DEFAULT_RUN, tmp_path)
    edit_json(run / "search.json", lambda search: search["settings"].__setitem__(key, value))
    before = snapshot(run)
    argv = ["train", "--from", str(run)]
    if command == "validate":
        argv = ["validate", str(run), "--phis", "0", "--seeds", "1"]
    err = one_line(cli(*argv), f"{run / 'search.json'}: damaged setting: {key} must be")
    assert "--" not in err.partition("damaged setting")[2]
    assert snapshot(run) == before


def test_validate_flags_are_still_blamed_as_flags(tmp_path: Path) -> None:
    one_line(cli("validate", str(DEFAULT_RUN), "--phis", "0", "--epochs", "0"), "--epochs must be")


# --------------------------------------------------------------------------------------------------
# SIGTERM to a running search


def _rows(path: Path) -> list[str]:
    """trials.csv's data lines (a file replaced atomically: read whole or not at all)."""
    return path.read_text().splitlines()[1:] if path.is_file() else []


@pytest.mark.slow
def test_sigterm_stops_a_search_like_ctrl_c(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "scalesearch", "search", "--space", str(TINY_SPACE), "--out", str(out),
               "--family-phis", "0-1", "--concurrency", "1", "--confirm-top", "0", "--trials", "3",
               "--quiet"]  # fmt: skip
    # Its own process group, so the test can clean up everything it started; the signal goes to the
    # command alone, as `kill PID` sends it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not _rows(out / "trials.csv") and process.poll() is None:
            time.sleep(0.2)
        before = _rows(out / "trials.csv")
        assert before, "no trial finished in time"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted" in lines[0] and "--resume" in lines[0] and str(out) in lines[0]
    after = _rows(out / "trials.csv")
    assert after[: len(before)] == before  # what was written stays, byte for byte
    assert not (out / "best.json").exists() and (out / "search.json").is_file()


# --------------------------------------------------------------------------------------------------
# A user's builder that misbehaves


USER_MODELS = """
import sys

from torch import nn


def net(width_mult, depth_mult, num_classes, in_channels, outputs=None):
    width = max(2, round(8 * width_mult))
    layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
    for _ in range(max(1, round(2 * depth_mult)) - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, outputs or num_classes)]
    return nn.Sequential(*layers, *head)


class Wrapped(nn.Module):
    def __init__(self, inner, forward):
        super().__init__()
        self.inner, self.how = inner, forward

    def forward(self, x):
        return self.how(self.inner, x)


def exits(*, width_mult, depth_mult, num_classes, in_channels):
    sys.exit(3)


def forward_raises(*, width_mult, depth_mult, num_classes, in_channels):
    def boom(inner, x):
        raise RuntimeError("boom in forward")

    return Wrapped(net(width_mult, depth_mult, num_classes, in_channels), boom)


def prints(*, width_mult, depth_mult, num_classes, in_channels):
    print("building a network")

    def chatty(inner, x):
        print("forward")
        return inner(x)

    return Wrapped(net(width_mult, depth_mult, num_classes, in_channels), chatty)


def flat_output(*, width_mult, depth_mult, num_classes, in_channels):
    return Wrapped(net(width_mult, depth_mult, num_classes, in_channels), lambda inner, x: inner(x).reshape(-1))


def thirteen_outputs(*, width_mult, depth_mult, num_classes, in_channels):
    return net(width_mult, depth_mult, num_classes, in_channels, outputs=13)


def ignores_scaling(*, width_mult, depth_mult, num_classes, in_channels):
    return net(1.0, 1.0, num_classes, in_channels)
"""


def builder_space(tmp_path: Path, builder: str) -> Path:
    """A space whose builder is `user_models:BUILDER` (USER_MODELS, written next to it)."""
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    path = tmp_path / f"{builder}.yaml"
    path.write_text(f"name: {builder}\nbuilder: user_models:{builder}\nproxy: {{resolution: 8}}\n"
                    "search: {dataset: digits, epochs: 1}\n")  # fmt: skip
    return path


FAMILY = ["--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phis", "0", "--format", "json"]


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        ("exits", "raised SystemExit: 3"),
        ("forward_raises", "forward pass on a (1, 3, 8, 8) input raised RuntimeError: boom in forward"),
        ("flat_output", "returns shape (10,)"),
        ("thirteen_outputs", "returns shape (1, 13)"),
        ("ignores_scaling", "ignores width_mult and depth_mult"),
    ],
)
def test_a_misbehaving_builder_is_one_line_naming_it(tmp_path: Path, builder: str, message: str) -> None:
    space = builder_space(tmp_path, builder)
    result = cli("family", "--space", str(space), *FAMILY)
    one_line(result, str(space), f"user_models:{builder}", message)
    assert result.stdout == ""


def test_train_with_a_builder_whose_forward_raises_is_one_line(tmp_path: Path) -> None:
    space = builder_space(tmp_path, "forward_raises")
    result = cli("train", "--space", str(space), "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--epochs", "1")
    one_line(result, "user_models:forward_raises", "boom in forward")


def test_what_a_builder_prints_goes_to_stderr_and_json_stays_valid(tmp_path: Path) -> None:
    result = cli("family", "--space", str(builder_space(tmp_path, "prints")), *FAMILY)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["variants"][0]["name"] == "B0"
    assert "building a network" in result.stderr and "forward" in result.stderr


# --------------------------------------------------------------------------------------------------
# Absurd phi


@pytest.mark.parametrize("phi", ["40", "1e308"])
def test_train_refuses_an_absurd_phi_at_once(tmp_path: Path, phi: str) -> None:
    import time

    start = time.monotonic()
    result = cli("train", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phi", phi, "--dataset", "digits",
                 "--epochs", "1", cwd=tmp_path, timeout=60)  # fmt: skip
    one_line(result, f"phi={float(phi):g}", "choose a smaller phi")
    assert time.monotonic() - start < 30  # refused before the enumeration, not after minutes of it


def test_family_phis_that_overflow_are_one_line(tmp_path: Path) -> None:
    result = cli("family", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phis", "0-100000", cwd=tmp_path)
    one_line(result, "phi=100000", "too large", "--phis")


# --------------------------------------------------------------------------------------------------
# Image folders


def image_folder(tmp_path: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    from PIL import Image

    root = tmp_path / "photos"
    for name, shapes in sizes.items():
        (root / name).mkdir(parents=True)
        for i, size in enumerate(shapes):
            Image.new("L", size, 30 * i).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("target", ["root", "other class", "parent"])
def test_a_class_folder_linked_inside_the_dataset_is_refused(tmp_path: Path, target: str) -> None:
    root = image_folder(tmp_path, {"a": [(8, 8)] * 4, "b": [(8, 8)] * 4})
    link = {"root": root, "other class": root / "a", "parent": tmp_path}[target]
    (root / "loop").symlink_to(link, target_is_directory=True)
    before = snapshot(root)
    result = cli("data", str(root), "--cache-dir", str(tmp_path / "cache"))
    one_line(result, str(root / "loop"), "link to", "remove the link")
    assert result.stdout == "" and snapshot(root) == before


def test_a_class_folder_linked_from_elsewhere_is_a_class(tmp_path: Path) -> None:
    elsewhere = image_folder(tmp_path / "shared", {"c": [(8, 8)] * 3})
    root = image_folder(tmp_path, {"a": [(8, 8)] * 3, "b": [(8, 8)] * 3})
    (root / "c").symlink_to(elsewhere / "c", target_is_directory=True)
    result = cli("data", str(root), "--cache-dir", str(tmp_path / "cache"), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert [c["images"] for c in json.loads(result.stdout)["classes"]] == [3, 3, 3]


def test_mixed_image_sizes_are_said_with_the_size_they_get(tmp_path: Path) -> None:
    root = image_folder(tmp_path, {"a": [(8, 8), (8, 8), (32, 20)], "b": [(8, 8), (12, 9), (8, 8)]})
    table = cli("data", str(root), "--cache-dir", str(tmp_path / "cache"))
    assert table.returncode == 0, table.stderr
    assert "native size: 8×8 (images differ: 8×8 to 32×20; each is resized so its shorter side is 8 px, " \
           "the median shorter side" in table.stdout  # fmt: skip
    info = json.loads(cli("data", str(root), "--cache-dir", str(tmp_path / "cache"), "--format", "json").stdout)
    assert info["native_size"] == 8 and info["image_sizes"] == [[8, 8], [32, 20]]
    same = image_folder(tmp_path / "same", {"a": [(8, 8)] * 2, "b": [(8, 8)] * 2})
    table = cli("data", str(same), "--cache-dir", str(tmp_path / "cache"))
    assert "native size: 8×8  channels: 1" in table.stdout


# --------------------------------------------------------------------------------------------------
# train follows the space's dataset, as search does


def test_train_defaults_to_the_space_dataset_like_search(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    spec = "synthetic:n=200,size=12,channels=1"
    space.write_text(TINY_SPACE.read_text().replace("dataset: digits", f'dataset: "{spec}"'))
    argv = ["train", "--space", str(space), "--alpha", "1", "--beta", "1", "--gamma", "1", "--phi", "0",
            "--epochs", "1", "--threads", "1", "--format", "json", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = cli(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dataset"] == spec  # --dataset still wins: test_custom_family, test_readme
