"""What the scoring rules share: the round context they receive, the checks of a
score matrix, weighted and robust location estimators, and BlockFlow's honesty and
p_k measured against any centre. Pure functions, no I/O.

BlockFlow itself (`trust/blockflow.py`) is left exactly as the paper defines it; the
alternatives in `trust/robust.py`, `trust/reputation.py` and `trust/anchor.py` change
only how the centre m_k is estimated (and, for the anchor, what honesty is measured
against), then score with BlockFlow's own agreement, normalisation and min.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from discofl_p2p.trust.blockflow import Contribution, check_matrix, lower_median, received, score_against

Worker = TypeVar("Worker", bound=Hashable)


@dataclass(frozen=True)
class ScoringContext(Generic[Worker]):
    """What a rule may know beyond this round's score matrix.

    `history`: for each earlier round, oldest first, the honesty d'_a the task's rule
    gave every evaluator that submitted scores that round (`honesty_record`). The
    requester keeps it between rounds; a reputation rule folds it.
    `anchor`: the requester's own score of each worker's model (a trust anchor, as in
    FLTrust), or None when the requester computes none.
    """

    history: Sequence[Mapping[Worker, float]] = ()
    anchor: Mapping[Worker, float] | None = None


def weighted_lower_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The smallest value v whose cumulative weight (values <= v) reaches half of the
    total. With equal weights it is `blockflow.lower_median`. Values with weight 0 do
    not count; if every weight is 0, the plain lower median."""
    if len(values) != len(weights):
        raise ValueError("one weight per value")
    if not values:
        raise ValueError("median of nothing")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    total = sum(weights)
    if total <= 0:
        return lower_median(values)
    acc = 0.0
    pairs = sorted(zip(values, weights))
    for v, w in pairs:
        acc += w
        if 2 * acc >= total:
            return v
    return pairs[-1][0]  # rounding: never reached with exact sums


def weighted_by(weights: Mapping[Worker, float]) -> Callable[[list[tuple[Worker, float]]], float]:
    """An estimate for `score_by_centre`: the lower median of the scores a model
    received, each weighted by its evaluator's weight in `weights`."""
    return lambda got: weighted_lower_median([v for _, v in got], [weights[a] for a, _ in got])


def trimmed_mean(values: Sequence[float], trim: float) -> float:
    """The mean after cutting floor(trim x n) values at each end (0 <= trim < 0.5)."""
    if not values:
        raise ValueError("mean of nothing")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    s = sorted(values)
    cut = int(trim * len(s))
    kept = s[cut : len(s) - cut]
    return sum(kept) / len(kept)


def hodges_lehmann(values: Sequence[float]) -> float:
    """The lower median of the Walsh averages (x_i + x_j) / 2 over i <= j."""
    if not values:
        raise ValueError("estimate of nothing")
    walsh = [(values[i] + values[j]) / 2 for i in range(len(values)) for j in range(i, len(values))]
    return lower_median(walsh)


def score_by_centre(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    estimate: Callable[[list[tuple[Worker, float]]], float],
) -> dict[Worker, Contribution]:
    """BlockFlow's p_k with m_k = `estimate` of the (evaluator, score) pairs k received
    (a worker nobody scored has m = 0): what every rule that changes only the centre
    shares. Checks the matrix first."""
    check_matrix(scores, workers)
    return score_against(scores, workers, centre_of(scores, workers, estimate))


def centre_of(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    estimate: Callable[[list[tuple[Worker, float]]], float],
) -> dict[Worker, float]:
    """m_k = `estimate` of the (evaluator, score) pairs k received, for every worker
    somebody scored."""
    return {k: estimate(got) for k, got in received(scores, workers).items() if got}
