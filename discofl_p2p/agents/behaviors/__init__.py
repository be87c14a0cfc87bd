"""Worker behaviours as composable strategies: a training part (what model a worker
submits), a scoring part (what scores it submits) and a participation part, each a
small class with its own parameter schema, chosen by name from `TRAINING_BEHAVIOURS`,
`SCORING_BEHAVIOURS` and `PARTICIPATION_BEHAVIOURS` (`base.py`). One module per family:
`training.py`, `updates.py` (attacks on the update), `targeted.py` (targeted data
poisoning), `freeriding.py`, `scoring.py`, `participation.py`.
`SHORTHANDS` maps the first scenario files' `behavior = NAME` to its parts.
docs/attacks.md lists every attack, its source and what it assumes the attacker knows.
"""

from __future__ import annotations

import importlib
import pkgutil

from discofl_p2p.agents.behaviors.base import (
    AXES,
    DEFAULTS,
    PARTICIPATION_BEHAVIOURS,
    SCORING_BEHAVIOURS,
    SHORTHANDS,
    TRAINING_BEHAVIOURS,
    Behavior,
    Component,
    Param,
    ParticipationBehaviour,
    RoundView,
    ScoringBehaviour,
    TrainingBehaviour,
    WorkerBehaviour,
    make_behaviour,
    shorthand_parts,
)
from discofl_p2p.agents.behaviors.decoy import decoy_score
from discofl_p2p.agents.behaviors.scoring import guess_positions, is_ring

# Every family module registers its classes when imported: a new module needs no edit here.
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "AXES",
    "DEFAULTS",
    "PARTICIPATION_BEHAVIOURS",
    "SCORING_BEHAVIOURS",
    "SHORTHANDS",
    "TRAINING_BEHAVIOURS",
    "Behavior",
    "Component",
    "Param",
    "ParticipationBehaviour",
    "RoundView",
    "ScoringBehaviour",
    "TrainingBehaviour",
    "WorkerBehaviour",
    "decoy_score",
    "guess_positions",
    "is_ring",
    "make_behaviour",
    "shorthand_parts",
]
