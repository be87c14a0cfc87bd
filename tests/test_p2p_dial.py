"""Dialling cost and connectivity on real hosts: identify only where it tells us
something, peers that know each other's addresses without a connection, and the
process-wide bound on fetches in flight (docs/p2p.md, "Dialling")."""

from __future__ import annotations

import asyncio

from libp2p.peer.id import ID

from discofl_p2p.p2p.node import P2PNetwork, P2PNode, key_from_seed
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
