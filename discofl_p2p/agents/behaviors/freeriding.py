"""Free riding: training behaviours that earn without contributing what they claim.
None trains on its own data (a Sybil identity trains once, as its operator). Each
changes its submission just enough to pass the requester's CID de-duplication (a
model published before is excluded as a replay).

| name         | submits                                                                |
| ------------ | ---------------------------------------------------------------------- |
| `noisy_copy` | the model it scored best last round + N(0, std²) (round 1: base + noise) |
| `mimic`      | base + one model's update of last round (best-scored, or seeded pick)   |
| `sybil`      | its operator's model (same data, same seeds) + N(0, std²) of its own    |
"""

from __future__ import annotations

import random
from typing import ClassVar

import torch

from discofl_p2p.agents.behaviors.base import NUMBER, Param, RoundView, TrainingBehaviour, at_least, one_of, register
from discofl_p2p.agents.behaviors.updates import apply_update, update_of
from discofl_p2p.ml.weights import StateDict


def with_noise(state: StateDict, std: float, seed: int) -> StateDict:
    """`state` + N(0, std²) on every floating-point tensor (seeded): as good as the
    same model for learning, and a different CID. The noise is drawn in sorted key
    order: a model fetched and decoded may list its tensors in another order than the
    one its trainer held, and the same seed must give the same noise to each tensor."""
    g = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(state[k].shape, generator=g) * std for k in sorted(state) if state[k].is_floating_point()}
    return {k: v + noise[k].to(v.dtype) if k in noise else v for k, v in state.items()}


NOISE = Param(NUMBER, 1e-3, "the noise's standard deviation", at_least(0, "a standard deviation must be"))


@register
class NoisyCopy(TrainingBehaviour):
    """A disguised free rider (Lin et al. 2019, "Free-riders in Federated Learning";
    Fraboni et al. 2021, "Free-rider Attacks on Model Aggregation in Federated
    Learning"): re-submits the model it scored best last round with small Gaussian
    noise, which changes its CID (a plain copy is excluded as a replay). In round 1 it
    has seen nothing: base (w0) plus noise. Knows: last round's models and its scores
    of them."""

    name = "noisy_copy"
    trains = False
    PARAMS: ClassVar[dict[str, Param]] = {"std": NOISE}

    def submission(self, view: RoundView, seed: int) -> StateDict:
        best = max(view.seen, key=lambda s: s[0])[1] if view.seen else view.base
        return with_noise(best, float(self.params["std"]), seed)


@register
class Mimic(TrainingBehaviour):
    """Mimicry (Lin et al. 2019; Fraboni et al. 2021's "plain" disguise): submits the
    round's base plus one worker's update of last round, that model minus the base it
    started from itself (close to that worker's: both started from nearly the same
    aggregate). `pick = "best"` copies the model it scored best, `random` a seeded one.
    In round 1 it has nothing to copy and submits the base (w0, excluded as a replay).
    Knows: last round's models; under anonymity not whose they are."""

    name = "mimic"
    trains = False
    PARAMS: ClassVar[dict[str, Param]] = {
        "pick": Param((str,), "best", "best | random: which model's update it copies", one_of("best", "random"))
    }

    def submission(self, view: RoundView, seed: int) -> StateDict:
        if not view.seen or view.previous_base is None:
            return view.base
        if self.params["pick"] == "best":
            copied = max(view.seen, key=lambda s: s[0])[1]
        else:
            copied = random.Random(seed).choice(view.seen)[1]
        return apply_update(view.base, update_of(copied, view.previous_base), view.base)


@register
class Sybil(TrainingBehaviour):
    """Sybil identities (Douceur 2002; in federated learning Fung et al. 2018,
    "Mitigating Sybils in Federated Learning Poisoning"): one operator runs every
    worker of its group; they all use the operator's (the group's first worker's) data
    split, data and training seeds, so they hold the same data and, scoring on the same
    validation split, start from the same aggregate and train the same model. Each
    identity submits it plus its own noise (`std`), to pass CID de-duplication. It
    gains the group's count in rewards and in the aggregate for one worker's data.
    Knows: nothing more than an honest worker."""

    name = "sybil"
    PARAMS: ClassVar[dict[str, Param]] = {"std": Param(NUMBER, 1e-6, NOISE.doc, NOISE.check)}

    @property
    def operator(self) -> str | None:
        return self.params.get("_operator")

    def submission(self, view: RoundView, seed: int) -> StateDict:
        return with_noise(view.trained, float(self.params["std"]), seed)
