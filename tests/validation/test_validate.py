"""`scalesearch validate` on a small real run: planning on the realizable set, the table, the verdict,
the plot, Ctrl-C, and bad input."""

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from scalesearch.cli import main
from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Shares, share_distance
from scalesearch.execution.runner import Outcome
from scalesearch.outputs.family_table import evidence_line, with_evidence
from scalesearch.outputs.verdict import FAR_FROM_PURE, checks_by_phi, summarize, verdict
from scalesearch.planning.planner import realizable_set
from scalesearch.validation.validate import (
    VALIDATION_COLUMNS,
    Planned,
    baseline_shares,
    default_phis,
    plan_validation,
    validation_rows,
)

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_space.yaml")
DIGITS = {"num_classes": 10, "in_channels": 1}
PURE = {"depth": Shares(1, 0, 0), "width": Shares(0, 1, 0), "resolution": Shares(0, 0, 1)}


def shared_run(tmp_path_factory, validated: bool) -> Path:
    """The session's tiny search run (built once by whichever module asks first), optionally validated.

    Search and validation each start a Ray; sharing them keeps the modules that need them fast.
    """
    base = tmp_path_factory.getbasetemp() / "shared-tiny-run"
    if not (base / "best.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        argv = ["--family-phis", "0-1", "--confirm-top", "2", "--confirm-seeds", "2", "--quiet"]
        assert main(["search", "--space", TINY, "--out", str(base), *argv]) == 0
    if not validated:
        return base
    out = tmp_path_factory.getbasetemp() / "shared-tiny-validated"
    if not (out / "validation.stdout").is_file():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = main(["validate", str(out), "--phis", "0,1", "--seeds", "2", "--epochs", "1", "--quiet"])
        assert status == 0
        (out / "validation.stdout").write_text(printed.getvalue())
    return out


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, validated=True)


# --------------------------------------------------------------------------------------------------
# Planning (the real planner on the tiny space; its realizable sets are cached on disk)


def test_plan_takes_the_nearest_realizable_network_and_shows_how_far_a_baseline_is():
    space = load_space(TINY)
    found = realizable_set(space, phi=1.0, **DIGITS)
    chosen = found.networks[len(found.networks) // 2]
    planned = plan_validation(space, chosen.shares, phis=[0.0, 1.0], baselines=["depth", "width", "resolution"],
                              **DIGITS)  # fmt: skip
    assert [(p.strategy, p.phi) for p in planned] == [
        (s, phi) for phi in (0.0, 1.0) for s in ("compound", "depth", "width", "resolution")
    ]
    at_one = {p.strategy: p for p in planned if p.phi == 1.0}
    # The chosen rule asks for a network's own realized shares: that network, with no share error.
    assert at_one["compound"].network == chosen.key and at_one["compound"].row["share_error"] == 0.0
    assert at_one["compound"].spec == chosen.spec
    for name, pure in PURE.items():
        item = at_one[name]
        nearest = found.nearest(pure)
        realized = Shares(*(item.row[f"realized_share_{k}"] for k in ("depth", "width", "resolution")))
        assert item.network == nearest.key and item.spec == nearest.spec
        assert (item.row["requested_share_depth"], item.row["requested_share_width"],
                item.row["requested_share_resolution"]) == (pure.depth, pure.width, pure.resolution)  # fmt: skip
        assert item.row["share_error"] == pytest.approx(share_distance(pure, realized))
        assert abs(item.row["constraint_ratio"] / 2.0 - 1) <= space.tolerance
        assert item.row["constraint"] == "flops" and item.row["flops"] == nearest.flops
    # Whole blocks: the tiny space has no pure-depth network at phi 1; the baseline says how far it is.
    assert at_one["depth"].row["share_error"] > 0.15 and at_one["width"].row["share_error"] < 0.01
    # phi 0 is the proxy base for every strategy: one network, no direction.
    at_zero = [p for p in planned if p.phi == 0.0]
    assert len({p.network for p in at_zero}) == 1 and all(p.row["constraint_ratio"] == 1.0 for p in at_zero)
    assert all(p.spec.depth_mult == space.proxy.depth_mult and p.spec.resolution == 12 for p in at_zero)
    assert all("share_error" not in p.row for p in at_zero)


def test_plan_uses_the_runs_constraint():
    space = load_space(TINY)
    planned = plan_validation(space, Shares(0.5, 0.5, 0.0), phis=[1.0], baselines=["width"], constraint="activations",
                              **DIGITS)  # fmt: skip
    found = realizable_set(space, phi=1.0, constraint="activations", **DIGITS)
    for item in planned:
        assert item.row["constraint"] == "activations" and item.network in {n.key for n in found.networks}
        assert abs(item.row["constraint_ratio"] / 2.0 - 1) <= space.tolerance


def test_a_budget_no_network_meets_is_reported_not_trained(tmp_path):
    # A copy of the tiny space whose band nothing can meet (its own file: the realizable set is cached
    # by the file's content).
    text = Path(TINY).read_text().replace("tolerance: 0.1", "tolerance: 0.0001")
    (tmp_path / "tight.yaml").write_text(text)
    space = load_space(str(tmp_path / "tight.yaml"))
    planned = plan_validation(space, Shares(0.5, 0.5, 0.0), phis=[0.0, 1.0], baselines=["depth"], **DIGITS)
    at_one = [p for p in planned if p.phi == 1.0]
    assert all(p.spec is None and "no network of tiny's proxy meets 2^1 ± 0%" in p.reason for p in at_one)
    assert all(p.spec is not None for p in planned if p.phi == 0.0)


def test_unknown_baseline_and_constraint_are_user_errors():
    with pytest.raises(UserError, match="unknown baseline 'height'"):
        baseline_shares("height")
    with pytest.raises(UserError, match="unknown constraint 'energy'"):
        plan_validation(load_space(TINY), Shares(1, 0, 0), phis=[1.0], baselines=[], constraint="energy", **DIGITS)


# --------------------------------------------------------------------------------------------------
# Rows, summary and verdict on known numbers (no training)


def _planned(strategy: str, phi: float, network: str, share_error: float | None = 0.0) -> Planned:
    row = {"network": network, "flops": 1e5 * 2**phi, "flops_ratio": 2**phi, "constraint": "flops",
           "constraint_ratio": 2**phi, "share_error": share_error}  # fmt: skip
    return Planned(strategy, phi, row, spec=network, reason="")  # type: ignore[arg-type]


def test_rows_come_from_outcomes_and_infeasible_ones_carry_the_reason():
    planned = [
        _planned("compound", 1.0, "aaa"),
        Planned("depth", 1.0, {"constraint": "flops"}, spec=None, reason="no network of tiny's proxy meets 2^1"),
        _planned("width", 1.0, "bbb", 0.02),
        _planned("resolution", 1.0, "ccc", 0.4),
    ]
    results = {
        ("aaa", 0): Outcome("completed", (0.5, 0.90), 1.0),
        ("aaa", 1): Outcome("completed", (0.5, 0.92), 1.0),
        ("bbb", 0): Outcome("completed", (0.5, 0.80), 1.0),
        ("bbb", 1): Outcome("failed", (0.5,), 1.0, error="diverged: loss is nan"),
    }  # ("ccc", *) not finished yet: no rows
    rows = validation_rows(planned, [0, 1], results)
    assert list(rows.columns) == VALIDATION_COLUMNS
    assert [(r.strategy, r.seed, r.status) for r in rows.itertuples()] == [
        ("compound", 0, "completed"), ("compound", 1, "completed"), ("depth", 0, "infeasible"),
        ("depth", 1, "infeasible"), ("width", 0, "completed"), ("width", 1, "failed"),
    ]  # fmt: skip
    assert list(rows["final_val_accuracy"][:2]) == [0.90, 0.92] and math.isnan(rows["final_val_accuracy"].iloc[5])
    assert rows["error"].iloc[5] == "diverged: loss is nan" and "meets 2^1" in rows["error"].iloc[2]
    call = verdict(summarize(rows)).iloc[0]
    assert call["best_baseline"] == "width" and call["difference"] == pytest.approx(0.91 - 0.80)
    assert call["call"] == "one seed: no spread, no call; infeasible: depth"


def _rows(accuracies: dict[tuple[str, float], list[float]], networks: dict | None = None,
          errors: dict | None = None) -> pd.DataFrame:  # fmt: skip
    """A validation table from known accuracies (no training)."""
    records = []
    for (strategy, phi), values in accuracies.items():
        for seed, value in enumerate(values):
            records.append({"strategy": strategy, "phi": phi, "seed": seed, "flops": 1e5 * 2**phi,
                            "flops_ratio": 2**phi, "final_val_accuracy": value, "status": "completed",
                            "network": (networks or {}).get((strategy, phi), f"{strategy}-{phi}"),
                            "share_error": (errors or {}).get((strategy, phi), 0.0)})  # fmt: skip
    return pd.DataFrame(records)


def test_verdict_on_known_numbers():
    rows = _rows(
        {
            ("compound", 1.0): [0.90, 0.92, 0.91],
            ("depth", 1.0): [0.80, 0.82, 0.81],
            ("width", 1.0): [0.85, 0.86, 0.87],
            ("compound", 2.0): [0.90, 0.95, 0.85],
            ("width", 2.0): [0.89, 0.90, 0.91],
        }
    )
    table = verdict(summarize(rows)).set_index("phi")
    one, two = table.loc[1.0], table.loc[2.0]
    assert one["best_baseline"] == "width" and one["difference"] == pytest.approx(0.05)
    assert one["spread"] == pytest.approx(math.sqrt(0.01**2 + 0.01**2))
    assert one["exceeds"] and one["call"] == "compound better"
    assert two["difference"] == pytest.approx(0.0, abs=1e-12) and not two["exceeds"]
    assert two["call"] == "within seed noise"
    single = verdict(summarize(_rows({("compound", 1.0): [0.9], ("depth", 1.0): [0.8]}))).iloc[0]
    assert single["call"] == "one seed: no spread, no call" and not single["exceeds"]
    assert (one["outcome"], two["outcome"], single["outcome"]) == ("better", "tied", "no call")
    worse = verdict(summarize(_rows({("compound", 3.0): [0.70, 0.71], ("width", 3.0): [0.80, 0.81]}))).iloc[0]
    assert worse["outcome"] == "worse" and worse["call"] == "width better"
    assert checks_by_phi(table.reset_index()) == {1.0: "better", 2.0: "tied"}


def test_validate_checks_past_the_searched_phi_by_default():
    assert default_phis(2.0) == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert default_phis(1.0) == (0.0, 1.0, 2.0, 3.0)
    assert default_phis(1.5) == (0.0, 1.0, 1.5, 2.5, 3.5)


def test_the_family_says_how_far_the_rule_was_checked():
    family = {"coefficients": {"alpha": 1.2}, "variants": [
        {"name": f"B{k}", "phi": float(k), "resolution": 12 + 4 * k} for k in range(5)]}  # fmt: skip
    marked = with_evidence(family, native=20, searched_phi=2.0, checks={2.0: "better", 3.0: "tied", 4.0: "worse"})
    assert [v["check"] for v in marked["variants"]] == ["base", "unchecked", "better", "tied", "worse"]
    assert [v["upsampling"] for v in marked["variants"]] == [False, False, False, True, True]
    assert marked["evidence"]["checked_up_to_phi"] == 4.0 and marked["evidence"]["searched_phi"] == 2.0
    line = evidence_line(marked)
    assert "B3, B4 upsample" in line and "up to phi 4 (phi 2 better, phi 3 tied, phi 4 worse)" in line
    assert "unchecked: B1" in line


def test_verdict_names_a_baseline_that_is_not_what_its_name_says():
    accuracies = {("compound", 1.0): [0.90, 0.92], ("depth", 1.0): [0.90, 0.92], ("width", 1.0): [0.80, 0.81]}
    same = {("compound", 1.0): "n1", ("depth", 1.0): "n1"}
    far = {("depth", 1.0): 0.2, ("width", 1.0): FAR_FROM_PURE + 0.05}
    call = verdict(summarize(_rows(accuracies, same, far))).iloc[0]
    # depth trained compound's own network: the rule is depth scaling itself, so compound is compared
    # with the best baseline that trained another network (width), and the call says both.
    assert call["best_baseline"] == "width" and call["difference"] == pytest.approx(0.105)
    assert call["outcome"] == "better"
    assert call["call"] == (
        "depth trained compound's own network (the rule is depth scaling itself); against the best other "
        f"dimension: compound better; far from a pure dimension (share error): width {FAR_FROM_PURE + 0.05:.2f}"
    )
    # When every baseline trained compound's own network, nothing else is there to compare with.
    alone = verdict(summarize(_rows({("compound", 1.0): [0.9, 0.92], ("depth", 1.0): [0.9, 0.92]},
                                    {("compound", 1.0): "n1", ("depth", 1.0): "n1"}))).iloc[0]  # fmt: skip
    assert alone["outcome"] == "same network" and alone["best_baseline"] == "depth"


def test_summary_reads_a_validation_of_an_older_version():
    old = _rows({("compound", 1.0): [0.9, 0.91], ("depth", 1.0): [0.8, 0.82]}).drop(columns=["network", "share_error"])
    summary = summarize(old)
    assert summary["network"].tolist() == ["", ""] and summary["share_error"].isna().all()
    assert verdict(summary).iloc[0]["call"] == "compound better"


# --------------------------------------------------------------------------------------------------
# End to end on the shared tiny run


@pytest.mark.slow
def test_validation_table_contents(validated):
    rows = pd.read_csv(validated / "validation.csv")
    best = json.loads((validated / "best.json").read_text())
    trials = pd.read_csv(validated / "trials.csv")
    assert list(rows.columns) == VALIDATION_COLUMNS
    assert len(rows) == 4 * 2 * 2  # strategies x phis x seeds
    assert set(rows["strategy"]) == {"compound", "depth", "width", "resolution"}
    assert set(rows["phi"]) == {0.0, 1.0} and set(rows["seed"]) == {0, 1}
    assert set(rows["status"]) == {"completed"}
    assert (rows["final_val_accuracy"] > 0).all() and (rows["final_val_accuracy"] <= 1).all()
    at_one = rows[rows["phi"] == 1.0]
    # Every trained network sits on the same measured budget, and says how far it is from its rule.
    assert ((at_one["constraint_ratio"] / 2 - 1).abs() <= best["tolerance"] + 1e-9).all()
    for row in at_one.to_dict("records"):
        asked = Shares(*(row[f"requested_share_{k}"] for k in ("depth", "width", "resolution")))
        got = Shares(*(row[f"realized_share_{k}"] for k in ("depth", "width", "resolution")))
        assert row["share_error"] == pytest.approx(share_distance(asked, got))
        if row["strategy"] != "compound":
            assert asked == PURE[row["strategy"]]
    # The chosen rule at the run's phi is the chosen network itself, trained as the search trained it:
    # the same seed gives the same accuracy as its trials.csv rows (the search's epochs, 1, here).
    compound = at_one[at_one["strategy"] == "compound"]
    assert set(compound["network"]) == {best["network"]} and (compound["share_error"] == 0).all()
    matched = 0
    for row in compound.to_dict("records"):
        same = trials[(trials["network"] == best["network"]) & (trials["seed"] == row["seed"])]
        if len(same):
            assert row["final_val_accuracy"] == float(same["final_val_accuracy"].iloc[0])
            matched += 1
    assert matched >= 1
    # phi 0 is the base model for every strategy: one training per seed, the same accuracy everywhere.
    base = rows[rows["phi"] == 0]
    assert base["network"].nunique() == 1 and (base.groupby("seed")["final_val_accuracy"].nunique() == 1).all()
    # validate marks the family with what it found at each phi (here phi 1, at proxy scale).
    family = json.loads((validated / "family.json").read_text())
    outcome = verdict(summarize(rows)).set_index("phi").loc[1.0, "outcome"]
    assert [v["check"] for v in family["variants"]] == ["base", outcome]
    assert family["evidence"]["checked_up_to_phi"] == 1.0


@pytest.mark.slow
def test_verdict_is_printed_with_the_seed_spread(validated):
    printed = (validated / "validation.stdout").read_text()
    assert "share_error" in printed and "best baseline" in printed and "difference" in printed
    assert "phi 0 is the base model for every strategy" in printed
    assert "2 seed(s)" in printed and "rough estimate" in printed
    assert (validated / "validation.png").stat().st_size > 5_000


@pytest.mark.slow
def test_ctrl_c_ends_with_130_and_keeps_the_finished_rows(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(shared_run(tmp_path_factory, validated=False), run_dir)
    (run_dir / "validation.png").write_bytes(b"an earlier validation's plot")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "scalesearch", "validate", str(run_dir), "--phis", "0,1", "--seeds", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell's background jobs inherit SIGINT ignored; a terminal's Ctrl-C reaches a process that has it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    csv_path = run_dir / "validation.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if csv_path.is_file() and ",completed," in csv_path.read_text():
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted; the finished jobs are in" in err and "Traceback" not in err
    rows = pd.read_csv(csv_path)
    assert len(rows) and set(rows["status"]) == {"completed"} and len(rows) < 4 * 2 * 2
    assert not (run_dir / "validation.png").exists()  # the earlier plot no longer matches
    # The tasks that were running end with the Ray session the command started (no cancel needed).
    deadline = time.monotonic() + 20
    while _processes_named("ray::train_job") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_named("ray::train_job")


def _processes_named(name: str) -> list[str]:
    """The pids of this machine's processes whose command line contains `name` (Ray names a worker
    after the task it runs)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if name.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:  # ended while we looked
            continue
    return found


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/run"], "run folder '/no/such/run' not found"),
        (["{empty}"], "is not a finished search run (no best.json)"),
        (["{run}", "--baselines", "depth,height"], "unknown baseline(s) height"),
        (["{run}", "--phis", "one"], "cannot read phis 'one'"),
        (["{run}", "--seeds", "0"], "--seeds must be >= 1"),
        (["{run}"], "search.json is missing or has no settings"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.json").write_text('{"alpha": 1.2, "beta": 1.1, "gamma": 1.15}')
    argv = [a.format(empty=tmp_path / "empty", run=tmp_path / "run") for a in argv]
    status = main(["validate", *argv])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )


def test_a_run_recorded_before_the_recipes_init_is_retrained_with_the_official_init():
    """tests/fixtures/run_tiny predates `init`: validate and `train --from` must retrain it as it was
    trained (the official init), not with today's default, and a resume must not see a changed recipe."""
    from scalesearch.config.settings import differing_keys
    from scalesearch.outputs.runs import read_run
    from scalesearch.validation.validate import run_settings

    run = read_run(Path(__file__).resolve().parents[1] / "fixtures" / "run_tiny")
    assert "init" not in run.settings["recipe"]
    settings = run_settings(run)
    assert settings.training_recipe().init == "official"
    saved = json.loads((run.path / "search.json").read_text())["fingerprint"]
    assert "recipe" not in differing_keys(saved, settings.fingerprint())
    fan_in = replace(settings, recipe={**settings.recipe, "init": "fan_in"})
    assert "recipe" in differing_keys(saved, fan_in.fingerprint())
