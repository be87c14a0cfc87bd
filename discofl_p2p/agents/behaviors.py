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
"""

from __future__ import annotations

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
        """What the worker submits, per published position. None = abstain (its own
        model, or one it could not fetch). `ring_positions`: the positions a collusion
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

    # ---------------------------------------------------------------- participation

    def stopped(self, round_: int) -> bool:
        return (
            self.name == "dropout"
            and self.params.get("mode", "stop") == "stop"
            and round_ >= self.params.get("round", 1)
        )

    def late(self, round_: int) -> bool:
        return self.name == "dropout" and self.params.get("mode") == "late" and round_ >= self.params.get("round", 1)
