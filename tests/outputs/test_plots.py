"""Plots: the tables each plot draws, on known points and on a small real run (tests/fixtures/run_tiny);
files written by `scalesearch plot` only checked to exist."""

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from scalesearch.cli import main
from scalesearch.outputs import runs
from scalesearch.outputs.plots import plot_frontier, plot_search, plot_validation
from scalesearch.outputs.views import (
    budget_band,
    budget_strip,
    convex_hull,
    frontier_cost,
    pareto_front,
    read_view,
    search_view,
    simplex_points,
    strip_title,
    to_simplex,
)

RUN_TINY = Path(__file__).resolve().parents[1] / "fixtures" / "run_tiny"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A writable copy of the tiny run (the plots write into the folder)."""
    return Path(shutil.copytree(RUN_TINY, tmp_path / "run_tiny"))


def csv_rows() -> list[dict[str, str]]:
    with (RUN_TINY / runs.TRIALS).open() as handle:
        return list(csv.DictReader(handle))


def best_json() -> dict:
    return json.loads((RUN_TINY / runs.BEST).read_text())


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


def test_pareto_front_keeps_exact_duplicates():
    points = pd.DataFrame(
        {"trial": [0, 1, 2, 3], "flops": [100, 100, 200, 100], "final_val_accuracy": [0.85, 0.85, 0.85, 0.80]}
    )
    # Trials 0 and 1 tie exactly: neither beats the other, so both stay; trial 2 ties their accuracy
    # at a higher cost and trial 3 their cost at a lower accuracy, so both are off.
    assert sorted(pareto_front(points)["trial"]) == [0, 1]


def test_simplex_points_on_known_shares_of_an_older_run():
    trials = pd.DataFrame(  # older runs: share_* columns, no stage or network
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


def test_convex_hull_on_known_points():
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    assert convex_hull([*square, (0.5, 0.5), (0.5, 0.0)]) == square  # inner and edge points dropped
    assert convex_hull([(1.0, 0.0), (0.0, 0.0), (1.0, 0.0)]) == [(0.0, 0.0), (1.0, 0.0)]  # a segment
    assert convex_hull([(0.3, 0.2)]) == [(0.3, 0.2)]


def test_read_view_types_the_rows_of_trials_csv():
    view = read_view(RUN_TINY)
    rows = csv_rows()
    assert list(view.trials.columns[: len(runs.TRIAL_COLUMNS)]) == runs.TRIAL_COLUMNS
    assert list(view.trials["trial"]) == [int(r["trial"]) for r in rows]
    assert list(view.trials["stage"]) == [r["stage"] for r in rows]
    # Full precision: every float of the CSV comes back exactly.
    assert list(view.trials["realized_share_depth"]) == [float(r["realized_share_depth"]) for r in rows]
    assert view.trials["flops"].dtype.kind == "i" and view.trials["requested_share_depth"].dtype.kind == "f"
    assert view.best == best_json()


def test_search_view_places_networks_at_their_realized_shares():
    view = read_view(RUN_TINY)
    data = search_view(view)
    rows = csv_rows()
    best = best_json()
    by_network: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_network.setdefault(row["network"], []).append(row)
    networks = data.networks.set_index("network")
    assert set(networks.index) == set(by_network)
    for network, members in by_network.items():
        x, y = to_simplex(*(float(members[0][f"realized_share_{d}"]) for d in ("depth", "width", "resolution")))
        assert (networks.loc[network, "x"], networks.loc[network, "y"]) == pytest.approx((x, y))
        assert networks.loc[network, "trials"] == len(members)
        completed = [float(r["final_val_accuracy"]) for r in members if r["status"] == "completed"]
        if completed:  # the mean over its completed trials (search and confirm seeds together)
            assert networks.loc[network, "status"] == "completed"
            assert networks.loc[network, "accuracy"] == pytest.approx(sum(completed) / len(completed))
        else:
            assert networks.loc[network, "status"] == "stopped"
    assert list(networks.index[networks["chosen"]]) == [best["network"]]
    assert set(networks.index[networks["confirmed"]]) == {c["network"] for c in best["confirm"]["candidates"]}


def test_search_view_joins_each_request_to_the_network_it_was_mapped_to():
    data = search_view(read_view(RUN_TINY))
    networks = data.networks.set_index("network")
    search_rows = [r for r in csv_rows() if r["stage"] == "search"]  # confirm rows request nothing
    assert list(data.requests["trial"]) == [int(r["trial"]) for r in search_rows]
    for request, row in zip(data.requests.to_dict("records"), search_rows):
        asked = to_simplex(*(float(row[f"requested_share_{d}"]) for d in ("depth", "width", "resolution")))
        assert (request["x_requested"], request["y_requested"]) == pytest.approx(asked)
        assert (request["x"], request["y"]) == pytest.approx(tuple(networks.loc[row["network"], ["x", "y"]]))
        assert request["share_error"] == float(row["share_error"])


def test_search_view_candidates_and_tie_region_follow_best_json():
    best = best_json()
    data = search_view(read_view(RUN_TINY))
    candidates = data.candidates
    assert list(candidates["network"]) == [c["network"] for c in best["confirm"]["candidates"]]
    assert list(candidates["chosen"]) == [True, False] and list(candidates["tied"]) == [True, True]
    assert candidates["label"].iloc[0] == "0.9708 ± 0.0059 (n=2)"
    # The second was trained three times with seed 0: three runs of one measurement, and the label says so.
    assert candidates["label"].iloc[1] == "0.9694 ± 0.0000 (n=3, 1 distinct seed(s))"
    # Two tied networks: the region is the segment between them.
    tied = sorted(zip(candidates["x"].round(12), candidates["y"].round(12)))
    assert list(zip(data.tie_region["x"], data.tie_region["y"])) == tied


def test_tie_region_is_the_hull_of_the_tied_candidates():
    best = best_json()
    corners = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    template = best["confirm"]["candidates"][0]
    candidates = [
        {**template, "network": f"n{i}", "share_depth": d, "share_width": w, "share_resolution": r, "tied": i < 4}
        for i, (d, w, r) in enumerate([*corners, (0.4, 0.3, 0.3), (0.5, 0.5, 0.0)])
    ]
    confirm = {**best["confirm"], "candidates": candidates}
    view = dataclasses.replace(read_view(RUN_TINY), best={**best, "network": "n0", "confirm": confirm})
    region = search_view(view).tie_region
    # The inner tied point and the untied one stay out; the triangle's corners make the hull.
    expected = {tuple(round(v, 9) for v in to_simplex(*c)) for c in corners}
    assert {(round(x, 9), round(y, 9)) for x, y in zip(region["x"], region["y"])} == expected


def test_search_view_of_a_run_still_searching(run_dir):
    (run_dir / runs.BEST).unlink()
    view = read_view(run_dir)
    data = search_view(view)
    assert view.best == {} and len(data.networks) == 4 and not data.networks["chosen"].any()
    assert data.candidates.empty and data.tie_region.empty and len(data.requests) == 6


def test_search_trials_are_a_strip_on_one_budget_band():
    view = read_view(RUN_TINY)
    best = best_json()
    assert frontier_cost([RUN_TINY]) == "flops"
    band = budget_band(view)
    assert band is not None and (band.goal, band.tolerance, band.column) == (2.0, 0.1, "flops")
    strip = budget_strip(view, "flops")
    assert list(strip["trial"]) == [int(r["trial"]) for r in csv_rows()]  # every trained trial
    assert strip["cost"].between(band.low, band.high).all()  # ... all on the band
    assert not strip["front"].any()  # single objective: no front drawn among equals
    assert list(strip.loc[strip["chosen"], "trial"]) == best["trials_of_network"]
    title = strip_title(view, "flops")
    assert "all at 2× the base FLOPs ± 10%" in title and "not a frontier" in title


def test_multi_objective_strip_rings_the_front_of_its_cost():
    view = read_view(RUN_TINY)
    view = dataclasses.replace(view, best={**view.best, "pareto_cost": "latency_batch1_s"})
    strip = budget_strip(view, "latency_batch1_s")
    marked = {int(r["trial"]) for r in csv_rows() if r["pareto"] == "True"}
    assert set(strip.loc[strip["front"], "trial"]) == marked
    assert "Pareto front ringed" in strip_title(view, "latency_batch1_s")


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_command_writes_a_non_empty_image(capsys, run_dir, tmp_path, suffix):
    out = tmp_path / f"runs{suffix}"
    status = main(["plot", str(run_dir), str(RUN_TINY), "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert out.stat().st_size > 5_000
    head = out.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in out.read_bytes()[:2000] or b"<?xml" in head


def test_frontier_search_and_validation_plots_are_written(run_dir, tmp_path):
    assert plot_frontier([run_dir], run_dir / runs.FRONTIER_PNG).stat().st_size > 5_000
    assert plot_search([run_dir], run_dir / runs.SEARCH_PNG).stat().st_size > 5_000
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
        (["{tmp}", "--out", "{tmp}/plot.png"], "has no trials.csv: is it a search run?"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, message):
    status = main(["plot", *[a.format(run=RUN_TINY, tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
