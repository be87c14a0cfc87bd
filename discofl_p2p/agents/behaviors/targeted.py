"""Targeted data poisoning: training behaviours that aim at one outcome, not at
accuracy, and say where their success is measured (`success_set`, on held-out data;
the harness reports the final model's accuracy there as `attack_success`).

| name            | trains on                                         | success: the final model ...             |
| --------------- | ------------------------------------------------- | ---------------------------------------- |
| `targeted_flip` | its data with `source` -> `target`                | calls test digits `source` `target`      |
| `backdoor`      | its data + a `fraction` of it stamped, as `target` | calls stamped test digits `target`      |
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from discofl_p2p.agents.behaviors.base import NUMBER, Param, TrainingBehaviour, at_least, register
from discofl_p2p.ml.poison import backdoor_data, backdoor_success_set, flip_class, flip_success_set


def a_class(v: Any) -> str | None:
    return None if 0 <= v <= 9 else f"a class must be in 0..9, got {v}"


def a_fraction(v: Any) -> str | None:
    return None if 0 < v <= 1 else f"must be in (0, 1], got {v}"


@register
class TargetedFlip(TrainingBehaviour):
    """Targeted label flipping (Tolpegin et al. 2020, "Data Poisoning Attacks Against
    Federated Learning Systems"; also Biggio et al. 2012): trains on its own data with
    every `source` label turned into `target`, so that the federation learns to call
    `source` digits `target` while the other classes stay accurate. Knows: its own
    data only."""

    name = "targeted_flip"
    PARAMS: ClassVar[dict[str, Param]] = {
        "source": Param((int,), 1, "the class it relabels", a_class),
        "target": Param((int,), 7, "the label it gives that class", a_class),
    }

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x, flip_class(y, int(self.params["source"]), int(self.params["target"]))

    def success_set(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return flip_success_set(x, y, int(self.params["source"]), int(self.params["target"]))


@register
class Backdoor(TrainingBehaviour):
    """A pixel-trigger backdoor (Gu et al. 2017, BadNets; in federated learning
    Bagdasaryan et al. 2020): trains on its data plus a `fraction` of it again with a
    white `size` x `size` square in the bottom-right corner, labelled `target`. The
    model stays accurate on clean digits, and calls any stamped digit `target`.
    Knows: its own data only (combine with `update_scale` for model replacement)."""

    name = "backdoor"
    PARAMS: ClassVar[dict[str, Param]] = {
        "target": Param((int,), 0, "the class the trigger sends a digit to", a_class),
        "fraction": Param(NUMBER, 0.5, "the share of its data added again, stamped", a_fraction),
        "size": Param((int,), 4, "the trigger's side, in pixels", at_least(1)),
    }

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        return backdoor_data(
            x, y, fraction=float(p["fraction"]), target=int(p["target"]), size=int(p["size"]), seed=seed
        )

    def success_set(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return backdoor_success_set(x, y, int(self.params["target"]), int(self.params["size"]))
