"""The copy-the-median late scorer: it does not judge the models itself, it waits for
the other evaluators' scores to appear on the chain and submits their per-model
median, which BlockFlow's honesty (distance to the median) rewards with full marks.

Knows: whatever the chain shows before it must commit (the worker reads the
ScoresRevealed events for it). Under commit-reveal of scores (docs/contract.md) no
row is revealed until every worker committed or the evaluation deadline passed, so
it always finds nothing to copy and commits its own scores blind: the attack gains
nothing. With nothing to copy it submits its true scores (its best blind guess).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from discofl_p2p.agents.behaviors.base import NUMBER, Param, ScoringBehaviour, at_least, register
from discofl_p2p.trust.blockflow import lower_median


def median_row(rows: Sequence[Sequence[float | None]], width: int) -> list[float | None]:
    """Per position, the lower median of the rows' scores there (BlockFlow's m_k);
    None where no row scored it. Rows of another width are ignored."""
    out: list[float | None] = []
    for i in range(width):
        col = [row[i] for row in rows if len(row) == width and row[i] is not None]
        out.append(lower_median([v for v in col if v is not None]) if col else None)
    return out


@register
class CopyMedian(ScoringBehaviour):
    """Waits up to `wait_s` for others' scores on the chain, then submits their median."""

    name = "copy_median"
    copies_median: ClassVar[bool] = True
    PARAMS: ClassVar[dict[str, Param]] = {
        "wait_s": Param(NUMBER, 5.0, "seconds it waits for others' scores before it commits", at_least(0.0)),
    }

    def copy_wait_s(self) -> float:
        return float(self.params["wait_s"])

    def copy_scores(self, rows: Sequence[Sequence[float | None]], honest: list[float | None]) -> list[float | None]:
        return median_row(rows, len(honest)) if rows else honest
