"""Worker behaviours: what a worker trains on, what it submits, how it scores, and
whether it takes part. Honest is the default for every part; an adversary overrides
the parts its attack needs. Each part is a small pure function of its inputs.

| behaviour        | trains on          | submits                      | scores                      | takes part     |
| ---------------- | ------------------ | ---------------------------- | --------------------------- | -------------- |
| honest           | its data           | its trained model            | its validation accuracy     | every round    |
| garbage          | random images/labels, from w0 each round (the paper's malicious user) | | | |
| label_flip       | its data, y -> 9-y |                              |                             |                |
| model_poisoning  |                    | -w, factor*w, or noise       |                             |                |
| free_rider       | nothing            | the aggregate, or a copy of the best model it saw |        |                |
| biased_scorer    |                    |                              | `value` for everyone else   |                |
| collusion        |                    |                              | 1.0 ring, 0.0 others        |                |
| lazy_evaluator   |                    |                              | constant `value`            |                |
| dropout          |                    |                              |                             | stops, or late |

A collusion ring under anonymity cannot tell its members' models apart from the
others: with `shares_cids = false` it guesses (scores a random set of ring-size - 1
models 1.0); with `shares_cids = true` its members tell each other their CIDs out of
band and score exactly.

Every evaluator also scores its own model (`self_score`), so that its on-chain row has
no abstention that points at it; the rules ignore self-scores. What it puts there must
not stand out in its row either (docs/scenarios.md, "Anonymity in practice"):

| behaviour        | its own position                                                    |
| ---------------- | ------------------------------------------------------------------- |
| honest (and every behaviour that scores honestly) | `decoy_score`: a random rank among its other scores |
| biased_scorer, lazy_evaluator | its constant, like every other position                |
| collusion        | 1.0, like every other model it believes is its ring's               |

A worker that scored no other model abstains on its own too: one score in a row of
abstentions would name its model.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from discofl_p2p.ml.weights import StateDict


@dataclass(frozen=True)
class Behavior:
    name: str = "honest"
    params: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- training

    def trains(self) -> bool:
        return self.name != "free_rider"

    def starts_from_aggregate(self) -> bool:
        """A garbage trainer (the paper's malicious user) never learns from the
        federation: each round it trains w0 on random data."""
        return self.name != "garbage"

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.name == "garbage":
            g = torch.Generator().manual_seed(seed)
            return torch.randn(x.shape, generator=g), torch.randint(0, 10, y.shape, generator=g)
        if self.name == "label_flip":
            return x, 9 - y
        return x, y

    # ---------------------------------------------------------------- submission

    def submission(
        self, trained: StateDict, aggregate: StateDict, seen: Sequence[tuple[float, StateDict]], seed: int
    ) -> StateDict:
        """What goes on the network: `trained` (after local training), `aggregate`
        (before it), `seen` = (score, state) of other models from the last round."""
        if self.name == "model_poisoning":
            mode = self.params.get("mode", "sign_flip")
            if mode == "sign_flip":
                return {k: -v if v.is_floating_point() else v for k, v in trained.items()}
            if mode == "scale":
                f = float(self.params.get("factor", 10.0))
                return {k: v * f if v.is_floating_point() else v for k, v in trained.items()}
            g = torch.Generator().manual_seed(seed)
            std = float(self.params.get("std", 1.0))
            return {
                k: torch.randn(v.shape, generator=g, dtype=v.dtype) * std if v.is_floating_point() else v
                for k, v in trained.items()
            }
        if self.name == "free_rider":
            if self.params.get("mode", "aggregate") == "copy" and seen:
                return max(seen, key=lambda s: s[0])[1]
            return aggregate
        return trained

    # ---------------------------------------------------------------- scoring

    def scores(
        self,
        true_scores: Sequence[float | None],
        ring_positions: set[int] | None,
        seed: int,
    ) -> list[float | None]:
        """What the worker submits, per published position, from its true scores of
        the other models. None = abstain (a model it could not fetch; its own model,
        which `self_score` then fills). `ring_positions`: the positions a collusion
        ring knows to be its members' (None: it does not know them)."""
        out = list(true_scores)
        others = [i for i, s in enumerate(true_scores) if s is not None]
        if self.name in ("biased_scorer", "lazy_evaluator"):
            value = float(self.params.get("value", 0.05 if self.name == "biased_scorer" else 0.5))
            return [value if s is not None else None for s in true_scores]
        if self.name == "collusion":
            if ring_positions is None:  # guess: anonymity hides who is who
                k = min(len(others), int(self.params.get("_ring_size", 2)) - 1)
                ring_positions = set(random.Random(seed).sample(others, k))
            return [None if s is None else (1.0 if i in ring_positions else 0.0) for i, s in enumerate(true_scores)]
        return out

    def self_score(self, row: Sequence[float | None], own: int, rng: random.Random, grid: int | None) -> float | None:
        """What goes at position `own` (its own model) of the `row` that `scores`
        returned: a value that does not single that position out. `rng` must be
        secret (anyone who could replay it could tell the decoy from the real scores);
        `grid` is the size of the validation split when every honest score is a
        multiple of 1/grid (accuracy), None otherwise."""
        others = [s for i, s in enumerate(row) if i != own and s is not None]
        if not others:
            return None  # a lone score among abstentions would name its model
        if self.name in ("biased_scorer", "lazy_evaluator"):
            return float(self.params.get("value", 0.05 if self.name == "biased_scorer" else 0.5))
        if self.name == "collusion":
            return 1.0  # its own model is its ring's, which it scores 1.0
        return decoy_score(others, rng, grid)

    # ---------------------------------------------------------------- participation

    def stopped(self, round_: int) -> bool:
        return (
            self.name == "dropout"
            and self.params.get("mode", "stop") == "stop"
            and round_ >= self.params.get("round", 1)
        )

    def late(self, round_: int) -> bool:
        return self.name == "dropout" and self.params.get("mode") == "late" and round_ >= self.params.get("round", 1)


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
