"""Authorship during evaluation: can a chain observer link an evaluator to its model?

While evaluation is open, the chain shows each round's published list (EvaluationOpened)
and each evaluator's revealed row of scores (ScoresRevealed), and nothing else about who wrote
which model. The observer here tries, for each evaluator's row, to point at the
evaluator's own model by one strategy at a time. Ground truth comes from the
settleRound calldata, which reveals the mapping only once the round is over.

Every evaluator scores every model, its own included, with a decoy
(`behaviors.decoy_score`); the old behaviour (abstaining on exactly its own model)
named it every time.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from discofl_p2p.agents.behaviors import Behavior, decoy_score
from discofl_p2p.agents.jobs import evaluate_job
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import NOT_OPENED, SCORE_SCALE, decode_scores
from discofl_p2p.commands.audit import audit_task
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.runner import Simulation
from tests.conftest import run, with_simulation

Row = Sequence[int | None]  # one evaluator's scores in basis points, None = abstained

# ---------------------------------------------------------------- the observer


def _pick(candidates: Sequence[int], n: int, rng: random.Random) -> int:
    """A guess among `candidates` (ties broken at random), or any position if none."""
    return rng.choice(list(candidates)) if candidates else rng.randrange(n)


def abstained(row: Row, rng: random.Random) -> int:
    return _pick([i for i, v in enumerate(row) if v is None], len(row), rng)


def _scored(row: Row) -> list[tuple[int, int]]:
    return [(i, v) for i, v in enumerate(row) if v is not None]


def row_max(row: Row, rng: random.Random) -> int:
    s = _scored(row)
    top = max((v for _, v in s), default=None)
    return _pick([i for i, v in s if v == top], len(row), rng)


def row_min(row: Row, rng: random.Random) -> int:
    s = _scored(row)
    low = min((v for _, v in s), default=None)
    return _pick([i for i, v in s if v == low], len(row), rng)


def closest_to_median(row: Row, rng: random.Random) -> int:
    s = _scored(row)
    if not s:
        return rng.randrange(len(row))
    med = statistics.median(v for _, v in s)
    best = min(abs(v - med) for _, v in s)
    return _pick([i for i, v in s if abs(v - med) == best], len(row), rng)


def repeated(row: Row, rng: random.Random) -> int:
    s = _scored(row)
    count = Counter(v for _, v in s)
    return _pick([i for i, v in s if count[v] > 1], len(row), rng)


def nearest_neighbour(row: Row, rng: random.Random) -> int:
    """The score closest to another one (a decoy squeezed between two real scores)."""
    s = _scored(row)
    if len(s) < 2:
        return _pick([i for i, _ in s], len(row), rng)
    gap = {i: min(abs(v - w) for j, w in s if j != i) for i, v in s}
    best = min(gap.values())
    return _pick([i for i, g in gap.items() if g == best], len(row), rng)


def off_lattice(row: Row, rng: random.Random) -> int:
    """Accuracy on a validation split of size m is a multiple of 1/m: find the smallest
    m that explains all scores but one, and guess that one (a decoy drawn off the
    evaluator's lattice)."""
    s = _scored(row)
    for m in range(1, 2001):
        off = [i for i, v in s if v != round(round(v * m / SCORE_SCALE) / m * SCORE_SCALE)]
        if not off:
            break
        if len(off) == 1:
            return off[0]
    return rng.randrange(len(row))


STRATEGIES: dict[str, Callable[[Row, random.Random], int]] = {
    "abstained": abstained,
    "row max": row_max,
    "row min": row_min,
    "closest to the median": closest_to_median,
    "exactly repeated": repeated,
    "nearest neighbour": nearest_neighbour,
    "off lattice": off_lattice,
}


def hits(rows: Sequence[tuple[Row, int]], strategy: Callable[[Row, random.Random], int]) -> int:
    """How many of the rows' own positions (the ints) the strategy names."""
    rng = random.Random(0)
    return sum(strategy(row, rng) == own for row, own in rows)


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def chance_limit(n: int, p: float, alpha: float) -> int:
    """The most hits a strategy no better than chance (p per guess) reaches in n
    guesses, except with probability below alpha."""
    return next(k for k in range(n + 1) if binomial_tail(n, p, k + 1) < alpha)


# ---------------------------------------------------------------- self-scores


def test_every_behaviour_scores_its_own_model_like_the_others():
    row = [0.5, None, 0.7, 0.9, None]  # position 1 its own, 4 unfetchable
    rng = random.Random(1)
    assert Behavior("biased_scorer", {"value": 0.05}).self_score([0.05, None, 0.05, 0.05, None], 1, rng, 20) == 0.05
    assert Behavior("lazy_evaluator").self_score([0.5, None, 0.5, 0.5, None], 1, rng, 20) == 0.5
    assert Behavior("collusion", {"ring": "r"}).self_score([0.0, None, 1.0, 0.0, None], 1, rng, 20) == 1.0
    for b in ("honest", "garbage", "label_flip", "free_rider", "model_poisoning"):
        s = Behavior(b).self_score(row, 1, rng, 20)
        assert s is not None and 0.0 <= s <= 1.0 and round(s * 20) == pytest.approx(s * 20, abs=1e-5)
    # A worker that scored nobody else abstains on its own model too: one score among
    # abstentions would name it.
    for b in ("honest", "biased_scorer", "lazy_evaluator", "collusion"):
        assert Behavior(b).self_score([None, None, None], 1, rng, 20) is None


def test_a_decoy_is_a_score_an_honest_evaluator_could_give():
    """On the evaluator's lattice (k / |val|, in float32 as the metric computes it),
    within [0, 1], and reaching every rank among the other scores."""
    rng = random.Random(2)
    others = [0.25, 0.5, 0.6, 0.9]
    ranks = Counter()
    for _ in range(2000):
        d = decoy_score(others, rng, 20)
        k = round(d * 20)
        assert d == float(torch.tensor(float(k)) / 20) and 0 <= k <= 20
        ranks[sum(o < d for o in others)] += 1
    assert set(ranks) == {0, 1, 2, 3, 4}
    assert decoy_score([0.4], rng, 20) == pytest.approx(0.4)  # one other score: nothing to hide among
    assert 0.0 <= decoy_score([0.1, 0.3, 0.2], rng, None) <= 1.0  # no lattice (macro-F1)
    with pytest.raises(ValueError):
        decoy_score([], rng, 20)


def test_on_many_synthetic_rows_the_decoy_is_as_hard_to_find_as_any_score():
    """Rows of real-looking scores (accuracy of models of mixed quality on a 20-digit
    validation split), one of them replaced by the evaluator's self-score. With 3,000
    rows per case, a strategy at chance (1/6) finds about 500 (sd 20): the decoy stays
    below 1.25x chance (625, five sd) for every strategy. The alternatives it replaced are
    caught far above that: the true self-score (the best on one's own data) by the
    row max, the median of the other scores by the closest-to-median strategy, a copy
    of one of them by the exact repeat; a decoy off the lattice by the lattice."""
    gen, rng = np.random.default_rng(3), random.Random(3)
    n_models, val, trials = 6, 20, 3000

    def rows(self_score: Callable[[list[float], float], float]) -> list[tuple[Row, int]]:
        out = []
        for _ in range(trials):
            quality = gen.uniform(0.1, 0.9, n_models)
            scores = [float(np.float32(gen.binomial(val, q)) / np.float32(val)) for q in quality]
            own = rng.randrange(n_models)
            true_own = max(scores) + 0.05  # its own model, on its own data
            others = [s for i, s in enumerate(scores) if i != own]
            scores[own] = min(1.0, self_score(others, true_own))
            out.append(([round(s * SCORE_SCALE) for s in scores], own))
        return out

    decoy = rows(lambda others, _: decoy_score(others, rng, val))
    chance = trials / n_models
    found = {name: hits(decoy, s) for name, s in STRATEGIES.items()}
    assert all(h < 1.25 * chance for h in found.values()), found
    assert hits(rows(lambda _, true: true), row_max) > 0.9 * trials
    assert hits(rows(lambda others, _: statistics.median(others)), closest_to_median) > 2.5 * chance
    assert hits(rows(lambda others, _: rng.choice(others)), repeated) > 2 * chance
    assert hits(rows(lambda others, _: rng.uniform(min(others), max(others))), off_lattice) > 0.9 * trials


# ---------------------------------------------------------------- a real run

ANON = """\
timeout_s = 300

[task]
name = "anon"
rounds = 6
top_k = 8
submission_timeout_s = 60
evaluation_timeout_s = 60
seed = 8

[data]
split = "dirichlet"
alpha = 0.3
samples_per_worker = 100

[model]
name = "logreg"
epochs = 1

[[workers]]
name = "honest"
count = 8
"""


async def _observe(ws_url: str, contract: str) -> tuple[dict, dict, dict]:
    """What the chain says: per round, the published digests (EvaluationOpened) and each
    evaluator's row (ScoresRevealed); and, as ground truth only, each submitter's
    position from the settleRound calldata."""
    w3 = await connect(ws_url)
    try:
        c = TaskClient(w3, contract, derive_account(0, "observer"))
        published: dict[int, list[bytes]] = {}
        rows: dict[tuple[int, str], list[float | None]] = {}
        truth: dict[tuple[int, str], int] = {}
        for ev in await c.past_events():
            if ev.name == "EvaluationOpened":
                published[ev.args["round"]] = list(ev.args["models"])
            elif ev.name == "ScoresRevealed":
                rows[(ev.args["round"], ev.args["evaluator"])] = decode_scores(bytes(ev.args["scores"]))
            elif ev.name == "RoundSettled":
                tx = await w3.eth.get_transaction(ev.tx_hash)  # type: ignore[arg-type]
                args = c.settlement_args(tx["input"])
                for who, pos in zip(args["submitters"], args["positions"]):
                    if pos != NOT_OPENED:
                        truth[(ev.args["round"], who)] = pos
        return published, rows, truth
    finally:
        await w3.provider.disconnect()


@pytest.mark.slow
def test_a_chain_observer_cannot_link_evaluators_to_their_models(anvil):
    sc = parse_scenario(ANON)

    async def body(sim: Simulation, _net: object, w0: bytes) -> tuple[Simulation, bytes]:
        async with asyncio.timeout(sc.timeout_s):
            await sim.run()
        return sim, w0

    sim, w0 = run(with_simulation(anvil, sc, body))
    ctx = sim.requester.setup
    contract = sim.requester.client.address
    published, rows, truth = run(_observe(anvil.ws_url, contract))
    n_models, n_rounds = 8, 6
    assert sorted(published) == list(range(1, n_rounds + 1)) and all(len(p) == n_models for p in published.values())
    assert len(rows) == len(truth) == n_models * n_rounds

    # Each row, in basis points, with its evaluator's own position (the ground truth).
    observed = [([None if v is None else round(v * SCORE_SCALE) for v in row], truth[k]) for k, row in rows.items()]
    # Nobody abstains any more: every evaluator could fetch every model, and scored its own.
    assert all(v is not None for row, _ in observed for v in row)

    # Chance is 1/8 per guess (6 expected of 48). A strategy that knows nothing names
    # more than `limit` = 16 with probability below 1e-4 (binomial tail): for the 7
    # strategies together, a false alarm below 1e-3. One that names the author half the
    # time passes that limit with probability 0.985.
    limit = chance_limit(len(observed), 1 / n_models, 1e-4)
    assert limit == 16
    found = {name: hits(observed, s) for name, s in STRATEGIES.items()}
    assert all(h <= limit for h in found.values()), found

    # The old behaviour, abstaining on exactly one's own model, named it every time.
    old = [([None if i == own else v for i, v in enumerate(row)], own) for row, own in observed]
    assert hits(old, abstained) == len(old)

    # The true self-score would have named it too: recompute every evaluator's true
    # scores of every model of the round (the requester kept each checked model).
    # The honest ones are exactly what the chain holds; the own one tops the row.
    workers = {w.address: w for w in sim.workers}
    true_rows = []
    for (r, evaluator), row in rows.items():
        rnd = sim.requester.rounds[r]
        split = workers[evaluator].split
        x, y = ctx.data.x[split.val], ctx.data.y[split.val]
        true = [evaluate_job(w0, rnd.checked[w], x, y, "accuracy") for w in rnd.owner_at]
        own = truth[(r, evaluator)]
        assert [round(t * SCORE_SCALE) for i, t in enumerate(true) if i != own] == [
            round(v * SCORE_SCALE) for i, v in enumerate(row) if i != own and v is not None
        ]
        true_rows.append(([round(t * SCORE_SCALE) for t in true], own))
    assert hits(true_rows, row_max) > limit

    # The rules ignore self-scores: not in the requester's matrix, and the audit, which
    # recomputes every round from the chain, agrees with what the contract paid.
    for rec in sim.recorder.rounds.values():
        assert all(e not in row for e, row in rec.scores.items()) and len(rec.scores) == n_models
    audits = run(audit_task(anvil.ws_url, contract)).rounds
    assert len(audits) == n_rounds and all(a.ok for a in audits)
