"""A libp2p node with an asyncio face: content-addressed blobs and announcements.

Each node is a standard libp2p host (TCP, Noise, Yamux, identify, gossipsub v1.1)
with our blob protocol (`protocol.py`). Many nodes can share one process and one
trio thread (`P2PNetwork`); a real deployment runs one per process with the same API.

Hostile input never crashes a node: a malformed pubsub RPC, a request or response
frame that lies about its length, a blob that does not match its CID, a provider that
stalls or disconnects mid-transfer. Each is refused with a structured log line, and a
fetch moves on to the next provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import structlog
from google.protobuf.message import DecodeError
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from discofl_p2p.p2p import bridge
from discofl_p2p.p2p.cid import cid_of, matches
from discofl_p2p.p2p.protocol import (
    BAD_REQUEST,
    BLOB_PROTOCOL,
    NOT_FOUND,
    OK,
    ProtocolError,
    encode_request,
    encode_response_header,
    read_request,
    read_request_json,
    read_response,
)

log = structlog.get_logger("discofl.p2p")

MAX_ANNOUNCEMENT = 4096


@dataclass(frozen=True)
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    max_blob_bytes: int = 256 << 20
    fetch_timeout_s: float = 30.0
    request_timeout_s: float = 10.0
    transfers_per_peer: int = 8  # yamux hangs past about 16 concurrent large streams
    gossip_heartbeat_s: int = 1


@dataclass(frozen=True)
class Announcement:
    topic: str
    sender: str  # the peer id that signed it (gossipsub strict signing)
    payload: dict[str, Any]


class BlobUnavailable(Exception):
    """No provider delivered a blob that matches its CID; `reasons` per provider."""

    def __init__(self, cid: str, reasons: dict[str, str]) -> None:
        self.cid, self.reasons = cid, reasons
        detail = "; ".join(f"{p[:16]}..: {r}" for p, r in reasons.items()) or "no providers"
        super().__init__(f"could not fetch {cid}: {detail}")


class PeerUnreachable(Exception):
    """Dialling a peer failed; the message names the peer and libp2p's reason."""

    def __init__(self, peer_id: str, reason: str) -> None:
        self.peer_id, self.reason = peer_id, reason
        super().__init__(f"cannot connect to {peer_id}: {reason}")


def key_from_seed(seed: int | str, label: str) -> KeyPair:
    """A stable ed25519 peer key for simulations: depends only on (seed, label)."""
    return create_new_key_pair(hashlib.sha256(f"discofl-p2p/peer/{seed}/{label}".encode()).digest())


def load_or_create_key(path: Path) -> KeyPair:
    """A real node's key: a 32-byte seed in `path` (created with mode 0600 if absent)."""
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"{path}: a key file holds exactly 32 bytes, found {len(seed)}")
    else:
        seed = os.urandom(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed)
    return create_new_key_pair(seed)


class GuardedPubsub(Pubsub):
    """Pubsub whose read loop survives a malformed RPC from a peer.

    py-libp2p 0.8.1 lets protobuf's DecodeError escape `continuously_read_stream`,
    which takes the whole process down. We drop that peer's stream instead."""

    async def continuously_read_stream(self, stream: Any) -> None:
        try:
            await super().continuously_read_stream(stream)
        except DecodeError as e:
            log.warning("pubsub_rpc_rejected", peer=str(stream.muxed_conn.peer_id), error=str(e))
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001 - the stream may already be gone
                pass


# ---------------------------------------------------------------------- trio side


class _TrioNode:
    """Everything that runs in the trio thread. Only P2PNode talks to it."""

    def __init__(self, key: KeyPair, cfg: NodeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.key, self.cfg, self.loop = key, cfg, loop
        self.blobs: dict[str, bytes] = {}
        self.only_for: dict[str, frozenset[str]] = {}  # cid -> the peers it is served to
        self.index: dict[tuple[str, int], set[str]] = defaultdict(set)
        self.host: Any = None
        self.pubsub: GuardedPubsub | None = None
        self._nursery: Any = None
        self._stop: Any = None
        self._done = bridge.Event()
        self._client_slots: dict[str, Any] = {}
        self._server_slots: dict[str, Any] = {}
        self._subscribers: dict[str, list[Callable[[Announcement], None]]] = defaultdict(list)
        self.bytes_received = 0  # blob payload bytes fetched from peers, counted as they arrive
        self.on_received: Callable[[int], None] | None = None  # asyncio-side watcher of that count

    def _count_received(self, n: int) -> None:
        self.bytes_received += n
        if self.on_received is not None:
            bridge.to_asyncio(self.loop, self.on_received, self.bytes_received)

    async def serve(self, task_status: Any = bridge.TASK_STATUS_IGNORED) -> None:
        listen = multiaddr.Multiaddr(f"/ip4/{self.cfg.host}/tcp/{self.cfg.port}")
        self.host = new_host(
            key_pair=self.key,
            listen_addrs=[listen],
            # One connection per peer: no 250 ms happy-eyeballs delay per dial. No
            # connection targets: the auto-connector would otherwise redial every
            # known peer to reach 50 connections.
            connection_config=ConnectionConfig(max_connections_per_peer=1, min_connections=0, low_watermark=0),
        )
        self._stop = bridge.Event()
        try:
            await self._serve(listen, task_status)
        finally:
            self._done.set()

    async def _serve(self, listen: Any, task_status: Any) -> None:
        async with self.host.run([listen]):
            router = GossipSub([PROTOCOL_ID_V11], 6, 4, 12, heartbeat_interval=self.cfg.gossip_heartbeat_s)
            self.pubsub = GuardedPubsub(self.host, router)
            async with background_trio_service(self.pubsub), background_trio_service(router):
                await self.pubsub.wait_until_ready()
                self.host.set_stream_handler(TProtocol(BLOB_PROTOCOL), self._handle)
                async with bridge.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started((self.host.get_id().to_base58(), [str(a) for a in self.host.get_addrs()]))
                    await self._stop.wait()
                    # Orderly shutdown: peers first, then our tasks, then pubsub, then the host.
                    for peer in list(self.host.get_connected_peers()):
                        with bridge.move_on_after(2):
                            await self.host.disconnect(peer)
                    nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        """Asks serve() to shut down in order and waits until it has."""
        if self._stop is not None:
            self._stop.set()
            with bridge.move_on_after(10):
                await self._done.wait()

    # ---------------------------------------------------------------- serving

    def _slot(self, table: dict[str, Any], peer: str) -> Any:
        if peer not in table:
            table[peer] = bridge.Semaphore(self.cfg.transfers_per_peer)
        return table[peer]

    async def _handle(self, stream: Any) -> None:
        peer = str(stream.muxed_conn.peer_id)
        try:
            async with self._slot(self._server_slots, peer):
                with bridge.fail_after(self.cfg.request_timeout_s):
                    try:
                        req = await read_request(stream)
                    except ProtocolError as e:
                        log.warning("request_rejected", peer=peer, reason=str(e))
                        try:
                            await stream.write(encode_response_header(BAD_REQUEST, 0))
                        except Exception:  # noqa: BLE001 - the peer may have reset it already
                            pass
                        await _reset(stream)
                        return
                if req["op"] == "get":
                    data = self.blobs.get(req["cid"])
                    allowed = self.only_for.get(req["cid"])
                    if data is None or (allowed is not None and peer not in allowed):
                        await stream.write(encode_response_header(NOT_FOUND, 0))
                    else:
                        with bridge.fail_after(self.cfg.fetch_timeout_s):
                            await stream.write(encode_response_header(OK, len(data)) + data)
                else:
                    body = json.dumps(self.listed_for(peer, req["task"], req["round"])).encode()
                    await stream.write(encode_response_header(OK, len(body)) + body)
                await stream.close()
        except bridge.TooSlowError:
            log.warning("request_timed_out", peer=peer)
            await _reset(stream)
        except Exception as e:  # noqa: BLE001 - a peer must never crash the node
            log.warning("request_failed", peer=peer, error=repr(e))
            await _reset(stream)

    def listed_for(self, peer: str, task: str, round_: int) -> list[str]:
        """What a `list` request from `peer` is told: the CIDs tagged (task, round) that
        `peer` may fetch. A blob restricted with `only_for` is listed only to the peers
        it is served to, so a list never reveals more than a `get` would."""
        cids = self.index.get((task, round_), ())
        return sorted(c for c in cids if c not in self.only_for or peer in self.only_for[c])

    # ---------------------------------------------------------------- client

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None:
        info = PeerInfo(ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in addrs])
        try:
            await self.host.connect(info)
        except Exception as e:  # libp2p raises several dial errors
            raise PeerUnreachable(peer_id, str(e) or type(e).__name__) from e

    async def fetch_from(self, cid: str, provider: str, max_bytes: int) -> bytes:
        async with self._slot(self._client_slots, provider):
            with bridge.fail_after(self.cfg.fetch_timeout_s):
                stream = await self.host.new_stream(ID.from_base58(provider), [TProtocol(BLOB_PROTOCOL)])
                try:
                    await stream.write(encode_request({"op": "get", "cid": cid}))
                    data = await read_response(
                        stream, max_bytes, what=f"blob {cid[:16]}..", progress=self._count_received
                    )
                except BaseException:
                    await _reset(stream)
                    raise
                await _close(stream)
        if not matches(cid, data):
            raise ProtocolError(f"blob of {len(data)} bytes does not match its CID")
        return data

    async def get(self, cid: str, providers: Sequence[str], max_bytes: int, keep: bool) -> bytes:
        if cid in self.blobs:
            return self.blobs[cid]
        reasons: dict[str, str] = {}
        for provider in providers:
            if provider == self.host.get_id().to_base58():
                continue
            try:
                data = await self.fetch_from(cid, provider, max_bytes)
            except bridge.TooSlowError:
                reasons[provider] = f"timed out after {self.cfg.fetch_timeout_s} s"
            except Exception as e:  # noqa: BLE001 - try the next provider
                reasons[provider] = str(e) or type(e).__name__
            else:
                if keep:
                    self.blobs[cid] = data
                return data
            log.warning("fetch_failed", cid=cid, provider=provider, reason=reasons[provider])
        raise BlobUnavailable(cid, reasons)

    async def ask_held(self, peer: str, task: str, round_: int) -> list[str]:
        with bridge.fail_after(self.cfg.request_timeout_s):
            stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(BLOB_PROTOCOL)])
            try:
                await stream.write(encode_request({"op": "list", "task": task, "round": round_}))
                body = await read_response(stream, 1 << 20, what="list")
            except BaseException:
                await _reset(stream)
                raise
            await _close(stream)
        try:
            cids = json.loads(body)
        except ValueError:
            raise ProtocolError("list answer is not JSON") from None
        if not isinstance(cids, list) or not all(isinstance(c, str) for c in cids):
            raise ProtocolError("list answer is not a JSON list of strings")
        return cids

    async def send_raw(self, peer: str, protocol: str, data: bytes, read_timeout: float) -> bytes:
        """Writes raw bytes on a new stream and reads until EOF or timeout (testing aid)."""
        stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        await stream.write(data)
        out = bytearray()
        with bridge.move_on_after(read_timeout):
            try:
                while chunk := await stream.read(65536):
                    out += chunk
            except Exception:  # noqa: BLE001 - the peer reset: keep what arrived
                pass
        await _reset(stream)
        return bytes(out)

    # ---------------------------------------------------------------- direct messages

    async def serve_messages(self, protocol: str, deliver: Callable[[str, dict[str, Any]], None]) -> None:
        async def handler(stream: Any) -> None:
            peer = str(stream.muxed_conn.peer_id)
            try:
                with bridge.fail_after(self.cfg.request_timeout_s):
                    payload = await read_request_json(stream)
                    await stream.write(encode_response_header(OK, 0))
                    await stream.close()
            except Exception as e:  # noqa: BLE001 - a peer must never crash the node
                log.warning("message_rejected", peer=peer, protocol=protocol, reason=str(e) or repr(e))
                await _reset(stream)
                return
            bridge.to_asyncio(self.loop, deliver, peer, payload)

        self.host.set_stream_handler(TProtocol(protocol), handler)

    async def send_message(self, peer: str, protocol: str, payload: dict[str, Any]) -> None:
        with bridge.fail_after(self.cfg.request_timeout_s):
            stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
            try:
                await stream.write(encode_request(payload))
                await read_response(stream, 0, what=f"message on {protocol}")
            except BaseException:
                await _reset(stream)
                raise
            await _close(stream)

    # ---------------------------------------------------------------- gossip

    async def subscribe(self, topic: str, deliver: Callable[[Announcement], None]) -> None:
        first = topic not in self._subscribers
        self._subscribers[topic].append(deliver)
        if first:
            sub = await self.pubsub.subscribe(topic)  # type: ignore[union-attr]
            self._nursery.start_soon(self._read_topic, topic, sub)

    async def _read_topic(self, topic: str, sub: Any) -> None:
        me = self.host.get_id().to_bytes()
        while True:
            msg = await sub.get()
            if msg.from_id == me:
                continue
            sender = ID(msg.from_id).to_base58()
            try:
                if len(msg.data) > MAX_ANNOUNCEMENT:
                    raise ValueError(f"{len(msg.data)} bytes, over {MAX_ANNOUNCEMENT}")
                payload = json.loads(msg.data)
                if not isinstance(payload, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                log.warning("announcement_rejected", topic=topic, peer=sender, reason=str(e))
                continue
            ann = Announcement(topic, sender, payload)
            for deliver in self._subscribers[topic]:
                bridge.to_asyncio(self.loop, deliver, ann)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)  # type: ignore[union-attr]

    async def peers_in_topic(self, topic: str) -> int:
        return len(self.pubsub.peer_topics.get(topic, ()))  # type: ignore[union-attr]


async def _reset(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:  # noqa: BLE001 - best effort on a broken stream
        pass


async def _close(stream: Any) -> None:
    try:
        await stream.close()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------- asyncio side


@dataclass
class P2PNode:
    """The asyncio API of one libp2p node."""

    peer_id: str
    addrs: list[str]
    _node: _TrioNode
    _thread: bridge.TrioThread
    _queues: list[asyncio.Queue[Announcement]] = field(default_factory=list)
    _closed: bool = False
    _received: int = 0
    _received_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, key: KeyPair, thread: bridge.TrioThread, cfg: NodeConfig = NodeConfig()) -> P2PNode:
        node = _TrioNode(key, cfg, asyncio.get_running_loop())
        peer_id, addrs = await thread.start_service(node.serve)
        return cls(peer_id, addrs, node, thread)

    @property
    def config(self) -> NodeConfig:
        return self._node.cfg

    async def connect(self, other: P2PNode | tuple[str, Sequence[str]]) -> None:
        """Dials a peer; raises PeerUnreachable if no address of it answers."""
        peer_id, addrs = (other.peer_id, other.addrs) if isinstance(other, P2PNode) else other
        await self._thread.call(self._node.connect, peer_id, list(addrs))

    async def put(
        self,
        data: bytes,
        *,
        task: str | None = None,
        round_: int | None = None,
        only_for: Sequence[str] | None = None,
    ) -> str:
        """Stores and serves a blob; returns its CID. Tagged blobs answer `ask_held`.
        `only_for` serves it to those peers only, until `share()` (anonymity: nobody
        else can probe which peer holds a model)."""
        cid = cid_of(data)
        self._thread.run_sync_soon(lambda: self._store(cid, data, task, round_, only_for))
        return cid

    def _store(
        self, cid: str, data: bytes, task: str | None, round_: int | None, only_for: Sequence[str] | None
    ) -> None:
        self._node.blobs[cid] = data
        if only_for is not None:
            self._node.only_for[cid] = frozenset(only_for)
        if task is not None and round_ is not None:
            self._node.index[(task, round_)].add(cid)

    async def share(self, cid: str) -> None:
        """Lifts an `only_for` restriction: the blob is served to every peer."""
        self._thread.run_sync_soon(lambda: self._lift_restriction(cid))

    def _lift_restriction(self, cid: str) -> None:
        self._node.only_for.pop(cid, None)

    async def serve_messages(self, protocol: str) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        """Direct messages on `protocol`: small JSON objects, acknowledged on receipt,
        delivered here as (sender peer id, payload)."""
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        await self._thread.call(self._node.serve_messages, protocol, lambda p, m: q.put_nowait((p, m)))
        return q

    async def send_message(self, peer_id: str, protocol: str, payload: dict[str, Any]) -> None:
        await self._thread.call(self._node.send_message, peer_id, protocol, payload)

    async def get(
        self, cid: str, providers: Sequence[str], *, keep: bool = False, max_bytes: int | None = None
    ) -> bytes:
        """Fetches a blob from the first provider that delivers bytes matching `cid`;
        `keep` stores and re-serves it (replication). Raises BlobUnavailable."""
        cap = self.config.max_blob_bytes if max_bytes is None else max_bytes
        return await self._thread.call(self._node.get, cid, list(providers), cap, keep)

    async def tag(self, cid: str, task: str, round_: int) -> None:
        """Lists an already held blob under (task, round) for `ask_held`."""
        self._thread.run_sync_soon(lambda: self._node.index[(task, round_)].add(cid))

    async def ask_held(self, peer_id: str, task: str, round_: int) -> list[str]:
        """Pull fallback: asks a peer directly which blobs it holds for (task, round)."""
        return await self._thread.call(self._node.ask_held, peer_id, task, round_)

    @property
    def bytes_received(self) -> int:
        """Blob payload bytes fetched from peers so far, counted as they arrive."""
        return self._node.bytes_received

    async def wait_received(self, n_bytes: int) -> None:
        """Returns once at least `n_bytes` of blob payload in total have arrived from
        peers (evidence that a transfer is in flight). Bound it with a timeout."""
        if self._node.on_received is None:
            self._node.on_received = self._on_received
        self._received = max(self._received, self._node.bytes_received)
        while self._received < n_bytes:
            self._received_changed.clear()
            await self._received_changed.wait()

    def _on_received(self, total: int) -> None:
        self._received = max(self._received, total)
        self._received_changed.set()

    def holds(self, cid: str) -> bool:
        return cid in self._node.blobs

    async def subscribe(self, topic: str) -> asyncio.Queue[Announcement]:
        q: asyncio.Queue[Announcement] = asyncio.Queue(maxsize=10_000)

        def deliver(ann: Announcement) -> None:
            if q.full():
                log.warning("announcement_dropped", topic=topic, reason="queue full")
                return
            q.put_nowait(ann)

        await self._thread.call(self._node.subscribe, topic, deliver)
        self._queues.append(q)
        return q

    async def announce(self, topic: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > MAX_ANNOUNCEMENT:
            raise ValueError(f"announcement of {len(data)} bytes is over {MAX_ANNOUNCEMENT}")
        await self._thread.call(self._node.publish, topic, data)

    async def topic_peers(self, topic: str) -> int:
        return await self._thread.call(self._node.peers_in_topic, topic)

    async def send_raw(self, peer_id: str, protocol: str, data: bytes, *, read_timeout: float = 1.0) -> bytes:
        return await self._thread.call(self._node.send_raw, peer_id, protocol, data, read_timeout)

    def set_stream_handler(self, protocol: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        """Serves `protocol` with `handler(stream)`, which runs in the trio thread."""
        self._thread.run_sync_soon(lambda: self._node.host.set_stream_handler(TProtocol(protocol), handler))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._thread.call(self._node.stop)


class P2PNetwork:
    """Owns one trio thread and the nodes started on it; closing it shuts all down in
    order (each node disconnects its peers, stops pubsub, closes its host), then stops
    the thread."""

    def __init__(self, cfg: NodeConfig = NodeConfig()) -> None:
        self.cfg = cfg
        self.thread = bridge.TrioThread()
        self.nodes: list[P2PNode] = []

    async def __aenter__(self) -> P2PNetwork:
        await asyncio.to_thread(self.thread.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add_node(self, key: KeyPair, cfg: NodeConfig | None = None) -> P2PNode:
        node = await P2PNode.start(key, self.thread, cfg or self.cfg)
        self.nodes.append(node)
        return node

    async def connect_all(self, nodes: Sequence[P2PNode] | None = None, *, max_dials: int = 8) -> None:
        """Full mesh, at most `max_dials` dials at once (more time out in identify)."""
        nodes = list(nodes or self.nodes)
        sem = asyncio.Semaphore(max_dials)

        async def dial(a: P2PNode, b: P2PNode) -> None:
            async with sem:
                await a.connect(b)

        async with asyncio.TaskGroup() as tg:
            for i, a in enumerate(nodes):
                for b in nodes[i + 1 :]:
                    tg.create_task(dial(a, b))

    async def close(self) -> None:
        for node in self.nodes:
            try:
                await asyncio.wait_for(node.close(), 10)
            except (TimeoutError, bridge.BridgeClosed) as e:
                log.warning("node_close_failed", peer=node.peer_id, error=repr(e))
        self.nodes.clear()
        await asyncio.to_thread(self.thread.stop)
