"""How a round is settled, and recomputing a settled round from the chain: pure functions.

`settle` is the one rule that turns contributions into a ranking and rewards;
the requester agent and the plain loop both call it. Anyone can audit a task: the
scores are in ScoresRevealed events (a row committed and never revealed counts as
none), the mapping of models to workers in the settleRound calldata, the payouts in
RoundSettled. Under the Top-K rule the ranking and the rewards follow from those alone (`audit_top_k_round`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from discofl_p2p.trust.blockflow import Contribution, contribution_scores, ranking, score_matrix
from discofl_p2p.trust.estimators import ScoringContext
from discofl_p2p.trust.rewards import loyalty_rewards, proportional_rewards, top_k_rewards

W = TypeVar("W", bound=Hashable)


@dataclass(frozen=True)
class RoundAudit:
    round: int
    contribution: dict[str, Contribution]
    expected_ranking: list[str]
    paid_ranking: list[str]
    expected_rewards: list[int]
    paid_rewards: list[int]

    @property
    def ok(self) -> bool:
        return self.expected_ranking == self.paid_ranking and self.expected_rewards == self.paid_rewards


def audit_top_k_round(
    round_: int,
    registered: Sequence[str],
    owner_at: Sequence[str],
    scores: Mapping[str, Sequence[float | None]],
    top_k: int,
    pot: int,
    paid_ranking: Sequence[str],
    paid_rewards: Sequence[int],
    *,
    scoring: Callable[[dict[str, dict[str, float]], list[str], ScoringContext[str]], dict[str, Contribution]]
    | None = None,
    context: ScoringContext[str] | None = None,
) -> RoundAudit:
    """One settled round recomputed: with BlockFlow, or with `scoring` (a rule from
    `trust.scoring.make_scoring_rule`) and its `context` (the earlier rounds' honesty)."""
    matrix = score_matrix(owner_at, scores)
    if scoring is None:
        contrib = contribution_scores(matrix, list(registered))
    else:
        contrib = scoring(matrix, list(registered), context if context is not None else ScoringContext())
    published = set(owner_at)
    expected = ranking({w: c for w, c in contrib.items() if w in published}, top_k)
    return RoundAudit(
        round_, contrib, expected, list(paid_ranking), top_k_rewards(pot, len(expected)), list(paid_rewards)
    )


def tie_order(address_of: Mapping[W, str]) -> list[W]:
    """The workers in the order in which ties break (in the scoring rules, the ranking
    and the reward split): by address, as lower-case hex. It is the same in every run
    of a seed (addresses derive from it), unlike registration order, and anyone can
    rebuild it from the chain, unlike the scenario's roster, so the audit ranks ties
    exactly as the requester did."""
    return sorted(address_of, key=lambda w: address_of[w].lower())


def settle(
    contrib: Mapping[str, Contribution],
    published: Sequence[str],
    streaks: Mapping[str, int],
    *,
    policy: str,
    top_k: int,
    pot: int,
    floor: float,
    bonus: float,
) -> tuple[list[str], dict[str, int]]:
    """The ranking and each worker's reward for one round, as the requester settles it:
    only published workers are eligible; `top_k` ranks them (ties in `contrib`'s
    order), the explicit policies pay by contribution (ranked by amount, ties in
    `contrib`'s order). `contrib` is in the roster's order. `streaks` are the rounds
    in a row each was published, this one included."""
    eligible = {n: c for n, c in contrib.items() if n in published}
    if policy == "top_k":
        ranked = ranking(eligible, top_k)
        amounts = top_k_rewards(pot, len(ranked))
    else:
        p = {n: c.score for n, c in eligible.items()}
        if policy == "proportional":
            split = proportional_rewards(pot, p, floor=floor)
        else:
            split = loyalty_rewards(pot, p, {n: streaks[n] for n in p}, floor=floor, bonus=bonus)
        order = list(contrib)
        ranked = sorted((n for n in split if split[n] > 0), key=lambda n: (-split[n], order.index(n)))
        amounts = [split[n] for n in ranked]
    return ranked, dict.fromkeys(contrib, 0) | dict(zip(ranked, amounts))
