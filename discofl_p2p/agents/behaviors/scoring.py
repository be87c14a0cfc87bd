"""Scoring behaviours: what a worker submits as its scores of the published models.

| name             | scores                                   | its own position          |
| ---------------- | ---------------------------------------- | ------------------------- |
| `honest`         | its true validation scores               | a decoy (`decoy.py`)      |
| `biased_scorer`  | `value` (0.05) for every model           | `value`                   |
| `lazy_evaluator` | `value` (0.5) for every model            | `value`                   |
| `collusion`      | 1.0 for its ring's models, 0.0 otherwise | 1.0 (its ring's)          |
| `stealthy_ring`  | true ± `delta`: up for its ring, down for the others | a decoy       |
| `targeted_downscore` | `value` for the `k` models it scores best, true for the others | a decoy |

What it puts at its own position must not stand out in its row (docs/scenarios.md,
"Anonymity in practice").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from discofl_p2p.agents.behaviors.base import (
    NUMBER,
    SCORING_BEHAVIOURS,
    Param,
    ScoringBehaviour,
    a_score,
    at_least,
    not_blank,
    register,
)


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


def guess_positions(true_scores: Sequence[float | None], ring_size: int, seed: int) -> set[int]:
    """A ring member's guess, under anonymity, of which positions hold its mates'
    models: ring size - 1 of the positions it scored, drawn at random (`seed`). It has
    no better clue: every model is published under a CID alone, in CID order."""
    others = [i for i, s in enumerate(true_scores) if s is not None]
    return set(random.Random(seed).sample(others, min(len(others), ring_size - 1)))


def is_ring(score: str) -> bool:
    """Whether the scoring behaviour registered as `score` is a collusion ring's (it
    takes a `ring`: the runner introduces the members, the validator counts them)."""
    return "ring" in SCORING_BEHAVIOURS[score].PARAMS


class _Ring(ScoringBehaviour):
    """A ring member: knows its ring mates' peer ids (agreed beforehand). Under
    anonymity it cannot tell which published models are its ring's: with
    `shares_cids = false` it guesses (`guess_positions`); with `shares_cids = true` the
    members tell each other their CIDs over their own direct libp2p messages."""

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

    def positions(self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int) -> set[int]:
        if ring_positions is None:
            return guess_positions(true_scores, int(self.params.get("_ring_size", 2)), seed)
        return ring_positions


@register
class Collusion(_Ring):
    """A collusion ring: scores its members' models 1.0 and every other model 0.0."""

    name = "collusion"

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        ring = self.positions(true_scores, ring_positions, seed)
        return [None if s is None else (1.0 if i in ring else 0.0) for i, s in enumerate(true_scores)]

    def own_score(self, others: Sequence[float], rng: random.Random, grid: int | None) -> float:
        return 1.0  # its own model is its ring's


@register
class StealthyRing(_Ring):
    """A stealthy ring: its true scores, shifted up by `delta` for its ring's models
    and down by `delta` for the others (clipped to [0, 1]), so that each of its scores
    stays within `delta` of what an honest evaluator with its data would give, near
    the median of honest scores, where median-based rules take their value from.
    Its own position gets the honest decoy."""

    name = "stealthy_ring"
    PARAMS: ClassVar[dict[str, Param]] = {
        **_Ring.PARAMS,
        "delta": Param(NUMBER, 0.05, "the shift, up for the ring and down for the others", a_score),
    }

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        ring = self.positions(true_scores, ring_positions, seed)
        d = float(self.params["delta"])
        return [
            None if s is None else min(1.0, max(0.0, s + (d if i in ring else -d))) for i, s in enumerate(true_scores)
        ]


@register
class TargetedDownscoring(ScoringBehaviour):
    """Targeted down-scoring: gives `value` (0.0) to the `k` models it scores best
    itself (the rivals it expects to top the ranking) and its true scores to the
    others, so that those rivals lose rank while its row looks honest elsewhere.
    Knows: its own validation scores (it cannot tell which model is whose)."""

    name = "targeted_downscore"
    PARAMS: ClassVar[dict[str, Param]] = {
        "k": Param((int,), 2, "how many of the best models it scores down", at_least(1)),
        "value": Param(NUMBER, 0.0, "the score it gives them", a_score),
    }

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        scored = sorted((-s, i) for i, s in enumerate(true_scores) if s is not None)  # best first, then position
        targets = {i for _, i in scored[: int(self.params["k"])]}
        return [
            None if s is None else float(self.params["value"]) if i in targets else s for i, s in enumerate(true_scores)
        ]
