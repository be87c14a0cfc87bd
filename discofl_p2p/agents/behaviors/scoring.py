"""Scoring behaviours: what a worker submits as its scores of the published models.

| name             | scores                                   | its own position          |
| ---------------- | ---------------------------------------- | ------------------------- |
| `honest`         | its true validation scores               | a decoy (`decoy.py`)      |
| `biased_scorer`  | `value` (0.05) for every model           | `value`                   |
| `lazy_evaluator` | `value` (0.5) for every model            | `value`                   |
| `collusion`      | 1.0 for its ring's models, 0.0 otherwise | 1.0 (its ring's)          |

What it puts at its own position must not stand out in its row (docs/scenarios.md,
"Anonymity in practice").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from discofl_p2p.agents.behaviors.base import NUMBER, Param, ScoringBehaviour, a_score, not_blank, register


@register
class Honest(ScoringBehaviour):
    """Its true scores on its validation split."""

    name = "honest"


class _Constant(ScoringBehaviour):
    PARAMS: ClassVar[dict[str, Param]] = {"value": Param(NUMBER, 0.5, "the score it gives every model", a_score)}

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        return [float(self.params["value"]) if s is not None else None for s in true_scores]

    def own_score(self, others: Sequence[float], rng: random.Random, grid: int | None) -> float:
        return float(self.params["value"])


@register
class BiasedScorer(_Constant):
    """Scores every model low (`value`, 0.05) to lift its own rank. Knows: nothing."""

    name = "biased_scorer"
    PARAMS: ClassVar[dict[str, Param]] = {"value": Param(NUMBER, 0.05, "the score it gives every model", a_score)}


@register
class LazyEvaluator(_Constant):
    """Does not evaluate: submits the constant `value` (0.5). Knows: nothing."""

    name = "lazy_evaluator"


@register
class Collusion(ScoringBehaviour):
    """A collusion ring: scores its members' models 1.0 and every other model 0.0.
    Knows: its ring mates' peer ids (agreed beforehand). Under anonymity it cannot
    tell which published models are its ring's: with `shares_cids = false` it guesses
    ring size - 1 positions (seeded); with `shares_cids = true` the members tell each
    other their CIDs over their own direct libp2p messages and score exactly."""

    name = "collusion"
    PARAMS: ClassVar[dict[str, Param]] = {
        "ring": Param((str,), None, "the ring's name", not_blank, required=True),
        "shares_cids": Param((bool,), False, "members tell each other their CIDs"),
    }

    @property
    def ring(self) -> str | None:
        return str(self.params["ring"])

    @property
    def shares_cids(self) -> bool:
        return bool(self.params["shares_cids"])

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        others = [i for i, s in enumerate(true_scores) if s is not None]
        if ring_positions is None:  # guess: anonymity hides who is who
            k = min(len(others), int(self.params.get("_ring_size", 2)) - 1)
            ring_positions = set(random.Random(seed).sample(others, k))
        return [None if s is None else (1.0 if i in ring_positions else 0.0) for i, s in enumerate(true_scores)]

    def own_score(self, others: Sequence[float], rng: random.Random, grid: int | None) -> float:
        return 1.0  # its own model is its ring's
