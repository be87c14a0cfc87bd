"""The decoy an honest evaluator puts at its own model's position (docs/scenarios.md,
"Anonymity in practice")."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import torch


def decoy_score(others: Sequence[float], rng: random.Random, grid: int | None = None) -> float:
    """An honest evaluator's score for its own model, made to look like one more score
    of another model (docs/scenarios.md, "Anonymity in practice"). Its true score
    would not do: its model, trained on the evaluator's own data, usually tops its row
    (always on non-IID data). Nor would the median of its other scores (it is the
    row's median, or repeats a score) or a copy of one of them (it repeats a value).

    Sort the `others` (n values, mean spacing d); of the n + 1 gaps around them (the
    outer two counted d wide) pick one with probability proportional to the square
    root of its width, then a uniform value inside it (an outer one reaches 2d past
    the extreme, within [0, 1]: a real score lies on average d beyond it). Picking
    every gap equally often puts the decoy in narrow gaps too often, closer to a
    neighbour than a real score would be; picking in proportion to the width puts it
    in the wide gaps between clusters and too rarely at either end. The square root
    measured closest to chance for every observer strategy in simulations.

    With `grid` (accuracy on a validation split of that size: every true score is a
    multiple of 1/grid) the decoy is such a multiple too, computed in float32 as the
    metric is, and strictly inside its gap when the gap has room (otherwise it would
    repeat a neighbour more often than real scores do). A value off that lattice would
    give it away."""
    if not others:
        raise ValueError("a decoy needs at least one other score")
    n = len(others)
    top = grid or 1
    s = sorted(round(v * grid) for v in others) if grid else sorted(others)
    d = (s[-1] - s[0]) / (n - 1) if n > 1 else 0.0
    gaps = [(max(0.0, s[0] - d), s[0]), *itertools.pairwise(s), (s[-1], min(top, s[-1] + d))]
    j = rng.choices(range(n + 1), weights=[math.sqrt(max(0.0, b - a) / top) + 1e-9 for a, b in gaps])[0]
    lo, hi = gaps[j]
    if j == 0:
        lo = max(0.0, s[0] - 2 * d)
    if j == n:
        hi = min(top, s[-1] + 2 * d)
    if not grid:
        return rng.uniform(lo, hi)
    lo_k, hi_k = math.ceil(lo), math.floor(hi)
    k = rng.randint(lo_k + 1, hi_k - 1) if hi_k - lo_k >= 2 else rng.randint(lo_k, max(lo_k, hi_k))
    return float(torch.tensor(float(k), dtype=torch.float32) / grid)
