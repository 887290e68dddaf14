"""Budgets on costs beside FLOPs: `plan_candidate(..., constraint=...)` and `scalesearch search --constraint`."""

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from scalesearch import candidates
from scalesearch.candidates import plan_candidate
from scalesearch.cli import main
from scalesearch.errors import UserError
from scalesearch.scaling import Coefficients
from scalesearch.search import FINGERPRINT_KEYS, SearchSettings, fingerprint, prepare_run_dir
from scalesearch.spaces import load_space

TINY = str(Path(__file__).parent / "data" / "tiny_space.yaml")
PLAN = {"num_classes": 10, "in_channels": 1}


def tiny(tolerance: float = 0.1):
    return replace(load_space(TINY), tolerance=tolerance)


def test_tiny_helper_sets_the_tolerance():
    assert tiny(0.3).tolerance == 0.3 and tiny(0.3).target == 2.0


def test_measured_latency_accepts_a_candidate_within_tolerance_and_rejects_one_outside():
    # Real timings: the base against itself is 1x (target^0), within a tolerance wider than the noise.
    space = tiny(0.35)
    same = plan_candidate(space, Coefficients(1.2, 1.1, 1.15), phi=0.0, constraint="latency", **PLAN)
    assert same.feasible and same.constraint == "latency" and same.constraint_ratio == pytest.approx(1.0, abs=0.35)
    # The base's own size asked to cost 2x, with correction off: measured ~1x, outside 2 ± 35%.
    short = plan_candidate(space, Coefficients(1.0, 1.0, 1.0), constraint="latency", correct=False, **PLAN)
    assert not short.feasible and "measured latency ratio" in short.reason and "outside 2 ± 35%" in short.reason


def fake_latency(space, base_spec, spec):
    """A noise-free latency model for the correction logic: the hook FLOPs estimate's ratio."""
    return candidates._estimate(space.path, spec)[1] / candidates._estimate(space.path, base_spec)[1]


def test_latency_correction_moves_resolution_onto_the_budget(monkeypatch):
    monkeypatch.setattr(candidates, "latency_ratio", fake_latency)
    space = tiny(0.1)
    planned = plan_candidate(space, Coefficients(1.0, 1.0, 1.0), constraint="latency", **PLAN)
    assert planned.feasible and planned.corrected and planned.spec.resolution > space.proxy.resolution
    assert abs(planned.constraint_ratio / 2 - 1) <= 0.1
    assert planned.constraint_ratio == pytest.approx(fake_latency(space, *_specs(space, planned.spec)))


def _specs(space, spec):
    base = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, **PLAN)
    return base, spec


def test_latency_that_no_correction_can_move_is_infeasible(monkeypatch):
    monkeypatch.setattr(candidates, "latency_ratio", lambda space, base, spec: 1.0)  # overhead-bound
    planned = plan_candidate(tiny(0.1), Coefficients(1.2, 1.1, 1.15), constraint="latency", **PLAN)
    assert not planned.feasible and planned.constraint_ratio == 1.0
    assert planned.reason == "measured latency ratio 1.00 is outside 2 ± 10%"


@pytest.mark.parametrize("constraint", ["params", "activations"])
def test_count_constraints_use_the_exact_ratio(constraint):
    space = tiny(0.1)
    planned = plan_candidate(space, Coefficients(2.0, 1.0, 1.0), constraint=constraint, **PLAN)
    family = space.proxy_family
    base = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, **PLAN)
    if constraint == "params":
        expected = planned.params / sum(p.numel() for p in family.build(base).parameters())
    else:
        from scalesearch.cost import measure_activations

        def count(spec):
            return measure_activations(family.build(spec), resolution=spec.resolution, in_channels=1)

        expected = count(planned.spec) / count(base)
    assert planned.constraint_ratio == pytest.approx(expected)
    assert planned.feasible == (abs(planned.constraint_ratio / 2 - 1) <= 0.1)
    assert planned.row(2.0)["constraint"] == constraint


def test_flops_stays_the_default_and_unchanged():
    space = tiny(0.1)
    default = plan_candidate(space, Coefficients(1.2, 1.1, 1.15), **PLAN)
    named = plan_candidate(space, Coefficients(1.2, 1.1, 1.15), constraint="flops", **PLAN)
    assert default == named and default.constraint == "flops" and default.constraint_ratio == default.flops_ratio
    with pytest.raises(UserError, match="unknown constraint 'energy'"):
        plan_candidate(space, Coefficients(1.2, 1.1, 1.15), constraint="energy", **PLAN)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"constraint": "energy"}, "unknown constraint 'energy'"),
     ({"objective": "accuracy,energy"}, "unknown objective 'accuracy,energy'"),
     ({"objective": "latency"}, "unknown objective 'latency'")],
)  # fmt: skip
def test_bad_constraint_or_objective_is_a_user_error(changes, message):
    with pytest.raises(UserError, match=message):
        SearchSettings(space_path=TINY, dataset="digits", **changes).validate()


def test_resume_accepts_a_search_made_before_constraints_existed(tmp_path):
    settings = SearchSettings(space_path=TINY, dataset="digits", out=str(tmp_path / "run"))
    prepare_run_dir(settings, resume=False)
    meta = tmp_path / "run" / "search.json"
    saved = json.loads(meta.read_text())
    for key in ("constraint", "objective"):
        del saved["fingerprint"][key]
    meta.write_text(json.dumps(saved))
    prepare_run_dir(settings, resume=True)  # no "differs in" error
    with pytest.raises(UserError, match="differs in: constraint"):
        prepare_run_dir(replace(settings, constraint="params"), resume=True)
    assert {"constraint", "objective"} <= set(FINGERPRINT_KEYS) <= set(fingerprint(settings))


def test_search_with_an_activations_budget_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet",
                   "--constraint", "activations"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {r["constraint"] for r in rows} == {"activations"}
    trained = [r for r in rows if r["status"] == "completed"]
    assert trained
    for row in trained:
        assert abs(float(row["constraint_ratio"]) / 2 - 1) <= 0.1 + 1e-9
        for column in ("activations", "latency_batch1_s", "latency_throughput_s", "peak_train_memory_bytes",
                       "params", "flops"):  # fmt: skip
            assert float(row[column]) > 0, column
        assert float(row["latency_throughput_s"]) > float(row["latency_batch1_s"])  # 32 images vs 1
        assert row["cost_device"] == "cpu" and int(row["throughput_batch"]) == 32
    best = json.loads((out / "best.json").read_text())
    assert best["constraint"] == "activations" and best["objective"] == "accuracy"
    assert abs(best["proxy_constraint_ratio"] / 2 - 1) <= 0.1 + 1e-9 and "pareto_front" not in best
    assert json.loads((out / "search.json").read_text())["fingerprint"]["constraint"] == "activations"
    assert json.loads((out / "manifest.json").read_text())["settings"]["constraint"] == "activations"


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )
