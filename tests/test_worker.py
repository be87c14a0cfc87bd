"""The worker agent in whole runs: real anvil, real libp2p nodes, real training on
small data."""

from __future__ import annotations

import asyncio
import dataclasses

from structlog.testing import capture_logs

from discofl_p2p.agents.worker import new_salt
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import decode_scores
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.runner import RunOutcome, assemble, build_context, run_scenario
from tests.conftest import run
from tests.test_requester import TINY


def test_a_model_the_worker_cannot_fetch_is_abstained_on_and_the_round_still_settles(anvil):
    """honest-1 accepts no blob over 256 bytes (its own cap, below the models' size):
    it cannot fetch the other two models, abstains on them, logs model_unusable, and
    the round settles with everyone's scores."""
    sc = parse_scenario(TINY.format(name="unusable"))
    ctx = build_context(sc)

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            async with P2PNetwork(NodeConfig(max_blob_bytes=ctx.max_model_bytes)) as net:
                sim = await assemble(sc, ctx, w3, anvil.ws_url, net)
                picky = sim.workers[0]
                picky.ctx = dataclasses.replace(ctx, max_model_bytes=256)
                with capture_logs() as logs:
                    async with asyncio.timeout(120):
                        await sim.run()
                return logs, await sim.outcome()
        finally:
            await w3.provider.disconnect()
            ctx.cpu.shutdown(wait=False, cancel_futures=True)

    logs, outcome = run(go())
    rec = ctx.rounds[1]
    assert sorted(rec.models) == ["honest-1", "honest-2", "honest-3"] and rec.excluded == {}
    unusable = [e for e in logs if e["event"] == "model_unusable"]
    assert sorted(e["cid"] for e in unusable) == sorted(rec.models[n] for n in ("honest-2", "honest-3"))
    assert {e["worker"] for e in unusable} == {"honest-1"}
    assert all("could not fetch" in e["reason"] for e in unusable)
    # It abstained on every model (its own too); the others scored theirs.
    assert rec.scores["honest-1"] == {}
    assert {n: sorted(s) for n, s in rec.scores.items() if n != "honest-1"} == {
        "honest-2": ["honest-1", "honest-3"],
        "honest-3": ["honest-1", "honest-2"],
    }
    # The round settled: the chain paid the round's pot, and its abstentions are on-chain.
    assert sum(rec.rewards_wei.values()) == outcome.deposit_wei
    assert sum(outcome.rewards_wei.values()) == outcome.deposit_wei
    assert not [e for e in logs if e["event"] == "evaluation_deadline_passed"]  # no waiting on anyone
    submitted = run(_scores_on_chain(anvil, outcome))
    assert submitted["honest-1"] == [None, None, None]


async def _scores_on_chain(anvil, outcome: RunOutcome) -> dict[str, list[float | None]]:
    w3 = await connect(anvil.ws_url)
    try:
        c = TaskClient(w3, outcome.contract, derive_account(0, "reader"))
        by_addr = {w.address: w.name for w in outcome.workers}
        return {
            by_addr[ev.args["evaluator"]]: decode_scores(ev.args["scores"])
            for ev in await c.past_events()
            if ev.name == "ScoresSubmitted"
        }
    finally:
        await w3.provider.disconnect()


def test_salts_come_from_the_os_not_from_the_scenario():
    salts = {new_salt() for _ in range(100)}
    assert len(salts) == 100 and all(len(s) == 32 for s in salts)


async def _salts_on_chain(anvil, outcome: RunOutcome) -> dict[tuple[int, str], bytes]:
    """(round, worker) -> the salt the requester revealed in settleRound's calldata."""
    w3 = await connect(anvil.ws_url)
    try:
        c = TaskClient(w3, outcome.contract, derive_account(0, "reader"))
        by_addr = {w.address: w.name for w in outcome.workers}
        out = {}
        for ev in await c.past_events():
            if ev.name == "RoundSettled":
                tx = await w3.eth.get_transaction(ev.tx_hash)  # type: ignore[arg-type]
                _, args = c.contract.decode_function_input(tx["input"])
                for who, salt in zip(args["submitters"], args["openings"]):
                    out[(ev.args["round"], by_addr[who])] = bytes(salt)
        return out
    finally:
        await w3.provider.disconnect()


def test_the_same_seed_replays_the_learning_but_never_the_salts(anvil):
    """Two runs of one scenario: the same models round after round (training, scoring
    and aggregation are seeded from the scenario, in an order that does not depend on
    the secret shuffle), the same final accuracy, but fresh salts each time, so the
    scenario file does not let anyone link a commitment to its model."""
    sc = parse_scenario(TINY.format(name="replay").replace("rounds = 1", "rounds = 2"))
    a = asyncio.run(run_scenario(sc, anvil.ws_url))
    b = asyncio.run(run_scenario(sc, anvil.ws_url))
    assert a.contract != b.contract
    for r in (1, 2):
        assert a.ctx.rounds[r].models == b.ctx.rounds[r].models and len(a.ctx.rounds[r].models) == 3
    assert a.ctx.rounds[1].models != a.ctx.rounds[2].models
    assert a.final_accuracy == b.final_accuracy is not None
    salts_a, salts_b = run(_salts_on_chain(anvil, a)), run(_salts_on_chain(anvil, b))
    assert set(salts_a) == set(salts_b) and len(salts_a) == 6
    assert all(salts_a[k] != salts_b[k] for k in salts_a)
