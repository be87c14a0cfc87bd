"""Contribution scoring and reward policies: exact values and properties."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discofl_p2p.trust.blockflow import Contribution, agreement, contribution_scores, lower_median, ranking
from discofl_p2p.trust.rewards import (
    loyalty_rewards,
    paper_top_k_shares,
    proportional_rewards,
    top_k_rewards,
)
from discofl_p2p.trust.settlement import close_shares, settle

# ---------------------------------------------------------------- paper schedule


@pytest.mark.parametrize(
    "k, shares",
    [
        (3, ["2/3", "1/3", "0"]),
        (4, ["1/2", "5/16", "3/16", "0"]),
        (5, ["1/2", "1/4", "3/20", "1/10", "0"]),
        (6, ["1/2", "1/4", "1/8", "7/96", "5/96", "0"]),
        (10, ["1/2", "1/4", "1/8", "1/16", "1/32", "1/64", "1/128", "11/2560", "9/2560", "0"]),
    ],
)
def test_paper_shares_are_exact(k, shares):
    got = paper_top_k_shares(k)
    assert got == [Fraction(s) for s in shares]
    assert sum(got) == 1


def test_k5_pays_50_25_15_10_0_percent():
    assert top_k_rewards(100, 5) == [50, 25, 15, 10, 0]


def test_k1_and_k2_pay_everything_to_rank_one():
    assert top_k_rewards(10**18, 1) == [10**18]
    assert top_k_rewards(10**18, 2) == [10**18, 0]
    assert top_k_rewards(5, 0) == []


def test_rounding_remainder_goes_to_rank_one():
    # 7 wei over K = 3: floor(14/3) = 4, floor(7/3) = 2, remainder 1 to rank 1.
    assert top_k_rewards(7, 3) == [5, 2, 0]


@given(pot=st.integers(0, 2**128), k=st.integers(1, 40))
def test_top_k_rewards_sum_to_the_pot_and_fall_with_rank(pot, k):
    r = top_k_rewards(pot, k)
    assert sum(r) == pot and min(r) >= 0
    assert all(a >= b for a, b in itertools.pairwise(r))


@given(
    pot=st.integers(0, 2**100),
    ps=st.lists(st.floats(0, 1), min_size=1, max_size=12),
    floor=st.floats(0, 1),
)
def test_proportional_rewards_pay_exactly_the_pot_to_those_above_the_floor(pot, ps, floor):
    contrib = {f"w{i}": p for i, p in enumerate(ps)}
    r = proportional_rewards(pot, contrib, floor=floor)
    assert min(r.values()) >= 0
    eligible = [w for w, p in contrib.items() if p >= floor and p > 0]
    assert sum(r.values()) == (pot if eligible else 0)
    for w, p in contrib.items():
        if p < floor:
            assert r[w] == 0


def test_proportional_rewards_are_proportional():
    assert proportional_rewards(1000, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 500, "b": 250, "c": 250}
    assert proportional_rewards(1000, {"a": 0.9, "b": 0.9, "g": 0.1}, floor=0.5) == {"a": 500, "b": 500, "g": 0}


def test_loyalty_bonus_favours_long_streaks():
    r = loyalty_rewards(1100, {"old": 1.0, "new": 1.0}, {"old": 3, "new": 1}, bonus=0.05)
    # weights 1.1 and 1.0: floor(1100 * 1.1 / 2.1) = 576 plus the 1 wei remainder; 523
    assert r == {"old": 577, "new": 523}
    capped = loyalty_rewards(100, {"a": 1.0, "b": 1.0}, {"a": 50, "b": 10}, bonus=0.1, max_streak=10)
    assert capped["a"] == capped["b"] == 50


# ---------------------------------------------------------------- BlockFlow


def test_lower_median_and_agreement():
    assert lower_median([3, 1, 2]) == 2
    assert lower_median([4, 1, 3, 2]) == 2
    assert agreement(0) == 1 and agreement(0.5) == 0 and agreement(0.7) == 0
    assert agreement(0.1) == pytest.approx(0.4 / 0.6)


def _p(scores, workers):
    return {k: c.score for k, c in contribution_scores(scores, workers).items()}


def test_all_honest():
    s = {"A": {"B": 0.9, "C": 0.8}, "B": {"A": 0.9, "C": 0.8}, "C": {"A": 0.9, "B": 0.9}}
    p = _p(s, ["A", "B", "C"])
    assert p == pytest.approx({"A": 1.0, "B": 1.0, "C": 0.8 / 0.9})


def test_one_garbage_model():
    ws = ["A", "B", "C", "G"]
    s = {a: {k: (0.1 if k == "G" else 0.9) for k in ws if k != a} for a in ws}
    p = _p(s, ws)
    assert p == pytest.approx({"A": 1.0, "B": 1.0, "C": 1.0, "G": 0.1 / 0.9})


def test_an_evaluator_who_scores_everyone_zero_gets_d_zero():
    ws = ["A", "B", "C", "Z"]
    s = {a: {k: 0.9 for k in ws if k != a} for a in ws}
    s["Z"] = {k: 0.0 for k in ws if k != "Z"}
    c = contribution_scores(s, ws)
    assert c["Z"].honesty_raw == 0 and c["Z"].score == 0
    assert all(c[w].score == pytest.approx(1.0) for w in "ABC")


def test_collusion_ring_smaller_than_half():
    honest, ring = ["A", "B", "C", "D"], ["X", "Y"]
    ws = honest + ring
    s = {}
    for a in honest:  # truthful: honest models are worth 0.9, the ring's 0.6
        s[a] = {k: (0.9 if k in honest else 0.6) for k in ws if k != a}
    for a in ring:  # the ring scores its members 1.0 and everyone else 0.0
        s[a] = {k: (1.0 if k in ring else 0.0) for k in ws if k != a}
    c = contribution_scores(s, ws)
    for w in honest:
        assert c[w].median == 0.9 and c[w].score == pytest.approx(1.0)
    for w in ring:
        assert c[w].median == 0.6  # their 1.0s are outvoted by the honest majority
        assert c[w].honesty_raw == 0 and c[w].score == 0  # |0 - 0.9| >= 0.5
    assert ranking(c, 6) == ["A", "B", "C", "D", "X", "Y"]
    assert ranking(c, 6, min_score=0.01) == honest


def test_missing_scores_and_non_evaluators():
    s = {"A": {"B": 0.8}, "B": {"A": 0.8}}  # C neither evaluated nor was evaluated
    c = contribution_scores(s, ["A", "B", "C"])
    assert c["C"].median == 0 and c["C"].honesty_raw == 0 and c["C"].score == 0
    assert c["A"].score == pytest.approx(1.0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="'Q' is not among"):
        contribution_scores({"Q": {"A": 0.5}}, ["A"])
    with pytest.raises(ValueError, match="must be in"):
        contribution_scores({"A": {"B": 1.5}}, ["A", "B"])


score_matrices = st.integers(2, 7).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=n * n, max_size=n * n),
        st.randoms(use_true_random=False),
    )
)


def _matrix(n, flat):
    return {a: {k: flat[a * n + k] for k in range(n) if k != a and flat[a * n + k] is not None} for a in range(n)}


@given(score_matrices)
def test_contribution_in_unit_interval_and_invariant_under_relabelling(data):
    n, flat, rnd = data
    s = _matrix(n, flat)
    c = contribution_scores(s, list(range(n)))
    for v in c.values():
        assert 0.0 <= v.score <= 1.0
    perm = list(range(n))
    rnd.shuffle(perm)  # worker i is now called perm[i]
    relabelled = {perm[a]: {perm[k]: v for k, v in row.items()} for a, row in s.items()}
    c2 = contribution_scores(relabelled, [perm[i] for i in random.Random(0).sample(range(n), n)])
    for i in range(n):
        assert c2[perm[i]].score == pytest.approx(c[i].score)


# ---------------------------------------------------------------- settlement


def _contrib(scores: dict[str, float]) -> dict[str, Contribution]:
    return {w: Contribution(median=p, quality=p, honesty_raw=1.0, honesty=1.0, score=p) for w, p in scores.items()}


def test_settle_ranks_only_published_workers_and_breaks_ties_in_roster_order():
    # b and c tie; the roster order (the contributions' order) decides, under every
    # policy, so that a rerun with another arrival order pays the same to the wei.
    contrib = _contrib({"a": 0.2, "b": 0.9, "c": 0.9, "d": 1.0})
    streaks = {"a": 1, "b": 1, "c": 1, "d": 1}
    ranked, paid = settle(contrib, ["b", "c", "a"], streaks, policy="top_k", top_k=3, pot=1000, floor=0.5, bonus=0.1)
    assert ranked == ["b", "c", "a"]  # d did not publish: not eligible however good
    assert [paid[w] for w in ranked] == top_k_rewards(1000, 3) and paid["d"] == 0
    ranked, paid = settle(contrib, ["c", "b", "a"], streaks, policy="proportional", top_k=3, pot=1001, floor=0.5,
                          bonus=0.1)  # fmt: skip
    assert ranked == ["b", "c"] and paid == {"a": 0, "b": 501, "c": 500, "d": 0}  # a below the floor
    ranked, paid = settle(contrib, ["b", "c"], {"b": 3, "c": 1}, policy="loyalty", top_k=3, pot=1000, floor=0.5,
                          bonus=0.5)  # fmt: skip
    # weights 0.9 x (1 + 0.5 x 2) and 0.9: two thirds and one third, the wei left over to b
    assert ranked == ["b", "c"] and paid == {"a": 0, "b": 667, "c": 333, "d": 0}


# ---------------------------------------------------------------- the close


def test_close_shares_the_rest_by_what_the_rounds_paid_exactly():
    """rest 100 wei, earned 3:2:0 -> floor(100*3/5) = 60, floor(100*2/5) = 40; the
    worker the rounds paid nothing gets nothing (not even a participant's share)."""
    split = close_shares(100, {"a": 3, "b": 2, "ring": 0}, ["a", "b", "ring"])
    assert (split.shares, split.refund) == ({"a": 60, "b": 40}, 0)


def test_close_refunds_only_the_rounding_remainder():
    # 10 * 1/3 = 3.33 each: floors 3, 3, 3, and 1 wei (fewer than the 3 earners) refunded.
    split = close_shares(10, {"a": 7, "b": 7, "c": 7}, ["a", "b", "c"])
    assert (split.shares, split.refund) == ({"a": 3, "b": 3, "c": 3}, 1)
    # 2 wei by 1:2 -> floor(2/3) = 0 is left out, floor(4/3) = 1; 1 wei refunded.
    split = close_shares(2, {"a": 1, "b": 2}, ["a", "b"])
    assert (split.shares, split.refund) == ({"b": 1}, 1)


def test_close_shares_equally_only_when_no_round_paid_anybody():
    split = close_shares(10 * 10**18 + 1, {"a": 0, "b": 0}, ["a", "b", "c"])
    assert split.shares == dict.fromkeys("abc", (10 * 10**18 + 1) // 3) and split.refund == 2
    # Nobody took part: everything back to the requester.
    assert close_shares(5, {}, []) == close_shares(5, {"a": 0}, []) and close_shares(5, {}, []).refund == 5
    # Nothing left: nothing shared.
    assert close_shares(0, {"a": 5}, ["a"]).shares == {} and close_shares(0, {}, ["a"]).refund == 0


@given(
    rest=st.integers(0, 2**96),
    earned=st.lists(st.integers(0, 2**96), min_size=0, max_size=12),
    participants=st.integers(0, 12),
)
def test_close_pays_out_the_rest_exactly_and_proportionally(rest, earned, participants):
    """Shares plus refund is the rest, to the wei; the refund is fewer wei than the
    workers sharing (or all of it when nobody shares); each share is within one wei of
    the exact proportion."""
    e = {f"w{i}": v for i, v in enumerate(earned)}
    people = [f"w{i}" for i in range(participants)]
    split = close_shares(rest, e, people)
    assert sum(split.shares.values()) + split.refund == rest and all(v > 0 for v in split.shares.values())
    total = sum(e.values())
    sharing = sum(1 for v in e.values() if v) if total else len(people)
    assert split.refund < max(sharing, 1) or sharing == 0
    for w, v in split.shares.items():
        exact = Fraction(rest * e[w], total) if total else Fraction(rest, len(people))
        assert exact - 1 < v <= exact
