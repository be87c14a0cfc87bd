"""What gossip costs next to blob transfers when many nodes share one trio thread (one
process, as `discofl-p2p scenario` runs): N nodes in a full mesh; each fetches every
other node's blob (a compact-CNN-sized 220 KB) with a window of 4, then the nodes
publish M small "holding"-shaped announcements in turn and every node waits for all of
them. Prints both times (docs/p2p.md, "The overlay": why the overlay announces peer
bindings once a round instead of every model it holds).

    python tools/gossip_cost.py [--nodes 11] [--messages 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from discofl_p2p.p2p.node import P2PNetwork, P2PNode, key_from_seed

TOPIC = "gossip-cost"


async def _mesh(nodes: list[P2PNode]) -> None:
    for n in nodes:
        while await n.topic_peers(TOPIC) < min(4, len(nodes) - 1):
            await asyncio.sleep(0.05)
    await asyncio.sleep(2)  # a couple of heartbeats: the mesh settles


async def measure(n_nodes: int, messages: int) -> tuple[float, float, float]:
    """(all-to-all fetch seconds, seconds to publish, seconds until every node got all)."""
    async with P2PNetwork() as net:
        nodes = [await net.add_node(key_from_seed(7, f"n{i}")) for i in range(n_nodes)]
        await net.connect_all()
        queues = [await n.subscribe(TOPIC) for n in nodes]
        await _mesh(nodes)
        blobs = [os.urandom(220_000 + i) for i in range(n_nodes)]
        cids = [await n.put(b) for n, b in zip(nodes, blobs, strict=True)]

        async def fetch_all(i: int) -> None:
            window = asyncio.Semaphore(4)

            async def one(j: int) -> None:
                async with window:
                    await nodes[i].get(cids[j], [nodes[j].peer_id])

            await asyncio.gather(*(one(j) for j in range(n_nodes) if j != i))

        t0 = time.perf_counter()
        await asyncio.gather(*(fetch_all(i) for i in range(n_nodes)))
        fetch_s = time.perf_counter() - t0

        payload = {"kind": "holding", "round": 1, "cids": [cids[0]], "worker": "0x" + "1" * 40}
        payload["binding"] = "0x" + "ab" * 65
        t0 = time.perf_counter()
        for k in range(messages):
            await nodes[k % n_nodes].announce(TOPIC, payload | {"k": k})
        publish_s = time.perf_counter() - t0

        async def drain(i: int) -> None:
            own = len(range(i, messages, n_nodes))  # a node does not receive its own
            for _ in range(messages - own):
                await queues[i].get()

        async with asyncio.timeout(300):
            await asyncio.gather(*(drain(i) for i in range(n_nodes)))
        return fetch_s, publish_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=11)
    ap.add_argument("--messages", type=int, default=100)
    a = ap.parse_args()
    fetch_s, publish_s, delivered_s = asyncio.run(measure(a.nodes, a.messages))
    fetches = a.nodes * (a.nodes - 1)
    print(f"{a.nodes} nodes in one process: {fetches} fetches of 220 KB (window 4): {fetch_s:.2f} s")
    print(f"{a.messages} announcements: published in {publish_s:.2f} s, delivered to every node in {delivered_s:.2f} s")


if __name__ == "__main__":
    main()
