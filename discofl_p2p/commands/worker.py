"""`discofl-p2p worker`: one worker agent alone, in this process.

    discofl-p2p worker --rpc-url URL --contract ADDR --key FILE --bootstrap MULTIADDR \\
        --scenario FILE --name NAME [--node-key FILE] [--peer MULTIADDR]... \\
        [--ring-peer MULTIADDR]... [--host H] [--port P] [--log FILE] [--records FILE]

It joins the task at `--contract` by its address: w0 comes from the requester
(`--bootstrap`, its multiaddr) and is checked against the contract; the scenario gives
the task's public settings and, by `--name`, this worker's data split and behaviour;
`--peer` names other workers to dial, `--ring-peer` a collusion ring's mates (their
out-of-band agreement). stdout: one JSON line with its peer id and multiaddr. Exit
codes: `agent_common.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from web3 import Web3

from discofl_p2p.chain.anvil import to_ws_url
from discofl_p2p.commands.agent_common import (
    AgentArgsError,
    emit,
    load_account,
    load_node_key,
    load_task_scenario,
    peer_addr,
    run_agent,
)
from discofl_p2p.scenario.agent_process import serve_worker
from discofl_p2p.scenario.runner import worker_names


def worker_main(
    rpc_url: str,
    contract: str,
    key: str,
    bootstrap: str,
    scenario: str,
    name: str,
    *,
    seed: int | None = None,
    node_key: str | None = None,
    peers: Sequence[str] = (),
    ring: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    log: str | None = None,
    records: str | None = None,
    parent_pid: int | None = None,
) -> int:
    async def body(stop: asyncio.Event) -> bool:
        if not Web3.is_address(contract):
            raise AgentArgsError(f"--contract {contract!r}: not an address")
        boot = peer_addr("--bootstrap", bootstrap)
        others = [peer_addr("--peer", a) for a in peers]
        mates = [peer_addr("--ring-peer", a) for a in ring]
        sc = load_task_scenario(scenario, seed)
        roster = [n for n, _, _ in worker_names(sc)]
        if name not in roster:
            raise AgentArgsError(f"--name {name!r}: not a worker of {scenario} (its workers: {', '.join(roster)})")
        return await serve_worker(
            sc,
            name,
            to_ws_url(rpc_url),
            contract,
            load_account(key),
            load_node_key(node_key),
            boot,
            emit=emit,
            stop=stop,
            peers=others,
            ring=mates,
            host=host,
            port=port,
            records=Path(records) if records else None,
        )

    return run_agent("worker", log, parent_pid, body)
