"""Participation behaviours: whether a worker takes part in a round, and on time."""

from __future__ import annotations

from typing import ClassVar

from discofl_p2p.agents.behaviors.base import Param, ParticipationBehaviour, at_least, one_of, register


@register
class Always(ParticipationBehaviour):
    """Every round, on time."""

    name = "always"


@register
class Dropout(ParticipationBehaviour):
    """From round `round` on: `stop` goes offline (its node too); `late` acts only
    after the chain event that ends each phase (EvaluationOpened, RoundSettled), so its
    calls revert. Knows: nothing."""

    name = "dropout"
    PARAMS: ClassVar[dict[str, Param]] = {
        "round": Param((int,), 1, "the first round it misses", at_least(1)),
        "mode": Param((str,), "stop", "stop | late", one_of("stop", "late")),
    }

    def stopped(self, round_: int) -> bool:
        return self.params["mode"] == "stop" and round_ >= self.params["round"]

    def late(self, round_: int) -> bool:
        return self.params["mode"] == "late" and round_ >= self.params["round"]
