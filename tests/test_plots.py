"""Plots: the Pareto computation and simplex placement on known points; files written by `scalesearch plot`."""

import math
from pathlib import Path

import pandas as pd
import pytest

# pytest puts tests/ on sys.path, so the session's shared tiny run is built once for every module.
from test_validate import shared_run

from scalesearch.cli import main
from scalesearch.plots import pareto_front, plot_frontier, plot_validation, simplex_points


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, validated=False)


def test_pareto_front_on_known_points():
    points = pd.DataFrame(
        {
            "flops": [100, 100, 150, 200, 250, 300, 50],
            "final_val_accuracy": [0.80, 0.85, 0.84, 0.90, 0.90, 0.95, None],
        }
    )
    front = pareto_front(points)
    # (100, .80) is beaten at equal cost, (150, .84) by a cheaper point, (250, .90) ties a cheaper one;
    # the point without accuracy is left out.
    assert list(zip(front["flops"], front["final_val_accuracy"])) == [(100, 0.85), (200, 0.90), (300, 0.95)]


def test_simplex_points_on_known_shares():
    trials = pd.DataFrame(
        {
            "trial": [0, 1, 2, 3],
            "status": ["completed"] * 4,
            "share_depth": [1.0, 0.0, 0.0, 0.5],
            "share_width": [0.0, 1.0, 0.0, 0.0],
            "share_resolution": [0.0, 0.0, 1.0, 0.45],  # sums to 0.95: renormalized onto the simplex
            "final_val_accuracy": [0.9, 0.8, None, 0.7],
        }
    )
    points = simplex_points(trials)
    corners = list(zip(points["x"].round(6), points["y"].round(6)))
    assert corners[:3] == [(0.0, 0.0), (1.0, 0.0), (0.5, round(math.sqrt(3) / 2, 6))]
    assert points["share_resolution"].iloc[3] == pytest.approx(0.45 / 0.95)
    assert points["x"].iloc[3] == pytest.approx(0.5 * 0.45 / 0.95)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_command_writes_a_non_empty_image(capsys, run_dir, tmp_path, suffix):
    out = tmp_path / f"runs{suffix}"
    status = main(["plot", str(run_dir), str(run_dir), "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert out.stat().st_size > 5_000
    head = out.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in out.read_bytes()[:2000] or b"<?xml" in head


def test_frontier_and_validation_plots_are_written(run_dir, tmp_path):
    assert plot_frontier([run_dir], tmp_path / "frontier.png").stat().st_size > 5_000
    summary = pd.DataFrame(
        {
            "strategy": ["compound", "compound", "depth", "depth"],
            "phi": [0.0, 1.0, 0.0, 1.0],
            "n": [2, 2, 2, 0],  # depth infeasible at phi 1: no point there
            "mean": [0.8, 0.9, 0.8, math.nan],
            "std": [0.01, 0.02, 0.01, math.nan],
            "flops": [1e5, 2e5, 1e5, 2.1e5],
        }
    )
    assert plot_validation(summary, tmp_path / "validation.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{run}", "--out", "{tmp}/plot.jpg"], "the file must end in .png or .svg"),
        (["/no/such/run", "--out", "{tmp}/plot.png"], "run folder '/no/such/run' not found"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, run_dir, argv, message):
    status = main(["plot", *[a.format(run=run_dir, tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
