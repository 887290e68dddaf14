"""The coefficient search end to end on real data (digits) with a tiny proxy and a local Ray."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalesearch.cli import main
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients, Shares, coefficients_from_shares
from scalesearch.outputs import runs
from scalesearch.search.proposals import make_proposer, params_to_shares, share_params

DATA = Path(__file__).resolve().parents[1] / "fixtures"
TINY = str(DATA / "tiny_space.yaml")
# Columns that are timings (or follow from them): everything else must repeat exactly.
TIMED = {"seconds", "latency_batch1_s", "latency_throughput_s", "peak_train_memory_bytes", "layout"}
# The searches here share one Ray started by the fixture (test_multiobjective's start their own).
pytestmark = pytest.mark.usefixtures("shared_ray")


def read_rows(run_dir: Path) -> dict[int, dict]:
    return runs.read_trials(run_dir / "trials.csv")


def search(capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    status = main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_run_folder(run_dir: Path, trials: int) -> dict:
    rows = read_rows(run_dir)
    search_rows = {n: r for n, r in rows.items() if r["stage"] == "search"}
    assert sorted(search_rows) == list(range(trials))
    assert {r["status"] for r in rows.values()} <= set(runs.STATUSES)
    best = json.loads((run_dir / "best.json").read_text())
    # Reported = trained: the coefficients are the chosen network's realized shares on the constraint.
    row = rows[best["trial"]]
    assert row["network"] == best["network"] and row["status"] == "completed"
    realized = Shares(row["realized_share_depth"], row["realized_share_width"], row["realized_share_resolution"])
    assert Coefficients(best["alpha"], best["beta"], best["gamma"]) == coefficients_from_shares(realized)
    assert best["measured_ratio"] == row["flops_ratio"] and abs(row["flops_ratio"] / 2 - 1) <= 0.1
    accuracies = [rows[n]["final_val_accuracy"] for n in best["trials_of_network"]]
    assert best["value"] == pytest.approx(sum(accuracies) / len(accuracies))
    # Each network trains once per seed: a repeated proposal is a deliberate extra seed.
    pairs = [(r["network"], r["seed"]) for r in rows.values()]
    assert len(pairs) == len(set(pairs))
    family = json.loads((run_dir / "family.json").read_text())
    assert family["rule"].startswith("compound") and [v["name"] for v in family["variants"]] == ["B0", "B1"]
    assert (run_dir / "family.md").read_text().startswith("**")
    assert (run_dir / "frontier.png").stat().st_size > 5_000
    manifest = json.loads((run_dir / "manifest.json").read_text())
    started_here = "127.0.0.1" in manifest["ray_address"]  # a local Ray of its own is on loopback only
    assert manifest["ended"] and (started_here or manifest["ray_address"].startswith("this process's Ray session"))
    assert manifest["realizable"]["networks"] >= 3
    assert {"torch", "ray", "optuna", "fvcore"} <= set(manifest["versions"])
    return best


def test_share_parameterization_is_exact_and_invertible():
    for params in ({"share_depth": 0.3, "width_part": 0.5}, {"share_depth": 0.0, "width_part": 1.0}):
        shares = params_to_shares(params)
        assert shares.total == pytest.approx(1.0)
        assert share_params(shares) == pytest.approx(params)


def test_grid_walks_on_through_a_short_last_round():
    points = [Shares(1 - i / 10, i / 10, 0) for i in range(6)]
    proposer = make_proposer("grid", seed=0, trials=6, grid_points=points)
    first = proposer.propose(0, 4)
    for point in first:
        proposer.tell(point, [0.5])
    assert first + proposer.propose(1, 2) == points  # six trials, six distinct points


def test_seeded_tpe_rounds_are_reproducible():
    def rounds() -> list:
        proposer = make_proposer("tpe", seed=7, trials=8)
        first = proposer.propose(0, 4)
        for point in first:
            proposer.tell(point, [point.resolution])
        return first + proposer.propose(1, 4)

    assert rounds() == rounds()


def test_grid_search_trains_distinct_networks_of_the_realizable_set(tiny_grid_run):
    best = check_run_folder(tiny_grid_run, trials=3)
    rows = read_rows(tiny_grid_run)
    assert len({r["network"] for r in rows.values()}) == 3
    assert all(r["share_error"] == pytest.approx(0.0, abs=1e-12) for r in rows.values())  # grid asks for networks
    assert "unknown" in best["verdict"]  # confirm stage off: no spread, and it says so


def test_a_run_records_what_the_proxy_saw_and_marks_its_family(tiny_grid_run):
    """The data view is in the manifest and best.json; family.json's B0 runs at r_base (the tiny space's
    8 px), every variant above the data's 8 px is marked upsampling, and none is checked yet."""
    best = json.loads((tiny_grid_run / "best.json").read_text())
    manifest = json.loads((tiny_grid_run / "manifest.json").read_text())
    assert best["data_view"] == manifest["data_view"]
    assert {k: best["data_view"][k] for k in ("native", "base_resolution", "proxy_resolution", "size")} == {
        "native": 8, "base_resolution": 8, "proxy_resolution": 12, "size": 8}  # fmt: skip
    family = json.loads((tiny_grid_run / "family.json").read_text())
    assert family["base_resolution"] == 8 and family["variants"][0]["resolution"] == 8
    assert [v["upsampling"] for v in family["variants"]] == [v["resolution"] > 8 for v in family["variants"]]
    assert [v["check"] for v in family["variants"]] == ["base"] + ["unchecked"] * (len(family["variants"]) - 1)
    assert family["evidence"]["data_native_px"] == 8 and family["evidence"]["checked_up_to_phi"] is None
    markdown = (tiny_grid_run / "family.md").read_text()
    assert "Evidence: data 8 px: " in markdown and "unchecked: B1" in markdown


def test_a_search_uses_the_ray_session_this_process_runs_and_leaves_it_running(tiny_grid_run):
    import ray

    manifest = json.loads((tiny_grid_run / "manifest.json").read_text())
    assert manifest["ray_address"].startswith("this process's Ray session")
    assert ray.is_initialized()


def test_a_running_session_refuses_an_address_and_code_its_workers_cannot_import():
    # What a caller of run_search meets (the CLI is a fresh process, which runs no Ray yet).
    from scalesearch.config.settings import SearchSettings
    from scalesearch.execution.cluster import _existing_session

    settings = SearchSettings(space_path=TINY, dataset="digits")
    with pytest.raises(UserError, match="already runs Ray; leave out --address 127.0.0.1:6379"):
        _existing_session(SearchSettings(space_path=TINY, dataset="digits", address="127.0.0.1:6379"), None)
    with pytest.raises(UserError, match="cannot import /elsewhere/mymodel.py; call ray.shutdown"):
        _existing_session(settings, {"py_modules": ["/elsewhere/mymodel.py"]})
    with pytest.raises(UserError, match="needs 64 CPUs; this process's Ray session has"):
        _existing_session(SearchSettings(space_path=TINY, dataset="digits", concurrency=64), None)


def _without_timings(rows: dict[int, dict]) -> dict[int, dict]:
    return {n: {k: v for k, v in r.items() if k not in TIMED} for n, r in rows.items()}


# A TPE search at concurrency 2 with ASHA (its last trial is stopped early) and a confirm stage.
DETERMINISM_ARGV = ["--sampler", "tpe", "--trials", "6", "--epochs", "2", "--scheduler", "asha", "--seed", "5",
                    "--confirm-top", "2", "--confirm-seeds", "2", "--concurrency", "2"]  # fmt: skip


def test_same_command_same_trials_at_concurrency_two(capsys, tmp_path):
    """Proposals, early stopping and training do not depend on which worker finishes first."""
    assert search(capsys, tmp_path / "a", *DETERMINISM_ARGV)[0] == 0
    assert search(capsys, tmp_path / "b", *DETERMINISM_ARGV)[0] == 0
    first, second = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    assert _without_timings(first) == _without_timings(second)
    best = check_run_folder(tmp_path / "a", trials=6)
    assert best == {**json.loads((tmp_path / "b" / "best.json").read_text()), "space_path": best["space_path"]}
    assert {r["stage"] for r in first.values()} == {"search", "confirm"}
    assert "stopped" in {r["status"] for r in first.values()}
    assert best["confirm"]["candidates"] and "seed" in best["verdict"]


@pytest.mark.slow
def test_a_run_stopped_inside_its_confirm_stage_resumes_to_the_same_rows(capsys, tmp_path):
    """Stopped inside its confirm stage (its first job lost, a later one finished), a run resumes to
    the same rows, trial numbers included, and the same result."""
    # 3 confirm seeds: the confirm stage has several jobs whatever seeds the search already gave its top 2.
    argv = [*DETERMINISM_ARGV, "--confirm-seeds", "3"]
    assert search(capsys, tmp_path / "a", *argv)[0] == 0
    first = read_rows(tmp_path / "a")
    best = json.loads((tmp_path / "a" / "best.json").read_text())
    lost = min(n for n, r in first.items() if r["stage"] == "confirm")
    assert lost < max(first)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    runs.write_trials(tmp_path / "b" / "trials.csv", {n: r for n, r in first.items() if n != lost})
    (tmp_path / "b" / "best.json").unlink()
    assert search(capsys, tmp_path / "b", *argv, "--resume")[0] == 0
    assert _without_timings(read_rows(tmp_path / "b")) == _without_timings(first)
    assert json.loads((tmp_path / "b" / "best.json").read_text())["value"] == best["value"]


def test_tpe_search_records_a_failing_trial_and_goes_on(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESEARCH_INJECT_FAULT", "raise:1")
    status, out, _ = search(capsys, tmp_path / "run", "--sampler", "tpe", "--trials", "3", "--seed", "3",
                            "--confirm-top", "0")  # fmt: skip
    assert status == 0 and "chosen: alpha=" in out
    check_run_folder(tmp_path / "run", trials=3)
    failed = [r for r in read_rows(tmp_path / "run").values() if r["status"] == "failed"]
    assert [r["trial"] for r in failed] == [1] and "injected fault" in failed[0]["error"]


@pytest.mark.slow
def test_a_killed_worker_is_a_failed_trial_and_the_search_goes_on(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESEARCH_INJECT_FAULT", "exit:0")  # the worker process dies mid-trial
    status, _, err = search(capsys, tmp_path / "run", "--confirm-top", "0")
    assert status == 0, err
    rows = read_rows(tmp_path / "run")
    assert rows[0]["status"] == "failed" and "worker" in rows[0]["error"]
    assert {rows[1]["status"], rows[2]["status"]} == {"completed"}


@pytest.mark.slow
def test_a_failed_write_stops_the_search_with_one_line(capsys, tmp_path, monkeypatch):
    calls = []

    def full_disk(path, text):
        calls.append(path)
        if Path(path).name == "trials.csv":
            raise OSError(28, "No space left on device")
        return original(path, text)

    original = runs.atomic_write_text
    monkeypatch.setattr(runs, "atomic_write_text", full_disk)
    status, _, err = search(capsys, tmp_path / "run", "--confirm-top", "0")
    assert status == 2 and "No space left on device" in err and err.count("\n") == 1
    assert (tmp_path / "run" / "search.json").is_file() and not (tmp_path / "run" / "best.json").exists()


@pytest.mark.slow
def test_a_failed_write_in_the_confirm_stage_stops_the_search_with_one_line(capsys, tmp_path, monkeypatch):
    def full_disk_once_confirming(path, text):
        if Path(path).name == "trials.csv" and ",confirm," in text:
            raise OSError(28, "No space left on device")
        return original(path, text)

    original = runs.atomic_write_text
    monkeypatch.setattr(runs, "atomic_write_text", full_disk_once_confirming)
    status, _, err = search(capsys, tmp_path / "run", "--confirm-top", "2", "--confirm-seeds", "2")
    assert status == 2 and "No space left on device" in err and err.count("\n") == 1
    rows = read_rows(tmp_path / "run")
    assert {r["stage"] for r in rows.values()} == {"search"} and not (tmp_path / "run" / "best.json").exists()


def test_finished_folder_refuses_a_new_search_and_resume_checks_the_fingerprint(capsys, tiny_grid_run):
    status, _, err = search(capsys, tiny_grid_run, "--confirm-top", "0")
    assert status == 2 and "holds a finished search" in err
    status, _, err = search(capsys, tiny_grid_run, "--resume", "--epochs", "2", "--confirm-top", "0")
    assert status == 2 and "holds a different search (differs in: epochs, recipe)" in err


def test_a_folder_of_unknown_trials_is_never_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "trials.csv").write_text("trial,status\n0,completed\n")
    status, _, err = search(capsys, out)
    assert status == 2 and "unknown search" in err
    assert (out / "trials.csv").read_text() == "trial,status\n0,completed\n"


def test_a_running_search_locks_its_folder(tmp_path):
    busy = pytest.raises(runs.UserError, match="in use by another running search")
    with runs.locked(tmp_path), busy, runs.locked(tmp_path):
        pass


def test_trials_round_trip_at_full_precision_and_damaged_rows_are_named(tmp_path, capsys):
    row = {"trial": 0, "stage": "search", "round": 0, "status": "completed", "network": "abc", "seed": 0,
           "final_val_accuracy": 0.1 + 0.2, "flops": 123, "alpha": 1.0000000000000002}  # fmt: skip
    path = tmp_path / "trials.csv"
    runs.write_trials(path, {0: row, 1: {**row, "trial": 1, "network": "def"}})
    back = runs.read_trials(path)
    assert back[0]["final_val_accuracy"] == 0.1 + 0.2 and back[0]["alpha"] == 1.0000000000000002
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("completed", "finished")  # trial 1 damaged
    path.write_text("\n".join([*lines, "2,search,0,completed"]) + "\n")  # and a truncated row
    assert sorted(runs.read_trials(path)) == [0]
    assert "damaged rows at line(s) 3, 4" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_search_resumes_to_the_uninterrupted_result(capsys, tmp_path, tiny_grid_run):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "scalesearch.cli", "search", "--space", TINY, "--out", str(out),
               "--family-phis", "0-1", "--concurrency", "1", "--confirm-top", "0"]  # fmt: skip
    # A shell's background jobs inherit SIGINT ignored; a terminal's Ctrl-C reaches a process that has it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(read_rows(out) if (out / "trials.csv").exists() else {}) < 1:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # Ctrl-C after the first trial finished
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    done_before = read_rows(out)
    assert 1 <= len(done_before) < 3 and not (out / "best.json").exists()

    status, _, _ = search(capsys, out, "--concurrency", "1", "--resume", "--confirm-top", "0")
    assert status == 0
    best = check_run_folder(out, trials=3)
    after = read_rows(out)
    assert _without_timings({n: after[n] for n in done_before}) == _without_timings(done_before)
    uninterrupted = json.loads((tiny_grid_run / "best.json").read_text())
    assert (best["alpha"], best["beta"], best["gamma"], best["value"]) == (
        uninterrupted["alpha"], uninterrupted["beta"], uninterrupted["gamma"], uninterrupted["value"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sampler", "annealing"], "unknown sampler 'annealing'"),
        (["--trials", "0"], "--trials must be a whole number >= 1"),
        (["--seed", "-1"], "--seed must be a whole number >= 0"),
        (["--cpus-per-trial", "nan"], "--cpus-per-trial must be a finite number"),
        (["--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number"),
        (["--concurrency", "64"], "needs 64 CPUs; this machine has"),
        (["--family-phis", "0,x"], "phi"),
        (["--dataset", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, message):
    status, _, err = search(capsys, tmp_path / "run", *argv)
    assert status == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing left behind to block a rerun


def test_resume_with_nothing_to_resume(capsys, tmp_path):
    status, _, err = search(capsys, tmp_path / "empty", "--resume")
    assert status == 2 and "nothing to resume" in err


def test_dry_run_lists_the_realizable_set_and_its_coverage(capsys):
    assert main(["search", "--space", TINY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "realizable networks" in out and "coverage: every point of the shares simplex lies within" in out


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )


def test_recipe_flags_reach_the_searchs_training_recipe_and_its_fingerprint(capsys):
    from scalesearch.cli import build_parser
    from scalesearch.commands.search import settings_from_args

    parse = build_parser().parse_args
    plain = settings_from_args(parse(["search", "--space", TINY, "--out", "x"]))
    changed = settings_from_args(parse(["search", "--space", TINY, "--out", "x", "--recipe", "init=official"]))
    assert plain.training_recipe().init == "fan_in" and changed.training_recipe().init == "official"
    # A run made with another recipe is another search: --resume must not mix them.
    assert plain.fingerprint() != changed.fingerprint()
    assert main(["search", "--space", TINY, "--recipe", "init=xavier", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe.init: expected one of official, fan_in, zero" in err
