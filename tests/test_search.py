"""The coefficient search end to end on real data (digits) with a tiny proxy and a local Ray."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalesearch.cli import main
from scalesearch.scaling import Coefficients
from scalesearch.search import Proposer, SearchSettings, share_params, shares_to_coefficients
from scalesearch.spaces import load_space

DATA = Path(__file__).parent / "data"
TINY = str(DATA / "tiny_space.yaml")


def read_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def search(capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    status = main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_run_folder(run_dir: Path, trials: int) -> dict:
    rows = read_rows(run_dir)
    assert [int(r["trial"]) for r in rows] == list(range(trials))
    assert {r["status"] for r in rows} <= {"completed", "stopped", "infeasible", "failed"}
    best = json.loads((run_dir / "best.json").read_text())
    chosen = Coefficients(best["alpha"], best["beta"], best["gamma"])
    assert abs(chosen.product / best["target"] - 1) <= best["tolerance"] + 1e-9  # on the constraint
    assert min(best["alpha"], best["beta"], best["gamma"]) >= 1
    row = next(r for r in rows if int(r["trial"]) == best["trial"])
    assert row["status"] == "completed" and float(row["final_val_accuracy"]) == pytest.approx(best["value"], rel=1e-6)
    assert abs(float(row["flops_ratio"]) / 2 - 1) <= 0.1  # trained candidates meet the measured budget
    family = json.loads((run_dir / "family.json").read_text())
    assert family["rule"] == "compound" and [v["name"] for v in family["variants"]] == ["B0", "B1"]
    assert (run_dir / "family.md").read_text().startswith("**")
    assert (run_dir / "frontier.png").stat().st_size > 5_000
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["ended"] and "127.0.0.1" in manifest["ray_address"]
    assert {"torch", "ray", "optuna", "fvcore"} <= set(manifest["versions"])
    return best


def test_share_parameterization_is_exact_and_invertible():
    for params in ({"share_depth": 0.3, "width_part": 0.5}, {"share_depth": 0.0, "width_part": 1.0}):
        coefficients = shares_to_coefficients(params, 2.0)
        assert coefficients.product == pytest.approx(2.0)
        assert share_params(coefficients) == pytest.approx(params)


def test_grid_proposals_contain_paper_point_and_subsample_evenly():
    space = load_space("efficientnet_b0")
    settings = SearchSettings(space_path=space.path, dataset="digits", sampler="grid", trials=1000)
    proposer = Proposer(settings, space, {})
    points = [proposer.next() for _ in range(Proposer.total(settings, space))]
    assert (points[-1] is not None) and proposer.next() is None
    assert Coefficients(1.2, 1.1, 1.15) in [p[1] for p in points if p]
    few = SearchSettings(space_path=space.path, dataset="digits", sampler="grid", trials=5)
    assert Proposer.total(few, space) == 5


def test_seeded_tpe_proposals_are_reproducible():
    space = load_space("efficientnet_b0")
    settings = SearchSettings(space_path=space.path, dataset="digits", sampler="tpe", trials=4, seed=7)
    first = [Proposer(settings, space, {}).next() for _ in range(1)]
    again = [Proposer(settings, space, {}).next() for _ in range(1)]
    assert first == again


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """One uninterrupted grid search of the tiny space (3 trials, 1 epoch)."""
    out = tmp_path_factory.mktemp("grid") / "run"
    status = main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet"])
    assert status == 0
    return out


def test_grid_search_end_to_end(grid_run):
    check_run_folder(grid_run, trials=3)


def test_tpe_search_end_to_end_with_a_failing_trial(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESEARCH_INJECT_FAULT", "raise:1")
    status, out, _ = search(capsys, tmp_path / "run", "--sampler", "tpe", "--trials", "3", "--seed", "3")
    assert status == 0 and "chosen: alpha=" in out
    check_run_folder(tmp_path / "run", trials=3)
    rows = read_rows(tmp_path / "run")
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["trial"] for r in failed] == ["1"] and "injected fault" in failed[0]["error"]
    for row in rows:  # tpe proposes on the simplex: exactly on the constraint
        assert float(row["product"]) == pytest.approx(2.0, abs=1e-4)


def test_finished_folder_refuses_a_new_search_and_resume_checks_the_fingerprint(capsys, grid_run):
    status, _, err = search(capsys, grid_run)
    assert status == 2 and "holds a finished search" in err
    status, _, err = search(capsys, grid_run, "--resume", "--epochs", "2")
    assert status == 2 and "holds a different search (differs in: epochs, recipe)" in err


@pytest.mark.slow
def test_interrupted_search_resumes_to_the_uninterrupted_result(capsys, tmp_path, grid_run):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "scalesearch.cli", "search", "--space", TINY, "--out", str(out),
               "--family-phis", "0-1", "--concurrency", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(read_rows(out) if (out / "trials.csv").exists() else []) < 1:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # Ctrl-C after the first trial finished
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    done_before = read_rows(out)
    assert 1 <= len(done_before) < 3 and not (out / "best.json").exists()

    status, _, _ = search(capsys, out, "--concurrency", "1", "--resume")
    assert status == 0
    best = check_run_folder(out, trials=3)

    # Nothing lost or repeated. (The pareto mark is recomputed over all trials as they finish.)
    def without_pareto(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "pareto"} for row in rows]

    assert without_pareto(read_rows(out)[: len(done_before)]) == without_pareto(done_before)
    uninterrupted = json.loads((grid_run / "best.json").read_text())
    assert (best["alpha"], best["beta"], best["gamma"], best["value"]) == (
        uninterrupted["alpha"], uninterrupted["beta"], uninterrupted["gamma"], uninterrupted["value"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sampler", "annealing"], "unknown sampler 'annealing'"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--concurrency", "64"], "needs 64 CPUs; this machine has"),
        (["--address", "127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
        (["--dataset", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, message):
    start = time.monotonic()
    status, _, err = search(capsys, tmp_path / "run", *argv)
    assert status == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert time.monotonic() - start < 30  # an unreachable address answers in seconds, not a hang


def test_resume_with_nothing_to_resume(capsys, tmp_path):
    status, _, err = search(capsys, tmp_path / "empty", "--resume")
    assert status == 2 and "nothing to resume" in err


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )
