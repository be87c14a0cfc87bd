"""Consensus, with an evaluator paid for honesty only as far as its scores inform.

BlockFlow's honesty is an evaluator's worst agreement with the centre m_k. When honest
evaluators disagree widely (non-IID data: each one's validation split covers other
classes), a constant row near the centre agrees best: a lazy evaluator that scores
every model 0.5 without evaluating took 51-57 % of the rewards at 1/6 of 18 workers on
Dirichlet(0.3) data, under `blockflow` and `consensus` alike (docs/robustness.md). A
constant row carries no information about which model is better, and one that does
carry it must have been evaluated. So this rule multiplies the agreement by how well the
evaluator's row follows the centre's ups and downs:

    m_k  = the consensus centre (`trust/consensus.py`: a lower median weighted by
           each evaluator's agreement with most others)
    d_a  = BlockFlow's worst agreement of a's scores with m_k
    i_a  = max(0, Pearson correlation of s[a,k] and m_k over the k a scored, k != a);
           1 where the centre does not vary over them (nothing to inform about), 0
           where a's row does not vary while the centre does
    then d'_a = d_a i_a / max_b d_b i_b and p_k = min(m'_k, d'_k), as BlockFlow.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from discofl_p2p.trust.blockflow import Contribution, check_matrix, score_against
from discofl_p2p.trust.consensus import evaluator_weights
from discofl_p2p.trust.estimators import ScoringContext, Worker, centre_of, weighted_by

FLAT = 1e-9
"""A centre or a row whose variance is below this does not vary."""


def informativeness(row: Mapping[Worker, float], centre: Mapping[Worker, float]) -> float:
    """i_a: max(0, the Pearson correlation of `row` and `centre` over the keys both have);
    1 where the centre is flat there (or fewer than two keys), 0 where the row is flat
    and the centre is not."""
    keys = [k for k in row if k in centre]
    if len(keys) < 2:
        return 1.0
    xs, ys = [row[k] for k in keys], [centre[k] for k in keys]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    vx = sum((x - mx) ** 2 for x in xs)
    vy = sum((y - my) ** 2 for y in ys)
    if vy <= FLAT * len(keys):
        return 1.0
    if vx <= FLAT * len(keys):
        return 0.0
    return max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(vx * vy))


def informed(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
) -> dict[Worker, Contribution]:
    """Consensus with honesty d_a x i_a (see the module)."""
    check_matrix(scores, workers)
    centre = centre_of(scores, workers, weighted_by(evaluator_weights(scores, workers)))
    rows = {a: {k: v for k, v in scores.get(a, {}).items() if k != a} for a in workers}
    return score_against(scores, workers, centre, factor={a: informativeness(rows[a], centre) for a in workers})
