"""Reputation across rounds: a median weighted by evaluators' past honesty.

Each evaluator a carries a reputation r_a, an exponential moving average of the
honesty d'_a it earned in earlier rounds (the update of RFFL: Xu & Lyu, "A
Reputation Mechanism Is All You Need: Collaborative Fairness and Adversarial
Robustness in Federated Learning", 2021, r <- memory x r + (1 - memory) x d'; the
idea of weighting reports by accumulated reputation goes back to Kang et al.,
"Incentive Mechanism for Reliable Federated Learning: A Joint Optimization Approach
to Combining Reputation and Contract Theory", IEEE IoT Journal 2019):

    r_a   = prior, then r_a <- memory x r_a + (1 - memory) x d'_a per earlier round
            in which a submitted scores (a round it skipped leaves r_a as it was)
    m_k   = weighted lower median of s[a,k] over a != k, weights r_a
    then honesty and p_k as BlockFlow, against m_k.

With every reputation equal (round 1, or the default prior) this is BlockFlow to the
last bit. A ring that lies in a round where it is outvoted earns d' = 0 and loses
weight; in later rounds it no longer carries a median even where it (with a biased
scorer, or with honest evaluators missing) makes up half of a model's evaluators.
What it cannot do: recover from a round that is captured from the start, because
honesty is then measured against the captured median and the honest lose reputation.
The requester keeps the history (`ScoringContext.history`); the rule is pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from discofl_p2p.trust.blockflow import Contribution
from discofl_p2p.trust.estimators import ScoringContext, Worker, score_by_centre, weighted_by


def reputations(
    history: Sequence[Mapping[Worker, float]], workers: Sequence[Worker], *, memory: float, prior: float
) -> dict[Worker, float]:
    """Every worker's reputation after the rounds in `history` (oldest first)."""
    if not 0 <= memory < 1:
        raise ValueError(f"memory must be in [0, 1), got {memory}")
    if not 0 < prior <= 1:
        raise ValueError(f"prior must be in (0, 1], got {prior}")
    rep = dict.fromkeys(workers, prior)
    for honesty in history:
        for a, h in honesty.items():
            if a in rep:
                rep[a] = memory * rep[a] + (1 - memory) * h
    return rep


def reputation(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
    memory: float = 0.5,
    prior: float = 1.0,
) -> dict[Worker, Contribution]:
    """BlockFlow with m_k the reputation-weighted lower median (see the module)."""
    rep = reputations(context.history, workers, memory=memory, prior=prior)
    return score_by_centre(scores, workers, weighted_by(rep))
