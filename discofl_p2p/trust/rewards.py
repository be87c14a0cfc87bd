"""Reward policies: how a round's pot (integer wei) is split among workers.

Every policy returns integer wei that sum exactly to the pot when anyone is paid;
rounding remainders go to the first-ranked (or highest-scored) worker. Pure functions.
"""

from __future__ import annotations

from fractions import Fraction


def paper_top_k_shares(k: int) -> list[Fraction]:
    """The paper's Top-K schedule (DESIGN.md), exact: rank i of k gets shares[i-1].

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
