"""A trust anchor: evaluators' honesty measured against the requester's own scores.

After FLTrust (Cao, Fang, Liu & Gong, "FLTrust: Byzantine-robust Federated Learning
via Trust Bootstrapping", NDSS 2021): the server holds a small clean root data set
and trusts each client as far as its update agrees with the server's own. Here the
requester scores every model on a root validation set (`ScoringContext.anchor`,
worker -> score), and

    d_a   = min over the k that a scored of t'(|s[a,k] - anchor_k|)   (BlockFlow's t')
    d'_a  = d_a / max_b d_b
    m_k   = weighted lower median of s[a,k] over a != k, weights d'_a
            (the anchor's own score where no evaluator of k has weight)
    p_k   = min(m'_k, d'_k)

Unlike every median, this holds against a coalition of any size, as long as the
anchor is honest and its root set represents the task: a ring's self-scores are far
from the anchor, its weight is 0. The price is the root set itself (data the
requester must own) and the trust placed in the requester. Pure functions, no I/O.

Where the anchor comes from: the requester scores every published model on its root
set (`[task] root_samples` held-out samples, `ml.splits.partition`), posts the row on
the chain by published position (`postAnchorScores`, event AnchorScores, in the
evaluators' encoding), and settles with `anchor_of` that row; the audit reads the
event back and does the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from discofl_p2p.trust.blockflow import Contribution, check_matrix, received, score_against
from discofl_p2p.trust.estimators import (
    ScoringContext,
    Worker,
    weighted_lower_median,
)


def anchor_of(owner_at: Sequence[Worker], row: Sequence[float | None]) -> dict[Worker, float]:
    """The anchor as `ScoringContext.anchor` takes it, from the requester's row of
    scores by published position (`owner_at[i]` owns the model at position i): worker
    -> score, leaving out a position the row abstains on (None)."""
    if len(row) != len(owner_at):
        raise ValueError(f"the anchor row has {len(row)} scores for {len(owner_at)} published models")
    return {w: s for w, s in zip(owner_at, row, strict=True) if s is not None}


def anchored(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
) -> dict[Worker, Contribution]:
    """BlockFlow with honesty against the requester's anchor scores (see the module)."""
    check_matrix(scores, workers)
    if context.anchor is None:
        raise ValueError("the anchored rule needs the requester's anchor scores (ScoringContext.anchor)")
    anchor = context.anchor
    for k, v in anchor.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"anchor score for {k!r} is {v}; scores must be in [0, 1]")
    honesty = score_against(scores, workers, {}, reference=anchor)
    got = received(scores, workers)
    centre = {}
    for k in workers:
        g = got[k]
        weights = [honesty[a].honesty for a, _ in g]
        if g and sum(weights) > 0:
            centre[k] = weighted_lower_median([v for _, v in g], weights)
        elif k in anchor and g:
            centre[k] = anchor[k]
    return score_against(scores, workers, centre, reference=anchor)
