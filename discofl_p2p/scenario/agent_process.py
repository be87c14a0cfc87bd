"""One agent in its own OS process: what `discofl-p2p requester` and `discofl-p2p
worker` run.

Each builds its agent from what one participant would hold on its own machine: its
chain key and node key, the chain's URL, the scenario file (the task's public
settings, and, for a worker, its place in the roster: its data split and behaviour),
and, for a worker, the task's contract address and the requester's multiaddr. Nothing
is shared with another process but the chain and the network: a worker fetches w0
from the requester and checks it against the contract (`WorkerAgent.fetch_w0`), and
binds its peer id to its address by a signed statement.

Each prints JSON lines on stdout (`emit`): the requester its contract and multiaddr
once deployed, then one line per round phase; a worker its peer id and addresses.
When it stops (the task closed, or SIGTERM/SIGINT) it writes its records
(`scenario/records.py`) as JSON for whoever ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
import torch
from eth_account.signers.local import LocalAccount
from libp2p.crypto.keys import KeyPair

from discofl_p2p.agents.context import Recorder
from discofl_p2p.agents.requester import RequesterAgent
from discofl_p2p.agents.requester_store import RequesterStore
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork, P2PNode, PeerUnreachable
from discofl_p2p.scenario.config import Scenario
from discofl_p2p.scenario.records import write_records
from discofl_p2p.scenario.runner import build_behaviours, build_setup, build_worker, requester_config

log = structlog.get_logger("discofl.process")

Emit = Callable[[dict[str, Any]], None]
_T = TypeVar("_T")

DIAL_TIMEOUT_S = 120.0
"""How long an agent keeps dialling a peer that is not up yet (processes start together)."""


class AgentStartError(RuntimeError):
    """The agent cannot join the task (no contract at the address, a peer that never
    answers); the message says which."""


def multiaddr_of(node: P2PNode) -> str:
    """The node's first listening address with its peer id: what others `--bootstrap`."""
    addr = node.addrs[0]
    return addr if "/p2p/" in addr else f"{addr}/p2p/{node.peer_id}"


async def unless_stopped(main: Awaitable[_T], stop: asyncio.Event) -> tuple[bool, _T | None]:
    """Runs `main` until it returns, (True, its result), or `stop` is set, (False,
    None): then `main` is cancelled and awaited, so that its TaskGroups unwind in
    order. An error of `main` is raised."""
    task = asyncio.ensure_future(main)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None


async def until_stopped(main: Awaitable[None], stop: asyncio.Event) -> bool:
    """Runs `main` until it returns (True) or `stop` is set (False)."""
    finished, _ = await unless_stopped(main, stop)
    return finished


async def watch_parent(pid: int, stop: asyncio.Event, poll_s: float = 0.5) -> None:
    """Sets `stop` once the process `pid` that started this one is gone (this one is
    re-parented), so an agent never outlives the runner that owns it."""
    while os.getppid() == pid:
        await asyncio.sleep(poll_s)
    log.warning("parent_gone", parent=pid)
    stop.set()


PeerAddr = tuple[str, list[str]]
"""A peer to dial: (peer id, its transport multiaddrs), as `commands.node.parse_peer_addr` gives."""


async def dial(node: P2PNode, peer: PeerAddr, timeout_s: float = DIAL_TIMEOUT_S) -> str:
    """Connects to `peer`, retrying while it is not up yet; returns its peer id.
    Raises AgentStartError after `timeout_s`."""
    peer_id, addrs = peer
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await node.connect((peer_id, addrs))
            return peer_id
        except PeerUnreachable as e:
            if time.monotonic() > deadline:
                raise AgentStartError(f"cannot reach {peer_id} at {addrs} within {timeout_s:g} s: {e.reason}") from None
            await asyncio.sleep(0.3)


PARTITION_SIGNAL = signal.SIGUSR1
"""Sent by whoever runs the worker (`scenario/processes.py`) when its partition starts."""
LOSSY_SIGNAL = signal.SIGUSR2
"""Sent when its lossy link starts."""


def arm_link_faults(sc: Scenario, name: str, node: P2PNode) -> None:
    """Makes this worker's node take the scenario's `[faults] partition` and `lossy`
    for it when the runner says they start (PARTITION_SIGNAL, LOSSY_SIGNAL, at the
    fault's round): the runner knows the round from the requester, as a network
    operator would, and the node applies the fault to its traffic
    (`p2p/linkfault.py`). The agent is not told."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def start(what: Awaitable[None]) -> None:
        task = asyncio.ensure_future(what)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if part := sc.faults.partition.get(name):
        seconds = float(part["seconds"])
        loop.add_signal_handler(PARTITION_SIGNAL, lambda: start(node.partition(seconds)))
    if lossy := sc.faults.lossy.get(name):
        delay_s, loss = float(lossy["delay_ms"]) / 1000, float(lossy["loss"])
        seed = f"{sc.task.seed}/{name}/lossy"
        loop.add_signal_handler(LOSSY_SIGNAL, lambda: start(node.degrade(delay_s, loss, seed)))


async def serve_requester(
    sc: Scenario,
    ws_url: str,
    account: LocalAccount,
    node_key: KeyPair,
    names: dict[str, str],
    *,
    emit: Emit,
    stop: asyncio.Event,
    host: str = "127.0.0.1",
    port: int = 0,
    records: Path | None = None,
    registration_timeout_s: float = 60.0,
    store: RequesterStore | None = None,
    resume: bool = False,
) -> bool:
    """Deploys the task for the workers `names` (address -> name, its allowlist), or
    with `resume` takes the one in `store` back after a crash, and runs it until it
    is closed (True) or `stop` is set (False)."""
    torch.set_num_threads(1)
    setup, w0 = build_setup(sc, one_process_per_agent=True)
    recorder = Recorder(on_phase=lambda r, phase: emit({"round": r, "phase": phase}))
    w3 = await connect(ws_url)
    finished = False
    try:
        async with P2PNetwork(NodeConfig(host=host, port=port, max_blob_bytes=setup.max_model_bytes)) as net:
            node = await net.add_node(node_key)
            await node.subscribe(setup.topic)
            log.info("node_started", agent="requester", peer_id=node.peer_id, address=account.address)
            cfg = requester_config(sc, registration_timeout_s)
            if resume and store is not None:
                contract, _ = store.task()
                client = TaskClient(w3, contract, account, ws_url=ws_url)
                requester = await RequesterAgent.resume(client, node, setup, recorder, cfg, names, store)
            else:
                requester = await RequesterAgent.deploy(
                    lambda params, on_address: TaskClient.deploy(
                        w3, account, params, ws_url=ws_url, on_address=on_address
                    ),
                    node,
                    setup,
                    recorder,
                    cfg,
                    names,
                    w0,
                    store,
                )
            emit({"contract": requester.client.address, "peer_id": node.peer_id, "multiaddr": multiaddr_of(node)})
            try:
                finished = await until_stopped(requester.run(), stop)
            finally:
                facts = {"peer_id": node.peer_id, "address": account.address, "finished": finished}
                write_records(records, recorder, agent="requester", final_accuracy=requester.final_accuracy, **facts)
    finally:
        await w3.provider.disconnect()
        setup.cpu.shutdown(wait=False, cancel_futures=True)
    return finished


async def serve_worker(
    sc: Scenario,
    name: str,
    ws_url: str,
    contract: str,
    account: LocalAccount,
    node_key: KeyPair,
    bootstrap: PeerAddr,
    *,
    emit: Emit,
    stop: asyncio.Event,
    peers: Sequence[PeerAddr] = (),
    ring: Sequence[PeerAddr] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    records: Path | None = None,
    dial_timeout_s: float = DIAL_TIMEOUT_S,
) -> bool:
    """Joins the task at `contract` as the scenario's worker `name`: dials the
    requester (`bootstrap`), the other `peers` and its `ring` mates, then
    follows the task until it is closed (True) or `stop` is set (False)."""
    torch.set_num_threads(1)
    setup, _ = build_setup(sc, one_process_per_agent=True)
    behaviour = build_behaviours(sc)[name]
    recorder = Recorder()
    w3 = await connect(ws_url)
    finished = False
    try:
        if not await w3.eth.get_code(w3.to_checksum_address(contract)):
            raise AgentStartError(f"--contract {contract}: no contract at that address on {ws_url}")
        client = TaskClient(w3, contract, account, ws_url=ws_url)
        async with P2PNetwork(NodeConfig(host=host, port=port, max_blob_bytes=setup.max_model_bytes)) as net:
            node = await net.add_node(node_key)
            arm_link_faults(sc, name, node)
            requester_peer = await dial(node, bootstrap, dial_timeout_s)
            ring_peers = tuple([await dial(node, a, dial_timeout_s) for a in ring])
            for a in peers:
                await dial(node, a, dial_timeout_s)
            log.info("node_started", agent=name, peer_id=node.peer_id, address=account.address)
            emit({"worker": name, "peer_id": node.peer_id, "multiaddr": multiaddr_of(node)})
            agent = build_worker(sc, name, behaviour, client, node, setup, recorder, requester_peer, ring_peers)
            try:
                finished = await until_stopped(agent.run(), stop)
            finally:
                facts = {"peer_id": node.peer_id, "address": account.address, "finished": finished}
                facts["link_faults"] = node.link_faults
                write_records(records, recorder, agent=name, withdrawn_wei=agent.withdrawn_wei, **facts)
    finally:
        await w3.provider.disconnect()
        setup.cpu.shutdown(wait=False, cancel_futures=True)
    return finished
