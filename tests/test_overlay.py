"""The overlay (agents/worker.py, docs/p2p.md): evaluators fetch a round's models from
each other, each model's first copy from the requester, several at once; a peer that
fails falls back to the other holders and the requester. Real anvil, real libp2p
hosts; the figures come from the agents' own log events (report/overlay.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest
from structlog.testing import capture_logs

from discofl_p2p.agents.jobs import initial_state
from discofl_p2p.ml.weights import encode_state
from discofl_p2p.p2p.cid import cid_of
from discofl_p2p.p2p.node import P2PNetwork, key_from_seed
from discofl_p2p.report.overlay import fetch_shares
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.runner import Simulation
from tests.conftest import TINY, run, tiny, with_simulation

# ---------------------------------------------------------------- the figures (pure)


def test_fetch_shares_count_the_requesters_bytes_and_time_each_evaluation_phase():
    """Bytes per provider from model_fetched, the evaluation phase from the requester's
    evaluation_opened to the last scores_committed; malformed events are skipped."""
    at = "2026-11-29T07:00:{:02d}.000000Z"
    events = [
        {"event": "evaluation_opened", "agent": "requester", "round": 1, "timestamp": at.format(0)},
        {"event": "evaluation_opened", "agent": "w1", "round": 1, "timestamp": at.format(9)},  # not the requester
        {"event": "model_fetched", "round": 1, "cid": "a", "bytes": 100, "from_requester": True},
        {"event": "model_fetched", "round": 1, "cid": "b", "bytes": 100, "from_requester": True},
        {"event": "model_fetched", "round": 1, "cid": "a", "bytes": 100, "from_requester": False},
        {"event": "model_fetched", "round": 1, "cid": "b", "bytes": 100, "from_requester": False},
        {"event": "model_fetched", "round": 1, "cid": "b", "bytes": -5, "from_requester": True},  # malformed
        {"event": "model_fetched", "round": 1, "cid": "b", "bytes": True, "from_requester": True},  # malformed
        {"event": "scores_committed", "agent": "w1", "round": 1, "timestamp": at.format(3)},
        {"event": "scores_committed", "agent": "w2", "round": 1, "timestamp": at.format(7)},
        {"event": "scores_committed", "agent": "w2", "round": 2, "timestamp": "not a time"},
    ]
    s = fetch_shares(events)
    assert (s.fetches, s.models, s.total_bytes, s.requester_bytes) == (4, 2, 400, 200)
    assert s.requester_share == 0.5 and s.requester_copies_per_model == 1.0
    assert s.evaluation_s == {1: 7.0}
    assert "the requester served 0.00 MiB (50.0%; 1.00 copies a model" in s.describe()
    assert "evaluation phase: round 1 7.00 s" in s.describe()
    assert fetch_shares([]).describe().endswith("evaluation phase: none")


# ---------------------------------------------------------------- fallback


def test_a_failing_peer_provider_falls_back_to_the_other_holders_then_the_requester(anvil):
    """honest-1 is told (announcements) that two peers hold a model: honest-2, which
    does not (it answers "not found"), and a peer that has gone offline. It asks both,
    in random order, then the requester, which serves it; neither failing peer is asked
    for that model again. A model a peer does hold comes from that peer. In a star the
    requester is asked first."""

    async def body(sim: Simulation, net: P2PNetwork, _w0: bytes):
        listener, member, holder = sim.workers
        gone = await net.add_node(key_from_seed(21, "gone"))
        await listener.node.connect(gone)
        await gone.close()
        blob, held = os.urandom(40_000), os.urandom(40_000)
        cid, held_cid = cid_of(blob), cid_of(held)
        await sim.requester.node.put(blob, task=listener.setup.task_id, round_=1)
        await holder.node.put(held, task=listener.setup.task_id, round_=1)
        listener.setup = dataclasses.replace(listener.setup, overlay=True)
        listener._holders = {1: {cid: {member.node.peer_id, gone.peer_id}, held_cid: {holder.node.peer_id}}}
        listener._fetch_until = time.monotonic() + 20
        with capture_logs() as logs:
            async with asyncio.timeout(30):
                got = await listener._fetch(1, cid)
                got_held = await listener._fetch(1, held_cid)
        listener.setup = dataclasses.replace(listener.setup, overlay=False)  # a star
        providers = listener._providers(1, held_cid)
        peers = (member.node.peer_id, gone.peer_id, holder.node.peer_id, sim.requester.node.peer_id)
        return got == blob and got_held == held, (cid, held_cid), listener._holders[1], logs, peers, providers

    ok, (cid, held_cid), holders, logs, (member, gone, holder, requester), star_providers = run(
        with_simulation(anvil, tiny("fallback"), body)
    )
    assert ok
    failed = [e["provider"] for e in logs if e["event"] == "fetch_failed"]
    assert sorted(failed) == sorted([member, gone])
    fetched = [(e["provider"], e["from_requester"]) for e in logs if e["event"] == "model_fetched"]
    assert fetched == [(requester, True), (holder, False)]
    assert [e["event"] for e in logs].index("model_fetched") > max(
        i for i, e in enumerate(logs) if e["event"] == "fetch_failed"
    )
    assert holders == {cid: set(), held_cid: {holder}}  # the failing peers are not asked again
    assert star_providers == [requester, holder]


# ---------------------------------------------------------------- a whole round


@pytest.mark.slow
def test_evaluators_fetch_from_each_other_and_the_requester_serves_about_one_copy_a_model(anvil):
    """Five workers, one round, the overlay on (`[network] overlay`): every worker fetches
    every published model (its own too, a cover fetch); each model's first copy comes
    from the requester, later ones from the peers whose rotation reached it first.
    Counted from the model_fetched events: the requester serves well under the W - 1
    copies a model a star serves. The round settles with every score."""

    async def body(sim: Simulation, net: P2PNetwork, w0: bytes):
        with capture_logs() as logs:
            async with asyncio.timeout(120):
                await sim.run()
        return logs, len(encode_state(initial_state(w0))), sim.requester.node.peer_id, await sim.outcome()

    text = TINY.replace("count = 3", "count = 5") + "\n[network]\noverlay = true\n"
    logs, model, requester, outcome = run(with_simulation(anvil, parse_scenario(text.format(name="overlay")), body))
    shares = fetch_shares(logs)
    fetched = [e for e in logs if e["event"] == "model_fetched"]
    assert shares.models == 5 and shares.fetches == 25  # 5 evaluators x 5 models
    assert shares.total_bytes == 25 * model
    assert all(e["from_requester"] == (e["provider"] == requester) for e in fetched)
    # Each model's first copy (in log order: one process) came from the requester.
    first = {e["cid"]: e for e in reversed(fetched)}
    assert len(first) == 5 and all(e["from_requester"] for e in first.values())
    # A star: 4 copies a model (20 of 20 fetches). The overlay: about one, at most 2.
    assert 5 * model <= shares.requester_bytes <= 10 * model, shares.describe()
    assert not [e for e in logs if e["event"] in ("model_unusable", "cover_fetch_failed", "announcement_ignored")]
    rec = outcome.rounds[1]
    assert len(rec.models) == 5 and all(len(s) == 4 for s in rec.scores.values())  # the self-score left out
