"""`discofl-p2p node`: one libp2p node in its own process, for real multi-node runs.

The same P2PNode API as the simulations, with the key from a key file. It prints one
JSON line per fact on stdout (its identity, each served CID, each fetch), so that
scripts and other processes can use it:

    discofl-p2p node --key a.key --port 4001 --serve model.safetensors
    discofl-p2p node --key b.key --connect /ip4/127.0.0.1/tcp/4001/p2p/12D3... \\
                     --fetch bafkrei... --out model.safetensors

It serves until SIGINT/SIGTERM (or --for SECONDS), then shuts down in order. Exit
codes: 0 done, 2 an argument it cannot use, 3 a peer it cannot reach or a fetch that
no peer could serve (one line on stderr, no traceback).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import multiaddr
from libp2p.peer.id import ID
from multiformats import multihash

from discofl_p2p.p2p.cid import CIDError, digest_of
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork, PeerUnreachable, load_or_create_key


class NodeArgsError(ValueError):
    """A command-line value the node cannot use; the message names it."""


def parse_peer_addr(addr: str) -> tuple[str, list[str]]:
    """'/ip4/H/tcp/P/p2p/ID' -> (ID, ['/ip4/H/tcp/P'])."""
    if "/p2p/" not in addr:
        raise NodeArgsError(f"--connect {addr!r}: expected a multiaddr ending in /p2p/PEER_ID")
    transport, peer_id = addr.rsplit("/p2p/", 1)
    if not peer_id or not transport.startswith("/"):
        raise NodeArgsError(f"--connect {addr!r}: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID")
    try:
        multihash.unwrap(ID.from_base58(peer_id).to_bytes())  # a peer id is a multihash
    except Exception:  # noqa: BLE001 - base58 and multihash errors alike
        raise NodeArgsError(f"--connect {addr!r}: {peer_id!r} is not a peer id") from None
    try:
        multiaddr.Multiaddr(transport)
    except Exception as e:  # noqa: BLE001 - multiaddr raises several parse errors
        raise NodeArgsError(f"--connect {addr!r}: {transport!r} is not a multiaddr ({e})") from None
    return peer_id, [transport]


def _emit(**fact: object) -> None:
    print(json.dumps(fact), flush=True)


async def run_node(
    key: Path,
    host: str,
    port: int,
    connect: list[str],
    serve: list[Path],
    fetch: str | None,
    out: Path | None,
    duration: float | None,
) -> int:
    peers = [parse_peer_addr(a) for a in connect]
    blobs = []
    for f in serve:
        try:
            blobs.append((f, f.read_bytes()))
        except OSError as e:
            raise NodeArgsError(f"--serve {f}: {e.strerror or e}") from None
    if fetch and out is None:
        raise NodeArgsError("--fetch needs --out FILE")
    if fetch:
        try:
            digest_of(fetch)
        except CIDError as e:
            raise NodeArgsError(f"--fetch: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with P2PNetwork(NodeConfig(host=host, port=port)) as net:
        node = await net.add_node(load_or_create_key(key))
        _emit(peer_id=node.peer_id, addrs=node.addrs)
        for peer_id, addrs in peers:
            try:
                await node.connect((peer_id, addrs))
            except PeerUnreachable as e:
                print(f"discofl-p2p node: {e}", file=sys.stderr)
                return 3
            _emit(connected=peer_id)
        for f, data in blobs:
            _emit(serving=str(f), cid=await node.put(data), bytes=len(data))
        if fetch:
            data = await node.get(fetch, [p for p, _ in peers], keep=True)
            out.write_bytes(data)  # type: ignore[union-attr]
            _emit(fetched=fetch, bytes=len(data), out=str(out))
            if duration is None:
                return 0
        try:
            await asyncio.wait_for(stop.wait(), duration)
        except TimeoutError:
            pass
    _emit(stopped=True)
    return 0
