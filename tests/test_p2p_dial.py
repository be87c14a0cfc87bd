"""Dialling cost and connectivity on real hosts: identify only where it tells us
something, peers that know each other's addresses without a connection, and the
process-wide bound on fetches in flight (docs/p2p.md, "Dialling")."""

from __future__ import annotations

import asyncio

import pytest
from libp2p.peer.id import ID

from discofl_p2p.p2p import bridge
from discofl_p2p.p2p.cid import cid_of
from discofl_p2p.p2p.node import P2PNetwork, P2PNode, key_from_seed
from discofl_p2p.p2p.protocol import BLOB_PROTOCOL, OK, encode_response_header, read_request
from tests.conftest import run


async def _wait_until(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


def _identified(node: P2PNode) -> set[str]:
    return {str(p) for p in node._node.host._identified_peers}


async def _connected(net: P2PNetwork, node: P2PNode) -> set[str]:
    async def peers() -> list[str]:
        return [str(p) for p in node._node.host.get_connected_peers()]

    return set(await net.thread.call(peers))


def test_only_the_dialled_side_identifies_and_can_dial_the_dialler_back():
    """The dialler knows where the peer it dialled listens, so it skips identify (the
    CPU of two streams and a signed record); the dialled side still identifies it and
    so learns where the dialler listens: after a hang-up it dials the dialler back."""

    async def go():
        async with P2PNetwork() as net:
            dialler = await net.add_node(key_from_seed(61, "dialler"))
            dialled = await net.add_node(key_from_seed(61, "dialled"))
            cid = await dialler.put(b"held by the dialler")
            await dialler.connect(dialled)

            async def identified() -> bool:
                return dialler.peer_id in _identified(dialled)

            await _wait_until(identified)
            await asyncio.sleep(0.3)  # time for an identify the dialler should not run
            assert dialled.peer_id not in _identified(dialler)

            async def hang_up() -> None:
                await dialler._node.host.disconnect(ID.from_base58(dialled.peer_id))

            await net.thread.call(hang_up)

            async def gone() -> bool:
                return dialler.peer_id not in await _connected(net, dialled)

            await _wait_until(gone)
            assert await dialled.get(cid, [dialler.peer_id]) == b"held by the dialler"

    run(go())


def test_a_hub_and_ring_carry_gossip_to_all_and_other_peers_are_dialled_on_demand():
    """`connect_hub`: six nodes dial the hub and the next one in a ring (far fewer
    connections than a clique), an announcement still reaches every node, and a node
    fetches from a peer it has no connection to: learnt addresses, dialled on demand."""

    async def go():
        async with P2PNetwork() as net:
            hub = await net.add_node(key_from_seed(62, "hub"))
            nodes = [await net.add_node(key_from_seed(62, str(i))) for i in range(6)]
            await net.connect_hub(hub, nodes, neighbours=1)
            degrees = [len(await _connected(net, n)) for n in nodes]
            assert max(degrees) <= 3, degrees  # the hub and a neighbour either side
            assert len(await _connected(net, hub)) == 6
            assert _identified(hub) == set()  # it was told where they all listen
            queues = [await n.subscribe("t") for n in [hub, *nodes]]

            async def meshed() -> bool:
                return all([await n.topic_peers("t") >= 1 for n in [hub, *nodes]])

            await _wait_until(meshed)
            await asyncio.sleep(1.0)  # a heartbeat: the gossipsub meshes form
            await nodes[0].announce("t", {"hello": 1})
            for q in [queues[0], *queues[2:]]:  # all but the sender's
                ann = await asyncio.wait_for(q.get(), 10)
                assert ann.payload == {"hello": 1} and ann.sender == nodes[0].peer_id
            far = nodes[3]
            assert far.peer_id not in await _connected(net, nodes[0])
            cid = await far.put(b"far away")
            assert await nodes[0].get(cid, [far.peer_id]) == b"far away"
            assert far.peer_id in await _connected(net, nodes[0])

    run(go())


def test_fetches_in_flight_are_bounded_per_process_and_a_wait_is_not_a_timeout():
    """Six nodes of one thread fetch at once from a provider that answers slowly: at
    most two requests reach it at a time, and each get succeeds although the queue
    makes some wait longer than their own deadline."""
    blob = b"slow blob"
    cid = cid_of(blob)
    state = {"now": 0, "peak": 0, "served": 0}

    async def slow(stream):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            await read_request(stream)
            await bridge.sleep(0.4)
            await stream.write(encode_response_header(OK, len(blob)) + blob)
            await stream.close()
            state["served"] += 1
        finally:
            state["now"] -= 1

    async def go():
        async with P2PNetwork(fetches_in_flight=2) as net:
            provider = await net.add_node(key_from_seed(63, "provider"))
            provider.set_stream_handler(BLOB_PROTOCOL, slow)
            clients = [await net.add_node(key_from_seed(63, str(i))) for i in range(6)]
            for c in clients:
                await c.connect(provider)
            got = await asyncio.gather(*(c.get(cid, [provider.peer_id], deadline_s=1.0) for c in clients))
            assert got == [blob] * 6
            assert state == {"now": 0, "peak": 2, "served": 6}

    run(go())


def test_fetches_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="fetches_in_flight"):
        P2PNetwork(fetches_in_flight=0)


def test_a_peer_that_failed_a_dial_is_refused_until_unblocked():
    """After a failed dial libp2p refuses the peer for 60 s without dialling (its
    negative cache); `unblock` lets the next request dial it at once. Workers unblock
    the peers that failed in an earlier round before fetching a new round's models
    (`WorkerAgent._forgive_failed_peers`), and a requester the worker retries."""
    import socket

    from discofl_p2p.p2p.node import BlobUnavailable

    with socket.socket() as s:  # a port nothing listens on: the peer is away
        s.bind(("127.0.0.1", 0))
        away = f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}"

    async def go():
        async with P2PNetwork() as net:
            provider = await net.add_node(key_from_seed(64, "provider"))
            client = await net.add_node(key_from_seed(64, "client"))
            cid = await provider.put(b"a model")
            await client.learn((provider.peer_id, [away]))
            with pytest.raises(BlobUnavailable, match="unable to connect"):
                await client.get(cid, [provider.peer_id], deadline_s=5.0)

            async def back() -> None:  # the peer is reachable again, where it was not
                client._node.host.get_peerstore().clear_addrs(ID.from_base58(provider.peer_id))

            await net.thread.call(back)
            await client.learn(provider)
            with pytest.raises(BlobUnavailable, match="negative cache"):
                await client.get(cid, [provider.peer_id], deadline_s=5.0)
            await client.unblock(provider.peer_id)
            assert await client.get(cid, [provider.peer_id], deadline_s=5.0) == b"a model"

    run(go())
