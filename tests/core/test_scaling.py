"""The pure scaling math: constraint, shares, multipliers, rounding, grid."""

import math

import pytest

from scalesearch.core.errors import UserError
from scalesearch.core.scaling import (
    PAPER_POINT,
    Coefficients,
    Shares,
    coefficients_from_shares,
    compute_shares,
    grid_candidates,
    make_divisible,
    multipliers,
    parse_phis,
    round_channels,
    round_repeats,
    round_resolution,
    validate_coefficients,
)

PAPER = Coefficients(*PAPER_POINT)


def test_paper_point_product_and_shares_match_reference():
    assert PAPER.product == pytest.approx(1.920, abs=5e-4)
    shares = compute_shares(PAPER)
    # REFERENCE.md: s_d 0.263, s_w 0.275, s_r 0.403 (sum 0.941)
    assert (shares.depth, shares.width, shares.resolution) == pytest.approx((0.263, 0.275, 0.403), abs=5e-4)
    assert shares.total == pytest.approx(0.941, abs=5e-4)
    assert shares.total == pytest.approx(math.log2(PAPER.product))


def test_shares_round_trip_and_land_on_the_constraint():
    coefficients = coefficients_from_shares(Shares(0.5, 0.3, 0.2))
    assert coefficients.product == pytest.approx(2.0)
    back = compute_shares(coefficients)
    assert (back.depth, back.width, back.resolution) == pytest.approx((0.5, 0.3, 0.2))
    assert coefficients_from_shares(Shares(0.2, 0.3, 0.5), target=3.0).product == pytest.approx(3.0)


def test_validate_accepts_paper_point_and_rejects_bad_ones():
    assert validate_coefficients(PAPER) is PAPER
    with pytest.raises(UserError, match="alpha must be"):
        validate_coefficients(Coefficients(0.9, 1.2, 1.3))
    with pytest.raises(UserError, match="outside 2"):
        validate_coefficients(Coefficients(1.5, 1.2, 1.2))  # product 3.11
    with pytest.raises(UserError, match="outside"):
        validate_coefficients(PAPER, tolerance=0.01)  # 1.920 is 4% below 2
    validate_coefficients(Coefficients(2.0, 1.0, 1.0), tolerance=0.0)


def test_multipliers_fractional_and_negative_phi():
    assert multipliers(PAPER, 0) == (1.0, 1.0, 1.0)
    assert multipliers(PAPER, 2) == pytest.approx((1.44, 1.21, 1.3225))
    assert multipliers(PAPER, 0.5) == pytest.approx((1.2**0.5, 1.1**0.5, 1.15**0.5))
    with pytest.raises(UserError, match="phi"):
        multipliers(PAPER, -1)


def test_make_divisible_ten_percent_rule():
    assert make_divisible(32) == 32
    assert make_divisible(35.2) == 32  # round to nearest 8; 32 is 9% below 35.2: kept
    assert make_divisible(36) == 40  # ties round up
    assert make_divisible(4) == 8  # never below the divisor
    # 17.6 rounds to 16, which is 9.1% below: kept. 8.9 rounds to 8, 10.1% below: bumped to 16.
    assert make_divisible(17.6) == 16
    assert make_divisible(8.9, divisor=8, min_value=1) == 16
    assert make_divisible(11.9, divisor=8, min_value=1) == 16
    assert make_divisible(27, divisor=16) == 32
    # Published B-series widths.
    assert round_channels(1280, 1.1) == 1408
    assert round_channels(40, 1.1) == 48  # 44 rounds up (ties up) to 48
    assert round_channels(80, 1.1) == 88
    assert round_channels(112, 1.1) == 120  # 123.2 -> 120


def test_round_repeats_is_ceil():
    assert round_repeats(1, 1.1) == 2
    assert round_repeats(4, 1.0) == 4
    assert round_repeats(3, 3.1) == 10
    assert round_repeats(2, 0.5) == 1


def test_round_resolution():
    assert round_resolution(224 * 1.15) == 256  # 257.6 -> 256
    assert round_resolution(33.4, multiple=1) == 33
    assert round_resolution(1.0, multiple=4) == 4
    with pytest.raises(UserError):
        round_resolution(100, multiple=0)


def test_default_grid_contains_paper_point_and_only_feasible_points():
    grid = grid_candidates()
    assert Coefficients(1.2, 1.1, 1.15) in grid
    assert Coefficients(2.0, 1.0, 1.0) in grid  # depth only
    assert all(abs(c.product / 2 - 1) <= 0.05 + 1e-12 for c in grid)
    assert all(min(c.alpha, c.beta, c.gamma) >= 1 for c in grid)
    assert len(grid) == len(set(grid))
    # A coarser grid (NNI's step 0.1) misses gamma = 1.15.
    assert Coefficients(1.2, 1.1, 1.15) not in grid_candidates(step=0.1)


def test_grid_rejects_bad_ranges():
    with pytest.raises(UserError):
        grid_candidates(alpha_range=(0.5, 2.0))
    with pytest.raises(UserError):
        grid_candidates(step=0)


def test_parse_phis():
    assert parse_phis("0-7") == [float(i) for i in range(8)]
    assert parse_phis("0,1,2.5") == [0.0, 1.0, 2.5]
    assert parse_phis("3") == [3.0]
    for bad in ("-1", "a-b", "5-2", "", "0,-2"):
        with pytest.raises(UserError):
            parse_phis(bad)
