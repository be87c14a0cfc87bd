"""Development-chain helpers for simulations: deterministic accounts, funding, time.

`fund` and `advance_time` use anvil's own RPC methods; they are for simulations and
tests, never for a real chain. `ensure_time_past` works on any chain: it uses anvil's
methods only on anvil (`is_anvil`) and otherwise waits for the chain to mine.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.types import RPCEndpoint


def derive_account(seed: int | str, label: str) -> LocalAccount:
    """A key that depends only on (seed, label), so that a scenario replays exactly."""
    return Account.from_key(keccak(text=f"discofl-p2p/account/{seed}/{label}"))


async def fund(w3: AsyncWeb3, address: str, wei: int) -> None:
    """Sets an account's balance (`anvil_setBalance`)."""
    await w3.provider.make_request("anvil_setBalance", [address, hex(wei)])


async def advance_time(w3: AsyncWeb3, seconds: int) -> None:
    """Moves the chain clock forward and mines a block, so deadlines can pass.

    Uses `evm_mine` via make_request: web3's testing.mine() sends an argument that
    anvil reads as a timestamp.
    """
    await w3.provider.make_request("evm_increaseTime", [seconds])
    await w3.provider.make_request("evm_mine", [])


_IS_ANVIL: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


async def is_anvil(w3: AsyncWeb3) -> bool:
    """Whether the chain behind `w3` is anvil (`web3_clientVersion` "anvil/..."); asked
    once per provider."""
    provider = w3.provider
    if provider not in _IS_ANVIL:
        try:
            version = str(await w3.client_version)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a node that will not say is not a dev chain
            version = ""
        _IS_ANVIL[provider] = version.lower().startswith("anvil")
    return _IS_ANVIL[provider]


async def ensure_time_past(w3: AsyncWeb3, deadline: int, *, poll_s: float = 2.0) -> None:
    """Returns once the chain has a block later than `deadline` (a contract deadline).

    Anvil mines one block per transaction with strictly increasing timestamps, so its
    clock runs ahead of the wall clock under load, and it mines nothing while idle.
    A simulation therefore waits its timeout in wall-clock seconds and then calls this.
    On anvil it sets the next block's timestamp and mines one. Any other chain mines on
    its own: this polls the latest block, at most `poll_s` seconds apart, until one is
    later than the deadline, and never calls an anvil-only method.
    """
    if (await w3.eth.get_block("latest"))["timestamp"] > deadline:
        return
    if await is_anvil(w3):
        try:
            # Through the request manager, so that an error is raised here rather than
            # by the WebSocket listener, which would drop the connection.
            await w3.manager.coro_request(RPCEndpoint("evm_setNextBlockTimestamp"), [deadline + 1])
            await w3.manager.coro_request(RPCEndpoint("evm_mine"), [])
        except Web3RPCError:
            # Interval mining may have mined past the deadline meanwhile.
            if (await w3.eth.get_block("latest"))["timestamp"] <= deadline:
                raise
        return
    while True:
        await asyncio.sleep(min(poll_s, max(0.05, deadline + 1 - time.time())))
        if (await w3.eth.get_block("latest"))["timestamp"] > deadline:
            return
