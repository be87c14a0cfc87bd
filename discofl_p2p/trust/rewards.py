"""Reward policies: how a round's pot (integer wei) is split among workers.

Every policy returns integer wei that sum exactly to the pot when anyone is paid;
rounding remainders go to the first-ranked (or highest-scored) worker. Pure functions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from fractions import Fraction
from typing import TypeVar

Worker = TypeVar("Worker", bound=Hashable)


def paper_top_k_shares(k: int) -> list[Fraction]:
    """The paper's Top-K schedule (docs/design.md), exact: rank i of k gets shares[i-1].

    i <= k-3: 1/2^i;  i = k-2: 1/2^(k-2) + 1/(2^(k-2) k);  i = k-1: 1/2^(k-2) - 1/(2^(k-2) k);
    i = k: 0.  k = 1 and k = 2 give everything to rank 1 (the last rank always earns 0).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    if k <= 2:
        return [Fraction(1)] + [Fraction(0)] * (k - 1)
    base = Fraction(1, 2 ** (k - 2))
    shares = [Fraction(1, 2**i) for i in range(1, k - 2)]
    shares += [base + base / k, base - base / k, Fraction(0)]
    return shares


def top_k_rewards(pot: int, k: int) -> list[int]:
    """Wei for ranks 1..k: floor(pot * share), the remainder to rank 1.

    This is the contract's `topKRewards`, to the wei; `k` is the number of ranked
    workers (the contract uses min(top_k, ranked) so that a round pays its whole pot).
    """
    if pot < 0:
        raise ValueError(f"pot must be >= 0, got {pot}")
    shares = paper_top_k_shares(k)
    out = [pot * s.numerator // s.denominator for s in shares]
    if out:
        out[0] += pot - sum(out)
    return out


def round_pot(deposit: int, rounds: int, round_: int) -> int:
    """The contract's roundPot: deposit // rounds, the last round also takes the remainder."""
    base = deposit // rounds
    return deposit - base * (rounds - 1) if round_ == rounds else base


def _split_by_weights(pot: int, weights: Mapping[Worker, float]) -> dict[Worker, int]:
    """Integer wei proportional to the weights; the remainder to the largest weight
    (first in order on ties). Nobody with positive weight: nobody is paid."""
    positive = {w: x for w, x in weights.items() if x > 0}
    out = dict.fromkeys(weights, 0)
    if not positive or pot == 0:
        return out
    # Exact rational arithmetic: floats would lose wei on large pots.
    fr = {w: Fraction(x) for w, x in positive.items()}
    total = sum(fr.values())
    for w, x in fr.items():
        share = pot * x / total
        out[w] = share.numerator // share.denominator
    top = max(positive, key=lambda w: positive[w])
    out[top] += pot - sum(out.values())
    return out


def proportional_rewards(pot: int, contributions: Mapping[Worker, float], *, floor: float = 0.0) -> dict[Worker, int]:
    """Pot split in proportion to p_k among the workers with p_k >= floor; the others
    get nothing. Unlike the Top-K schedule, a worker ranked last but above the floor
    earns its share, and a garbage model below the floor earns zero."""
    return _split_by_weights(pot, {w: (p if p >= floor else 0.0) for w, p in contributions.items()})


def loyalty_rewards(
    pot: int,
    contributions: Mapping[Worker, float],
    streaks: Mapping[Worker, int],
    *,
    floor: float = 0.0,
    bonus: float = 0.1,
    max_streak: int = 10,
) -> dict[Worker, int]:
    """Proportional with a loyalty bonus (the paper's future work): a worker's weight
    is p_k * (1 + bonus * (min(streak, max_streak) - 1)), where the streak counts the
    consecutive rounds up to this one in which it submitted a model."""
    weights = {}
    for w, p in contributions.items():
        s = max(1, min(int(streaks.get(w, 1)), max_streak))
        weights[w] = p * (1 + bonus * (s - 1)) if p >= floor else 0.0
    return _split_by_weights(pot, weights)
