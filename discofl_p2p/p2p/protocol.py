"""Our blob request/response protocol, `/discofl/blob/1.0.0`, over one libp2p stream.

    request:  u32 big-endian length, then that many bytes of JSON
              {"op": "get", "cid": "..."}  or  {"op": "list", "task": "...", "round": r}
    response: u8 status, u64 big-endian length, then that many bytes of payload
              (the blob for "get"; a JSON list of CIDs for "list")

Every length is checked against a cap before anything is read past it, so a frame that
lies about its length is refused without buffering it. Functions here take a stream
with libp2p's `read(n)` / `write(data)`; they never parse payload bytes.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any, Protocol

BLOB_PROTOCOL = "/discofl/blob/1.0.0"
MAX_REQUEST = 4096
MAX_JSON_DEPTH = 32  # our requests, messages and announcements nest two levels at most

OK, NOT_FOUND, BAD_REQUEST = 0, 1, 2
STATUS_NAMES = {OK: "ok", NOT_FOUND: "not found", BAD_REQUEST: "bad request"}


class ProtocolError(Exception):
    """A peer broke the protocol; the message says how."""


class Stream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


async def read_exact(stream: Stream, n: int, *, what: str, progress: Callable[[int], None] | None = None) -> bytes:
    """Exactly `n` bytes. A stream that ends early, or that the peer resets (libp2p
    raises EOFError or a stream error), is a ProtocolError that says how far it got.
    `progress(k)` is called with each chunk's size as it arrives."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(min(n - len(buf), 1 << 20))
        except EOFError:
            chunk = b""
        except Exception as e:  # a reset or broken stream, named below
            detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise ProtocolError(f"{what}: stream failed after {len(buf)} of {n} bytes ({detail})") from e
        if not chunk:
            raise ProtocolError(f"{what}: stream ended after {len(buf)} of {n} bytes")
        buf += chunk
        if progress is not None:
            progress(len(chunk))
    return bytes(buf)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}()")


def nesting_within(data: bytes, limit: int) -> bool:
    """Whether `json.loads(data)` stays within `limit` levels of nesting (for invalid
    JSON: within 2 * limit before it fails), decided without recursion and in C-speed
    passes: strings removed, brackets reduced to `(` and `)`, then innermost pairs
    removed `limit` times. What remains is unmatched, and its openers add depth."""
    s = _JSON_STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = s.replace(b"()", b"")
        if len(shorter) == len(s):
            break
        s = shorter
    else:
        if b"()" in s:
            return False  # a pair nested deeper than `limit`
    return s.count(b"(") <= limit


def parse_json(data: bytes) -> Any:
    """JSON from a peer; ValueError for anything that is not JSON or nests deeper than
    MAX_JSON_DEPTH. The depth is bounded before parsing: `json.loads` recurses per level
    in C. With Python's default recursion limit a 3 KB `[[[...]]]` makes it raise
    RecursionError (not a ValueError); where the limit is raised (py_ecc, imported with
    web3, sets 100,000), a 1 MB one overflows the C stack and kills the process."""
    if not nesting_within(data, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except RecursionError:  # unreachable after the check; kept as a second line
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


def encode_request(req: dict[str, Any]) -> bytes:
    body = json.dumps(req, separators=(",", ":")).encode()
    if len(body) > MAX_REQUEST:
        raise ValueError(f"request of {len(body)} bytes is over {MAX_REQUEST}")
    return struct.pack(">I", len(body)) + body


async def read_request_json(stream: Stream) -> dict[str, Any]:
    """One u32-length-prefixed JSON object (requests and direct messages)."""
    (n,) = struct.unpack(">I", await read_exact(stream, 4, what="request length"))
    if n > MAX_REQUEST:
        raise ProtocolError(f"request frame claims {n} bytes, over the cap of {MAX_REQUEST}")
    body = await read_exact(stream, n, what="request body")
    try:
        req = parse_json(body)
    except ValueError as e:
        raise ProtocolError(f"request is not JSON: {e}") from None
    if not isinstance(req, dict):
        raise ProtocolError("request must be a JSON object")
    return req


async def read_request(stream: Stream) -> dict[str, Any]:
    req = await read_request_json(stream)
    if req.get("op") not in ("get", "list"):
        raise ProtocolError("request must be a JSON object with op 'get' or 'list'")
    if req["op"] == "get" and not isinstance(req.get("cid"), str):
        raise ProtocolError("get request needs a string 'cid'")
    if req["op"] == "list" and not (isinstance(req.get("task"), str) and isinstance(req.get("round"), int)):
        raise ProtocolError("list request needs a string 'task' and an integer 'round'")
    return req


def encode_response_header(status: int, length: int) -> bytes:
    return struct.pack(">BQ", status, length)


async def read_response(
    stream: Stream, max_bytes: int, *, what: str, progress: Callable[[int], None] | None = None
) -> bytes:
    """The payload of one response; `progress` sees the payload bytes as they arrive."""
    status, n = struct.unpack(">BQ", await read_exact(stream, 9, what=f"{what} header"))
    if status != OK:
        raise ProtocolError(f"{what}: peer answered {STATUS_NAMES.get(status, f'status {status}')}")
    if n > max_bytes:
        raise ProtocolError(f"{what}: peer announces {n} bytes, over the cap of {max_bytes}")
    return await read_exact(stream, n, what=what, progress=progress)
