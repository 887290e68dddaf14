"""`--objective accuracy,COST`: a multi-objective Optuna search whose trials.csv marks the Pareto front."""

import csv
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from scalesearch.cli import main
from scalesearch.plots import front_rows, frontier_cost, pareto_front
from scalesearch.search import Proposer, SearchSettings, objective_values
from scalesearch.spaces import load_space

TINY = str(Path(__file__).parent / "data" / "tiny_space.yaml")


def run(out: Path, *extra: str) -> None:
    assert main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet", *extra]) == 0


def check_front(out: Path, cost: str) -> tuple[pd.DataFrame, dict]:
    """trials.csv's pareto column is pareto_front of the completed trials; best.json agrees."""
    trials = pd.read_csv(out / "trials.csv")
    completed = trials[(trials["status"] == "completed") & trials["final_val_accuracy"].notna()]
    expected = set(pareto_front(completed, cost=cost)["trial"])
    assert expected and set(trials.loc[trials["pareto"], "trial"]) == expected
    assert set(front_rows(trials, cost)["trial"]) == expected
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] in expected
    assert best["value"] == pytest.approx(completed["final_val_accuracy"].max())  # the most accurate point
    return trials, best


def test_multi_objective_tpe_on_latency_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, "--sampler", "tpe", "--trials", "3", "--seed", "1", "--objective", "accuracy,latency")
    assert "Pareto front (accuracy up, latency_batch1_s down)" in capsys.readouterr().out
    trials, best = check_front(out, "latency_batch1_s")
    assert best["objective"] == "accuracy,latency" and best["pareto_cost"] == "latency_batch1_s"
    assert {p["trial"] for p in best["pareto_front"]} == set(trials.loc[trials["pareto"], "trial"])
    assert all(p["latency_batch1_s"] > 0 for p in best["pareto_front"])
    assert frontier_cost([out]) == "latency_batch1_s" and (out / "frontier.png").stat().st_size > 5_000
    assert json.loads((out / "search.json").read_text())["fingerprint"]["objective"] == "accuracy,latency"


def test_multi_objective_grid_evaluates_the_lattice_and_marks_the_front(tmp_path):
    out = tmp_path / "run"
    run(out, "--objective", "accuracy,params")
    with (out / "trials.csv").open() as handle:
        assert [int(r["trial"]) for r in csv.DictReader(handle)] == [0, 1, 2]  # the lattice, as single-objective
    _, best = check_front(out, "params")
    assert best["pareto_cost"] == "params"


def test_proposer_builds_a_two_direction_study_and_rebuilds_it_on_resume():
    space = load_space(TINY)
    settings = SearchSettings(space_path=TINY, dataset="digits", sampler="tpe", trials=4,
                              objective="accuracy,latency")  # fmt: skip
    done = {
        0: {"alpha": 2.0, "beta": 1.0, "gamma": 1.0, "final_val_accuracy": "0.9", "latency_batch1_s": "0.002"},
        1: {"alpha": 1.0, "beta": 1.0, "gamma": 2**0.5, "final_val_accuracy": "", "latency_batch1_s": ""},
    }
    proposer = Proposer(settings, space, done)
    assert len(proposer.study.directions) == 2 and len(proposer.study.trials) == 2
    assert [t.values for t in proposer.study.trials] == [[0.9, 0.002], None]
    number, _ = proposer.next()
    proposer.tell(number, [0.8, 0.001])
    assert proposer.study.trials[-1].values == [0.8, 0.001]
    assert objective_values({"final_val_accuracy": 0.5}, None) == [0.5]
    assert objective_values({"final_val_accuracy": 0.5, "params": ""}, "params") is None


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )
