"""A scripted task on the contract, without agents: deploy, register, rounds, close.

The demo, the gas benchmark and the chain tests share it. Models here are random
32-byte digests; the agents (scenario runner) put real model CIDs in their place.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from discofl_p2p.chain.client import TaskClient, TaskParams
from discofl_p2p.chain.devchain import advance_time, derive_account, fund
from discofl_p2p.chain.encoding import ScoreReveal, Submission, commitment, encode_scores, new_salt, reveal
from discofl_p2p.chain.limits import FUNDING_WEI


@dataclass
class ScriptedTask:
    requester: TaskClient
    workers: list[TaskClient]
    gas: dict[str, list[int]] = field(default_factory=dict)

    def record(self, call: str, gas: int) -> None:
        self.gas.setdefault(call, []).append(gas)


async def deploy_and_register(
    w3: AsyncWeb3,
    ws_url: str,
    params: TaskParams,
    n_workers: int,
    *,
    seed: int = 0,
    register: bool = True,
    start: bool = True,
) -> ScriptedTask:
    """Funds `n_workers` fresh accounts and deploys; then registers them unless
    `register` is false, and starts training unless `start` is false."""
    req_acct = derive_account(seed, "requester")
    accts: list[LocalAccount] = [derive_account(seed, f"w{i + 1}") for i in range(n_workers)]
    await fund(w3, req_acct.address, params.deposit_wei + FUNDING_WEI)
    await asyncio.gather(*(fund(w3, a.address, FUNDING_WEI) for a in accts))
    requester, res = await TaskClient.deploy(w3, req_acct, params, ws_url=ws_url)
    task = ScriptedTask(requester, [requester.as_account(a) for a in accts])
    task.record("deploy", res.gas_used)
    for w in task.workers if register else []:
        task.record("register", (await w.register()).gas_used)
    if start:
        task.record("startTraining", (await requester.start_training()).gas_used)
    return task


async def commit_all(
    task: ScriptedTask, round_: int, rng: random.Random, gas: dict[str, int] | None = None
) -> list[Submission]:
    """Every worker commits a random model digest with a random salt, in worker order;
    returns the openings (what each worker would hand the requester)."""
    out = []
    for w in task.workers:
        a = w.account.address
        digest, salt = hashlib.sha256(rng.randbytes(64)).digest(), new_salt(rng)
        c = commitment(task.requester.address, round_, a, digest, salt)
        g = (await w.submit_model(round_, c)).gas_used
        if gas is not None:
            gas["submitModel"] = max(gas.get("submitModel", 0), g)
        out.append(Submission(a, c, digest, salt))
    return out


async def score_all(
    evaluators: Sequence[TaskClient],
    round_: int,
    rows: Sequence[bytes],
    rng: random.Random | None = None,
    *,
    batch: TaskClient | None = None,
    omit: int = 0,
) -> dict[str, list[int]]:
    """Each evaluator commits its packed row of scores; once commits closed (all of
    them committed, or the evaluation deadline passed) the rows are revealed. With
    `batch` (the requester), the evaluators hand it their reveals and it posts them
    in one revealScores call, leaving out the last `omit` evaluators, which then
    reveal their own rows (the fallback); without, each reveals its own row.
    Salts as the agents draw them (`encoding.new_salt`), from `rng` when given
    (reproducible gas figures).
    Returns the gas of each call: commitScores and revealScores (each evaluator's
    own reveals) in evaluator order, revealScoresBatch (the batch, if any)."""
    salts = [new_salt(rng) for _ in evaluators]
    gas: dict[str, list[int]] = {"commitScores": [], "revealScores": [], "revealScoresBatch": []}
    for w, row, salt in zip(evaluators, rows, salts, strict=True):
        gas["commitScores"].append((await w.commit_scores(round_, row, salt)).gas_used)
    reveals: dict[str, ScoreReveal] = {
        w.account.address: ScoreReveal(salt, row) for w, row, salt in zip(evaluators, rows, salts, strict=True)
    }
    own = list(evaluators)
    if batch is not None:
        kept = dict(list(reveals.items())[: len(reveals) - omit])
        gas["revealScoresBatch"] += [res.gas_used for res in await batch.reveal_scores(round_, kept)]
        own = own[len(own) - omit :]
    for w in own:
        mine: dict[str, ScoreReveal] = {w.account.address: reveals[w.account.address]}
        gas["revealScores"] += [res.gas_used for res in await w.reveal_scores(round_, mine)]
    return gas


RankingFn = Callable[[int], Sequence[int]]
"""Given the number of published models, the ranking as positions, best first."""


async def play_round(
    task: ScriptedTask,
    round_: int,
    rng: random.Random,
    ranking: RankingFn,
    *,
    amounts: Callable[[int], Sequence[int]] | None = None,
    batch: bool = True,
    omit: int = 0,
) -> dict[str, int]:
    """One full round: every worker commits, the requester shuffles and opens
    evaluation, every worker commits its scores, the requester reveals them in one
    batch (leaving out the last `omit`, which reveal their own; `batch` false: every
    worker reveals its own), then reveals the models' owners and settles.
    Returns the gas of each kind of call in this round (max over workers)."""
    gas: dict[str, int] = {}
    submissions = await commit_all(task, round_, rng, gas)
    digests = {s.worker: s.digest for s in submissions if s.digest is not None}
    owners = [w.account.address for w in task.workers]
    rng.shuffle(owners)
    models = [digests[o] for o in owners]
    gas["openEvaluation"] = (await task.requester.open_evaluation(round_, models)).gas_used
    rows = [encode_scores([rng.random() for _ in owners]) for _ in task.workers]
    scored = await score_all(task.workers, round_, rows, rng, batch=task.requester if batch else None, omit=omit)
    for call, used in scored.items():
        if used:
            gas[call] = max(used)
    rank = list(ranking(len(models)))
    res = await task.requester.settle_round(
        round_,
        models,
        *reveal(task.requester.address, round_, submissions, models),
        rank,
        list(amounts(len(rank))) if amounts else [],
    )
    gas["settleRound"] = res.gas_used
    for k, v in gas.items():
        task.record(k, v)
    return gas


SCALE_CONCURRENCY = 32
"""Calls `settle_at_scale` keeps in flight at once. All its clients share one WebSocket,
and web3 keeps at most 500 requests' information per provider: with several hundred
calls in flight the cache overflows and replies go to the wrong request."""


async def _bounded(calls: Sequence[Callable[[], Awaitable[object]]]) -> None:
    gate = asyncio.Semaphore(SCALE_CONCURRENCY)

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


async def settle_at_scale(
    w3: AsyncWeb3, ws_url: str, n_workers: int, *, seed: int = 0, top_k: int = 6
) -> tuple[int, int]:
    """The cost of settling one round with `n_workers` submitters, all opened: deploys,
    registers and commits concurrently (many workers are slow one by one), opens
    evaluation, lets the deadline pass without scores, and settles with a top-`top_k`
    ranking. Returns settleRound's gas and its calldata size in bytes."""
    params = TaskParams(rounds=1, top_k=top_k, max_workers=n_workers, deposit_wei=10**18)
    task = await deploy_and_register(w3, ws_url, params, n_workers, seed=seed, register=False, start=False)
    req = task.requester
    await _bounded([w.register for w in task.workers])
    await req.start_training()
    rng = random.Random(seed)
    openings = [(hashlib.sha256(rng.randbytes(32)).digest(), new_salt(rng)) for _ in task.workers]

    async def commit(w: TaskClient, digest: bytes, salt: bytes) -> None:
        await w.submit_model(1, commitment(req.address, 1, w.account.address, digest, salt))

    await _bounded([functools.partial(commit, w, d, s) for w, (d, s) in zip(task.workers, openings, strict=True)])
    # Submission (event) order is what settlement verifies against.
    order = [e.args["worker"] for e in await req.past_events() if e.name == "ModelCommitted"]
    by_worker = {w.account.address: o for w, o in zip(task.workers, openings, strict=True)}
    subs = [Submission(a, commitment(req.address, 1, a, *by_worker[a]), *by_worker[a]) for a in order]
    models = [d for d, _ in openings]
    rng.shuffle(models)
    await req.open_evaluation(1, models)
    await advance_time(w3, params.evaluation_period_s + params.reveal_period_s + 1)  # past the reveal deadline
    res = await req.settle_round(1, models, *reveal(req.address, 1, subs, models), list(range(min(top_k, n_workers))))
    tx = await w3.eth.get_transaction(res.tx_hash)  # type: ignore[arg-type]
    return res.gas_used, len(tx["input"])
