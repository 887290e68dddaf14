"""`scalesearch validate` on a small real run: the table, the verdict, the plot, and bad input."""

import contextlib
import io
import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from scalesearch.cli import main
from scalesearch.validate import VALIDATION_COLUMNS, Planned, summarize, validation_rows, verdict

TINY = str(Path(__file__).parent / "data" / "tiny_space.yaml")


def shared_run(tmp_path_factory, validated: bool) -> Path:
    """The session's tiny search run (built once by whichever module asks first), optionally validated.

    Search and validation each start a Ray; sharing them keeps the modules that need them fast.
    """
    base = tmp_path_factory.getbasetemp() / "shared-tiny-run"
    if not (base / "best.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        assert main(["search", "--space", TINY, "--out", str(base), "--family-phis", "0-1", "--quiet"]) == 0
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


def test_validation_table_contents(validated):
    rows = pd.read_csv(validated / "validation.csv")
    best = json.loads((validated / "best.json").read_text())
    assert list(rows.columns) == VALIDATION_COLUMNS
    assert len(rows) == 4 * 2 * 2  # strategies x phis x seeds
    assert set(rows["strategy"]) == {"compound", "depth", "width", "resolution"}
    assert set(rows["phi"]) == {0.0, 1.0} and set(rows["seed"]) == {0, 1}
    assert set(rows["status"]) <= {"completed", "infeasible"}
    for row in rows.to_dict("records"):
        expected = {
            "compound": (best["alpha"], best["beta"], best["gamma"]),
            "depth": (2.0, 1.0, 1.0),
            "width": (1.0, math.sqrt(2.0), 1.0),
            "resolution": (1.0, 1.0, math.sqrt(2.0)),
        }[row["strategy"]]
        assert (row["alpha"], row["beta"], row["gamma"]) == pytest.approx(expected)
        if row["status"] == "completed":  # every trained model sits on the same measured FLOPs target
            assert abs(row["flops_ratio"] / 2 ** row["phi"] - 1) <= best["tolerance"] + 1e-9
            assert 0 < row["final_val_accuracy"] <= 1 and row["params"] > 0
        else:
            assert math.isnan(row["final_val_accuracy"]) and "outside" in row["error"]
    # phi 0 is the base model for every strategy: one training per seed, the same accuracy everywhere.
    base = rows[rows["phi"] == 0].groupby("seed")["final_val_accuracy"].nunique()
    assert (base == 1).all()
    # The same planner, seed and recipe as the search: compound at phi 1 reproduces the chosen trial.
    again = rows[(rows["strategy"] == "compound") & (rows["phi"] == 1) & (rows["seed"] == 0)]
    assert float(again["final_val_accuracy"].iloc[0]) == pytest.approx(best["value"], rel=1e-6)


def test_verdict_is_printed_with_the_seed_spread(validated):
    printed = (validated / "validation.stdout").read_text()
    assert "best baseline" in printed and "difference" in printed and "spread" in printed
    assert "phi 0 is the base model for every strategy" in printed
    assert "2 seed(s)" in printed and "rough estimate" in printed
    assert (validated / "validation.png").stat().st_size > 5_000


def _rows(accuracies: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    """A validation table from known accuracies (no training)."""
    records = []
    for (strategy, phi), values in accuracies.items():
        for seed, value in enumerate(values):
            records.append({"strategy": strategy, "phi": phi, "seed": seed, "flops": 1e5 * 2**phi,
                            "flops_ratio": 2**phi, "final_val_accuracy": value, "status": "completed"})  # fmt: skip
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


def test_infeasible_baselines_are_reported_not_trained():
    feasible_row = {"alpha": 1.2, "beta": 1.1, "gamma": 1.15, "flops": 200, "flops_ratio": 2.0}
    planned = [
        Planned("compound", 1.0, feasible_row, spec="compound-spec", reason=""),  # type: ignore[arg-type]
        Planned(
            "depth",
            1.0,
            {**feasible_row, "flops_ratio": 2.6},
            spec=None,
            reason="measured FLOPs ratio 2.60 is outside 2 ± 5%",
        ),
        Planned("width", 1.0, feasible_row, spec="width-spec", reason=""),  # type: ignore[arg-type]
    ]
    results = {
        (spec, seed): {"status": "completed", "final_val_accuracy": value + seed / 100, "seconds": 1.0, "error": ""}
        for spec, value in (("compound-spec", 0.9), ("width-spec", 0.8))
        for seed in (0, 1)
    }
    rows = validation_rows(planned, [0, 1], results)  # type: ignore[arg-type]
    depth = rows[rows["strategy"] == "depth"]
    assert list(depth["status"]) == ["infeasible", "infeasible"] and depth["final_val_accuracy"].isna().all()
    assert "outside" in depth["error"].iloc[0]
    call = verdict(summarize(rows)).iloc[0]
    assert call["best_baseline"] == "width" and "infeasible: depth" in call["call"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/run"], "run folder '/no/such/run' not found"),
        (["{empty}"], "is not a finished search run (no best.json)"),
        (["{run}", "--baselines", "depth,height"], "unknown baseline(s) height"),
        (["{run}", "--phis", "one"], "cannot read phis 'one'"),
        (["{run}", "--seeds", "0"], "--seeds must be >= 1"),
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
