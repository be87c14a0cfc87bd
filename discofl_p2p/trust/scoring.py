"""Contribution scoring rules: one signature, one registry.

Every rule is a pure function

    rule(scores, workers, context, **params) -> {worker: Contribution}

with `scores` the round's matrix evaluator -> evaluated -> score in [0, 1] (self-scores
ignored), `workers` the roster in its order, and `context` a `ScoringContext` (earlier
rounds' honesty, the requester's anchor scores). The result gives every worker its
p_k (`Contribution.score`) and its honesty as an evaluator (`Contribution.honesty`).
`[task] scoring` names one of `SCORING_RULES` and `[task] scoring_params` its keyword
parameters. The default is "consensus", chosen by `bench robustness` (docs/robustness.md);
"blockflow" is the paper's rule, unchanged.

The requester keeps the context between rounds: after a round it appends
`honesty_record(contrib, scores)` to the history. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from discofl_p2p.trust.anchor import anchored
from discofl_p2p.trust.blockflow import Contribution, contribution_scores
from discofl_p2p.trust.consensus import consensus
from discofl_p2p.trust.estimators import ScoringContext, Worker
from discofl_p2p.trust.informed import informed
from discofl_p2p.trust.reputation import reputation
from discofl_p2p.trust.robust import hodges_lehmann_rule, trimmed

__all__ = [
    "DEFAULT_SCORING",
    "NEEDS_ANCHOR",
    "SCORING_PARAM_CHECKS",
    "SCORING_RULES",
    "ScoringContext",
    "ScoringRule",
    "blockflow",
    "honesty_record",
    "make_scoring_rule",
    "scoring_params_of",
]

ScoringRule = Callable[[Mapping[Any, Mapping[Any, float]], Sequence[Any], ScoringContext[Any]], dict[Any, Contribution]]
"""A rule with its parameters bound (`make_scoring_rule`)."""


def blockflow(
    scores: Mapping[Worker, Mapping[Worker, float]],
    workers: Sequence[Worker],
    context: ScoringContext[Worker],
) -> dict[Worker, Contribution]:
    """BlockFlow (Mugunthan et al. 2020), exactly `blockflow.contribution_scores`; it
    uses no context."""
    return contribution_scores(scores, workers)


SCORING_RULES: dict[str, Callable[..., dict[Any, Contribution]]] = {
    "blockflow": blockflow,
    "trimmed": trimmed,
    "hodges_lehmann": hodges_lehmann_rule,
    "reputation": reputation,
    "consensus": consensus,
    "anchored": anchored,
    "informed": informed,
}

NEEDS_ANCHOR = frozenset({"anchored"})
"""Rules that need `ScoringContext.anchor`: the requester scores every published model
on its root set (`[task] root_samples`) and posts the scores on-chain (AnchorScores)."""

DEFAULT_SCORING = "consensus"
"""Chosen by the benchmark (docs/robustness.md, "Choosing the default scoring rule")."""


def scoring_params_of(rule: str) -> dict[str, tuple[type, ...]]:
    """The keyword parameters of scoring rule `rule` and the TOML types each takes,
    read from its signature (after scores, workers, context)."""
    out: dict[str, tuple[type, ...]] = {}
    for p in list(inspect.signature(SCORING_RULES[rule], eval_str=True).parameters.values())[3:]:
        types = tuple(t for t in (typing.get_args(p.annotation) or (p.annotation,)) if t is not type(None))
        out[p.name] = (int, float) if float in types else types
    return out


# Values a rule's signature accepts that make no sense: parameter -> value -> what is wrong, or None.
SCORING_PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "trim": lambda v: None if 0 <= v < 0.5 else f"must be in [0, 0.5) (the fraction cut at each end), got {v}",
    "memory": lambda v: None if 0 <= v < 1 else f"must be in [0, 1) (the weight kept from earlier rounds), got {v}",
    "prior": lambda v: None if 0 < v <= 1 else f"must be in (0, 1] (every evaluator's reputation at first), got {v}",
}


def make_scoring_rule(name: str, **params: float | int) -> ScoringRule:
    """The rule `name` with its parameters bound."""
    if name not in SCORING_RULES:
        raise ValueError(f"unknown scoring rule {name!r}; choose one of {', '.join(SCORING_RULES)}")
    accepted = scoring_params_of(name)
    for k, v in params.items():
        if k not in accepted:
            raise ValueError(f"scoring rule {name!r} takes no parameter {k!r}")
        problem = SCORING_PARAM_CHECKS[k](v) if k in SCORING_PARAM_CHECKS else None
        if problem:
            raise ValueError(f"{k}: {problem}")
    return functools.partial(SCORING_RULES[name], **params)


def honesty_record(
    contrib: Mapping[Worker, Contribution], scores: Mapping[Worker, Mapping[Worker, float]]
) -> dict[Worker, float]:
    """One round's entry of `ScoringContext.history`: the honesty d'_a of every
    evaluator that scored somebody this round (the others' reputation stays)."""
    return {a: contrib[a].honesty for a in contrib if scores.get(a)}
