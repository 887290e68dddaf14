"""The confirm stage's plan and the noise-aware choice, on rows whose right answer is known."""

import pytest

from scalesearch.search import confirm


def row(trial, network, seed, accuracy, *, stage="search", status="completed", shares=(0.3, 0.3, 0.4), flops=100):
    return {"trial": trial, "network": network, "seed": seed, "final_val_accuracy": accuracy, "stage": stage,
            "status": status, "realized_share_depth": shares[0], "realized_share_width": shares[1],
            "realized_share_resolution": shares[2], "flops": flops}  # fmt: skip


def test_plan_tops_up_the_best_networks_to_the_wanted_seeds():
    rows = {
        0: row(0, "a", 0, 0.90),
        1: row(1, "b", 0, 0.95),
        2: row(2, "b", 1, 0.93),  # b already has two seeds from the search
        3: row(3, "c", 0, 0.80),
        4: row(4, "d", 0, 0.99, status="stopped"),  # stopped early: not a candidate
    }
    assert confirm.plan(rows, top=2, seeds=3, base_seed=0) == [("b", 2), ("a", 1), ("a", 2)]


def test_a_clear_winner_is_distinguishable():
    rows = {}
    for seed, (a, b) in enumerate([(0.90, 0.80), (0.91, 0.81), (0.89, 0.79)]):
        rows[2 * seed] = row(2 * seed, "a", seed, a)
        rows[2 * seed + 1] = row(2 * seed + 1, "b", seed, b)
    decision = confirm.decide(rows, confirmed=["a", "b"])
    assert decision.chosen.network == "a" and decision.tied == ("a",) and decision.distinguishable
    assert "beats every other" in confirm.verdict_line(decision)


def test_noise_larger_than_the_gap_is_a_tie_and_says_so():
    rows = {}
    for seed, (a, b) in enumerate([(0.90, 0.93), (0.95, 0.88), (0.91, 0.92)]):
        rows[2 * seed] = row(2 * seed, "a", seed, a, shares=(0.1, 0.1, 0.8))
        rows[2 * seed + 1] = row(2 * seed + 1, "b", seed, b, shares=(0.5, 0.2, 0.3))
    decision = confirm.decide(rows, confirmed=["a", "b"])
    assert set(decision.tied) == {"a", "b"} and not decision.distinguishable
    assert "cannot tell it apart from 1 other" in confirm.verdict_line(decision)
    region = confirm.summary(decision)["tie_region"]
    assert region["depth"] == [0.1, 0.5] and region["resolution"] == [0.3, 0.8]


def test_the_choice_is_the_best_mean_not_the_best_single_run():
    rows = {
        0: row(0, "lucky", 0, 0.99),
        1: row(1, "lucky", 1, 0.80),
        2: row(2, "steady", 0, 0.92),
        3: row(3, "steady", 1, 0.93),
    }
    decision = confirm.decide(rows, confirmed=["lucky", "steady"])
    assert decision.chosen.network == "steady"
    assert decision.chosen.mean == pytest.approx(0.925)


def test_equal_means_break_ties_by_fewer_flops_then_name():
    rows = {0: row(0, "big", 0, 0.9, flops=200), 1: row(1, "small", 0, 0.9, flops=100)}
    assert confirm.decide(rows).chosen.network == "small"


def test_the_verdict_names_what_the_choice_was_made_among():
    rows = {0: row(0, "a", 0, 0.90), 1: row(1, "a", 1, 0.70), 2: row(2, "b", 0, 0.85)}
    # Confirm stage off: among every trained network (here a repeated seed gives a spread).
    assert "from 1 other trained network(s)" in confirm.verdict_line(confirm.decide(rows))
    assert "from 1 other confirmed network(s)" in confirm.verdict_line(confirm.decide(rows, confirmed=["a", "b"]))
    single = {0: row(0, "a", 0, 0.90), 2: row(2, "b", 0, 0.85)}
    assert confirm.verdict_line(confirm.decide(single)).endswith("is unknown (confirm stage off)")
    assert confirm.verdict_line(confirm.decide(single, confirmed=["a", "b"])).endswith("(one seed per network)")
