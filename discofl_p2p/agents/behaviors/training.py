"""Training behaviours that change what a worker learns from, or that it does not learn.

| name              | trains on                      | submits                                           |
| ----------------- | ------------------------------ | ------------------------------------------------- |
| `honest`          | its data, from the aggregate   | its trained model                                 |
| `garbage`         | random images and labels, from w0 each round (the paper's malicious user) | its trained model |
| `label_flip`      | its data with y -> 9 - y       | its trained model                                 |
| `free_rider`      | nothing                        | the aggregate, or the best model it saw last round |
| `model_poisoning` | its data                       | -w, factor * w, or noise (whole weights)          |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from discofl_p2p.agents.behaviors.base import (
    NUMBER,
    Param,
    RoundView,
    TrainingBehaviour,
    at_least,
    one_of,
    register,
)
from discofl_p2p.ml.weights import StateDict


@register
class Honest(TrainingBehaviour):
    """The paper's worker. Knows: its own data and the models published last round."""

    name = "honest"


@register
class Garbage(TrainingBehaviour):
    """DiscoFL's malicious user (Gaillard & Lombardo): trains w0 on random images with
    random labels every round and never learns from the federation. Knows: nothing
    beyond w0."""

    name = "garbage"
    from_aggregate = False

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(x.shape, generator=g), torch.randint(0, 10, y.shape, generator=g)


@register
class LabelFlip(TrainingBehaviour):
    """Data poisoning by label flipping (Tolpegin et al. 2020, "Data Poisoning Attacks
    Against Federated Learning Systems"): trains on its own data with y -> 9 - y.
    Knows: its own data only."""

    name = "label_flip"

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x, 9 - y


@register
class FreeRider(TrainingBehaviour):
    """A free rider (Lin et al. 2019, "Free-riders in Federated Learning"): does not
    train. `aggregate` submits the round's starting aggregate; `copy` re-submits the
    model it scored best last round (the requester excludes it as a replay). Knows:
    the models published last round."""

    name = "free_rider"
    trains = False
    PARAMS: ClassVar[dict[str, Param]] = {
        "mode": Param((str,), "aggregate", "aggregate | copy", one_of("aggregate", "copy"))
    }

    def submission(self, view: RoundView, seed: int) -> StateDict:
        if self.params["mode"] == "copy" and view.seen:
            return max(view.seen, key=lambda s: s[0])[1]
        return view.base


def _floats(state: StateDict, f: Callable[[torch.Tensor], torch.Tensor]) -> StateDict:
    return {k: f(v) if v.is_floating_point() else v for k, v in state.items()}


@register
class ModelPoisoning(TrainingBehaviour):
    """The first scenario files' model poisoning, on whole weights: `sign_flip`
    submits -w, `scale` factor * w, `noise` Gaussian noise of std `std` in place of
    the model. Knows: its own trained model only. (`updates.py` has the attacks on
    the update, relative to the round's starting aggregate.)"""

    name = "model_poisoning"
    PARAMS: ClassVar[dict[str, Param]] = {
        "mode": Param((str,), "sign_flip", "sign_flip | scale | noise", one_of("sign_flip", "scale", "noise")),
        "factor": Param(NUMBER, 10.0, "scale: the factor on the weights"),
        "std": Param(NUMBER, 1.0, "noise: its standard deviation", at_least(0, "a standard deviation must be")),
    }

    def submission(self, view: RoundView, seed: int) -> StateDict:
        mode = self.params["mode"]
        if mode == "sign_flip":
            return _floats(view.trained, lambda v: -v)
        if mode == "scale":
            f = float(self.params["factor"])
            return _floats(view.trained, lambda v: v * f)
        g = torch.Generator().manual_seed(seed)
        std = float(self.params["std"])
        return _floats(view.trained, lambda v: torch.randn(v.shape, generator=g, dtype=v.dtype) * std)
