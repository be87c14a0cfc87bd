"""Trust logic as pure functions, no I/O: BlockFlow contribution scoring, reward
policies, and the recomputation of a settled round."""

from discofl_p2p.trust.blockflow import (
    Contribution,
    agreement,
    contribution_scores,
    lower_median,
    ranking,
    score_matrix,
)
from discofl_p2p.trust.rewards import (
    loyalty_rewards,
    paper_top_k_shares,
    proportional_rewards,
    round_pot,
    top_k_rewards,
)
from discofl_p2p.trust.settlement import RoundAudit, audit_top_k_round, settle, tie_order

__all__ = [
    "Contribution",
    "RoundAudit",
    "agreement",
    "audit_top_k_round",
    "contribution_scores",
    "lower_median",
    "loyalty_rewards",
    "paper_top_k_shares",
    "proportional_rewards",
    "ranking",
    "round_pot",
    "score_matrix",
    "settle",
    "tie_order",
    "top_k_rewards",
]
