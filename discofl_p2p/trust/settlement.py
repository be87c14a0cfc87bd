"""How a round is settled, and recomputing a settled round from the chain: pure functions.

`settle` is the one rule that turns contributions into a ranking and rewards;
the requester agent and the plain loop both call it. Anyone can audit a task: the
scores are in ScoresRevealed events (a row committed and never revealed counts as
none), the mapping of models to workers in the settleRound calldata, the payouts in
RoundSettled. The ranking and the rewards follow from those and the reward policy's
parameters (`audit_round`, through the same `settle`). What the rounds left unpaid is
shared at close by `close_shares`, the contract's closeTask rule, which the plain loop
and the audit call too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from discofl_p2p.trust.blockflow import Contribution, contribution_scores, ranking, score_matrix
from discofl_p2p.trust.estimators import ScoringContext
from discofl_p2p.trust.rewards import loyalty_rewards, proportional_rewards, top_k_rewards

W = TypeVar("W", bound=Hashable)


@dataclass(frozen=True)
class RoundAudit:
    """One settled round recomputed from the chain, beside what the chain paid.

    `excluded`: the submitters passed NOT_OPENED; `withheld`: those among them that
    posted a valid opening (disputeExclusion) of a model that is neither in the
    round's list nor in an earlier one (so not a copy or a replay the requester had
    to leave out); `unpaid`: what the round's pot did not pay (shared by the
    participants at close); `anchor_missing`: the rule needs the requester's anchor
    scores and the chain has none for the round (it cannot be recomputed)."""

    round: int
    contribution: dict[str, Contribution]
    expected_ranking: list[str]
    paid_ranking: list[str]
    expected_rewards: list[int]
    paid_rewards: list[int]
    excluded: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)
    unpaid: int = 0
    anchor_missing: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.expected_ranking == self.paid_ranking
            and self.expected_rewards == self.paid_rewards
            and not self.withheld
            and not self.anchor_missing
        )


ScoringFn = Callable[[dict[str, dict[str, float]], list[str], ScoringContext[str]], dict[str, Contribution]]


def audit_round(
    round_: int,
    registered: Sequence[str],
    owner_at: Sequence[str],
    scores: Mapping[str, Sequence[float | None]],
    pot: int,
    paid_ranking: Sequence[str],
    paid_rewards: Sequence[int],
    *,
    policy: str = "top_k",
    top_k: int,
    streaks: Mapping[str, int] | None = None,
    floor: float = 0.0,
    bonus: float = 0.0,
    scoring: ScoringFn | None = None,
    context: ScoringContext[str] | None = None,
    excluded: Sequence[str] = (),
    withheld: Sequence[str] = (),
) -> RoundAudit:
    """One settled round recomputed: the contributions with BlockFlow, or with
    `scoring` (a rule from `trust.scoring.make_scoring_rule`) and its `context` (the
    earlier rounds' honesty); the ranking and amounts with `settle`, the function the
    requester and the plain loop call, under the task's reward `policy`."""
    matrix = score_matrix(owner_at, scores)
    if scoring is None:
        contrib = contribution_scores(matrix, list(registered))
    else:
        contrib = scoring(matrix, list(registered), context if context is not None else ScoringContext())
    published = [w for w in owner_at if w]
    ranked, rewards = settle(
        contrib,
        published,
        streaks if streaks is not None else dict.fromkeys(published, 1),
        policy=policy,
        top_k=top_k,
        pot=pot,
        floor=floor,
        bonus=bonus,
    )
    return RoundAudit(
        round_,
        contrib,
        ranked,
        list(paid_ranking),
        [rewards[w] for w in ranked],
        list(paid_rewards),
        list(excluded),
        list(withheld),
        pot - sum(paid_rewards),
    )


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
    scoring: ScoringFn | None = None,
    context: ScoringContext[str] | None = None,
) -> RoundAudit:
    """`audit_round` under the Top-K policy."""
    return audit_round(
        round_,
        registered,
        owner_at,
        scores,
        pot,
        paid_ranking,
        paid_rewards,
        top_k=top_k,
        scoring=scoring,
        context=context,
    )


def streaks_after(streaks: Mapping[str, int], everyone: Sequence[str], published: Sequence[str]) -> dict[str, int]:
    """The rounds in a row each worker was published, after one more round (the
    loyalty policy's input; the requester keeps it the same way)."""
    out = set(published)
    return {w: streaks.get(w, 0) + 1 if w in out else 0 for w in everyone}


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


@dataclass(frozen=True)
class CloseSplit:
    """What closeTask does with the rest of the deposit (what the rounds left unpaid):
    `shares[w]` is added to worker w's credit, `refund` goes back to the requester."""

    shares: dict[str, int]
    refund: int


def close_shares(rest: int, earned: Mapping[str, int], participants: Sequence[str]) -> CloseSplit:
    """The contract's closeTask rule, wei-exact. `earned`: what the rounds paid each
    worker (RoundSettled); `participants`: the workers that committed a model.

    If any round paid anybody, each worker gets floor(rest * earned / sum(earned)):
    the rest follows the rounds' own verdict, so a worker that no round paid (a ring
    scored 0, a garbage model below a policy's floor) gets none of it either. If no
    round paid anybody (the requester ranked nobody, every round), there is no verdict
    to follow, and each participant gets floor(rest / len(participants)). Either way
    the requester, who decided what was left unpaid, is refunded only the rounding
    remainder (fewer wei than the workers sharing), or everything if nobody took part."""
    total = sum(earned.values())
    if total > 0:
        shares = {w: rest * e // total for w, e in earned.items() if rest * e // total > 0}
    elif participants:
        each = rest // len(participants)
        shares = dict.fromkeys(participants, each) if each else {}
    else:
        shares = {}
    return CloseSplit(shares, rest - sum(shares.values()))
