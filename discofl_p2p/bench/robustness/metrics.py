"""The robustness benchmark's metrics: pure functions of numbers, no torch.

- `adversary_share`: the adversaries' part of every reward paid;
- `spearman`: rank correlation (average ranks for ties), NaN when undefined;
- `gini`: inequality of non-negative amounts, NaN when they sum to 0;
- `breakdown_point`: the smallest adversary fraction at which a defence fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

SHARE_TOLERANCE = 1e-6
"""Rewards are whole wei, so an exactly fair share can come out a hair above the fraction."""


def adversary_share(rewards: Mapping[str, float], adversaries: set[str]) -> float:
    """The adversaries' share of all `rewards` (worker -> total); 0 when nothing was paid."""
    total = sum(rewards.values())
    return sum(v for n, v in rewards.items() if n in adversaries) / total if total else 0.0


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired `x` and `y` (Pearson's on average ranks).
    NaN when it is undefined: fewer than 2 pairs, or either side constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return math.nan
    return cov / math.sqrt(vx * vy)


def gini(amounts: Sequence[float]) -> float:
    """Gini coefficient, sum |a_i - a_j| / (2 n^2 mean): 0 when all are equal, (n - 1)/n
    when one holds everything. NaN for no amounts or a zero total; negative amounts
    are an error."""
    if any(a < 0 for a in amounts):
        raise ValueError("gini needs non-negative amounts")
    n, total = len(amounts), sum(amounts)
    if n == 0 or total == 0:
        return math.nan
    diffs = sum(abs(a - b) for a in amounts for b in amounts)
    return diffs / (2 * n * total)


def breaks(accuracy_loss: float, share: float, fraction: Fraction, threshold: float) -> bool:
    """A defence is broken at `fraction` when the accuracy loss exceeds `threshold`, or
    the adversaries take more than their fraction of the rewards (beyond `SHARE_TOLERANCE`)."""
    return accuracy_loss > threshold or share > float(fraction) + SHARE_TOLERANCE


def breakdown_point(
    by_fraction: Mapping[Fraction, tuple[float, float]], threshold: float
) -> tuple[Fraction, str] | None:
    """The smallest non-zero fraction at which `breaks` holds, and why; None when the
    defence holds at every fraction. `by_fraction`: fraction -> (accuracy loss, share)."""
    for f in sorted(by_fraction):
        if f == 0:
            continue
        loss, share = by_fraction[f]
        if loss > threshold:
            return f, f"accuracy loss {100 * loss:.1f} points > {100 * threshold:g}"
        if share > float(f) + SHARE_TOLERANCE:
            return f, f"adversary share {share:.1%} > {float(f):.1%}"
    return None
