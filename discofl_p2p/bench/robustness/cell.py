"""One cell of the sweep: its scenario as a plain loop (`run_plain`, no chain, no
network), and its metrics as a JSON-able dict.

Honest-reward fairness needs each honest worker's marginal contribution to the final
model on the held-out test set: the test accuracy of the final aggregate with its
last-round model against without it, every other candidate of the final aggregate
kept (`marginal_contributions`), from the loop's `last_models` and the same setup
(`build_setup` depends on the seed alone). The final aggregate rebuilt from them must
give the loop's own final accuracy, or the cell fails.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from discofl_p2p.agents.jobs import evaluate_job, initial_state
from discofl_p2p.bench.robustness.metrics import adversary_share, gini, spearman
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.ml.weights import StateDict
from discofl_p2p.scenario.config import Scenario, parse_scenario
from discofl_p2p.scenario.plain import PlainOutcome, PlainRound, run_plain
from discofl_p2p.scenario.runner import build_behaviours, build_setup

FINAL_KEEP_RATIO = 0.5
"""`run_plain`'s default: the final aggregate keeps the models scoring at least half the best."""


def final_set(last: dict[str, StateDict], contribution: dict[str, float], keep_ratio: float) -> set[str]:
    """The workers whose last-round models the requester aggregates into the final
    model: those scoring at least `keep_ratio` x the best contribution."""
    best = max(contribution.values(), default=0.0)
    return {n for n in last if contribution[n] >= keep_ratio * best}


def final_model(out: PlainOutcome, aggregate: Callable[[list[Candidate]], StateDict], w0: StateDict) -> StateDict:
    """The final model as the requester builds it from the loop's last round (w0 when
    no model qualifies)."""
    contribution = out.rounds[max(out.rounds)].contribution
    chosen = final_set(out.last_models, contribution, FINAL_KEEP_RATIO)
    return aggregate([Candidate(out.last_models[n], contribution[n]) for n in sorted(chosen)]) if chosen else w0


def attack_success(
    sc: Scenario, final: StateDict, test: tuple[torch.Tensor, torch.Tensor], w0_blob: bytes
) -> float | None:
    """The final model's accuracy on the aim of the scenario's first targeted attacker
    (`TrainingBehaviour.success_set` on the held-out test split): the share of the
    aimed-at test inputs it classifies as the attacker wants. None without one."""
    for b in build_behaviours(sc).values():
        if (aim := b.training.success_set(*test)) is not None:
            return evaluate_job(w0_blob, final, *aim, "accuracy")
    return None


def ring_guess_rate(rounds: dict[int, PlainRound]) -> float | None:
    """How often the guessing ring members' guesses landed on a ring mate's model:
    hits / guesses over every round and member; None without a guessing ring."""
    hits = sum(h for rec in rounds.values() for h, _ in rec.ring_guesses.values())
    guesses = sum(g for rec in rounds.values() for _, g in rec.ring_guesses.values())
    return hits / guesses if guesses else None


def marginal_contributions(
    last: dict[str, StateDict],
    contribution: dict[str, float],
    accuracy: Callable[[list[Candidate]], float],
    keep_ratio: float = FINAL_KEEP_RATIO,
) -> tuple[float, dict[str, float]]:
    """The final aggregate's accuracy, and each worker's leave-one-out marginal
    contribution to it: accuracy(S with its model) - accuracy(S without it), where S
    is the final aggregate's set (the last round's models scoring at least
    `keep_ratio` x the best contribution, weighted by contribution, in name order)."""
    final = final_set(last, contribution, keep_ratio)

    def acc(members: set[str]) -> float:
        return accuracy([Candidate(last[n], contribution[n]) for n in sorted(members)])

    return acc(final), {n: acc(final | {n}) - acc(final - {n}) for n in last}


def run_cell(text: str) -> dict[str, Any]:
    """Runs one cell's scenario and returns its metrics (see `docs/robustness.md`)."""
    started = time.monotonic()
    sc = parse_scenario(text, "<cell>")
    out = run_plain(sc, final_keep_ratio=FINAL_KEEP_RATIO)
    ctx, w0_blob = build_setup(sc)  # the same setup the loop built: it depends on the seed alone
    w0 = initial_state(w0_blob)

    def accuracy(cands: list[Candidate]) -> float:
        state = ctx.aggregate(cands) if cands else w0  # without any model the requester has w0
        return evaluate_job(w0_blob, state, *ctx.test_set, "accuracy")

    last = out.last_models
    contribution = out.rounds[max(out.rounds)].contribution
    rebuilt, marginal = marginal_contributions(last, contribution, accuracy)
    if out.final_accuracy is not None and not math.isclose(rebuilt, out.final_accuracy, abs_tol=1e-9):
        raise RuntimeError(f"the final aggregate rebuilt gives {rebuilt}, the plain loop {out.final_accuracy}")

    final = final_model(out, ctx.aggregate, w0)
    names = [f"{g.name}-{i}" for g in sc.workers for i in range(1, g.count + 1)]  # as the runner names them
    adversaries = {f"{g.name}-{i}" for g in sc.workers if g.behavior != "honest" for i in range(1, g.count + 1)}
    rewards = {n: float(sum(r.rewards_wei.get(n, 0) for r in out.rounds.values())) for n in names}
    honest = [n for n in names if n not in adversaries]
    return {
        "final_accuracy": out.final_accuracy,
        "adversary_share": adversary_share(rewards, adversaries),
        "attack_success": attack_success(sc, final, ctx.test_set, w0_blob),
        "ring_guess_rate": ring_guess_rate(out.rounds),
        "fairness_spearman": spearman([rewards[n] for n in honest], [marginal.get(n, 0.0) for n in honest]),
        "gini": gini([rewards[n] for n in honest]),
        "rewards": rewards,
        "marginal": marginal,
        "adversaries": sorted(adversaries),
        "wall_s": time.monotonic() - started,
    }
