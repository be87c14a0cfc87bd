"""Recomputing a settled round from what the chain recorded: pure functions.

Anyone can audit a task: the scores are in ScoresSubmitted events, the mapping of
models to workers in the settleRound calldata, the payouts in RoundSettled. Under the
Top-K rule the ranking and the rewards follow from those alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from discofl_p2p.trust.blockflow import Contribution, contribution_scores, ranking, score_matrix
from discofl_p2p.trust.rewards import top_k_rewards


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
) -> RoundAudit:
    contrib = contribution_scores(score_matrix(owner_at, scores), list(registered))
    published = set(owner_at)
    expected = ranking({w: c for w, c in contrib.items() if w in published}, top_k)
    return RoundAudit(
        round_, contrib, expected, list(paid_ranking), top_k_rewards(pot, len(expected)), list(paid_rewards)
    )
