"""The worker agent in whole runs: real anvil, real libp2p nodes, real training on
small data."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from discofl_p2p.agents.identity import sign_binding
from discofl_p2p.agents.worker import new_salt
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import decode_scores
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork, key_from_seed
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.runner import RunOutcome, Simulation, run_scenario
from tests.conftest import TINY, run, tiny, with_simulation


def test_a_model_the_worker_cannot_fetch_is_abstained_on_and_the_round_still_settles(anvil):
    """honest-1 accepts no blob over 256 bytes (its own cap, below the models' size):
    it cannot fetch the other two models, abstains on them, logs model_unusable, and
    the round settles with everyone's scores."""

    async def body(sim: Simulation, *_: object):
        picky = sim.workers[0]
        picky.setup = dataclasses.replace(picky.setup, max_model_bytes=256)
        with capture_logs() as logs:
            async with asyncio.timeout(120):
                await sim.run()
        return logs, await sim.outcome()

    logs, outcome = run(with_simulation(anvil, tiny("unusable"), body))
    rec = outcome.rounds[1]
    assert sorted(rec.models) == ["honest-1", "honest-2", "honest-3"] and rec.excluded == {}
    unusable = [e for e in logs if e["event"] == "model_unusable"]
    assert sorted(e["cid"] for e in unusable) == sorted(rec.models[n] for n in ("honest-2", "honest-3"))
    assert {e["worker"] for e in unusable} == {"honest-1"}
    assert all("could not fetch" in e["reason"] for e in unusable)
    # It abstained on every model (its own too: a lone score would name it); the others
    # scored theirs, and their own with a decoy the requester leaves out.
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
    assert all(s is not None for n in ("honest-2", "honest-3") for s in submitted[n])


async def _scores_on_chain(anvil, outcome: RunOutcome) -> dict[str, list[float | None]]:
    w3 = await connect(anvil.ws_url)
    try:
        c = TaskClient(w3, outcome.contract, derive_account(0, "reader"))
        by_addr = {w.address: w.name for w in outcome.workers}
        return {
            by_addr[ev.args["evaluator"]]: decode_scores(ev.args["scores"])
            for ev in await c.past_events()
            if ev.name == "ScoresRevealed"
        }
    finally:
        await w3.provider.disconnect()


def test_salts_come_from_the_os_not_from_the_scenario():
    salts = {new_salt() for _ in range(100)}
    assert len(salts) == 100 and all(len(s) == 32 for s in salts)
    # 128 random bits after 16 zero bytes (cheaper calldata at settlement): all distinct.
    assert all(s[:16] == bytes(16) for s in salts) and len({s[16:] for s in salts}) == 100


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
                args = c.settlement_args(tx["input"])
                for who, salt in zip(args["submitters"], args["openings"]):
                    out[(ev.args["round"], by_addr[who])] = bytes(salt)
        return out
    finally:
        await w3.provider.disconnect()


@pytest.mark.slow
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
        assert a.rounds[r].models == b.rounds[r].models and len(a.rounds[r].models) == 3
    assert a.rounds[1].models != a.rounds[2].models
    assert a.final_accuracy == b.final_accuracy is not None
    salts_a, salts_b = run(_salts_on_chain(anvil, a)), run(_salts_on_chain(anvil, b))
    assert set(salts_a) == set(salts_b) and len(salts_a) == 6
    assert all(salts_a[k] != salts_b[k] for k in salts_a)


# ---------------------------------------------------------------- holding announcements


CID = "bafkreihofrftfvddefjaf2sr22aeye44kuddkyosquw77pdvcnkea2pjba"


def test_holding_announcements_count_only_from_registered_workers_peers(anvil):
    """honest-1 listens to the round's gossip. honest-2 registered on-chain and signs
    its peer binding: its "holding" makes it a provider of the CIDs it names, before
    the requester. A stranger on the mesh that replays honest-2's binding (it cannot
    sign one for its own peer), and honest-3 (whose binding is valid but which never
    registered), are ignored: neither is ever asked for a model. A registered worker's
    peer can name at most as many CIDs a round as there are registered workers."""

    async def body(sim: Simulation, net: P2PNetwork, _w0: bytes):
        listener, member, unregistered = sim.workers
        topic = listener.setup.topic
        stranger = await net.add_node(key_from_seed(21, "stranger"))
        await stranger.connect(listener.node)
        for w in (listener, member):
            await w.client.register()
        for ev in await listener.client.past_events():  # what its event feed delivers first
            await listener._on_event(ev)
        queue = await listener.node.subscribe(topic)
        task = asyncio.create_task(listener._listen(queue))
        await stranger.subscribe(topic)
        contract = listener.client.address

        def holding(w, peer: str) -> dict[str, object]:
            binding = sign_binding(w.client.account, contract, peer)
            return {"kind": "holding", "round": 1, "cids": [CID], "worker": w.address, "binding": binding}

        sent = [
            (stranger, holding(member, member.node.peer_id)),  # lifted from honest-2
            (unregistered.node, holding(unregistered, unregistered.node.peer_id)),
            (member.node, holding(member, member.node.peer_id)),
            (member.node, holding(member, member.node.peer_id) | {"cids": [f"x{i}" for i in range(5)]}),
        ]
        with capture_logs() as logs:
            async with asyncio.timeout(30):
                for node, payload in sent:
                    while await node.topic_peers(topic) < 1:  # gossip drops what precedes the mesh
                        await asyncio.sleep(0.05)
                    await node.announce(topic, payload)

                def settled() -> bool:
                    ignored = {e["peer"] for e in logs if e["event"] == "announcement_ignored"}
                    holders = set().union(*listener._holders.get(1, {}).values())
                    return len(listener._holders.get(1, {})) == 2 and (
                        len(ignored) == 2 or bool(holders & {stranger.peer_id, unregistered.node.peer_id})
                    )

                while not settled():
                    await asyncio.sleep(0.05)
        task.cancel()
        return listener, logs, (stranger.peer_id, unregistered.node.peer_id, member.node.peer_id)

    listener, logs, (stranger, unregistered, member) = run(with_simulation(anvil, tiny("holders"), body))
    # Two workers registered: the CID, then one more of the five junk names; no more.
    assert listener._holders == {1: {CID: {member}, "x0": {member}}}
    assert listener._providers(1, CID) == [listener.requester_peer, member]  # a star, the default
    assert listener._providers(1, "x1") == [listener.requester_peer]
    listener.setup = dataclasses.replace(listener.setup, overlay=True)
    assert listener._providers(1, CID) == [member, listener.requester_peer]  # the overlay: the requester last
    ignored = [(e["peer"], e["reason"]) for e in logs if e["event"] == "announcement_ignored"]
    assert sorted(ignored) == sorted(
        [(stranger, "not a registered worker's peer"), (unregistered, "not a registered worker's peer")]
    )


# ---------------------------------------------------------------- the log


def _timeline(events: list[dict], agent: str, round_: int) -> list[str]:
    return [e["event"] for e in events if e.get("agent") == agent and e.get("round") == round_]


def _before(timeline: list[str], *steps: str) -> None:
    """Each step happens, and the first of each comes before the next one's."""
    missing = [s for s in steps if s not in timeline]
    assert not missing, f"missing {missing} in {timeline}"
    at = [timeline.index(s) for s in steps]
    assert at == sorted(at), f"{steps} out of order in {timeline}"


@pytest.mark.slow
def test_a_rounds_timeline_can_be_rebuilt_from_log_jsonl_alone(tmp_path: Path, anvil):
    """A one-round run through the command: its log.jsonl tells, per agent, what it did
    and when, in order, with the figures (seconds, bytes, gas, CIDs, providers)."""
    f = tmp_path / "s.toml"
    f.write_text(TINY.format(name="timeline"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "discofl_p2p", "scenario", str(f), "--out", str(out), "--rpc-url", anvil.rpc_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    lifecycle = [e for e in events if "elapsed_s" in e]
    assert all(e["level"] == "info" and e["elapsed_s"] >= 0 and e["timestamp"] for e in lifecycle)
    workers = ["honest-1", "honest-2", "honest-3"]
    assert {e["agent"] for e in lifecycle} == {"requester", *workers}

    req = _timeline(events, "requester", 1)
    _before(req, "round_started", "opening_accepted", "model_checked", "evaluation_opened", "scores_received")
    _before(req, "scores_received", "round_settled", "task_closed")
    _before(req, "evaluation_opened", "score_reveal_received", "scores_batch_revealed", "scores_received")
    by = {(e["agent"], e["event"], e.get("worker") or e.get("evaluator")): e for e in events if "agent" in e}
    for w in workers:
        assert by[("requester", "opening_accepted", w)]["cid"] == by[(w, "blob_stored", None)]["cid"]
        assert by[("requester", "model_checked", w)]["ok"] is True
        assert by[("requester", "scores_received", w)]["scored"] == 3
    opened = by[("requester", "evaluation_opened", None)]
    assert (opened["published"], opened["excluded"]) == (3, 0) and opened["gas"] > 0
    settled = by[("requester", "round_settled", None)]
    assert sorted(settled["ranking"]) == workers and settled["gas"] > 0

    stored = {w: by[(w, "blob_stored", None)] for w in workers}
    for w in workers:
        mine = _timeline(events, w, 1)
        _before(mine, "round_started", "model_trained", "blob_stored", "opening_sent", "model_committed")
        _before(mine, "model_committed", "model_fetched", "scores_committed", "scores_sent", "scores_revealed")
        assert by[(w, "model_trained", None)]["samples"] == 80 and by[(w, "model_trained", None)]["seconds"] >= 0
        assert stored[w]["bytes"] > 0 and by[(w, "model_committed", None)]["gas"] > 0
        fetched = [e for e in events if e.get("agent") == w and e["event"] == "model_fetched"]
        assert sorted(e["cid"] for e in fetched) == sorted(stored[o]["cid"] for o in workers if o != w)
        assert all(e["bytes"] == stored[w]["bytes"] and e["provider"] and e["seconds"] >= 0 for e in fetched)
        submitted = by[(w, "scores_committed", None)]
        assert (submitted["scored"], submitted["abstained"]) == (3, 0) and submitted["gas"] > 0
        assert by[(w, "scores_revealed", None)]["by"] == "requester"  # in its batch: no gas of the worker's
    assert by[("requester", "scores_batch_revealed", None)]["gas"] > 0
    withdrawn = [e for e in events if e.get("event") == "withdrawn"]
    assert withdrawn and {e["agent"] for e in withdrawn} <= set(settled["ranking"])
    assert all(e["amount"] > 0 and e["round"] == 1 for e in withdrawn)


# ---------------------------------------------------------------- retries to the requester

LOSSY_SEED = "retry-6"
"""Seeds the lossy link so that its draws at loss 0.5 run drop, pass, drop, pass."""


def test_a_worker_retries_w0_and_its_opening_over_a_lossy_link(anvil):
    """honest-1's link to the requester drops one stream in two (real libp2p hosts, the
    injected lossy link of `p2p/linkfault.py`, seeded so that the first try of each
    request is dropped). It fetches w0 and hands its opening over on the second try
    each time, with a warning for the lost one, instead of refusing the task or dying
    of one lost stream. A message that is never acknowledged raises PeerUnreachable
    (not trio's TooSlowError, which would end the worker's task group)."""
    from discofl_p2p.agents.context import OPENING_PROTOCOL
    from discofl_p2p.p2p.node import PeerUnreachable

    async def body(sim: Simulation, net: P2PNetwork, w0: bytes):
        worker = sim.workers[0]
        worker.retry_base_s = 0.05
        inbox = await sim.requester.node.serve_messages(OPENING_PROTOCOL)
        await worker.node.degrade(0, 0.5, LOSSY_SEED)
        with capture_logs() as logs:
            fetched = await worker.fetch_w0()
            assert await worker._send_opening(1, {"round": 1, "cid": "c"}, range(1, 6), random.Random(1))
            received = await asyncio.wait_for(inbox.get(), 10)
        dropped = worker.node.link_faults["streams_dropped"]
        # A message that cannot get through in time: a partitioned node holds its own
        # outgoing stream until the partition ends, past the request timeout.
        silent = await net.add_node(key_from_seed(8, "silent"))
        await silent.partition(3)
        with pytest.raises(PeerUnreachable, match="no acknowledgement within"):
            await silent.send_message(sim.requester.node.peer_id, OPENING_PROTOCOL, {"round": 1})
        return fetched == w0, received, dropped, logs, worker.node.peer_id

    same_w0, (sender, msg), dropped, logs, peer = run(
        with_simulation(anvil, tiny("retries"), body, node_cfg=NodeConfig(request_timeout_s=1.5))
    )
    assert same_w0
    assert sender == peer and msg == {"round": 1, "cid": "c"} and dropped == 2
    warned = [(e["event"], e["attempt"]) for e in logs if e["event"] in ("w0_fetch_retried", "opening_send_failed")]
    assert warned == [("w0_fetch_retried", 1), ("opening_send_failed", 1)]
    assert [e["attempt"] for e in logs if e["event"] == "opening_sent"] == [2]


# ---------------------------------------------------------------- score reveals


@pytest.mark.slow
def test_an_evaluator_the_requesters_batch_leaves_out_reveals_its_own_scores_and_the_round_settles(anvil):
    """The requester never takes honest-1's row (as if it left it out of its batch):
    it posts the other two in one revealScores call; honest-1, not on-chain
    `self_reveal_after_s` after commits closed, reveals its own against the list the
    batch left, and the round settles with all three rows."""

    async def body(sim: Simulation, *_: object):
        left_out = sim.workers[0]
        left_out.self_reveal_after_s = 6.0  # after the requester's batch (batch_wait_s: 5 s)
        take = sim.requester._on_score_reveal

        def omit(peer: str, msg) -> None:
            if msg.get("worker") != left_out.address:
                take(peer, msg)

        sim.requester._on_score_reveal = omit  # type: ignore[method-assign]
        with capture_logs() as logs:
            async with asyncio.timeout(120):
                await sim.run()
        return logs, await sim.outcome()

    logs, outcome = run(with_simulation(anvil, tiny("left-out"), body))
    [batch] = [e for e in logs if e["event"] == "scores_batch_revealed"]
    assert batch["rows"] == 2 and batch["transactions"] == 1 and batch["gas"] > 21_000
    revealed = {e["agent"]: e for e in logs if e["event"] == "scores_revealed"}
    assert revealed["honest-1"]["by"] == "itself" and revealed["honest-1"]["gas"] > 21_000
    assert {revealed[n]["by"] for n in ("honest-2", "honest-3")} == {"requester"}
    rec = outcome.rounds[1]
    assert {n: sorted(s) for n, s in rec.scores.items()} == {
        "honest-1": ["honest-2", "honest-3"],
        "honest-2": ["honest-1", "honest-3"],
        "honest-3": ["honest-1", "honest-2"],
    }
    assert sum(rec.rewards_wei.values()) == outcome.deposit_wei


def test_a_worker_unblocks_the_peers_that_failed_in_earlier_rounds_before_fetching_again(anvil):
    """A peer that failed in round 1 (away for a while) is asked again in round 2, so
    the worker takes it out of libp2p's 60 s negative dial cache first
    (`_forgive_failed_peers`); a peer that failed in round 2 itself stays out."""
    import socket

    from discofl_p2p.p2p.node import BlobUnavailable

    async def body(sim: Simulation, net: P2PNetwork, _w0: bytes):
        worker = sim.workers[0]
        peers = [await net.add_node(key_from_seed(65, f"away-{i}")) for i in (1, 2)]
        for p in peers:
            with socket.socket() as s:  # where nothing listens: the peer is away
                s.bind(("127.0.0.1", 0))
                await worker.node.learn((p.peer_id, [f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}"]))
            with pytest.raises(BlobUnavailable):
                await worker.node.get("bafkreiaway", [p.peer_id], deadline_s=5.0)

        async def blocked() -> list[bool]:
            cache = worker.node._node.host.get_network()._negative_peer_cache
            return [cache.is_blocked(p.peer_id) for p in peers]

        assert await net.thread.call(blocked) == [True, True]
        worker._failed_peers = {1: {peers[0].peer_id}, 2: {peers[1].peer_id}}
        await worker._forgive_failed_peers(2)
        assert await net.thread.call(blocked) == [False, True]

    run(with_simulation(anvil, tiny("forgive"), body))
