"""`--objective accuracy,COST`: a multi-objective Optuna search whose trials.csv marks the Pareto front."""

import csv
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from scalesearch.cli import main
from scalesearch.core.scaling import Shares
from scalesearch.outputs import runs
from scalesearch.outputs.views import front_rows, frontier_cost, pareto_front
from scalesearch.search.proposals import StudyProposer, sampler_kind

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_space.yaml")


def run(out: Path, *extra: str) -> None:
    assert main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet", *extra]) == 0


def check_front(out: Path, cost: str) -> tuple[dict, dict]:
    """trials.csv's pareto column is the front of the completed networks; best.json agrees."""
    trials = runs.read_trials(out / "trials.csv")
    marked = {n for n, r in trials.items() if r["pareto"]}
    assert marked and marked == runs.pareto_trials(trials, cost)
    completed = pd.DataFrame([r for r in trials.values() if r["status"] == "completed"])
    assert set(pareto_front(completed.drop_duplicates("network"), cost=cost)["trial"]) == marked
    assert set(front_rows(completed, cost)["trial"]) == marked
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] in marked  # the most accurate network is on the front
    assert best["value"] == pytest.approx(completed["final_val_accuracy"].max())
    return trials, best


def test_multi_objective_tpe_on_latency_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    run(
        out, "--sampler", "tpe", "--trials", "3", "--seed", "1", "--objective", "accuracy,latency", "--confirm-top", "0"
    )
    assert "Pareto front (accuracy up, latency_batch1_s down)" in capsys.readouterr().out
    trials, best = check_front(out, "latency_batch1_s")
    assert best["objective"] == "accuracy,latency" and best["pareto_cost"] == "latency_batch1_s"
    assert {p["trial"] for p in best["pareto_front"]} == {n for n, r in trials.items() if r["pareto"]}
    assert all(p["latency_batch1_s"] > 0 for p in best["pareto_front"])
    assert frontier_cost([out]) == "latency_batch1_s" and (out / "frontier.png").stat().st_size > 5_000
    assert json.loads((out / "search.json").read_text())["fingerprint"]["objective"] == "accuracy,latency"
    # This search started a local Ray of its own and stopped it.
    import ray

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ray_address"].startswith("local (started by scalesearch") and not ray.is_initialized()


@pytest.mark.usefixtures("shared_ray")  # the TPE test above covers a search's own local Ray
def test_multi_objective_grid_trains_the_realizable_set_and_marks_the_front(tmp_path):
    out = tmp_path / "run"
    run(out, "--objective", "accuracy,params", "--confirm-top", "0")
    with (out / "trials.csv").open() as handle:
        assert [int(r["trial"]) for r in csv.DictReader(handle)] == [0, 1, 2]
    _, best = check_front(out, "params")
    assert best["pareto_cost"] == "params"


def test_pareto_tie_rule_is_the_same_for_trials_csv_and_the_plots():
    # Exact duplicates both stay; equal accuracy at a higher cost, or equal cost at a lower accuracy, is off.
    assert runs.non_dominated([(0.9, 100.0), (0.9, 100.0), (0.9, 200.0), (0.8, 100.0), (0.95, 300.0)]) == [0, 1, 4]
    trained = [("a", 0.9, 100), ("b", 0.9, 100), ("a", 0.99, 100), ("c", 0.9, 200), ("d", 0.95, 300)]
    rows = {
        n: {"trial": n, "status": "completed", "network": network, "final_val_accuracy": accuracy, "flops": flops}
        for n, (network, accuracy, flops) in enumerate(trained)
    }
    # Networks a and b tie exactly; a's first trial stands for it (not its better second seed).
    assert runs.pareto_trials(rows, "flops") == {0, 1, 4}
    frame = pd.DataFrame(list(rows.values())).drop_duplicates("network")
    assert set(pareto_front(frame)["trial"]) == {0, 1, 4}


def test_study_proposer_learns_two_objectives_from_realized_points():
    proposer = StudyProposer(sampler_kind("tpe"), seed=0, trials=8, directions=2)
    first = proposer.propose(0, 4)
    assert first[2] == Shares(0.0, 0.0, 1.0)  # the first round measures the simplex's corners
    proposer.tell(Shares(0.9, 0.1, 0.0), [0.9, 0.002])
    proposer.tell(Shares(0.1, 0.1, 0.8), None)  # a failed network
    assert proposer.propose(1, 2) == proposer.propose(1, 2)  # a round is a function of what was told
    assert all(abs(s.total - 1) < 1e-9 for s in proposer.propose(1, 2))


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )
