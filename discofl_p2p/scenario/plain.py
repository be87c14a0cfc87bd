"""The same task as a plain single-process loop: no chain, no network, no agents.

Every worker trains, evaluates every other published model on its validation split,
and aggregates exactly as the agents do (same behaviours, same jobs, same scoring,
same final model, the same seeds); the requester's test-set evaluations are done too. It is the
reference for the overhead of decentralisation (`discofl-p2p bench scenarios`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from discofl_p2p.agents.behaviors import Behavior
from discofl_p2p.agents.context import derive_seed
from discofl_p2p.agents.jobs import evaluate_job, initial_state, train_job
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.scenario.config import Scenario
from discofl_p2p.scenario.runner import build_setup, worker_names
from discofl_p2p.trust.blockflow import contribution_scores


@dataclass(frozen=True)
class PlainOutcome:
    final_accuracy: float | None
    wall_s: float
    contributions: list[dict[str, float]]


def run_plain(sc: Scenario, *, final_keep_ratio: float = 0.5) -> PlainOutcome:
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.monotonic()
    ctx, w0_model = build_setup(sc)
    roster = worker_names(sc)
    behaviors = {n: Behavior(b, dict(p)) for n, b, p in roster}
    splits = {n: ctx.partition.workers[i] for i, (n, _, _) in enumerate(roster)}
    w0 = initial_state(w0_model)
    cands: dict[str, list[Candidate]] = {n: [] for n in behaviors}
    seen: dict[str, list[tuple[float, dict]]] = {n: [] for n in behaviors}
    contributions = []
    last: dict[str, dict] = {}
    p: dict[str, float] = {}
    seed = sc.task.seed
    for r in range(1, sc.task.rounds + 1):
        published = {}
        for n, b in behaviors.items():
            if b.stopped(r):
                continue
            base = ctx.aggregate(cands[n]) if cands[n] and b.starts_from_aggregate() else w0
            trained = base
            if b.trains():
                x, y = ctx.data.x[splits[n].train], ctx.data.y[splits[n].train]
                x, y = b.training_data(x, y, derive_seed(seed, n, "data", r))
                trained = train_job(w0_model, base, x, y, ctx.train_cfg_for(r), derive_seed(seed, n, "train", r))
            published[n] = b.submission(trained, base, seen[n], derive_seed(seed, n, "submit", r))
        matrix = {}
        for n, b in behaviors.items():
            if b.stopped(r):
                continue
            x, y = ctx.data.x[splits[n].val], ctx.data.y[splits[n].val]
            names = list(published)
            true = [None if m == n else evaluate_job(w0_model, published[m], x, y, ctx.metric) for m in names]
            submitted = b.scores(true, None, derive_seed(seed, n, "scores", r))
            matrix[n] = {m: s for m, s in zip(names, submitted) if s is not None}
            cands[n] = [Candidate(published[m], s) for m, s in zip(names, true) if s is not None]
            seen[n] = [(s, published[m]) for m, s in zip(names, true) if s is not None]
            if n in published:
                cands[n].append(Candidate(published[n], evaluate_job(w0_model, published[n], x, y, ctx.metric)))
        for state in published.values():
            evaluate_job(w0_model, state, *ctx.test_set, "accuracy")
        contrib = contribution_scores(matrix, list(behaviors))
        p = {n: c.score for n, c in contrib.items()}
        contributions.append(p)
        last = published
    best = max((p[n] for n in last), default=0.0)
    final_c = [Candidate(s, p[n]) for n, s in last.items() if p[n] >= final_keep_ratio * best]
    acc = None
    if final_c:
        acc = evaluate_job(w0_model, ctx.aggregate(final_c), *ctx.test_set, "accuracy")
    return PlainOutcome(acc, time.monotonic() - started, contributions)
