"""Turns revert data into a Python exception that names the contract's custom error."""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi import decode
from eth_utils import function_signature_to_4byte_selector

from discofl_p2p.chain.artifact import load_artifact

_PANIC = bytes.fromhex("4e487b71")
_ERROR_STRING = bytes.fromhex("08c379a0")


class ContractRevert(Exception):
    """A contract call reverted. `name` is the Solidity custom error (e.g. `NotRequester`)."""

    def __init__(self, name: str, args: tuple[Any, ...] = (), *, function: str = "") -> None:
        self.name = name
        self.args_ = args
        self.function = function
        where = f" in {function}()" if function else ""
        shown = ", ".join(map(str, args))
        super().__init__(f"reverted{where}: {name}({shown})")


def _abi_type(inp: dict[str, Any]) -> str:
    return inp["type"]


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in load_artifact()["abi"]:
        if item["type"] != "error":
            continue
        types = [_abi_type(i) for i in item["inputs"]]
        sig = f"{item['name']}({','.join(types)})"
        table[function_signature_to_4byte_selector(sig)] = (item["name"], types)
    return table


def decode_revert(data: str | bytes | None, *, function: str = "") -> ContractRevert:
    """Decodes revert data (hex or bytes) into a ContractRevert; unknown data is kept raw."""
    if isinstance(data, str):
        raw = bytes.fromhex(data.removeprefix("0x")) if data.startswith("0x") else b""
    else:
        raw = data or b""
    selector, body = raw[:4], raw[4:]
    if selector in _error_table():
        name, types = _error_table()[selector]
        return ContractRevert(name, tuple(decode(types, body)), function=function)
    if selector == _PANIC:
        return ContractRevert("Panic", tuple(decode(["uint256"], body)), function=function)
    if selector == _ERROR_STRING:
        return ContractRevert("Error", tuple(decode(["string"], body)), function=function)
    return ContractRevert("UnknownRevert", (raw.hex(),), function=function)
