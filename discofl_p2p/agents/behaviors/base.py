"""The parts of a worker's behaviour, their parameter schemas and their registries.

A worker's behaviour is three independent strategies, each a small class chosen by
name from its registry:

- training (`TRAINING_BEHAVIOURS`): what it trains on, from where, and what model it
  submits;
- scoring (`SCORING_BEHAVIOURS`): what scores it submits for the published models;
- participation (`PARTICIPATION_BEHAVIOURS`): whether it takes part in a round, and on
  time.

Each class declares its parameters in `PARAMS` (name -> `Param`: TOML types, default,
what it means, and a check of its range); the scenario validator reads them from
there, so a new attack is one class in one module (and its test). A family module
registers its classes with `@register`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from discofl_p2p.ml.weights import StateDict

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Param:
    """One parameter of a behaviour: the TOML types it takes, its default (None with
    `required`), what it means, and a check that returns what is wrong, or None."""

    types: tuple[type, ...]
    default: Any
    doc: str
    check: Check | None = None
    required: bool = False


NUMBER = (int, float)


def one_of(*options: str) -> Check:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}, got {v!r}"


def at_least(lo: float, what: str = "") -> Check:
    return lambda v: None if v >= lo else f"{what or 'must be'} >= {lo:g}, got {v}"


def a_score(v: float) -> str | None:
    return None if 0 <= v <= 1 else f"a score must be in [0, 1], got {v}"


def not_blank(v: str) -> str | None:
    return None if v.strip() else "a ring's name must not be empty"


class Component:
    """A behaviour part: its registry `name`, its `PARAMS`, and its `params` (the
    defaults, overridden by those given; a key starting with `_` is set by the
    runner, never by a scenario file)."""

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = {k: p.default for k, p in self.PARAMS.items()} | dict(params or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Component) and other.params == self.params

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.params))))


@dataclass(frozen=True)
class RoundView:
    """What a worker's training behaviour sees when it decides what to submit:
    `trained` (after local training; `base` itself if it does not train), `base` (the
    round's starting aggregate, or w0), `seen` = (its score, state) of the other models
    published last round that it validated, in CID order, and `previous_base` (the
    base it started from last round; None in round 1)."""

    trained: StateDict
    base: StateDict
    seen: Sequence[tuple[float, StateDict]] = ()
    previous_base: StateDict | None = None


class TrainingBehaviour(Component):
    """Honest by default: trains on its data from the round's aggregate, submits that."""

    trains: ClassVar[bool] = True
    from_aggregate: ClassVar[bool] = True

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def submission(self, view: RoundView, seed: int) -> StateDict:
        return view.trained

    def success_set(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A targeted attack's aim, from held-out data (x, y): the inputs it aims at,
        each labelled with the class it wants; the final model's accuracy on them is
        its attack success rate. None for an untargeted behaviour."""
        return None

    @property
    def operator(self) -> str | None:
        """The worker whose data split and data and training seeds it uses (a Sybil
        identity's operator); None: its own."""
        return None


class ScoringBehaviour(Component):
    """Honest by default: submits its true scores; its own position gets a decoy."""

    copies_median: ClassVar[bool] = False
    """Whether it waits for the others' scores on the chain and copies them
    (`copy_wait_s`, `copy_scores`; the worker reads the chain for it)."""

    def copy_wait_s(self) -> float:
        """How long (wall-clock seconds) it waits for others' scores before committing."""
        return 0.0

    def copy_scores(self, rows: Sequence[Sequence[float | None]], honest: list[float | None]) -> list[float | None]:
        """What it submits given the other evaluators' rows it could read (published
        order) and the row it would submit otherwise; `honest` itself when it copies nothing."""
        return honest

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        """What the worker submits, per position (CID order), from its true scores of
        the other models. None = abstain (a model it could not fetch; its own model,
        which `self_score` then fills). `ring_positions`: the positions a collusion
        ring knows to be its members' (None: it does not know them)."""
        return list(true_scores)

    def own_score(self, others: Sequence[float], rng: random.Random, grid: int | None) -> float:
        """Its score of its own model, given its other scores (at least one)."""
        from discofl_p2p.agents.behaviors.decoy import decoy_score

        return decoy_score(others, rng, grid)

    @property
    def ring(self) -> str | None:
        """The collusion ring it belongs to, if any (the runner introduces its members)."""
        return None

    @property
    def shares_cids(self) -> bool:
        """Whether its ring's members tell each other their CIDs (`RING_PROTOCOL`)."""
        return False


class ParticipationBehaviour(Component):
    """Always there, always on time."""

    def stopped(self, round_: int) -> bool:
        return False

    def late(self, round_: int) -> bool:
        return False


TRAINING_BEHAVIOURS: dict[str, type[TrainingBehaviour]] = {}
SCORING_BEHAVIOURS: dict[str, type[ScoringBehaviour]] = {}
PARTICIPATION_BEHAVIOURS: dict[str, type[ParticipationBehaviour]] = {}

AXES: dict[str, dict[str, Any]] = {
    "train": TRAINING_BEHAVIOURS,
    "score": SCORING_BEHAVIOURS,
    "participation": PARTICIPATION_BEHAVIOURS,
}
"""The TOML key of each part (its parameters go in `<key>_params`) -> its registry."""
DEFAULTS = {"train": "honest", "score": "honest", "participation": "always"}

C = TypeVar("C", bound=type[Component])


def register(cls: C) -> C:
    """Adds a behaviour class to the registry of its part, under `cls.name`."""
    registry: dict[str, Any] = (
        TRAINING_BEHAVIOURS
        if issubclass(cls, TrainingBehaviour)
        else SCORING_BEHAVIOURS
        if issubclass(cls, ScoringBehaviour)
        else PARTICIPATION_BEHAVIOURS
    )
    if not cls.name or cls.name in registry:
        raise ValueError(f"behaviour name {cls.name!r} is empty or taken")
    registry[cls.name] = cls
    return cls


def _default(registry: dict[str, Any], name: str) -> Callable[[], Any]:
    """A factory of the part registered as `name` (looked up when called: the family
    modules register their classes after this module is loaded)."""

    def make() -> Any:
        return registry[name]()

    return make


@dataclass(frozen=True)
class WorkerBehaviour:
    """A worker's whole behaviour: its training, scoring and participation parts."""

    training: TrainingBehaviour = field(default_factory=_default(TRAINING_BEHAVIOURS, "honest"))
    scoring: ScoringBehaviour = field(default_factory=_default(SCORING_BEHAVIOURS, "honest"))
    participation: ParticipationBehaviour = field(default_factory=_default(PARTICIPATION_BEHAVIOURS, "always"))

    # ---------------------------------------------------------------- training

    def trains(self) -> bool:
        return self.training.trains

    def starts_from_aggregate(self) -> bool:
        return self.training.from_aggregate

    def data_owner(self, name: str) -> str:
        """Whose data split and data/training seeds worker `name` uses: its own, or
        its Sybil operator's."""
        return self.training.operator or name

    def training_data(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.training.training_data(x, y, seed)

    def submission(
        self,
        trained: StateDict,
        base: StateDict,
        seen: Sequence[tuple[float, StateDict]],
        seed: int,
        previous_base: StateDict | None = None,
    ) -> StateDict:
        """What goes on the network (see `RoundView`)."""
        return self.training.submission(RoundView(trained, base, seen, previous_base), seed)

    # ---------------------------------------------------------------- scoring

    @property
    def ring(self) -> str | None:
        return self.scoring.ring

    @property
    def shares_cids(self) -> bool:
        return self.scoring.shares_cids

    def scores(
        self, true_scores: Sequence[float | None], ring_positions: set[int] | None, seed: int
    ) -> list[float | None]:
        return self.scoring.scores(true_scores, ring_positions, seed)

    @property
    def copies_median(self) -> bool:
        return self.scoring.copies_median

    def copy_wait_s(self) -> float:
        return self.scoring.copy_wait_s()

    def copy_scores(self, rows: Sequence[Sequence[float | None]], honest: list[float | None]) -> list[float | None]:
        return self.scoring.copy_scores(rows, honest)

    def self_score(self, row: Sequence[float | None], own: int, rng: random.Random, grid: int | None) -> float | None:
        """What goes at position `own` (its own model) of the `row` that `scores`
        returned: a value that does not single that position out. `rng` must be
        secret (anyone who could replay it could tell the decoy from the real scores);
        `grid` is the size of the validation split when every honest score is a
        multiple of 1/grid (accuracy), None otherwise. A worker that scored no other
        model abstains on its own too: a lone score among abstentions names it."""
        others = [s for i, s in enumerate(row) if i != own and s is not None]
        if not others:
            return None
        return self.scoring.own_score(others, rng, grid)

    # ---------------------------------------------------------------- participation

    def stopped(self, round_: int) -> bool:
        return self.participation.stopped(round_)

    def late(self, round_: int) -> bool:
        return self.participation.late(round_)


def make_behaviour(
    train: str = "honest",
    train_params: Mapping[str, Any] | None = None,
    score: str = "honest",
    score_params: Mapping[str, Any] | None = None,
    participation: str = "always",
    participation_params: Mapping[str, Any] | None = None,
) -> WorkerBehaviour:
    """A worker's behaviour from its parts' registry names and parameters."""
    return WorkerBehaviour(
        TRAINING_BEHAVIOURS[train](train_params),
        SCORING_BEHAVIOURS[score](score_params),
        PARTICIPATION_BEHAVIOURS[participation](participation_params),
    )


SHORTHANDS: dict[str, tuple[str, str] | None] = {
    # `behavior = NAME` -> (part, its registry name); `params` go to that part.
    "honest": None,
    "garbage": ("train", "garbage"),
    "label_flip": ("train", "label_flip"),
    "model_poisoning": ("train", "model_poisoning"),
    "free_rider": ("train", "free_rider"),
    "biased_scorer": ("score", "biased_scorer"),
    "collusion": ("score", "collusion"),
    "lazy_evaluator": ("score", "lazy_evaluator"),
    "dropout": ("participation", "dropout"),
}
"""The behaviours of the first scenario files, each one part away from honest."""


def shorthand_parts(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`make_behaviour`'s arguments for shorthand `name` with its `params`."""
    part = SHORTHANDS[name]
    if part is None:
        return {}
    axis, component = part
    return {axis: component, f"{axis}_params": dict(params or {})}


def Behavior(name: str = "honest", params: Mapping[str, Any] | None = None) -> WorkerBehaviour:
    """The behaviour a shorthand `behavior = name` (with its `params`) stands for."""
    return make_behaviour(**shorthand_parts(name, params))
