"""Agents that share nothing but the network and the chain: w0 fetched and checked
against the contract, colluders' CIDs over their own direct messages, the requester's
inbox kept bounded, stored models evicted round after round. Real anvil, real libp2p
nodes, real training on small data."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from structlog.testing import capture_logs

from discofl_p2p.agents.context import OPENING_PROTOCOL, RING_PROTOCOL, Recorder
from discofl_p2p.agents.jobs import initial_state
from discofl_p2p.ml.models import build_model, export_initial_model
from discofl_p2p.ml.weights import encode_state
from discofl_p2p.p2p.cid import cid_of, digest_of
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork, key_from_seed
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.runner import Simulation
from tests.conftest import TINY, run, tiny, with_simulation

# ---------------------------------------------------------------- w0


def test_a_worker_takes_w0_only_if_it_matches_the_contracts_initial_model(anvil):
    """honest-2 fetches w0 from the requester: the bytes whose digest the contract
    holds. honest-1 is pointed at an impostor requester that serves another w0: it
    refuses the task (w0_rejected) and never registers."""

    async def body(sim: Simulation, net: P2PNetwork, w0: bytes):
        refuser, taker = sim.workers[0], sim.workers[1]
        other_w0 = export_initial_model(build_model("logreg", seed=99))
        assert cid_of(other_w0) != cid_of(w0)
        impostor = await net.add_node(key_from_seed(7, "impostor"))
        await impostor.put(other_w0)
        await impostor.connect(refuser.node)
        refuser.requester_peer = impostor.peer_id
        with capture_logs() as logs:
            async with asyncio.timeout(30):
                await refuser.run()  # returns: it refuses the task
        fetched = await taker.fetch_w0()
        st = await sim.requester.client.state()
        initial = bytes(await sim.requester.client.view("initialModel"))
        return logs, refuser.w0, fetched, st.worker_count, initial

    logs, refused_w0, fetched, registered, initial = run(with_simulation(anvil, tiny("w0check"), body))
    rejected = [e for e in logs if e["event"] == "w0_rejected"]
    assert len(rejected) == 1 and rejected[0]["agent"] == "honest-1"
    assert "could not fetch w0" in rejected[0]["reason"] and "not found" in rejected[0]["reason"]
    assert refused_w0 is None and registered == 0
    assert digest_of(cid_of(fetched)) == initial


# ---------------------------------------------------------------- the ring


def test_colluders_tell_each_other_their_cids_over_their_own_messages(anvil):
    """honest-1 and honest-2 play a ring: each sends its CID to the other's peer. A
    third worker, not in the ring, sends a CID too: it is ignored."""

    async def body(sim: Simulation, net: P2PNetwork, w0: bytes):
        a, b, outsider = sim.workers
        a.ring = b.ring = "r"
        a.ring_peers, b.ring_peers = (b.node.peer_id,), (a.node.peer_id,)
        with capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                listeners = [tg.create_task(w._listen_ring(await w.node.serve_messages(RING_PROTOCOL))) for w in (a, b)]
                await a._tell_ring(1, "cid-a")
                await b._tell_ring(1, "cid-b")
                await outsider.node.send_message(a.node.peer_id, RING_PROTOCOL, {"ring": "r", "round": 1, "cid": "x"})
                async with asyncio.timeout(20):
                    while not (
                        a._ring_known.get(1) == b._ring_known.get(1) == {"cid-a", "cid-b"}
                        and any(e["event"] == "ring_message_ignored" for e in logs)
                    ):
                        await asyncio.sleep(0.02)
                for t in listeners:
                    t.cancel()
        return logs, a._ring_known, outsider.node.peer_id

    logs, known, outsider = run(with_simulation(anvil, tiny("ring"), body))
    assert known == {1: {"cid-a", "cid-b"}}
    assert [e["peer"] for e in logs if e["event"] == "ring_message_ignored"] == [outsider]


# ---------------------------------------------------------------- the requester's inbox


def test_the_requester_reads_openings_at_its_own_pace_and_the_bound_holds(anvil):
    """The state machine does not run: its queue fills (queue_size), then the node's
    per-peer inbox (inbox_per_peer = 3), then the sender is refused. Before, the
    feeder copied every message into an unbounded queue and nothing was refused."""

    async def body(sim: Simulation, net: P2PNetwork, w0: bytes):
        req, sender = sim.requester, sim.workers[0]
        inbox = await req.node.serve_messages(OPENING_PROTOCOL)
        feeder = asyncio.create_task(req._feed_inbox(inbox))
        delivered, refused = 0, None
        limit = req.cfg.queue_size + 1 + 3  # queue, the feeder's hand, the node's inbox
        try:
            with capture_logs() as logs:
                for i in range(limit + 10):
                    try:
                        await sender.node.send_message(req.node.peer_id, OPENING_PROTOCOL, {"junk": i})
                    except Exception as e:  # the refusal we wait for
                        refused = e
                        break
                    delivered += 1
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        return delivered, refused, req._queue.qsize(), req.cfg.queue_size, logs, limit

    node_cfg = NodeConfig(inbox_per_peer=3)
    delivered, refused, queued, size, logs, limit = run(with_simulation(anvil, tiny("inbox"), body, node_cfg=node_cfg))
    assert refused is not None and queued == size
    assert size <= delivered <= limit
    assert any(e["event"] == "message_dropped" for e in logs)


# ---------------------------------------------------------------- eviction


@pytest.mark.slow
def test_stored_models_stay_bounded_over_rounds(anvil):
    """A three-round run: when each round settles, every node holds at most two
    rounds' models (the requester w0 too), not every round's; at the end the
    requester still holds the last round's models."""
    snapshots: list[tuple[int, dict[str, int]]] = []
    nodes: dict[str, object] = {}

    def on_phase(r: int, phase: str) -> None:
        if phase == "settled":
            snapshots.append((r, {name: n.stored_bytes for name, n in nodes.items()}))  # type: ignore[attr-defined]

    async def body(sim: Simulation, net: P2PNetwork, w0: bytes):
        nodes["requester"] = sim.requester.node
        nodes.update({w.name: w.node for w in sim.workers})
        async with asyncio.timeout(120):
            await sim.run()
        model = len(encode_state(initial_state(w0)))
        last = sim.recorder.rounds[3].models
        return model, len(w0), {name: n.stored_bytes for name, n in nodes.items()}, last, sim  # type: ignore[attr-defined]

    text = TINY.replace("rounds = 1", "rounds = 3")
    model, w0_bytes, final, last, sim = run(
        with_simulation(anvil, parse_scenario(text.format(name="evict")), body, recorder=Recorder(on_phase=on_phase))
    )
    assert [r for r, _ in snapshots] == [1, 2, 3]
    two_rounds = 2 * 3 * model
    for r, held in snapshots:
        assert held["requester"] <= w0_bytes + two_rounds, (r, held)
        assert all(held[w] <= two_rounds for w in held if w != "requester"), (r, held)
    # Without eviction, round 3 would hold 9 models; the requester keeps round 3's.
    assert final["requester"] == w0_bytes + 3 * model
    assert all(sim.requester.node.holds(cid) for cid in last.values())
    assert all(final[w] <= 3 * model for w in final if w != "requester")
