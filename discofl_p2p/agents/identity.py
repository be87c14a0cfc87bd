"""Binding a worker's libp2p peer id to its chain address, verifiably.

A worker signs, with its chain key (EIP-191 `personal_sign`), the statement "this
peer speaks for this address in this task contract". It sends the signature with
every opening and every "holding" announcement. A receiver recovers the signer from
the statement rebuilt with the *sending* peer's id (authenticated by Noise, or by
gossipsub's signature), so a signature lifted from another peer's message does not
verify, and nobody can speak for an address without its key. The contract address in
the statement keeps a binding from being replayed in another task.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount


def binding_statement(contract: str, address: str, peer_id: str) -> str:
    return f"discofl-p2p peer binding\ncontract: {contract.lower()}\nworker: {address.lower()}\npeer: {peer_id}"


def sign_binding(account: LocalAccount, contract: str, peer_id: str) -> str:
    """The worker's signature (hex) binding `peer_id` to its address in `contract`."""
    msg = encode_defunct(text=binding_statement(contract, account.address, peer_id))
    return "0x" + bytes(account.sign_message(msg).signature).hex()


def verify_binding(signature: object, contract: str, address: str, peer_id: str) -> bool:
    """Whether `signature` is `address`'s signature binding `peer_id` in `contract`."""
    if not isinstance(signature, str) or not isinstance(address, str) or len(signature) > 200:
        return False
    try:
        msg = encode_defunct(text=binding_statement(contract, address, peer_id))
        signer: str = Account.recover_message(msg, signature=signature)
    except Exception:  # noqa: BLE001 - any malformed signature is simply not a proof
        return False
    return signer.lower() == address.lower()
