"""The planner: realizable networks on the budget band, realized shares, nearest networks, and the
family calibrated onto its budgets at full scale."""

import math
from pathlib import Path

import pytest

from scalesearch.config.spaces import load_space
from scalesearch.core.scaling import Coefficients, Shares, share_distance, simplex_lattice
from scalesearch.outputs.family_table import family_table
from scalesearch.planning import planner

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_space.yaml")


@pytest.fixture(scope="module")
def tiny_set():
    space = load_space(TINY)
    return space, planner.realizable_set(space, num_classes=10, in_channels=1, use_cache=False)


def test_every_realizable_network_meets_the_measured_budget(tiny_set):
    space, found = tiny_set
    assert len(found.networks) >= 5
    for network in found.networks:
        assert abs(network.ratio / space.target - 1) <= space.tolerance  # fvcore FLOPs, not the formula
        assert network.ratio == network.flops_ratio


def test_realized_multipliers_decompose_the_measured_cost(tiny_set):
    """d·w²·r² of a network is exactly its MACs ratio to the base: the shares say where the budget went."""
    space, found = tiny_set
    measurer = planner.measurer_for(space.proxy_family, 1)
    base = planner.proxy_base(space, num_classes=10, in_channels=1)
    for network in found.networks:
        product = network.depth * network.width**2 * network.resolution**2
        assert product == pytest.approx(measurer.macs(network.spec) / measurer.macs(base), rel=1e-9)
        shares = network.shares
        assert shares.total == pytest.approx(1.0) and min(shares.depth, shares.width, shares.resolution) >= 0
        assert network.coefficients(space.target).product == pytest.approx(space.target)


def test_nearest_is_the_closest_network_and_coverage_is_its_worst_case(tiny_set):
    _, found = tiny_set
    worst = 0.0
    for point in simplex_lattice(0.1):
        chosen = found.nearest(point)
        distance = share_distance(point, chosen.shares)
        assert distance == min(share_distance(point, n.shares) for n in found.networks)
        worst = max(worst, distance)
    assert worst <= found.coverage + 1e-9


def test_a_network_asked_for_by_its_own_shares_is_itself(tiny_set):
    _, found = tiny_set
    for network in found.networks:
        assert found.nearest(network.shares).shares == network.shares


def test_spread_starts_at_the_corners_and_never_repeats(tiny_set):
    _, found = tiny_set
    spread = found.spread(5)
    assert len({n.key for n in spread}) == len(spread) == min(5, len(found.networks))
    corner = min(found.networks, key=lambda n: share_distance(n.shares, Shares(1, 0, 0)))
    assert spread[0].key == corner.key


def test_the_default_space_covers_the_simplex_closely():
    """The shipped proxy at the default search's φ: every point of the simplex has a network within 0.15."""
    space = load_space("efficientnet_b0")
    found = planner.realizable_set(space, num_classes=10, in_channels=1, phi=2.0)
    assert found.coverage <= 0.15
    corners = [found.nearest(s).shares for s in (Shares(1, 0, 0), Shares(0, 1, 0), Shares(0, 0, 1))]
    assert all(max(s.depth, s.width, s.resolution) >= 0.85 for s in corners)


@pytest.mark.parametrize("phis", [(1.0, 2.0, 3.0)])
def test_calibrated_family_meets_its_budgets(phis):
    """B1..B3 with the paper's coefficients: the pure rule overshoots (rounding), calibration lands within ±5%."""
    space = load_space("efficientnet_b0")
    paper = Coefficients(1.2, 1.1, 1.15)
    calibrated = family_table(space, paper, [0.0, *phis])
    pure = family_table(space, paper, [0.0, *phis], calibrated=False)
    for variant in calibrated["variants"][1:]:
        assert abs(variant["flops_ratio"] / 2 ** variant["phi"] - 1) <= 0.05, variant
        assert variant["rule"]["resolution"] == pure["variants"][int(variant["phi"])]["resolution"]
    assert any(abs(v["flops_ratio"] / 2 ** v["phi"] - 1) > 0.05 for v in pure["variants"][1:])


@pytest.mark.slow
def test_calibrated_b4_to_b7_meet_their_budgets():
    space = load_space("efficientnet_b0")
    family = family_table(space, Coefficients(1.2, 1.1, 1.15), [0.0, 4.0, 5.0, 6.0, 7.0])
    for variant in family["variants"][1:]:
        assert abs(variant["flops_ratio"] / 2 ** variant["phi"] - 1) <= 0.05, variant


def test_calibration_keeps_the_rules_direction():
    space = load_space("efficientnet_b0")
    coefficients = Coefficients(1.2, 1.1, 1.15)
    result = planner.calibrate(space, coefficients, 2.0)
    assert math.isfinite(result.effective_phi) and abs(result.effective_phi - 2.0) < 1.0
    assert result.spec.resolution >= 224 and result.spec.depth_mult >= 1.0
