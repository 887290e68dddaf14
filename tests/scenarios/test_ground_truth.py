"""The committed exhaustive ground truth (results/ground-truth, benchmarks/ground_truth.py) says what its
raw rows say: every network of the default search's realizable set trained with every seed, the true
best and tie region recomputed from truth.csv with the confirm stage's own test, and each search's
choice and hit read back from that search's own output. A summary left stale by new rows, a search
rerun or a hand edit fails here."""

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GROUND_TRUTH = ROOT / "results" / "ground-truth"
# folder: (networks on the budget band, the searches' seeds). The default search's under the shipped
# recipe (init: fan_in) and under the one before it (init: official), and the interior known answer's.
TRUTHS = {
    "fan_in": (GROUND_TRUTH, 131, [0, 1, 2, 3, 4]),
    "official": (GROUND_TRUTH / "official", 131, [0, 1, 2, 3, 4]),
    "interior": (ROOT / "results" / "known-answer" / "interior" / "truth", 40, [0, 1, 2, 3]),
}
FOLDERS = [folder for folder, _, _ in TRUTHS.values()]


def ground_truth_module():
    spec = importlib.util.spec_from_file_location("ground_truth", ROOT / "benchmarks" / "ground_truth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(("folder", "networks", "seeds"), TRUTHS.values(), ids=TRUTHS.keys())
def test_every_network_was_trained_with_every_seed(folder, networks, seeds):
    summary = json.loads((folder / "summary.json").read_text())
    rows = [r for r in read_csv(folder / "truth.csv") if r["status"] == "completed"]
    per_network = Counter(r["network"] for r in rows)
    assert len(per_network) == summary["networks"] == networks
    assert set(per_network.values()) == {summary["seeds_per_network"]} == {3}
    assert sum(len(r["val_accuracies"].split(";")) for r in rows) == summary["grid_epochs"]


@pytest.mark.parametrize("folder", FOLDERS, ids=TRUTHS.keys())
def test_the_true_best_and_tie_region_follow_from_the_rows(folder):
    module = ground_truth_module()
    summary = json.loads((folder / "summary.json").read_text())
    decision = module.truth_decision(module.read_truth(folder / "truth.csv"))
    assert decision.chosen.network == summary["true_best"]
    assert decision.chosen.mean == pytest.approx(summary["true_best_mean"])
    assert sorted(decision.tied) == summary["tie_region"]
    assert decision.pooled_std == pytest.approx(summary["pooled_std"])
    table = {r["network"]: r for r in read_csv(folder / "truth_networks.csv")}
    for score in decision.confirmed:
        assert float(table[score.network]["mean"]) == pytest.approx(score.mean, abs=5e-5)
        assert (table[score.network]["in_tie_region"] == "True") == (score.network in decision.tied)


@pytest.mark.parametrize(("folder", "networks", "seeds"), TRUTHS.values(), ids=TRUTHS.keys())
def test_each_search_hit_is_read_from_its_own_run(folder, networks, seeds):
    summary = json.loads((folder / "summary.json").read_text())
    hits = read_csv(folder / "hit_rate.csv")
    assert [int(h["seed"]) for h in hits] == seeds and summary["searches"] == len(seeds)
    for hit in hits:
        best = json.loads((ROOT / hit["run"] / "best.json").read_text())
        assert best["network"] == hit["chosen"]
        assert (hit["in_true_tie_region"] == "True") == (best["network"] in summary["tie_region"])
    assert summary["hits"] == sum(h["in_true_tie_region"] == "True" for h in hits)


@pytest.mark.parametrize("folder", FOLDERS, ids=TRUTHS.keys())
def test_a_search_and_the_grid_train_the_same_network_identically(folder):
    """The searches' confirm stage trains the true best with seeds the grid used too: the same number."""
    summary = json.loads((folder / "summary.json").read_text())
    truth = {(r["network"], int(r["seed"])): float(r["final_val_accuracy"])
             for r in read_csv(folder / "truth.csv") if r["status"] == "completed"}  # fmt: skip
    compared = 0
    for hit in read_csv(folder / "hit_rate.csv"):
        for trial in read_csv(ROOT / hit["run"] / "trials.csv"):
            key = (trial["network"], int(trial["seed"]))
            full = trial["status"] == "completed" and int(trial["epochs_run"]) == 4
            if trial["network"] == summary["true_best"] and full and key in truth:
                assert float(trial["final_val_accuracy"]) == pytest.approx(truth[key], abs=1e-6)
                compared += 1
    assert compared >= 3
