"""Robust location instead of the lower median: trimmed mean and Hodges-Lehmann.

BlockFlow's m_k is the lower median of the scores k received. These rules replace
only that estimator and keep the rest of BlockFlow: honesty is each evaluator's worst
agreement with the new centre, and p_k = min(m'_k, d'_k).

- `trimmed`: the trimmed mean, cutting floor(trim x n) scores at each end (Tukey
  & McLaughlin 1963; as a Byzantine-robust aggregate, Yin, Chen, Ramchandran &
  Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
  Rates", ICML 2018). Breakdown point `trim`.
- `hodges_lehmann`: the median of the Walsh averages (Hodges & Lehmann, "Estimates of
  location based on rank tests", Ann. Math. Statist. 1963). Breakdown point about
  0.29, efficiency near the mean's on clean data.

Where the lower median jumps from the honest values to a coalition's once the
coalition holds half of a model's evaluators, these estimators move part way: a
captured median gives m = 0 to every honest model, a trimmed mean or Hodges-Lehmann
gives them a value between the coalition's and the honest scores.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from discofl_p2p.trust.blockflow import Contribution
from discofl_p2p.trust.estimators import ScoringContext, Worker, hodges_lehmann, score_by_centre, trimmed_mean


def trimmed(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
    trim: float = 0.25,
) -> dict[Worker, Contribution]:
    """m_k = the `trim`-trimmed mean of the scores k received; then as BlockFlow."""
    return score_by_centre(scores, workers, lambda got: trimmed_mean([v for _, v in got], trim))


def hodges_lehmann_rule(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
) -> dict[Worker, Contribution]:
    """m_k = the Hodges-Lehmann estimate of the scores k received; then as BlockFlow."""
    return score_by_centre(scores, workers, lambda got: hodges_lehmann([v for _, v in got]))
