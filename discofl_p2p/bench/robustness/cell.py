"""One cell of the sweep: its scenario as a plain loop (`run_plain`, no chain, no
network), and its metrics as a JSON-able dict.

Honest-reward fairness needs each honest worker's marginal contribution to the final
model on the held-out test set: the test accuracy of the final aggregate with its
last-round model against without it, every other candidate of the final aggregate
kept (`marginal_contributions`). `PlainOutcome` keeps the last round's models by CID
only, so `_FinalModels` records, while the loop runs, the task's setup and every
model the loop evaluates on the test set (it does so for each published model, as the
requester does); the last round's are found by CID, and the final aggregate rebuilt
from them must give the loop's own final accuracy, or the cell fails.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from discofl_p2p.agents.context import TaskSetup
from discofl_p2p.agents.jobs import evaluate_job, initial_state
from discofl_p2p.bench.robustness.metrics import adversary_share, gini, spearman
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.ml.weights import StateDict, encode_state
from discofl_p2p.p2p.cid import cid_of
from discofl_p2p.scenario import plain
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import PlainOutcome, run_plain

FINAL_KEEP_RATIO = 0.5
"""`run_plain`'s default: the final aggregate keeps the models scoring at least half the best."""


class _FinalModels:
    """Wraps `plain`'s `build_setup` and `evaluate_job` for one run, to keep the setup
    and the models it evaluates on the test set."""

    def __init__(self) -> None:
        self.ctx: TaskSetup | None = None
        self.w0: bytes = b""
        self.on_test: list[StateDict] = []

    @contextmanager
    def recording(self) -> Iterator[_FinalModels]:
        build, evaluate = plain.build_setup, plain.evaluate_job

        def build_setup(sc: Any) -> tuple[TaskSetup, bytes]:
            self.ctx, self.w0 = build(sc)
            return self.ctx, self.w0

        def evaluate_job(w0: bytes, state: StateDict, x: Any, y: Any, metric: str) -> float:
            if self.ctx is not None and x is self.ctx.test_set[0]:
                self.on_test.append(state)
            return evaluate(w0, state, x, y, metric)

        plain.build_setup, plain.evaluate_job = build_setup, evaluate_job
        try:
            yield self
        finally:
            plain.build_setup, plain.evaluate_job = build, evaluate

    def last_round(self, out: PlainOutcome) -> dict[str, StateDict]:
        """The last round's published models, by worker."""
        by_cid = {cid_of(encode_state(s)): s for s in self.on_test}
        models = out.rounds[max(out.rounds)].models
        missing = [n for n, c in models.items() if c not in by_cid]
        if missing:
            raise RuntimeError(f"the plain loop did not evaluate {missing}'s last models on the test set")
        return {n: by_cid[c] for n, c in models.items()}


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
    best = max(contribution.values(), default=0.0)
    final = {n for n in last if contribution[n] >= keep_ratio * best}

    def acc(members: set[str]) -> float:
        return accuracy([Candidate(last[n], contribution[n]) for n in sorted(members)])

    return acc(final), {n: acc(final | {n}) - acc(final - {n}) for n in last}


def run_cell(text: str) -> dict[str, Any]:
    """Runs one cell's scenario and returns its metrics (see `docs/robustness.md`)."""
    started = time.monotonic()
    sc = parse_scenario(text, "<cell>")
    recorder = _FinalModels()
    with recorder.recording():
        out = run_plain(sc, final_keep_ratio=FINAL_KEEP_RATIO)
    ctx = recorder.ctx
    assert ctx is not None
    w0 = initial_state(recorder.w0)

    def accuracy(cands: list[Candidate]) -> float:
        state = ctx.aggregate(cands) if cands else w0  # without any model the requester has w0
        return evaluate_job(recorder.w0, state, *ctx.test_set, "accuracy")

    last = recorder.last_round(out)
    contribution = out.rounds[max(out.rounds)].contribution
    rebuilt, marginal = marginal_contributions(last, contribution, accuracy)
    if out.final_accuracy is not None and not math.isclose(rebuilt, out.final_accuracy, abs_tol=1e-9):
        raise RuntimeError(f"the final aggregate rebuilt gives {rebuilt}, the plain loop {out.final_accuracy}")

    names = [f"{g.name}-{i}" for g in sc.workers for i in range(1, g.count + 1)]  # as the runner names them
    adversaries = {f"{g.name}-{i}" for g in sc.workers if g.behavior != "honest" for i in range(1, g.count + 1)}
    rewards = {n: float(sum(r.rewards_wei.get(n, 0) for r in out.rounds.values())) for n in names}
    honest = [n for n in names if n not in adversaries]
    return {
        "final_accuracy": out.final_accuracy,
        "adversary_share": adversary_share(rewards, adversaries),
        "attack_success": None,  # no targeted (backdoor) attack in the behaviour registries yet
        "fairness_spearman": spearman([rewards[n] for n in honest], [marginal.get(n, 0.0) for n in honest]),
        "gini": gini([rewards[n] for n in honest]),
        "rewards": rewards,
        "marginal": marginal,
        "adversaries": sorted(adversaries),
        "wall_s": time.monotonic() - started,
    }
