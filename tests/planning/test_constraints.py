"""Budgets on costs beside FLOPs: the realizable set on a constraint (`planner.realizable_set(...,
constraint=...)`, `planner.plan`) and `scalesearch search --constraint`."""

import csv
import json
import os
from pathlib import Path

import pytest

from scalesearch.cli import main
from scalesearch.config.settings import FINGERPRINT_KEYS, SearchSettings
from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Shares
from scalesearch.models.cost import measure_activations
from scalesearch.outputs import runs
from scalesearch.planning import planner
from scalesearch.planning.planner import measurer_for, plan, proxy_base, realizable_set

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_space.yaml")
PLAN = {"num_classes": 10, "in_channels": 1}


def tiny(tmp_path: Path, tolerance: float):
    """The tiny space with another tolerance, as its own file (realizable sets are cached by content)."""
    path = tmp_path / f"tiny-{tolerance:g}.yaml"
    path.write_text(Path(TINY).read_text().replace("tolerance: 0.1", f"tolerance: {tolerance}"))
    return load_space(str(path))


def test_tiny_helper_sets_the_tolerance(tmp_path):
    space = tiny(tmp_path, 0.3)
    assert space.tolerance == 0.3 and space.target == 2.0 and space.name == "tiny"


def macs_latency(family, base_spec, spec):
    """A noise-free latency model for the band logic: the MACs ratio (counts cached per spec)."""
    counter = measurer_for(family, spec.in_channels)
    return counter.macs(spec) / counter.macs(base_spec)


def test_latency_budget_keeps_the_networks_whose_measured_latency_is_on_the_band(monkeypatch, tmp_path):
    timed = []

    def fake(family, base_spec, spec):
        timed.append(spec)
        return macs_latency(family, base_spec, spec)

    monkeypatch.setattr(planner, "latency_ratio", fake)
    space = tiny(tmp_path, 0.1)
    found = realizable_set(space, constraint="latency", **PLAN)
    assert found.networks and found.constraint == "latency" and timed
    base = proxy_base(space, **PLAN)
    for network in found.networks:
        assert network.constraint == "latency" and abs(network.ratio / 2 - 1) <= 0.1
        assert network.ratio == pytest.approx(macs_latency(space.proxy_family, base, network.spec))
    # Latency is timed afresh every time, never read from the cache.
    timed.clear()
    realizable_set(space, constraint="latency", **PLAN)
    assert timed
    chosen = plan(space, Shares(0.0, 1.0, 0.0), constraint="latency", **PLAN)
    assert chosen == found.nearest(Shares(0.0, 1.0, 0.0))


def test_latency_that_no_network_can_move_leaves_nothing_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(planner, "latency_ratio", lambda family, base, spec: 1.0)  # overhead-bound
    space = tiny(tmp_path, 0.1)
    assert realizable_set(space, constraint="latency", **PLAN).networks == ()
    with pytest.raises(UserError, match=r"no network of this space meets the budget 2 ± 10%"):
        plan(space, Shares(0.3, 0.3, 0.4), constraint="latency", **PLAN)


# The params set counts parameters of every candidate on a cold cache (about 10 s): slow.
@pytest.mark.parametrize("constraint", [pytest.param("params", marks=pytest.mark.slow), "activations"])
def test_count_budgets_are_met_by_the_planned_network(constraint):
    space = load_space(TINY)
    planned = plan(space, Shares(1.0, 0.0, 0.0), constraint=constraint, **PLAN)
    family = space.proxy_family
    base = proxy_base(space, **PLAN)
    if constraint == "params":
        expected = planned.params / sum(p.numel() for p in family.build(base).parameters())
    else:

        def count(spec):
            return measure_activations(family.build(spec), resolution=spec.resolution, in_channels=1)

        expected = count(planned.spec) / count(base)
    assert planned.ratio == pytest.approx(expected)
    assert abs(planned.ratio / 2 - 1) <= space.tolerance
    assert planned.constraint == constraint and planned.row(2.0)["constraint"] == constraint
    assert planned.row(2.0)["constraint_ratio"] == planned.ratio


def test_flops_stays_the_default_and_an_unknown_constraint_is_one_user_error(capsys):
    space = load_space(TINY)
    default = plan(space, Shares(0.3, 0.3, 0.4), **PLAN)
    named = plan(space, Shares(0.3, 0.3, 0.4), constraint="flops", **PLAN)
    assert default == named and default.constraint == "flops" and default.ratio == pytest.approx(default.flops_ratio)
    with pytest.raises(UserError, match="unknown constraint 'energy'"):
        plan(space, Shares(0.3, 0.3, 0.4), constraint="energy", **PLAN)
    status = main(["train", "--space", TINY, "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15",
                   "--constraint", "energy"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "unknown constraint 'energy'" in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"constraint": "energy"}, "unknown cost 'energy'"),
     ({"objective": "accuracy,energy"}, "unknown objective 'accuracy,energy'"),
     ({"objective": "latency"}, "unknown objective 'latency'")],
)  # fmt: skip
def test_bad_constraint_or_objective_is_a_user_error(changes, message):
    with pytest.raises(UserError, match=message):
        SearchSettings(space_path=TINY, dataset="digits", **changes).validate()


def test_resume_accepts_a_search_made_before_constraints_existed(tmp_path):
    settings = SearchSettings(space_path=TINY, dataset="digits", out=str(tmp_path / "run"))
    runs.start(tmp_path / "run", settings)
    meta = tmp_path / "run" / "search.json"
    saved = json.loads(meta.read_text())
    for key in ("constraint", "objective"):
        del saved["fingerprint"][key]
    meta.write_text(json.dumps(saved))
    runs.prepare(settings, resume=True)  # no "differs in" error
    with pytest.raises(UserError, match="differs in: constraint"):
        runs.prepare(SearchSettings(space_path=TINY, dataset="digits", out=str(tmp_path / "run"),
                                    constraint="params"), resume=True)  # fmt: skip
    assert {"constraint", "objective"} <= set(FINGERPRINT_KEYS) <= set(settings.fingerprint())


@pytest.mark.slow
def test_search_with_an_activations_budget_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["search", "--space", TINY, "--out", str(out), "--family-phis", "0-1", "--quiet",
                   "--constraint", "activations", "--confirm-top", "0"])  # fmt: skip
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
    assert abs(best["constraint_ratio"] / 2 - 1) <= 0.1 + 1e-9 and "pareto_front" not in best
    assert json.loads((out / "search.json").read_text())["fingerprint"]["constraint"] == "activations"
    assert json.loads((out / "manifest.json").read_text())["settings"]["constraint"] == "activations"


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(
        "SCALESEARCH_CACHE", os.environ.get("SCALESEARCH_CACHE", str(Path.home() / ".cache/scalesearch"))
    )
