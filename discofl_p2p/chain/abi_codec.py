"""Calldata, return values and logs of one contract, coded straight from its ABI.

web3's contract objects look a function or event up by name on every call: they
rebuild every ABI entry's signature, hash it and bind the arguments against each
candidate, about 100 keccak hashes and several milliseconds of Python per
transaction, and as much again per decoded log. Every agent decodes every event of
the task, so in a run this lookup was a second of CPU a round taken from training
and evaluation (docs/scenarios.md, "overhead"). `AbiCodec` does the lookup once, at
construction, and then only encodes and decodes with eth-abi.

Values come out as web3 gives them: addresses checksummed, `bytes`/`bytesN` as
`bytes`, arrays as lists, so callers cannot tell the two apart
(`tests/test_abi_codec.py` compares them on a real run's logs and calls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address
from eth_utils.abi import collapse_if_tuple


def _types(params: Sequence[Mapping[str, Any]]) -> list[str]:
    return [collapse_if_tuple(dict(p)) for p in params]


def _signature(entry: Mapping[str, Any]) -> str:
    return f"{entry['name']}({','.join(_types(entry['inputs']))})"


def _normalise(abi_type: str, value: Any) -> Any:
    """eth-abi's form of a decoded value → web3's (checksummed addresses, lists)."""
    if abi_type.endswith("]"):
        inner = abi_type[: abi_type.rindex("[")]
        return [_normalise(inner, v) for v in value]
    if abi_type == "address":
        return to_checksum_address(value)
    return value


@dataclass(frozen=True)
class _Function:
    name: str
    selector: bytes
    inputs: tuple[str, ...]
    input_names: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class _Event:
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type) of each topic after the first
    data: tuple[tuple[str, str], ...]  # (name, type) of the non-indexed fields
    order: tuple[str, ...]  # every field's name, in declaration order


class AbiCodec:
    """Encodes calls and decodes results and logs of one contract's ABI."""

    def __init__(self, abi: Sequence[Mapping[str, Any]]) -> None:
        self._functions: dict[str, _Function] = {}
        self._by_selector: dict[bytes, _Function] = {}
        self._events: dict[bytes, _Event] = {}
        self._constructor: tuple[str, ...] = ()
        for entry in abi:
            kind = entry.get("type")
            if kind == "function":
                fn = _Function(
                    name=entry["name"],
                    selector=keccak(text=_signature(entry))[:4],
                    inputs=tuple(_types(entry["inputs"])),
                    input_names=tuple(p["name"] for p in entry["inputs"]),
                    outputs=tuple(_types(entry.get("outputs", []))),
                )
                if fn.name in self._functions:
                    raise ValueError(f"overloaded function {fn.name!r}: AbiCodec looks functions up by name")
                self._functions[fn.name] = fn
                self._by_selector[fn.selector] = fn
            elif kind == "event" and not entry.get("anonymous"):
                fields = [(p["name"], collapse_if_tuple(dict(p)), bool(p["indexed"])) for p in entry["inputs"]]
                ev = _Event(
                    name=entry["name"],
                    indexed=tuple((n, t) for n, t, ix in fields if ix),
                    data=tuple((n, t) for n, t, ix in fields if not ix),
                    order=tuple(n for n, _, _ in fields),
                )
                self._events[keccak(text=_signature(entry))] = ev
            elif kind == "constructor":
                self._constructor = tuple(_types(entry["inputs"]))

    # ------------------------------------------------------------------ calls

    def call_data(self, name: str, *args: Any) -> bytes:
        """The calldata of `name(*args)`: its selector and the ABI-encoded arguments."""
        fn = self._function(name)
        if len(args) != len(fn.inputs):
            raise TypeError(f"{name} takes {len(fn.inputs)} arguments ({', '.join(fn.inputs)}), got {len(args)}")
        return fn.selector + encode(list(fn.inputs), list(args))

    def deploy_data(self, bytecode: bytes, *args: Any) -> bytes:
        """The creation code with the constructor's arguments appended."""
        return bytecode + encode(list(self._constructor), list(args))

    def decode_output(self, name: str, data: bytes) -> Any:
        """A view's return value: the value itself when it returns one, else a list."""
        fn = self._function(name)
        values = [_normalise(t, v) for t, v in zip(fn.outputs, decode(list(fn.outputs), data), strict=True)]
        return values[0] if len(values) == 1 else values

    def decode_input(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """The function a transaction's input calls and its arguments by name."""
        fn = self._by_selector.get(bytes(data[:4]))
        if fn is None:
            raise ValueError(f"no function of this contract has selector 0x{bytes(data[:4]).hex()}")
        values = decode(list(fn.inputs), bytes(data[4:]))
        return fn.name, {n: _normalise(t, v) for n, t, v in zip(fn.input_names, fn.inputs, values, strict=True)}

    def _function(self, name: str) -> _Function:
        try:
            return self._functions[name]
        except KeyError:
            raise ValueError(f"the contract has no function {name!r}") from None

    # ------------------------------------------------------------------ logs

    def decode_log(self, topics: Sequence[bytes], data: bytes) -> tuple[str, dict[str, Any]]:
        """An event log's name and fields (in declaration order)."""
        ev = self._events.get(bytes(topics[0])) if topics else None
        if ev is None:
            raise ValueError("a log of no event of this contract")
        if len(topics) != 1 + len(ev.indexed):
            raise ValueError(f"{ev.name}: {len(topics) - 1} indexed topics, the ABI has {len(ev.indexed)}")
        fields: dict[str, Any] = {}
        for (name, t), topic in zip(ev.indexed, topics[1:], strict=True):
            fields[name] = _normalise(t, decode([t], bytes(topic))[0])
        values = decode([t for _, t in ev.data], bytes(data))
        for (name, t), v in zip(ev.data, values, strict=True):
            fields[name] = _normalise(t, v)
        return ev.name, {n: fields[n] for n in ev.order}
