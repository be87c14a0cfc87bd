"""Evaluators weighted by how far their score vectors sit from most of the others.

A coalition captures BlockFlow's lower median as soon as it holds half of a model's
evaluators, because the median looks at one column of the score matrix at a time.
Across the whole matrix the coalition is easy to see: a ring that scores its members
1 and everyone else 0 (with a biased scorer beside it) has score vectors far from
those of the honest evaluators, which agree with each other up to their validation
sets' differences. Grouping evaluators by their score vectors is how Krum-like
clustering and FoolsGold treat clients (Blanchard et al., NeurIPS 2017; Fung, Yoon &
Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020);
here it weights the evaluators of a median:

    D(a,b) = mean over the k scored by both (k != a, b) of |s[a,k] - s[b,k]|
             (1 where they scored no model in common)
    w_a    = t'(lower median over b != a of D(a,b))           (BlockFlow's t')
    m_k    = weighted lower median of s[a,k] over a != k, weights w_a
             (the plain lower median where every weight is 0)
    then honesty and p_k as BlockFlow, against m_k.

An evaluator keeps its weight when it agrees with at least half of the others, so the
honest keep theirs as long as they are a strict majority of the evaluators (5 of 9,
against a coalition of 4), whatever share of one model's evaluators the coalition
holds. With every evaluator in agreement (IID data, no liars) every weight is 1 and
the rule is BlockFlow. What it cannot do: tell a majority of liars from the truth.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from discofl_p2p.trust.blockflow import Contribution, agreement, check_matrix, lower_median
from discofl_p2p.trust.estimators import ScoringContext, Worker, score_by_centre, weighted_by


def evaluator_distance(scores: Mapping[Worker, Mapping[Worker, float]], a: Worker, b: Worker) -> float:
    """D(a,b): the mean absolute difference of a's and b's scores over the models both
    scored, other than their own; 1 where there is none."""
    ra, rb = scores.get(a, {}), scores.get(b, {})
    common = [k for k in ra if k in rb and k not in (a, b)]
    if not common:
        return 1.0
    return sum(abs(ra[k] - rb[k]) for k in common) / len(common)


def evaluator_weights(
    scores: Mapping[Worker, Mapping[Worker, float]], workers: Sequence[Worker]
) -> dict[Worker, float]:
    """w_a = t'(the lower median of a's distances to the other evaluators), for every
    evaluator that scored somebody; the others have weight 0."""
    evaluators = [a for a in workers if scores.get(a)]
    out = dict.fromkeys(workers, 0.0)
    for a in evaluators:
        others = [evaluator_distance(scores, a, b) for b in evaluators if b != a]
        out[a] = agreement(lower_median(others)) if others else 1.0
    return out


def consensus(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
) -> dict[Worker, Contribution]:
    """BlockFlow with m_k the median weighted by evaluator agreement (see the module)."""
    check_matrix(scores, workers)  # before the weights read it
    w = evaluator_weights(scores, workers)
    return score_by_centre(scores, workers, weighted_by(w))
