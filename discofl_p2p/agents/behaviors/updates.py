"""Attacks on the update: what a worker submits relative to the round's starting
aggregate (`base`), not on whole weights. With Δ = trained - base (its honest update)
each submits base + Δ', for a crafted Δ' (floating-point tensors only; integer buffers
are submitted as trained).

| name               | Δ'                                              | source |
| ------------------ | ----------------------------------------------- | ------ |
| `update_sign_flip` | -factor · Δ                                     | sign flipping (Li et al. 2019, RSA) |
| `update_noise`     | Gaussian noise of std `std` in place of Δ       | Gaussian attack (Blanchard et al. 2017) |
| `update_scale`     | factor · Δ (boosting, model replacement)        | Bhagoji et al. 2019; Bagdasaryan et al. 2020 |
| `alie`             | per coordinate μ - z·σ of the honest updates    | Baruch et al. 2019, "A Little Is Enough" |
| `ipm`              | -ε · μ of the honest updates                    | Xie et al. 2020, inner product manipulation |

What the attacker knows. The first three need only its own update. ALIE and IPM are
stated over the honest workers' updates. An omniscient attacker (IPM's threat model)
would read them before submitting; no worker can here: models are committed before
anyone sees them, and the requester publishes them only after every commitment. So
both use what a worker honestly knows (`honest_update_estimates`): its own update this
round, and the updates it saw last round, each published model minus the base it
started from itself last round (the others started from nearly the same aggregate).
That is ALIE's own assumption (its colluders estimate μ and σ from their own benign
updates), with last round's models added; for IPM it is an estimate of the mean.
Last round's models include those of other adversaries, which it cannot tell apart.
In round 1 it has only its own update: σ = 0, so ALIE submits its honest update, and
IPM submits -ε · its own update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from discofl_p2p.agents.behaviors.base import NUMBER, Param, RoundView, TrainingBehaviour, at_least, register
from discofl_p2p.ml.weights import StateDict


def update_of(trained: StateDict, base: StateDict) -> StateDict:
    """Δ = trained - base on every floating-point tensor."""
    return {k: v - base[k] for k, v in trained.items() if v.is_floating_point()}


def apply_update(base: StateDict, delta: StateDict, like: StateDict) -> StateDict:
    """base + Δ on the floating-point tensors, in `like`'s keys and dtypes; the other
    tensors (integer buffers) as in `like`."""
    return {k: (base[k] + delta[k]).to(v.dtype) if k in delta else v for k, v in like.items()}


def honest_update_estimates(view: RoundView) -> list[StateDict]:
    """What the attacker knows of honest updates: its own this round, then each model
    it saw last round minus the base it started from last round (in CID order)."""
    own = update_of(view.trained, view.base)
    if view.previous_base is None:
        return [own]
    return [own, *(update_of(state, view.previous_base) for _, state in view.seen)]


def coordinate_stats(updates: Sequence[StateDict]) -> tuple[StateDict, StateDict]:
    """Per coordinate, the mean and the (population) standard deviation."""
    mean, std = {}, {}
    for k in updates[0]:
        stack = torch.stack([u[k] for u in updates])
        mean[k] = stack.mean(dim=0)
        std[k] = stack.std(dim=0, correction=0)
    return mean, std


class _UpdateAttack(TrainingBehaviour):
    def crafted(self, view: RoundView, seed: int) -> StateDict:
        raise NotImplementedError

    def submission(self, view: RoundView, seed: int) -> StateDict:
        return apply_update(view.base, self.crafted(view, seed), view.trained)


def _map(delta: StateDict, f: Callable[[torch.Tensor], torch.Tensor]) -> StateDict:
    return {k: f(v) for k, v in delta.items()}


@register
class UpdateSignFlip(_UpdateAttack):
    """Submits base - factor · Δ: its update, reversed. Knows: its own update."""

    name = "update_sign_flip"
    PARAMS: ClassVar[dict[str, Param]] = {"factor": Param(NUMBER, 1.0, "how far along -Δ", at_least(0))}

    def crafted(self, view: RoundView, seed: int) -> StateDict:
        f = float(self.params["factor"])
        return _map(update_of(view.trained, view.base), lambda d: -f * d)


@register
class UpdateNoise(_UpdateAttack):
    """Submits base + N(0, std²) per coordinate, in place of its update (seeded).
    Knows: nothing but the base."""

    name = "update_noise"
    PARAMS: ClassVar[dict[str, Param]] = {
        "std": Param(NUMBER, 1.0, "the noise's standard deviation", at_least(0, "a standard deviation must be"))
    }

    def crafted(self, view: RoundView, seed: int) -> StateDict:
        g = torch.Generator().manual_seed(seed)
        std = float(self.params["std"])
        return _map(update_of(view.trained, view.base), lambda d: torch.randn(d.shape, generator=g) * std)


@register
class UpdateScale(_UpdateAttack):
    """Boosting / model replacement: submits base + factor · Δ, so that its update
    survives being averaged with the others (factor ≈ the number of workers replaces
    the aggregate by its own model under plain averaging). Knows: its own update."""

    name = "update_scale"
    PARAMS: ClassVar[dict[str, Param]] = {"factor": Param(NUMBER, 10.0, "the boost on Δ", at_least(0))}

    def crafted(self, view: RoundView, seed: int) -> StateDict:
        f = float(self.params["factor"])
        return _map(update_of(view.trained, view.base), lambda d: f * d)


@register
class ALIE(_UpdateAttack):
    """A Little Is Enough (Baruch et al. 2019): per coordinate, μ - z · σ of the
    honest updates, a small shift inside their spread that robust rules (median,
    trimmed mean, Krum) let through. Knows: `honest_update_estimates` (not
    omniscient; see the module). The paper picks z from the number of workers n and
    of attackers m (`alie_z`); `z` defaults to 1.0."""

    name = "alie"
    PARAMS: ClassVar[dict[str, Param]] = {"z": Param(NUMBER, 1.0, "standard deviations below the mean", at_least(0))}

    def crafted(self, view: RoundView, seed: int) -> StateDict:
        mean, std = coordinate_stats(honest_update_estimates(view))
        z = float(self.params["z"])
        return {k: mean[k] - z * std[k] for k in mean}


def alie_z(n: int, m: int) -> float:
    """The paper's z_max: with s = floor(n / 2 + 1) - m honest workers it must win
    over, z = Φ⁻¹((n - s) / n)."""
    s = n // 2 + 1 - m
    p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p)))


@register
class IPM(_UpdateAttack):
    """Inner product manipulation (Xie et al. 2020, "Fall of Empires"): -ε · μ of
    the honest updates, so the aggregate's inner product with the true gradient turns
    negative. The paper's attacker is omniscient; here μ is estimated
    (`honest_update_estimates`, see the module). The paper uses a small ε (0.1)
    against median/Krum-like rules and a large one against the mean."""

    name = "ipm"
    PARAMS: ClassVar[dict[str, Param]] = {"epsilon": Param(NUMBER, 0.1, "the scale ε on -μ", at_least(0))}

    def crafted(self, view: RoundView, seed: int) -> StateDict:
        mean, _ = coordinate_stats(honest_update_estimates(view))
        eps = float(self.params["epsilon"])
        return _map(mean, lambda m: -eps * m)
