"""`discofl-p2p requester`: the requester agent alone, in this process.

    discofl-p2p requester --rpc-url URL --key FILE --scenario FILE --workers FILE \\
        [--node-key FILE] [--host H] [--port P] [--log FILE] [--records FILE] \\
        [--registration-timeout S] [--store DIR [--resume]]

It deploys the task for the workers named in `--workers` (a JSON object, worker name
-> address: the task's allowlist), publishes w0 on its libp2p node and runs the task
to its end. stdout: one JSON line with the contract and the multiaddr workers
`--bootstrap` from, then one line per round phase. Exit codes: `agent_common.py`.

With `--store DIR` it keeps there what only it knows (`agents/requester_store.py`).
After a crash, `--resume` (with the same `--key`, `--node-key` and `--port`, so that
workers find it again) takes the task from DIR instead of deploying one, replays the
contract's events and carries on where it stopped, without repeating a transaction.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from web3 import Web3

from discofl_p2p.agents.requester_store import RequesterStore
from discofl_p2p.chain.anvil import to_ws_url
from discofl_p2p.commands.agent_common import (
    AgentArgsError,
    emit,
    load_account,
    load_node_key,
    load_task_scenario,
    run_agent,
)
from discofl_p2p.scenario.agent_process import serve_requester


def load_workers(path: str) -> dict[str, str]:
    """`--workers FILE`: {name: address} -> {address: name}, checked."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise AgentArgsError(f"--workers {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise AgentArgsError(f"--workers {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise AgentArgsError(f"--workers {path}: expected a JSON object {{worker name: address}}")
    out: dict[str, str] = {}
    for name, address in data.items():
        if not isinstance(address, str) or not Web3.is_address(address):
            raise AgentArgsError(f"--workers {path}: {name}: {address!r} is not an address")
        out[Web3.to_checksum_address(address)] = name
    if len(out) != len(data):
        raise AgentArgsError(f"--workers {path}: two workers share an address")
    return out


def requester_main(
    rpc_url: str,
    key: str,
    scenario: str,
    workers: str,
    *,
    seed: int | None = None,
    node_key: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log: str | None = None,
    records: str | None = None,
    parent_pid: int | None = None,
    registration_timeout_s: float = 60.0,
    store: str | None = None,
    resume: bool = False,
) -> int:
    async def body(stop: asyncio.Event) -> bool:
        if resume and not store:
            raise AgentArgsError("--resume needs --store DIR: the state of the task to resume")
        sc = load_task_scenario(scenario, seed)
        names = load_workers(workers)
        account = load_account(key)
        return await serve_requester(
            sc,
            to_ws_url(rpc_url),
            account,
            load_node_key(node_key),
            names,
            emit=emit,
            stop=stop,
            host=host,
            port=port,
            records=Path(records) if records else None,
            registration_timeout_s=registration_timeout_s,
            store=RequesterStore(Path(store)) if store else None,
            resume=resume,
        )

    return run_agent("requester", log, parent_pid, body)
