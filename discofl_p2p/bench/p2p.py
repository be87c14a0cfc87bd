"""`discofl-p2p bench p2p`: libp2p blob throughput beside a plain asyncio socket, an
all-to-all fetch among W = 20 nodes, and memory per idle node. All on loopback, in one
run, so that the ratios compare like with like."""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from dataclasses import dataclass

from rich.table import Table

from discofl_p2p.p2p.node import P2PNetwork, key_from_seed

MiB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _socket_mib_s(data: bytes, repeats: int) -> float:
    """The same transfer over a plain asyncio TCP socket on loopback."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.write(len(data).to_bytes(8, "big") + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"g")
        n = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(n)
        writer.close()
        best = min(best, time.perf_counter() - t)
    server.close()
    await server.wait_closed()
    return len(data) / MiB / best


async def throughput(sizes_mib: tuple[int, ...] = (1, 5, 50), repeats: int = 3) -> list[tuple[int, float, float]]:
    rows = []
    async with P2PNetwork() as net:
        a = await net.add_node(key_from_seed("bench", "a"))
        b = await net.add_node(key_from_seed("bench", "b"))
        await b.connect(a)
        for size in sizes_mib:
            data = os.urandom(size * MiB)
            cid = await a.put(data)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                await b.get(cid, [a.peer_id])
                best = min(best, time.perf_counter() - t)
            rows.append((size, size / best, await _socket_mib_s(data, repeats)))
    return rows


async def all_to_all(w: int = 20, size_mib: int = 2) -> tuple[float, float]:
    """Seconds for W nodes to each fetch the other W - 1 nodes' blobs (mesh dialled first)."""
    async with P2PNetwork() as net:
        nodes = [await net.add_node(key_from_seed("bench-a2a", str(i))) for i in range(w)]
        t = time.perf_counter()
        await net.connect_all()
        dial_s = time.perf_counter() - t
        cids = [await n.put(os.urandom(size_mib * MiB)) for n in nodes]

        async def fetch_others(i: int) -> None:
            for j, cid in enumerate(cids):
                if j != i:
                    await nodes[i].get(cid, [nodes[j].peer_id])

        t = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(w):
                tg.create_task(fetch_others(i))
        return dial_s, time.perf_counter() - t


async def idle_memory(n: int = 50) -> tuple[float, float]:
    """Memory added per idle (started, unconnected) node, in MB: the Python heap as
    tracemalloc counts it (both threads), and the resident-set delta (which the
    allocator's reuse of freed memory can make look smaller)."""
    async with P2PNetwork() as net:
        await net.add_node(key_from_seed("bench-mem", "warm-up"))
        tracemalloc.start()
        heap0, rss0 = tracemalloc.get_traced_memory()[0], _rss_bytes()
        for i in range(n):
            await net.add_node(key_from_seed("bench-mem", str(i)))
        await asyncio.sleep(0.5)
        heap1, rss1 = tracemalloc.get_traced_memory()[0], _rss_bytes()
        tracemalloc.stop()
        return (heap1 - heap0) / n / 1e6, (rss1 - rss0) / n / 1e6


@dataclass(frozen=True)
class P2PFigures:
    throughput: list[tuple[int, float, float]]  # (MiB, libp2p MiB/s, plain socket MiB/s)
    repeats: int  # best of this many transfers
    nodes: int  # all-to-all among this many nodes
    blob_mib: int
    dial_s: float
    all_to_all_s: float
    idle_nodes: int
    heap_mb: float  # per idle node
    rss_mb: float


async def measure(*, quick: bool = False) -> P2PFigures:
    """The full figures, or a seconds-long smoke run of the same code (`quick`)."""
    nodes, blob, idle, repeats = (4, 1, 5, 1) if quick else (20, 2, 50, 3)
    # Memory first, before large transfers leave freed memory for the allocator to reuse.
    heap_mb, rss_mb = await idle_memory(idle)
    rows = await throughput((1,) if quick else (1, 5, 50), repeats=repeats)
    dial_s, a2a_s = await all_to_all(nodes, blob)
    return P2PFigures(rows, repeats, nodes, blob, dial_s, a2a_s, idle, heap_mb, rss_mb)


def render(f: P2PFigures) -> list[Table | str]:
    t = Table(title=f"Blob transfer between two nodes on loopback (best of {f.repeats})")
    for col in ("blob", "libp2p (Noise + Yamux) MiB/s", "plain asyncio socket MiB/s", "ratio"):
        t.add_column(col, justify="right")
    for size, p2p, sock in f.throughput:
        t.add_row(f"{size} MiB", f"{p2p:,.1f}", f"{sock:,.1f}", f"{p2p / sock:.2f}")
    others = f.nodes - 1
    return [
        t,
        f"all-to-all, W = {f.nodes} nodes, each fetches the other {others} nodes' {f.blob_mib} MiB blobs: "
        f"{f.all_to_all_s:.2f} s (full-mesh dialling before it: {f.dial_s:.2f} s; goal < 10 s at W = 20)",
        f"memory per idle node ({f.idle_nodes} started): Python heap {f.heap_mb:.2f} MB, "
        f"resident set {f.rss_mb:.2f} MB (goal < 1 MB)",
    ]
