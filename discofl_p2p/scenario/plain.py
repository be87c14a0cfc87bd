"""The same task as a plain single-process loop: no chain, no network, no agents.

It plays every round as the agents do, by calling the same pure functions with the
same seeds, so that for the same scenario it gives the same scores, contributions,
rankings and rewards as the full stack (`tests/test_replay.py`):

- behaviours: the runner's `build_behaviours` (a collusion ring's size included), the
  same `derive_seed` seeds for data, training, submissions and scores, each worker's
  base as the worker agent computes it, and last round's models in CID order;
- the requester's exclusions: `select_openings` on real commitments (salts are zero
  here: they are secrets that decide nothing), with every model published before
  (w0's weights included) and the checks against w0 (`decode_state`, within
  `max_model_bytes`);
- a `dropout` worker in `late` mode trains and evaluates, but its commitment and its
  scores come too late to count; in `stop` mode it does nothing from its round on;
- scores go through the chain's encoding (`encode_scores`, basis points) as the
  requester reads them, and the same BlockFlow, Top-K and reward functions settle the
  round (`trust.settlement.settle`); the final model is built as the requester builds it;
- under an anchored scoring rule the requester's anchor is its score of every published
  model on the same root set (`TaskSetup.root_set`), through the same encoding;
- commit-reveal of scores decides nothing here: every on-time worker reveals what it
  committed, and a `copy_median` scorer, which under commit-reveal never sees a row
  to copy before it must commit, submits its true scores, as in the full stack.

The close is played too: what the rounds left unpaid is shared by the contract's rule
(`trust.settlement.close_shares`), so `PlainOutcome.rewards_wei`, the rounds' rewards
plus the close shares, is what the full stack's workers withdraw (`RunOutcome.rewards_wei`).

What it leaves out: the published order (a secret shuffle in the full stack, that
decides nothing), salts, gas. It also measures each published model's test accuracy,
as the requester does, so that it is the reference for the overhead of
decentralisation (`discofl-p2p bench scenarios`). Torch runs one thread, as each of the
agents' jobs does: a different thread count can change float sums.

`jobs` runs the round's training jobs, and each evaluator's evaluations, on that many
threads at once, as the agents share one pool of jobs sized to the cores; the results
are the same for any `jobs` (each job is single-threaded and seeded on its own, and
results are gathered in roster order), only the wall time changes. That is how the
overhead of decentralisation is measured at equal parallelism.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch

from discofl_p2p.agents.behaviors import guess_positions
from discofl_p2p.agents.context import derive_seed
from discofl_p2p.agents.jobs import evaluate_job, initial_state, train_job
from discofl_p2p.agents.requester import select_openings
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import commitment, decode_scores, encode_scores
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.ml.weights import Spec, StateDict, decode_state, encode_state
from discofl_p2p.p2p.cid import cid_of, digest_of
from discofl_p2p.scenario.config import Scenario
from discofl_p2p.scenario.runner import build_behaviours, build_setup, worker_names
from discofl_p2p.trust.anchor import anchor_of
from discofl_p2p.trust.blockflow import Contribution, score_matrix
from discofl_p2p.trust.rewards import round_pot
from discofl_p2p.trust.scoring import NEEDS_ANCHOR, ScoringContext, honesty_record, make_scoring_rule
from discofl_p2p.trust.settlement import close_shares, settle, streaks_after, tie_order

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class _Each(Protocol):
    """Maps a function over items, some at a time, with results in the items' order."""

    def __call__(self, fn: Callable[[_In], _Out], items: Iterable[_In], /) -> list[_Out]: ...


PLAIN_CONTRACT = "0x" + "00" * 19 + "01"
"""The address the plain loop's commitments are bound to (there is no contract)."""


@dataclass
class PlainRound:
    """One round as the requester records it (`RoundRecord`'s learning fields)."""

    round: int
    models: dict[str, str] = field(default_factory=dict)  # worker -> CID
    excluded: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    contribution: dict[str, float] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)
    rewards_wei: dict[str, int] = field(default_factory=dict)
    test_accuracy: dict[str, float] = field(default_factory=dict)  # each published model's, as the requester records
    anchor: dict[str, float] = field(default_factory=dict)  # the requester's root-set scores, under an anchored rule
    # A guessing ring member (no shared CIDs) -> (its guesses that were a ring mate's model, its guesses).
    ring_guesses: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PlainOutcome:
    final_accuracy: float | None
    wall_s: float
    contributions: list[dict[str, float]]
    rounds: dict[int, PlainRound] = field(default_factory=dict)
    last_models: dict[str, StateDict] = field(default_factory=dict)  # the last round's published models
    close_shares: dict[str, int] = field(default_factory=dict)  # each worker's share of the unpaid rest
    refunded_wei: int = 0  # what the close refunded the requester

    @property
    def rewards_wei(self) -> dict[str, int]:
        """Each worker's total: what the rounds paid it plus its close share."""
        total = dict(self.close_shares)
        for rec in self.rounds.values():
            for n, v in rec.rewards_wei.items():
                total[n] = total.get(n, 0) + v
        return total


@dataclass
class _Worker:
    """What one worker keeps from round to round, as the worker agent does."""

    candidates: list[Candidate] = field(default_factory=list)
    seen: list[tuple[float, StateDict]] = field(default_factory=list)
    previous_base: StateDict | None = None


def run_plain(sc: Scenario, *, final_keep_ratio: float = 0.5, jobs: int = 1) -> PlainOutcome:
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:

        def each(fn: Callable[[_In], _Out], items: Iterable[_In]) -> list[_Out]:
            """`fn` over `items`, `jobs` at a time, results in the items' order."""
            return list(pool.map(fn, items)) if jobs > 1 else [fn(i) for i in items]

        return _run(sc, final_keep_ratio, each)


def _run(sc: Scenario, final_keep_ratio: float, each: _Each) -> PlainOutcome:
    torch.set_num_threads(1)
    started = time.monotonic()
    ctx, w0_blob = build_setup(sc)
    names = [n for n, _, _ in worker_names(sc)]
    behaviours = build_behaviours(sc)
    index = {n: i for i, n in enumerate(names)}
    splits = {n: ctx.partition.workers[index[behaviours[n].data_owner(n)]] for n in names}
    address = {n: str(derive_account(sc.task.seed, f"{ctx.task_id}/{n}").address) for n in names}
    rings: dict[str, list[str]] = {}
    for n in names:
        if (ring := behaviours[n].ring) is not None and behaviours[n].shares_cids:
            rings.setdefault(ring, []).append(n)
    w0 = initial_state(w0_blob)
    published_before = {cid_of(encode_state(w0)): "w0"}
    state = {n: _Worker() for n in names}
    streaks = dict.fromkeys(names, 0)
    rounds: dict[int, PlainRound] = {}
    contrib: dict[str, Contribution] = {}
    last: dict[str, StateDict] = {}
    scoring = make_scoring_rule(sc.task.scoring, **sc.task.scoring_params)
    honesty_history: list[dict[str, float]] = []  # the scoring rule's context, as the requester keeps it
    participants: set[str] = set()  # committed a model on time in some round (the contract's participantCount)

    def seed(n: str, *parts: object) -> int:
        return derive_seed(sc.task.seed, n, *parts)

    for r in range(1, sc.task.rounds + 1):
        rec = rounds[r] = PlainRound(r)
        active = [n for n in names if not behaviours[n].stopped(r)]

        def submit(n: str, r: int = r) -> tuple[str, StateDict]:
            """Worker n's round: its base, its training, its submission (touches only its state)."""
            b, ws = behaviours[n], state[n]
            base = ctx.aggregate(ws.candidates) if r > 1 and ws.candidates and b.starts_from_aggregate() else w0
            trained = base
            if b.trains():
                owner = b.data_owner(n)
                x, y = b.training_data(ctx.data.x[splits[n].train], ctx.data.y[splits[n].train], seed(owner, "data", r))
                trained = train_job(w0_blob, base, x, y, ctx.train_cfg_for(r), seed(owner, "train", r))
            sub = b.submission(trained, base, ws.seen, seed(n, "submit", r), ws.previous_base)
            ws.previous_base = base
            return cid_of(encode_state(sub)), sub

        own: dict[str, tuple[str, StateDict]] = dict(zip(active, each(submit, active)))

        # The requester: on-time commitments, in roster order, and its exclusions.
        salt = bytes(32)
        on_time = [n for n in active if not behaviours[n].late(r)]
        order = [address[n] for n in on_time]
        participants.update(on_time)
        by_address = {address[n]: n for n in active}
        valid, rec.excluded = select_openings(
            contract=PLAIN_CONTRACT,
            round_=r,
            order=order,
            commitments={a: commitment(PLAIN_CONTRACT, r, a, digest_of(own[by_address[a]][0]), salt) for a in order},
            openings={a: (own[by_address[a]][0], salt) for a in order},
            passed={a for a in order if _passes(own[by_address[a]][1], ctx.spec, ctx.max_model_bytes)},
            published_before=published_before,
            names=by_address,
        )
        published = sorted(by_address[a] for a in valid)
        for n in published:
            published_before[own[n][0]] = f"{n} (round {r})"
        rec.models = {n: own[n][0] for n in published}
        canon = sorted(published, key=lambda n: own[n][0])  # the workers' CID order

        def evaluate(
            n: str, canon: list[str] = canon, own: dict[str, tuple[str, StateDict]] = own
        ) -> tuple[list[float | None], float]:
            """Evaluator n's true scores of the published models, and of its own model."""
            x, y = ctx.data.x[splits[n].val], ctx.data.y[splits[n].val]
            true: list[float | None] = [
                None if m == n else evaluate_job(w0_blob, own[m][1], x, y, ctx.metric) for m in canon
            ]
            return true, evaluate_job(w0_blob, own[n][1], x, y, ctx.metric)

        evaluated = dict(zip(active, each(evaluate, active)))
        rows: dict[str, list[float | None]] = {}
        for n in active:
            b, ws = behaviours[n], state[n]
            true, own_score = evaluated[n]
            kept = [(own[m][0], own[m][1], s) for m, s in zip(canon, true) if s is not None]
            kept.append((own[n][0], own[n][1], own_score))
            kept.sort(key=lambda k: k[0])
            ws.candidates = [Candidate(st, s) for _, st, s in kept]
            ws.seen = [(s, st) for c, st, s in kept if c != own[n][0]]
            mates = [own[m][0] for m in rings.get(b.ring or "", []) if m in own]
            ring_positions = {k for k, m in enumerate(canon) if own[m][0] in mates} if mates else None
            row = b.scores(true, ring_positions, seed(n, "scores", r))
            if b.ring is not None and ring_positions is None:  # it guessed: did it land?
                guess = guess_positions(true, int(b.scoring.params.get("_ring_size", 2)), seed(n, "scores", r))
                truth = {k for k, m in enumerate(canon) if m != n and behaviours[m].ring == b.ring}
                rec.ring_guesses[n] = (len(guess & truth), len(guess))
            if not b.late(r):
                rows[n] = decode_scores(encode_scores(row))  # the self-score is dropped anyway

        def accuracy(n: str, own: dict[str, tuple[str, StateDict]] = own) -> float:
            return evaluate_job(w0_blob, own[n][1], *ctx.test_set, "accuracy")

        rec.test_accuracy = dict(zip(published, each(accuracy, published)))
        anchor = None
        if sc.task.scoring in NEEDS_ANCHOR:
            row = [evaluate_job(w0_blob, own[n][1], *ctx.root_set, ctx.metric) for n in published]
            anchor = rec.anchor = anchor_of(published, decode_scores(encode_scores(row)))

        # The requester settles.
        rec.scores = score_matrix(canon, rows)
        context = ScoringContext(history=tuple(honesty_history), anchor=anchor)
        contrib = scoring(rec.scores, tie_order(address), context)
        honesty_history.append(honesty_record(contrib, rec.scores))
        streaks = streaks_after(streaks, names, published)
        rec.contribution = {n: c.score for n, c in contrib.items()}
        rec.ranking, rec.rewards_wei = settle(
            contrib,
            published,
            streaks,
            policy=sc.task.reward_policy,
            top_k=sc.task.top_k,
            pot=round_pot(sc.task.deposit_wei, sc.task.rounds, r),
            floor=sc.task.quality_floor,
            bonus=sc.task.loyalty_bonus,
        )
        last = {n: own[n][1] for n in published}

    best = max((c.score for c in contrib.values()), default=0.0)
    final_c = [Candidate(s, contrib[n].score) for n, s in last.items() if contrib[n].score >= final_keep_ratio * best]
    acc = None
    if final_c:
        acc = evaluate_job(w0_blob, ctx.aggregate(final_c), *ctx.test_set, "accuracy")
    contributions = [rounds[r].contribution for r in sorted(rounds)]
    earned = {n: sum(rec.rewards_wei.get(n, 0) for rec in rounds.values()) for n in names}
    close = close_shares(sc.task.deposit_wei - sum(earned.values()), earned, [n for n in names if n in participants])
    return PlainOutcome(acc, time.monotonic() - started, contributions, rounds, last, close.shares, close.refund)


def _passes(state: StateDict, spec: Spec, max_bytes: int) -> bool:
    """The requester's checks of a model against w0 (names, shapes, dtypes, finite),
    on bytes a node would fetch (at most `max_bytes`)."""
    blob = encode_state(state)
    if len(blob) > max_bytes:
        return False
    try:
        decode_state(blob, spec)
    except Exception:  # noqa: BLE001 - the requester excludes a model that fails any check
        return False
    return True
