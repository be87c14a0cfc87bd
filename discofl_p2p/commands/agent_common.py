"""What `discofl-p2p requester` and `discofl-p2p worker` share: reading their key
files and the scenario, their JSON log, stdout lines, signals and exit codes.

Exit codes: 0 the task closed and the agent followed it to the end; 2 an argument it
cannot use (one line on stderr naming it, nothing started); 3 the run failed (one
line on stderr); 130 stopped by SIGINT/SIGTERM before the task closed (its records
are still written).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from eth_account import Account
from eth_account.signers.local import LocalAccount
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from discofl_p2p.commands.node import NodeArgsError, parse_peer_addr
from discofl_p2p.commands.scenario import configure_logging, leaf_errors
from discofl_p2p.p2p.node import load_or_create_key
from discofl_p2p.scenario.agent_process import AgentStartError, PeerAddr, watch_parent
from discofl_p2p.scenario.config import Scenario, ScenarioError, load_scenario

EXIT_OK, EXIT_BAD_ARGS, EXIT_FAILED, EXIT_STOPPED = 0, 2, 3, 130


class AgentArgsError(ValueError):
    """A command-line value the agent cannot use; the message names the option."""


def load_account(path: str) -> LocalAccount:
    """`--key FILE`: the agent's chain account, a private key in hex (64 digits, with or
    without 0x) on the file's first line."""
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise AgentArgsError(f"--key {path}: {e.strerror or e}") from None
    digits = text.removeprefix("0x")
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise AgentArgsError(f"--key {path}: expected a private key of 64 hex digits")
    return Account.from_key("0x" + digits)


def load_node_key(path: str | None) -> KeyPair:
    """`--node-key FILE`: the libp2p key (a 32-byte seed, created 0600 if absent); a
    fresh key for this run only without it."""
    if path is None:
        return create_new_key_pair()
    try:
        return load_or_create_key(Path(path))
    except (OSError, ValueError) as e:
        raise AgentArgsError(f"--node-key {e}") from None


def load_task_scenario(path: str, seed: int | None) -> Scenario:
    try:
        return load_scenario(path, seed=seed)
    except ScenarioError as e:
        raise AgentArgsError(f"--scenario: {e}") from None


def peer_addr(option: str, addr: str) -> PeerAddr:
    try:
        return parse_peer_addr(addr)
    except NodeArgsError as e:
        raise AgentArgsError(str(e).replace("--connect", option, 1)) from None


def emit(fact: dict[str, Any]) -> None:
    """One JSON line on stdout: what the runner (or a script) reads."""
    print(json.dumps(fact), flush=True)


def run_agent(
    prog: str,
    log_path: str | None,
    parent_pid: int | None,
    body: Callable[[asyncio.Event], Awaitable[bool]],
) -> int:
    """Runs one agent's `body(stop)` with its log, SIGINT/SIGTERM setting `stop`, and
    (with `parent_pid`) stopping when that parent is gone; maps the outcome to an
    exit code."""

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(watch_parent(parent_pid, stop)) if parent_pid else None
        try:
            return await body(stop)
        finally:
            if watcher:
                watcher.cancel()

    log_file = open(log_path, "a") if log_path else sys.stderr  # noqa: SIM115 - closed below
    before = structlog.get_config()
    try:
        configure_logging(log_file)
        try:
            finished = asyncio.run(main())
        except AgentArgsError as e:
            print(f"discofl-p2p {prog}: {e}", file=sys.stderr)
            return EXIT_BAD_ARGS
        except Exception as e:  # noqa: BLE001 - one line, the log keeps the detail
            errors = [repr(x) for x in leaf_errors(e)]
            structlog.get_logger("discofl").error("run_failed", agent=prog, errors=errors)
            why = str(e) if isinstance(e, AgentStartError) else "; ".join(errors)
            print(f"discofl-p2p {prog}: the run failed: {why}", file=sys.stderr)
            return EXIT_FAILED
        if not finished:
            # Stopped: its records are written. A CPU job still running in its pool
            # (training) cannot be cancelled, and the interpreter would wait for it at
            # exit: leave now instead.
            log_file.flush()
            sys.stdout.flush()
            os._exit(EXIT_STOPPED)
        return EXIT_OK
    finally:
        structlog.configure(**before)  # the caller's logging, as it was (tests call this in process)
        if log_path:
            log_file.close()
