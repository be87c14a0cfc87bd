"""`discofl-p2p bench p2p`: libp2p blob throughput beside a plain asyncio socket, an
all-to-all fetch among W = 20 nodes, and memory per idle node. All on loopback, in one
run, so that the ratios compare like with like.

The all-to-all runs twice: with every node in this process (one trio thread does the
Noise and Yamux work of both ends of every dial and transfer), and with the nodes
spread over several processes, one trio thread each, as `scenario --processes` and a
real deployment run them. Each process starts its nodes and stores their blobs, then
the parent hands every process all the addresses and times two phases across all of
them: the full-mesh dialling, then the fetches."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from rich.table import Table

from discofl_p2p.p2p.node import P2PNetwork, key_from_seed

MiB = 1 << 20
PROCESSES = max(2, min(4, os.cpu_count() or 2))
"""The spread all-to-all's processes: one a core, 2 to 4."""
PHASE_TIMEOUT_S = 300.0
"""The spread all-to-all's longest wait for its processes' replies (start, dial, fetch)."""


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


Peer = tuple[str, list[str], str]  # peer id, addresses, the CID of the blob it serves


async def _mesh_part(conn: Connection, ids: Sequence[int], size_mib: int) -> None:
    """One process's nodes (`ids` of the W) in the spread all-to-all: start them, store
    a blob each and report (`Peer` per id); then on the parent's word dial every node
    of a higher id (the full mesh, each pair dialled once, at most 8 dials at a time
    per process) and report; then fetch every other node's blob and report; then stop."""

    async def recv() -> Any:
        return await asyncio.to_thread(conn.recv)

    async with P2PNetwork() as net:
        nodes = {i: await net.add_node(key_from_seed("bench-a2a", str(i))) for i in ids}
        mine = {i: (n.peer_id, n.addrs, await n.put(os.urandom(size_mib * MiB))) for i, n in nodes.items()}
        conn.send(mine)
        everyone: dict[int, Peer] = await recv()
        sem = asyncio.Semaphore(8)

        async def dial(i: int, j: int) -> None:
            async with sem:
                await nodes[i].connect((everyone[j][0], everyone[j][1]))

        await recv()
        async with asyncio.TaskGroup() as tg:
            for i in ids:
                for j in everyone:
                    if j > i:
                        tg.create_task(dial(i, j))
        conn.send("dialled")

        async def fetch_others(i: int) -> None:
            for j, (peer, _, cid) in everyone.items():
                if j != i:
                    await nodes[i].get(cid, [peer])

        await recv()
        async with asyncio.TaskGroup() as tg:
            for i in ids:
                tg.create_task(fetch_others(i))
        conn.send("fetched")
        await recv()


def _mesh_part_main(conn: Connection, ids: list[int], size_mib: int) -> None:
    asyncio.run(_mesh_part(conn, ids, size_mib))


async def all_to_all_processes(w: int = 20, size_mib: int = 2, processes: int = 2) -> tuple[float, float]:
    """`all_to_all` with the W nodes spread round-robin over `processes` processes:
    (seconds for the full-mesh dialling, seconds for the fetches), each from the
    parent's word to every process's report."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
    parts = [list(range(k, w, processes)) for k in range(processes)]
    pipes = [ctx.Pipe() for _ in parts]
    procs = [
        ctx.Process(target=_mesh_part_main, args=(child, ids, size_mib), daemon=True)
        for (_, child), ids in zip(pipes, parts, strict=True)
    ]
    for proc in procs:
        proc.start()
    conns = [parent for parent, _ in pipes]

    async def replies() -> list[Any]:  # a process that died or hung fails the run
        wait = asyncio.gather(*(asyncio.to_thread(c.recv) for c in conns))
        return list(await asyncio.wait_for(wait, PHASE_TIMEOUT_S))

    async def each(message: object) -> list[Any]:
        for c in conns:
            c.send(message)
        return await replies()

    try:
        everyone: dict[int, Peer] = {}
        for part in await replies():
            everyone.update(part)
        for c in conns:
            c.send(everyone)
        t = time.perf_counter()
        await each("dial")
        dial_s = time.perf_counter() - t
        t = time.perf_counter()
        await each("fetch")
        a2a_s = time.perf_counter() - t
        for c in conns:
            c.send("stop")
        for proc in procs:
            await asyncio.to_thread(proc.join, 30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    return dial_s, a2a_s


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
    processes: int  # the spread run's
    spread_dial_s: float
    spread_all_to_all_s: float
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
    procs = PROCESSES
    spread_dial_s, spread_a2a_s = await all_to_all_processes(nodes, blob, procs)
    return P2PFigures(
        rows, repeats, nodes, blob, dial_s, a2a_s, procs, spread_dial_s, spread_a2a_s, idle, heap_mb, rss_mb
    )


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
        f"{f.all_to_all_s:.2f} s (full-mesh dialling before it: {f.dial_s:.2f} s), nodes in one process",
        f"  the same with the nodes spread over {f.processes} processes: {f.spread_all_to_all_s:.2f} s "
        f"(dialling: {f.spread_dial_s:.2f} s); goals at W = 20: all-to-all < 5 s, dialling < 1 s",
        f"memory per idle node ({f.idle_nodes} started): Python heap {f.heap_mb:.2f} MB, "
        f"resident set {f.rss_mb:.2f} MB (goal < 1 MB)",
    ]
