"""`discofl-p2p bench gas`: gas of every contract call for W = 6 and W = 50 workers.

Plays several rounds with top-6 and prints one table; per-round figures show that a
worker's gas does not grow with the round number.
"""

from __future__ import annotations

import random

from rich.table import Table

from discofl_p2p.chain.client import TaskParams, connect
from discofl_p2p.chain.limits import ETH
from discofl_p2p.chain.scripted import deploy_and_register, play_round

CALLS = (
    "deploy",
    "register",
    "startTraining",
    "submitModel",
    "openEvaluation",
    "commitScores",
    "revealScoresBatch",  # the requester posts every evaluator's row
    "revealScores",  # an evaluator the batch left out reveals its own (the bench's last round)
    "settleRound",
    "closeTask",
    "withdraw",
)
"""The table's rows: every call the bench measures."""

PAPER_PER_AGENT_ROUND = 477_050  # BlockFlow: 31,913N + 542,045R + 477,050NR


async def fork_of(ws_url: str) -> str:
    """The hardfork the chain runs (anvil's `anvil_nodeInfo`), or "unknown" elsewhere."""
    w3 = await connect(ws_url)
    try:
        info = await w3.provider.make_request("anvil_nodeInfo", [])
        return str(info.get("result", {}).get("hardFork", "unknown"))
    except Exception:  # noqa: BLE001 - not anvil: the figures stand, the fork is unknown
        return "unknown"
    finally:
        await w3.provider.disconnect()


def as_json(results: dict[int, dict[str, list[int]]], fork: str) -> dict[str, object]:
    """`{"fork": ..., "calls": {"6": {"settleRound": N, ...}, ...}}`, max over rounds;
    `workerPerRound` is a worker's own gas in a round (`worker_round_gas`)."""
    return {
        "fork": fork,
        "calls": {
            str(w): {c: max(g) for c, g in calls.items()} | {"workerPerRound": worker_round_gas(calls)}
            for w, calls in results.items()
        },
    }


def worker_round_gas(gas: dict[str, list[int]]) -> int:
    """What one worker's own transactions of a round cost: commit a model, commit
    scores (max over workers and rounds). Its reveal goes to the requester, which
    posts every evaluator's in one batch (`revealScoresBatch`); `revealScores` is the
    fallback an evaluator pays only when the batch left its row out."""
    return max(gas["submitModel"]) + max(gas["commitScores"])


async def measure(ws_url: str, workers: int, rounds: int, top_k: int = 6) -> dict[str, list[int]]:
    rng = random.Random(workers)
    params = TaskParams(rounds=rounds, top_k=top_k, max_workers=workers, deposit_wei=10 * ETH)
    w3 = await connect(ws_url)
    try:
        task = await deploy_and_register(w3, ws_url, params, workers, seed=workers)
        for r in range(1, rounds + 1):
            # The last round's batch leaves one evaluator out, which reveals its own
            # row: the fallback's cost (and the batch's there is one row smaller).
            await play_round(task, r, rng, lambda n: rng.sample(range(n), min(top_k, n)), omit=int(r == rounds))
        task.record("closeTask", (await task.requester.close_task()).gas_used)
        paid = [w for w in task.workers if await w.withdrawable_of(w.account.address)]
        task.record("withdraw", (await paid[0].withdraw()).gas_used)
        return task.gas
    finally:
        await w3.provider.disconnect()


def render(results: dict[int, dict[str, list[int]]], rounds: int) -> Table:
    ws = sorted(results)
    t = Table(title=f"Gas per call (top-6; max over workers; {rounds} rounds)")
    t.add_column("call")
    for w in ws:
        t.add_column(f"W = {w}", justify="right")
    t.add_column(f"per round, W = {ws[-1]}", justify="left")
    for c in CALLS:
        row = [c] + [f"{max(results[w][c]):,}" for w in ws]
        per_round = results[ws[-1]][c]
        row.append(" ".join(f"{g:,}" for g in per_round) if len(per_round) == rounds else "")
        t.add_row(*row)
    for w in ws:
        g = results[w]
        requester = max(g["settleRound"]) + max(g["openEvaluation"]) + max(g["revealScoresBatch"])
        per_agent = worker_round_gas(g) + requester / w
        t.add_row(
            f"per worker per round, W = {w}",
            *[""] * (ws.index(w)),
            f"{per_agent:,.0f}",
            *[""] * (len(ws) - ws.index(w) - 1),
            f"paper: {PAPER_PER_AGENT_ROUND:,} ({PAPER_PER_AGENT_ROUND / per_agent:.1f}x ours)",
        )
    return t
