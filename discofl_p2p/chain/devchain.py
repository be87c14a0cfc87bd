"""Development-chain helpers for simulations: deterministic accounts, funding, time.

`fund` and `advance_time` use anvil's own RPC methods; they are for simulations and
tests, never for a real chain.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import AsyncWeb3


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


async def ensure_time_past(w3: AsyncWeb3, deadline: int) -> None:
    """Makes sure the chain has a block later than `deadline` (a contract deadline).

    Anvil mines one block per transaction with strictly increasing timestamps, so its
    clock runs ahead of the wall clock under load, and it mines nothing while idle.
    A simulation therefore waits its timeout in wall-clock seconds and then calls this.
    On anvil it sets the next block's timestamp and mines; on another chain (which
    mines on its own) the dev methods fail and time passes by itself.
    """
    latest = await w3.eth.get_block("latest")
    if latest["timestamp"] > deadline:
        return
    try:
        await w3.provider.make_request("evm_setNextBlockTimestamp", [deadline + 1])
        await w3.provider.make_request("evm_mine", [])
    except Exception:  # noqa: BLE001 - not a dev chain
        pass
