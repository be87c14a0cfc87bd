"""CPU per libp2p dial, both ends in one process (docs/p2p.md, "Dialling cost").

    .venv/bin/python tools/dial_cost.py [--pairs 30] [--repeats 3]

Dials `pairs` disjoint pairs of fresh nodes one after another, waiting SETTLE_S after
each, and counts the process CPU from the dial to the end of that wait, less what the
idle nodes cost over the same time. The wait matters: `connect()` returns once the
connection is up, while identify, the gossipsub hellos and Yamux window updates run
on after it. Dials back to back bill that tail to the next dial, which made the cost
look like it grew with a node's connections (22 ms, then 56 ms by the fifth): it does
not, once each dial is given time to settle.

Alternates, in one run, py-libp2p's identify from both ends of every connection
("identify both ends") with ours (`node.identify_inbound_only`: only where a peer
dialled us), so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from discofl_p2p.p2p import node as p2p_node
from discofl_p2p.p2p.node import P2PNetwork, key_from_seed

SETTLE_S = 0.4


async def cpu_per_dial(pairs: int, label: str) -> tuple[float, float]:
    """(settled CPU per dial, CPU while connect() ran) in ms, over `pairs` dials."""
    async with P2PNetwork() as net:
        nodes = [await net.add_node(key_from_seed(f"dial-cost/{label}", str(i))) for i in range(2 * pairs)]
        await asyncio.sleep(1.0)
        c = time.process_time()
        await asyncio.sleep(SETTLE_S * pairs)
        idle = time.process_time() - c
        total, during = 0.0, 0.0
        for i in range(pairs):
            c = time.process_time()
            await nodes[2 * i].connect(nodes[2 * i + 1])
            during += time.process_time() - c
            await asyncio.sleep(SETTLE_S)
            total += time.process_time() - c
    return (total - idle) / pairs * 1000, during / pairs * 1000


async def main(pairs: int, repeats: int) -> None:
    ours = p2p_node.identify_inbound_only
    results: dict[str, list[float]] = {"identify both ends": [], "identify inbound only": []}
    for r in range(repeats):
        for name, runs in results.items():
            p2p_node.identify_inbound_only = ours if name == "identify inbound only" else (lambda host, learnt=(): None)
            settled, during = await cpu_per_dial(pairs, f"{r}/{name}")
            runs.append(settled)
            print(f"{name:24s} run {r + 1}: {settled:5.1f} ms CPU per dial settled ({during:4.1f} ms in connect())")
    p2p_node.identify_inbound_only = ours
    for name, xs in results.items():
        print(f"{name:24s} median {statistics.median(xs):5.1f} ms CPU per dial ({pairs} dials x {repeats})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.pairs, args.repeats))
