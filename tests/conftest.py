"""Shared fixtures: one real anvil per test session, fresh contracts per test; and the
one way the agent tests assemble a task on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from discofl_p2p.chain.anvil import Anvil
from discofl_p2p.chain.client import connect
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork
from discofl_p2p.scenario.config import Scenario, parse_scenario
from discofl_p2p.scenario.runner import Simulation, assemble, build_setup

TINY = """\
timeout_s = 120

[task]
name = "{name}"
rounds = 1
top_k = 3
submission_timeout_s = 30
evaluation_timeout_s = 30
seed = 21

[data]
samples_per_worker = 100

[model]
name = "logreg"
epochs = 1

[[workers]]
name = "honest"
count = 3
"""
"""A one-round task of three honest logreg workers; `{name}` names it."""


def tiny(name: str) -> Scenario:
    """TINY, named `name` (so that each test's task and its accounts are its own)."""
    return parse_scenario(TINY.format(name=name))


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as a:
        yield a


def run(coro):
    """Runs one coroutine on a fresh event loop (each test owns its loop)."""
    return asyncio.run(coro)


async def with_simulation(
    anvil: Anvil,
    sc: Scenario,
    body: Callable[[Simulation, P2PNetwork, bytes], Awaitable[Any]],
    *,
    node_cfg: NodeConfig | None = None,
    **kw: Any,
) -> Any:
    """Runs `body(sim, net, w0)` on a freshly assembled task (real anvil, real libp2p
    nodes; `kw` goes to `assemble`), and tears it all down afterwards."""
    setup, w0 = build_setup(sc)
    w3 = await connect(anvil.ws_url)
    try:
        async with P2PNetwork(node_cfg or NodeConfig(max_blob_bytes=setup.max_model_bytes)) as net:
            sim = await assemble(sc, setup, w0, w3, anvil.ws_url, net, **kw)
            return await body(sim, net, w0)
    finally:
        await w3.provider.disconnect()
        setup.cpu.shutdown(wait=False, cancel_futures=True)
