"""BlockFlow contribution scoring (Mugunthan et al. 2020), exactly as in docs/design.md.

    m_k  = lower median over evaluators a != k of s[a,k]
    m'_k = m_k / max_j m_j                         (0 where the max is 0)
    t    = |s[a,k] - m_k|,  t' = max(0, (0.5 - t) / (0.5 + t))
    d_a  = min over the k that a scored of t'[a,k]  (a's worst evaluation)
    d'_a = d_a / max_b d_b                          (0 where the max is 0)
    p_k  = min(m'_k, d'_k)

Missing data: only submitted scores count and self-scores are ignored. A worker whose
model nobody scored (or who submitted no model) has m = 0; a worker that scored
nobody has d = 0; either way p = 0. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

Worker = TypeVar("Worker", bound=Hashable)
"""Whatever names a worker: an address, a scenario name, an index."""


@dataclass(frozen=True)
class Contribution:
    median: float  # m_k
    quality: float  # m'_k
    honesty_raw: float  # d_k
    honesty: float  # d'_k
    score: float  # p_k


def score_matrix(owner_at: Sequence[str], scores: Mapping[str, Sequence[float | None]]) -> dict[str, dict[str, float]]:
    """evaluator -> owner -> score, from per-position scores; abstentions and
    self-scores dropped, and rows of the wrong length ignored (the contract checks it)."""
    out = {}
    for evaluator, row in scores.items():
        if len(row) != len(owner_at):
            continue
        out[evaluator] = {owner_at[i]: s for i, s in enumerate(row) if s is not None and owner_at[i] != evaluator}
    return out


def lower_median(values: Sequence[float]) -> float:
    """The lower of the two middle values (the middle one for an odd count)."""
    if not values:
        raise ValueError("median of nothing")
    s = sorted(values)
    return s[(len(s) - 1) // 2]


def agreement(t: float) -> float:
    """t' = max(0, (0.5 - t) / (0.5 + t)): 1 at t = 0, 0 once t >= 0.5."""
    return max(0.0, (0.5 - t) / (0.5 + t))


def check_matrix(scores: Mapping[Worker, Mapping[Worker, float]], workers: Sequence[Worker]) -> None:
    """Every evaluator and every evaluated worker is one of `workers`, and every score
    is in [0, 1]; every scoring rule starts with this check."""
    known = set(workers)
    for a, row in scores.items():
        if a not in known:
            raise ValueError(f"evaluator {a!r} is not among the workers")
        for k, v in row.items():
            if k not in known:
                raise ValueError(f"evaluator {a!r} scored unknown worker {k!r}")
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"score of {a!r} for {k!r} is {v}; scores must be in [0, 1]")


def received(
    scores: Mapping[Worker, Mapping[Worker, float]], workers: Sequence[Worker]
) -> dict[Worker, list[tuple[Worker, float]]]:
    """worker k -> [(evaluator a, s[a,k])] over a != k, evaluators in roster order (so
    that a relabelling of the workers permutes, and changes nothing else)."""
    out: dict[Worker, list[tuple[Worker, float]]] = {k: [] for k in workers}
    for a in workers:
        for k, v in scores.get(a, {}).items():
            if k != a:
                out[k].append((a, v))
    return out


def contribution_scores(
    scores: Mapping[Worker, Mapping[Worker, float]], workers: Sequence[Worker]
) -> dict[Worker, Contribution]:
    """BlockFlow p_k for every worker in `workers` from the submitted score matrix."""
    check_matrix(scores, workers)
    got = received(scores, workers)
    return score_against(scores, workers, {k: lower_median([v for _, v in g]) for k, g in got.items() if g})


def score_against(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    centre: Mapping[Worker, float],
    reference: Mapping[Worker, float] | None = None,
    factor: Mapping[Worker, float] | None = None,
) -> dict[Worker, Contribution]:
    """BlockFlow's p_k with the centre m_k given: quality m'_k = m_k / max m, honesty
    d_a = a's worst agreement with `reference` (the centre when None) over the models
    it scored that someone scored, times `factor[a]` when given (BlockFlow: none),
    d'_a = d_a / max d, p_k = min(m'_k, d'_k).
    A worker absent from `centre` has m = 0; one that scored nobody has d = 0."""
    ref = centre if reference is None else reference
    m = {k: centre.get(k, 0.0) for k in workers}
    m_max = max(m.values(), default=0.0)
    d: dict[Worker, float] = {}
    for a in workers:
        ts = [agreement(abs(v - ref[k])) for k, v in scores.get(a, {}).items() if k != a and k in ref]
        d[a] = (min(ts) * (1.0 if factor is None else factor[a])) if ts else 0.0
    d_max = max(d.values(), default=0.0)
    out = {}
    for k in workers:
        q = m[k] / m_max if m_max > 0 else 0.0
        h = d[k] / d_max if d_max > 0 else 0.0
        out[k] = Contribution(median=m[k], quality=q, honesty_raw=d[k], honesty=h, score=min(q, h))
    return out


def ranking(contributions: Mapping[Worker, Contribution], k: int, *, min_score: float = 0.0) -> list[Worker]:
    """The Top-k workers by p, best first; ties break by the workers' order as given.
    Workers with p below `min_score` are not ranked (the paper ranks everyone: 0)."""
    order = list(contributions)
    eligible = [w for w in order if contributions[w].score >= min_score]
    eligible.sort(key=lambda w: (-contributions[w].score, order.index(w)))
    return eligible[:k]
