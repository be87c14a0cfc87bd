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
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import structlog
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.rcmgr import Direction
from libp2p.tools.anyio_service import background_trio_service

from discofl_p2p.p2p import bridge
from discofl_p2p.p2p.cid import cid_of, matches
from discofl_p2p.p2p.linkfault import LinkDropped, LinkFaults
from discofl_p2p.p2p.protocol import (
    BAD_REQUEST,
    BLOB_PROTOCOL,
    NOT_FOUND,
    OK,
    ProtocolError,
    encode_request,
    encode_response_header,
    parse_json,
    read_request,
    read_request_json,
    read_response,
)

log = structlog.get_logger("discofl.p2p")

MAX_ANNOUNCEMENT = 4096


@dataclass(frozen=True)
class NodeConfig:
    """A node's settings. Every bound on what a peer can make us hold or wait for is
    here (docs/p2p.md, "Hostile input", lists them with their defaults)."""

    host: str = "127.0.0.1"
    port: int = 0
    max_blob_bytes: int = 256 << 20
    fetch_timeout_s: float = 30.0  # one provider's transfer
    get_deadline_s: float = 120.0  # one get(), all its providers together
    request_timeout_s: float = 10.0
    transfers_per_peer: int = 8  # yamux hangs past about 16 concurrent large streams
    serving_total: int = 32  # blob and list answers in flight to all peers together
    inbox_per_peer: int = 64  # direct messages waiting to be read, per sender
    keep_rounds: int | None = None  # tagging round r forgets the task's rounds <= r - keep_rounds
    gossip_heartbeat_s: int = 1

    def __post_init__(self) -> None:
        for name in ("transfers_per_peer", "serving_total", "inbox_per_peer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.keep_rounds is not None and self.keep_rounds < 1:
            raise ValueError("keep_rounds must be at least 1 (or None: keep every round)")


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

    @property
    def transient(self) -> bool:
        """Whether trying the same providers later may succeed: some provider could
        not be reached, timed out, reset the stream or did not hold the blob (yet),
        rather than sending bytes over the cap or bytes that do not match the CID."""
        final = ("over the cap", "does not match its CID")
        return any(not any(f in why for f in final) for why in self.reasons.values())


class PeerUnreachable(Exception):
    """Dialling a peer failed; the message names the peer and libp2p's reason."""

    def __init__(self, peer_id: str, reason: str) -> None:
        self.peer_id, self.reason = peer_id, reason
        super().__init__(f"cannot connect to {peer_id}: {reason}")


def key_seed(seed: int | str, label: str) -> bytes:
    """The 32 bytes behind `key_from_seed(seed, label)`: what a key file holds
    (`load_or_create_key`), so that a node in its own process gets the same peer id."""
    return hashlib.sha256(f"discofl-p2p/peer/{seed}/{label}".encode()).digest()


def key_from_seed(seed: int | str, label: str) -> KeyPair:
    """A stable ed25519 peer key for simulations: depends only on (seed, label)."""
    return create_new_key_pair(key_seed(seed, label))


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
    """Pubsub that survives whatever a peer sends.

    py-libp2p 0.8.1 lets an exception escape two places that a peer's bytes reach, and
    either takes the whole trio thread down (every node of the process):
    - `continuously_read_stream`, the per-peer read loop: protobuf's DecodeError for an
      RPC that does not decode, or any error while handling a decoded one. We reset
      that peer's stream instead (`pubsub_rpc_rejected`).
    - `push_msg`, spawned per published message as its own task: a message whose `key`
      is not a serialized public key raises DecodeError in the signature check. We drop
      the message instead (`pubsub_message_rejected`)."""

    async def continuously_read_stream(self, stream: Any) -> None:
        try:
            await super().continuously_read_stream(stream)
        except Exception as e:  # noqa: BLE001 - a peer must never crash the node
            log.warning("pubsub_rpc_rejected", peer=str(stream.muxed_conn.peer_id), error=str(e) or repr(e))
            await _reset(stream)

    async def push_msg(self, msg_forwarder: ID, msg: Any) -> None:
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as e:  # noqa: BLE001 - a peer must never crash the node
            log.warning("pubsub_message_rejected", peer=str(msg_forwarder), error=str(e) or repr(e))


class GuardedGossipSub(GossipSub):
    """GossipSub that ignores peer exchange (PX). py-libp2p 0.8.1 follows the peers
    listed in any PRUNE (16 at most), whatever `do_px` says: it dials the addresses of
    their signed records, and does so inside the sender's read loop. A hostile peer
    could make the node dial any address it likes. Our nodes dial only the peers they
    are told to."""

    async def _do_px(self, px_peers: list[Any]) -> None:
        if px_peers:
            log.info("pubsub_px_ignored", peers=len(px_peers))


class Inbox(asyncio.Queue[tuple[str, dict[str, Any]]]):
    """Direct messages as (sender peer id, payload). At most `per_peer` messages of
    one sender wait here unread; beyond that the node refuses the sender's messages
    (`message_dropped`, stream reset, so the sender's `send_message` fails) until the
    reader catches up. Shared by the trio thread (admit) and asyncio (get)."""

    def __init__(self, per_peer: int) -> None:
        super().__init__()
        self.per_peer = per_peer
        self._lock = threading.Lock()
        self._waiting: dict[str, int] = {}

    def admit(self, peer: str) -> bool:
        """Reserves a place for one more message of `peer` (trio thread)."""
        with self._lock:
            n = self._waiting.get(peer, 0)
            if n >= self.per_peer:
                return False
            self._waiting[peer] = n + 1
            return True

    def release(self, peer: str) -> None:
        """Gives back a place: its message was read, or never delivered."""
        with self._lock:
            n = self._waiting.get(peer, 0) - 1
            if n > 0:
                self._waiting[peer] = n
            else:
                self._waiting.pop(peer, None)

    def waiting(self, peer: str) -> int:
        """Messages of `peer` admitted and not read yet."""
        with self._lock:
            return self._waiting.get(peer, 0)

    def _get(self) -> tuple[str, dict[str, Any]]:
        item: tuple[str, dict[str, Any]] = super()._get()
        self.release(item[0])
        return item


class _Slots:
    """At most `per_peer` concurrent holders per peer. A peer's entry exists only
    while someone holds or waits for it, so peers that come and go leave nothing."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._peers: dict[str, tuple[Any, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, peer: str) -> AsyncIterator[None]:
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._peers[peer] = (bridge.Semaphore(self.per_peer), [0])
        sem, users = entry
        users[0] += 1
        try:
            async with sem:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._peers[peer]

    def __len__(self) -> int:
        return len(self._peers)


def _guarded_handler(
    node: _TrioNode, protocol: str, handler: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    """A stream handler whose exceptions end its stream, not the node."""

    async def guarded(stream: Any) -> None:
        if not await node.admit(stream, protocol):
            return
        try:
            await handler(stream)
        except Exception as e:  # noqa: BLE001 - a peer must never crash the node
            log.warning("handler_failed", protocol=protocol, peer=str(stream.muxed_conn.peer_id), error=repr(e))
            await _reset(stream)

    return guarded


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
        self._client_slots = _Slots(cfg.transfers_per_peer)
        self._server_slots = _Slots(cfg.transfers_per_peer)
        self._serving = bridge.Semaphore(cfg.serving_total)
        self._subscribers: dict[str, list[Callable[[Announcement], None]]] = defaultdict(list)
        self.bytes_received = 0  # blob payload bytes fetched from peers, counted as they arrive
        self.on_received: Callable[[int], None] | None = None  # asyncio-side watcher of that count
        self.faults = LinkFaults()  # injected by the scenario's [faults] (p2p/linkfault.py)
        self._partition_over = bridge.Event()
        self.learnt: set[ID] = set()  # peers whose addresses we were given (`learn`): never identified

    def _count_received(self, n: int) -> None:
        self.bytes_received += n
        if self.on_received is not None:
            bridge.to_asyncio(self.loop, self.on_received, self.bytes_received)

    async def serve(self, task_status: Any = bridge.TASK_STATUS_IGNORED) -> None:
        listen = multiaddr.Multiaddr(f"/ip4/{self.cfg.host}/tcp/{self.cfg.port}")
        self.host = new_host(
            key_pair=self.key,
            listen_addrs=[listen],
            connection_config=connection_config(),
        )
        identify_inbound_only(self.host, self.learnt)
        self._stop = bridge.Event()
        try:
            await self._serve(listen, task_status)
        finally:
            self._done.set()

    async def _serve(self, listen: Any, task_status: Any) -> None:
        async with self.host.run([listen]):
            router = GuardedGossipSub([PROTOCOL_ID_V11], 6, 4, 12, heartbeat_interval=self.cfg.gossip_heartbeat_s)
            self.pubsub = GuardedPubsub(self.host, router)
            async with background_trio_service(self.pubsub), background_trio_service(router):
                await self.pubsub.wait_until_ready()
                self.host.set_stream_handler(TProtocol(BLOB_PROTOCOL), self._handle)
                async with bridge.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started((self.host.get_id().to_base58(), [str(a) for a in self.host.get_addrs()]))
                    await self._stop.wait()
                    # Orderly shutdown: peers first (all at once, each within 2 s), then
                    # our tasks, then pubsub, then the host.
                    async with bridge.open_nursery() as hangups:
                        for peer in list(self.host.get_connected_peers()):
                            hangups.start_soon(self._hang_up, peer)
                    nursery.cancel_scope.cancel()

    async def _hang_up(self, peer: ID) -> None:
        with bridge.move_on_after(2):
            await self.host.disconnect(peer)

    async def stop(self) -> None:
        """Asks serve() to shut down in order and waits until it has."""
        if self._stop is not None:
            self._stop.set()
            with bridge.move_on_after(10):
                await self._done.wait()

    # ---------------------------------------------------------------- storing

    async def store(
        self, cid: str, data: bytes, task: str | None, round_: int | None, only_for: Sequence[str] | None
    ) -> None:
        self.blobs[cid] = data
        if only_for is not None:
            self.only_for[cid] = frozenset(only_for)
        if task is not None and round_ is not None:
            await self.tag(cid, task, round_)

    async def tag(self, cid: str, task: str, round_: int) -> None:
        self.index[(task, round_)].add(cid)
        if self.cfg.keep_rounds is not None:
            await self.forget(task, lambda r: r <= round_ - self.cfg.keep_rounds)  # type: ignore[operator]

    async def forget(self, task: str, which: Callable[[int], bool]) -> int:
        """Drops the blobs tagged with `task` and a round `which` accepts, unless a
        round it keeps is tagged with them too; returns how many were dropped."""
        keys = [k for k in self.index if k[0] == task and which(k[1])]
        released: set[str] = set()
        for k in keys:
            released |= self.index.pop(k)
        still_tagged = set().union(*self.index.values())
        dropped = 0
        for cid in released - still_tagged:
            if self.blobs.pop(cid, None) is not None:
                dropped += 1
            self.only_for.pop(cid, None)
        return dropped

    async def lift_restriction(self, cid: str) -> None:
        self.only_for.pop(cid, None)

    # ---------------------------------------------------------------- serving

    async def _handle(self, stream: Any) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if not await self.admit(stream, BLOB_PROTOCOL):
            return
        try:
            async with self._server_slots.hold(peer):
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
                # The answer holds one of `serving_total` places. The blob is written
                # as it is stored: a transfer copies none of it.
                async with self._serving:
                    if req["op"] == "get":
                        data = self.blobs.get(req["cid"])
                        allowed = self.only_for.get(req["cid"])
                        if data is None or (allowed is not None and peer not in allowed):
                            await stream.write(encode_response_header(NOT_FOUND, 0))
                        else:
                            with bridge.fail_after(self.cfg.fetch_timeout_s):
                                await stream.write(encode_response_header(OK, len(data)))
                                await stream.write(data)
                    else:
                        body = json.dumps(self.listed_for(peer, req["task"], req["round"])).encode()
                        with bridge.fail_after(self.cfg.request_timeout_s):
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
        """Dials `peer_id` now: an explicit connect is not refused by the swarm's negative
        cache of peers that failed a moment ago (agent processes start together, and
        one retries until its peer listens)."""
        info = PeerInfo(ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in addrs])
        await self.unblock(peer_id)
        try:
            await self.host.connect(info)
        except Exception as e:  # libp2p raises several dial errors
            raise PeerUnreachable(peer_id, str(e) or type(e).__name__) from e

    async def learn(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Notes where `peer_id` listens (for good) without dialling it."""
        peer = ID.from_base58(peer_id)
        self.host.get_peerstore().add_addrs(peer, [multiaddr.Multiaddr(a) for a in addrs], 0)
        self.learnt.add(peer)

    async def unblock(self, peer_id: str) -> None:
        network = self.host.get_network()
        if hasattr(network, "unblock_peer"):
            network.unblock_peer(ID.from_base58(peer_id))

    async def fetch_from(self, cid: str, provider: str, max_bytes: int) -> bytes:
        async with self._client_slots.hold(provider):
            with bridge.fail_after(self.cfg.fetch_timeout_s):
                stream = await self.open_stream(provider, BLOB_PROTOCOL)
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

    async def get(
        self, cid: str, providers: Sequence[str], max_bytes: int, keep: bool, deadline_s: float, local: bool
    ) -> bytes:
        """The first provider's bytes that match `cid`, trying providers in order, all
        within `deadline_s` (each one also within `fetch_timeout_s`); the stored copy
        first if `local`."""
        if local and cid in self.blobs:
            return self.blobs[cid]
        me = self.host.get_id().to_base58()
        candidates = [p for p in dict.fromkeys(providers) if p != me]
        reasons: dict[str, str] = {}
        trying: str | None = None
        with bridge.move_on_after(deadline_s):
            for provider in candidates:
                trying = provider
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
                trying = None
                log.warning("fetch_failed", cid=cid, provider=provider, reason=reasons[provider])
        if trying is not None:  # the deadline cut this provider's transfer short
            reasons[trying] = f"the deadline of {deadline_s} s for this get passed during the transfer"
            log.warning("fetch_failed", cid=cid, provider=trying, reason=reasons[trying])
        for provider in candidates:
            reasons.setdefault(provider, f"not tried: the deadline of {deadline_s} s for this get passed")
        raise BlobUnavailable(cid, reasons)

    async def ask_held(self, peer: str, task: str, round_: int) -> list[str]:
        with bridge.fail_after(self.cfg.request_timeout_s):
            stream = await self.open_stream(peer, BLOB_PROTOCOL)
            try:
                await stream.write(encode_request({"op": "list", "task": task, "round": round_}))
                body = await read_response(stream, 1 << 20, what="list")
            except BaseException:
                await _reset(stream)
                raise
            await _close(stream)
        try:
            cids = parse_json(body)
        except ValueError:
            raise ProtocolError("list answer is not JSON") from None
        if not isinstance(cids, list) or not all(isinstance(c, str) for c in cids):
            raise ProtocolError("list answer is not a JSON list of strings")
        return cids

    async def send_raw(self, peer: str, protocol: str, data: bytes, read_timeout: float, close: bool) -> bytes:
        """Writes raw bytes on a new stream (then closes our side if `close`) and reads
        until EOF or timeout (testing aid)."""
        stream = await self.open_stream(peer, protocol)
        out = bytearray()
        try:
            await stream.write(data)
            if close:
                await stream.close()
        except Exception:  # noqa: BLE001 - the peer reset already: nothing to read
            await _reset(stream)
            return b""
        with bridge.move_on_after(read_timeout):
            try:
                while chunk := await stream.read(65536):
                    out += chunk
            except Exception:  # noqa: BLE001 - the peer reset: keep what arrived
                pass
        await _reset(stream)
        return bytes(out)

    def set_stream_handler(self, protocol: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        self.host.set_stream_handler(TProtocol(protocol), _guarded_handler(self, protocol, handler))

    # ---------------------------------------------------------------- direct messages

    async def serve_messages(self, protocol: str, inbox: Inbox) -> None:
        async def handler(stream: Any) -> None:
            peer = str(stream.muxed_conn.peer_id)
            if not await self.admit(stream, protocol):
                return
            try:
                with bridge.fail_after(self.cfg.request_timeout_s):
                    payload = await read_request_json(stream)
                    if not inbox.admit(peer):
                        log.warning(
                            "message_dropped",
                            peer=peer,
                            protocol=protocol,
                            reason=f"{inbox.per_peer} messages of this peer wait unread",
                        )
                        await _reset(stream)
                        return
                    try:
                        await stream.write(encode_response_header(OK, 0))
                        await stream.close()
                    except BaseException:
                        inbox.release(peer)
                        raise
            except Exception as e:  # noqa: BLE001 - a peer must never crash the node
                log.warning("message_rejected", peer=peer, protocol=protocol, reason=str(e) or repr(e))
                await _reset(stream)
                return
            bridge.to_asyncio(self.loop, inbox.put_nowait, (peer, payload))

        self.host.set_stream_handler(TProtocol(protocol), handler)

    async def send_message(self, peer: str, protocol: str, payload: dict[str, Any]) -> None:
        try:
            with bridge.fail_after(self.cfg.request_timeout_s):
                stream = await self.open_stream(peer, protocol)
                try:
                    await stream.write(encode_request(payload))
                    await read_response(stream, 0, what=f"message on {protocol}")
                except BaseException:
                    await _reset(stream)
                    raise
                await _close(stream)
        except bridge.TooSlowError:  # trio's own error must not reach asyncio callers
            raise PeerUnreachable(peer, f"no acknowledgement within {self.cfg.request_timeout_s} s") from None

    # ---------------------------------------------------------------- injected faults

    async def open_stream(self, peer: str, protocol: str) -> Any:
        """A new stream to `peer`, through the injected link faults (none in a normal
        run): held while partitioned, delayed and maybe dropped on a lossy link."""
        if self.faults.partitioned:
            self.faults.count("streams_held")
            log.info("stream_held", peer=peer, protocol=protocol, reason="partitioned")
            await self._partition_over.wait()
        if await self._lossy_drops(peer, protocol, "out"):
            raise LinkDropped(f"stream to {peer} on {protocol} dropped by the injected lossy link")
        return await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])

    async def admit(self, stream: Any, protocol: str) -> bool:
        """Whether an inbound stream gets through the injected link faults; one that
        does not is reset here (refused while partitioned, dropped on a lossy link)."""
        peer = str(stream.muxed_conn.peer_id)
        if self.faults.partitioned:
            self.faults.count("streams_refused")
            log.info("stream_refused", peer=peer, protocol=protocol, reason="partitioned")
        elif not await self._lossy_drops(peer, protocol, "in"):
            return True
        await _reset(stream)
        return False

    async def _lossy_drops(self, peer: str, protocol: str, direction: str) -> bool:
        lossy = self.faults.lossy
        if lossy is None:
            return False
        if lossy.delay_s:
            self.faults.count("streams_delayed")
            await bridge.sleep(lossy.delay_s)
        if not lossy.dropped():
            return False
        self.faults.count("streams_dropped")
        log.info("stream_dropped", peer=peer, protocol=protocol, direction=direction, reason="lossy link")
        return True

    async def partition(self, seconds: float) -> None:
        """Cuts this node off the network for `seconds` (returns at once): every
        connection is closed, and so is each one a peer opens meanwhile."""
        if self.faults.partitioned:
            return
        self.faults.partitioned = True
        self._partition_over = bridge.Event()
        log.warning("partition_started", seconds=seconds, peers=len(self.host.get_connected_peers()))
        self._nursery.start_soon(self._partitioned, seconds)

    async def _partitioned(self, seconds: float) -> None:
        with bridge.move_on_after(seconds):
            while True:
                for peer in list(self.host.get_connected_peers()):
                    with bridge.move_on_after(1):
                        await self.host.disconnect(peer)
                    self.faults.count("connections_closed")
                await bridge.sleep(0.05)
        self.faults.partitioned = False
        self._partition_over.set()
        log.warning("partition_ended", seconds=seconds, **self.faults.summary())

    async def degrade(self, delay_s: float, loss: float, seed: str) -> None:
        self.faults.degrade(delay_s, loss, seed)
        log.warning("link_degraded", delay_s=delay_s, loss=loss)

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
                payload = parse_json(msg.data)
                if not isinstance(payload, dict):
                    raise ValueError("not a JSON object")
            except Exception as e:  # noqa: BLE001 - a peer must never crash the node
                log.warning("announcement_rejected", topic=topic, peer=sender, reason=str(e) or repr(e))
                continue
            ann = Announcement(topic, sender, payload)
            for deliver in self._subscribers[topic]:
                bridge.to_asyncio(self.loop, deliver, ann)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)  # type: ignore[union-attr]

    async def peers_in_topic(self, topic: str) -> int:
        return len(self.pubsub.peer_topics.get(topic, ()))  # type: ignore[union-attr]


def connection_config() -> ConnectionConfig:
    """py-libp2p's connection manager, set so that a node dials only when asked to.

    One connection per peer: no 250 ms happy-eyeballs delay per dial. The auto-connector
    aims for (low_watermark + high_watermark) // 2 connections (py-libp2p 0.8.1,
    `AutoConnector.maybe_connect`) and dials peers from the peerstore to get there: with
    the default high_watermark of 300 and low_watermark 0 that is 150, so a node
    re-dialled every peer it had ever seen, one that hung up included, every 30 s. With
    both watermarks at 0 the target is 0: it never dials on its own. The pruner (which
    closes connections above high_watermark) spares connections younger than
    grace_period (20 s) and connections with open streams; ours always carry gossipsub
    streams, so only a peer that keeps an idle connection open gets it closed."""
    return ConnectionConfig(max_connections_per_peer=1, min_connections=0, low_watermark=0, high_watermark=0)


def identify_inbound_only(host: Any, learnt: Container[ID] = ()) -> None:
    """Makes `host` run identify only on connections a peer opened to it, and never
    with a peer whose addresses it was given (`learnt`).

    py-libp2p 0.8.1 identifies every new connection from both ends (`BasicHost`'s
    connected notifee and `connect` both call `_schedule_identify`): two extra streams a
    connection, each with its multistream-select, a signed peer record to build and to
    check, and peerstore updates: with both identifies off, a dial (both ends in one
    process) cost about 40 % less CPU (`tools/dial_cost.py`). What identify tells us
    that we need is where a peer that dialled us listens (so that we can dial it back,
    e.g. after a partition); a peer we dialled, we dialled at an address we already
    had, and a peer we were told about (`P2PNode.learn`: the nodes of one simulation
    all know each other) tells us nothing new. So a host skips identify with those;
    it still answers identify, and the peers it dialled still identify it."""
    original = host._schedule_identify

    def schedule(peer_id: ID, *, reason: str) -> None:
        conns = host.get_network().get_connections(peer_id)
        if peer_id in learnt or (conns and all(c.direction == Direction.OUTBOUND for c in conns)):
            return
        original(peer_id, reason=reason)

    host._schedule_identify = schedule


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
    """The asyncio API of one libp2p node.

    Each node is its own error boundary in the shared trio thread: if something ends
    it (a bug, never a peer's input), its calls in flight and every later call raise
    `bridge.BridgeClosed` with the cause, and the other nodes of the thread run on."""

    peer_id: str
    addrs: list[str]
    _node: _TrioNode
    _thread: bridge.TrioThread
    _boundary: bridge.Boundary
    _queues: list[asyncio.Queue[Announcement]] = field(default_factory=list)
    _closed: bool = False
    _received: int = 0
    _received_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _fetch_slots: asyncio.Semaphore | None = None

    @classmethod
    async def start(
        cls,
        key: KeyPair,
        thread: bridge.TrioThread,
        cfg: NodeConfig = NodeConfig(),
        fetch_slots: asyncio.Semaphore | None = None,
    ) -> P2PNode:
        """`fetch_slots`, shared by the nodes of one trio thread, bounds their network
        fetches in flight together (`P2PNetwork`)."""
        node = _TrioNode(key, cfg, asyncio.get_running_loop())
        boundary = bridge.Boundary(f"p2p node {ID.from_pubkey(key.public_key).to_base58()}")
        peer_id, addrs = await thread.start_service(node.serve, boundary=boundary)
        return cls(peer_id, addrs, node, thread, boundary, _fetch_slots=fetch_slots)

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self._thread.call(fn, *args, boundary=self._boundary)

    @property
    def config(self) -> NodeConfig:
        return self._node.cfg

    @property
    def failed(self) -> BaseException | None:
        """What ended this node, if something did."""
        return self._boundary.error

    async def connect(self, other: P2PNode | tuple[str, Sequence[str]]) -> None:
        """Dials a peer; raises PeerUnreachable if no address of it answers."""
        peer_id, addrs = (other.peer_id, other.addrs) if isinstance(other, P2PNode) else other
        await self._call(self._node.connect, peer_id, list(addrs))

    async def learn(self, other: P2PNode | tuple[str, Sequence[str]]) -> None:
        """Tells this node where a peer listens, without dialling it: the first stream
        this node opens to the peer dials it (on demand)."""
        peer_id, addrs = (other.peer_id, other.addrs) if isinstance(other, P2PNode) else other
        await self._call(self._node.learn, peer_id, list(addrs))

    async def unblock(self, peer_id: str) -> None:
        """Lets the next request to `peer_id` dial it at once. After a failed dial the
        swarm refuses the peer for 60 s without dialling (its negative cache), which
        would defeat a caller that retries on purpose: a worker waiting for a
        requester that restarts after a crash."""
        await self._call(self._node.unblock, peer_id)

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
        await self._call(self._node.store, cid, data, task, round_, None if only_for is None else list(only_for))
        return cid

    async def share(self, cid: str) -> None:
        """Lifts an `only_for` restriction: the blob is served to every peer."""
        await self._call(self._node.lift_restriction, cid)

    async def forget(self, task: str, round_: int) -> int:
        """Drops the blobs tagged (task, round_), except those also tagged with a
        round still kept; returns how many blobs were dropped. Stored blobs are what
        a node holds longest: forget the rounds no longer needed (or set
        `NodeConfig.keep_rounds`)."""
        return int(await self._call(self._node.forget, task, lambda r: r == round_))

    async def forget_before(self, task: str, round_: int) -> int:
        """`forget` for every round of `task` before `round_`."""
        return int(await self._call(self._node.forget, task, lambda r: r < round_))

    @property
    def stored_bytes(self) -> int:
        """Bytes of the blobs this node holds."""
        return sum(len(b) for b in list(self._node.blobs.values()))

    async def serve_messages(self, protocol: str) -> Inbox:
        """Direct messages on `protocol`: small JSON objects, acknowledged on receipt,
        delivered here as (sender peer id, payload). At most
        `NodeConfig.inbox_per_peer` messages per sender wait unread; the node refuses
        a sender's messages beyond that (`message_dropped`)."""
        inbox = Inbox(self.config.inbox_per_peer)
        await self._call(self._node.serve_messages, protocol, inbox)
        return inbox

    async def send_message(self, peer_id: str, protocol: str, payload: dict[str, Any]) -> None:
        """Sends one direct message and waits for its acknowledgement; raises
        PeerUnreachable when none comes within `request_timeout_s`, or what libp2p
        raised when the stream could not be opened or was reset."""
        await self._call(self._node.send_message, peer_id, protocol, payload)

    async def get(
        self,
        cid: str,
        providers: Sequence[str],
        *,
        keep: bool = False,
        max_bytes: int | None = None,
        deadline_s: float | None = None,
        local: bool = True,
    ) -> bytes:
        """Fetches a blob from the first provider that delivers bytes matching `cid`;
        `keep` stores and re-serves it (replication). The whole get, every provider
        tried, ends within `deadline_s` (`NodeConfig.get_deadline_s` by default); each
        provider also within `fetch_timeout_s`. A blob this node holds comes from its
        store, unless `local=False` (fetched over the network even so: an author's
        cover fetch of its own model, agents/worker.py). Raises BlobUnavailable with a
        reason per provider (untried ones included)."""
        cap = self.config.max_blob_bytes if max_bytes is None else max_bytes
        deadline = self.config.get_deadline_s if deadline_s is None else deadline_s
        args = (cid, list(providers), cap, keep, deadline, local)
        if self._fetch_slots is None or (local and self.holds(cid)):
            return bytes(await self._call(self._node.get, *args))
        async with self._fetch_slots:  # waiting here is not part of the deadline
            return bytes(await self._call(self._node.get, *args))

    async def tag(self, cid: str, task: str, round_: int) -> None:
        """Lists an already held blob under (task, round) for `ask_held`."""
        await self._call(self._node.tag, cid, task, round_)

    async def ask_held(self, peer_id: str, task: str, round_: int) -> list[str]:
        """Pull fallback: asks a peer directly which blobs it holds for (task, round)."""
        return list(await self._call(self._node.ask_held, peer_id, task, round_))

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

        await self._call(self._node.subscribe, topic, deliver)
        self._queues.append(q)
        return q

    async def announce(self, topic: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > MAX_ANNOUNCEMENT:
            raise ValueError(f"announcement of {len(data)} bytes is over {MAX_ANNOUNCEMENT}")
        await self._call(self._node.publish, topic, data)

    async def topic_peers(self, topic: str) -> int:
        return int(await self._call(self._node.peers_in_topic, topic))

    async def send_raw(
        self, peer_id: str, protocol: str, data: bytes, *, read_timeout: float = 1.0, close: bool = False
    ) -> bytes:
        """Testing aid: raw bytes on a new stream (our side closed after them if
        `close`), and what comes back before EOF or `read_timeout`."""
        return bytes(await self._call(self._node.send_raw, peer_id, protocol, data, read_timeout, close))

    async def partition(self, seconds: float) -> None:
        """Injected fault: cuts the node off the network for `seconds` from now
        (`p2p/linkfault.py`); returns at once."""
        await self._call(self._node.partition, seconds)

    async def degrade(self, delay_s: float, loss: float, seed: str) -> None:
        """Injected fault: from now on every stream of ours waits `delay_s` and is
        dropped with probability `loss`, seeded with `seed` (`p2p/linkfault.py`)."""
        await self._call(self._node.degrade, delay_s, loss, seed)

    @property
    def link_faults(self) -> dict[str, int]:
        """What the injected link faults have done so far (counts)."""
        return self._node.faults.summary()

    def set_stream_handler(self, protocol: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        """Serves `protocol` with `handler(stream)`, which runs in the trio thread. An
        exception it raises resets its stream (`handler_failed`), nothing more."""
        self._thread.run_sync_soon(lambda: self._node.set_stream_handler(protocol, handler))

    async def close(self) -> None:
        if self._closed or self._boundary.error is not None:
            self._closed = True
            return  # a node that failed has already closed its host
        self._closed = True
        await self._call(self._node.stop)


FETCHES_IN_FLIGHT = 16
"""Network fetches in flight at once, all nodes of one trio thread together. Beyond
about this many the thread saturates (it does the Noise and Yamux work of both ends
of every transfer between its nodes): stream set-up then misses its 10 s
multistream-select timeout, each failure is retried and the retries keep it
saturated. 50 workers in one process collapsed that way (docs/p2p.md, "Scale")."""

NEIGHBOURS = 3
"""`connect_hub`: how many of the next nodes (in a ring) each node dials."""


class P2PNetwork:
    """Owns one trio thread and the nodes started on it; closing it shuts all down in
    order (each node disconnects its peers, stops pubsub, closes its host), then stops
    the thread. At most `fetches_in_flight` `get`s that go to the network run at once
    on the thread; the others wait their turn before their deadline starts."""

    def __init__(self, cfg: NodeConfig = NodeConfig(), *, fetches_in_flight: int = FETCHES_IN_FLIGHT) -> None:
        if fetches_in_flight < 1:
            raise ValueError("fetches_in_flight must be at least 1")
        self.cfg = cfg
        self.thread = bridge.TrioThread()
        self.nodes: list[P2PNode] = []
        self.fetch_slots = asyncio.Semaphore(fetches_in_flight)

    async def __aenter__(self) -> P2PNetwork:
        await asyncio.to_thread(self.thread.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add_node(self, key: KeyPair, cfg: NodeConfig | None = None) -> P2PNode:
        node = await P2PNode.start(key, self.thread, cfg or self.cfg, self.fetch_slots)
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

    async def connect_hub(
        self, hub: P2PNode, nodes: Sequence[P2PNode], *, neighbours: int = NEIGHBOURS, max_dials: int = 8
    ) -> None:
        """A connected graph, not a clique: every node dials `hub` and the next
        `neighbours` nodes in a ring, and learns where all the others listen (`learn`),
        so that a stream to any of them dials it on demand. Gossip needs only a
        connected graph, and a star's evaluators fetch from the hub alone: W workers
        cost W * (neighbours + 1) dials instead of W * (W + 1) / 2 (1,275 at W = 50,
        minutes of the one trio thread's CPU)."""
        everyone = [hub, *nodes]
        for a in everyone:
            for b in everyone:
                if a is not b:
                    await a.learn(b)
        pairs = [(a, hub) for a in nodes]
        n = len(nodes)
        for i, a in enumerate(nodes):
            for j in range(1, min(neighbours, n - 1) + 1):
                b = nodes[(i + j) % n]
                if (b, a) not in pairs and (a, b) not in pairs:
                    pairs.append((a, b))
        sem = asyncio.Semaphore(max_dials)

        async def dial(a: P2PNode, b: P2PNode) -> None:
            async with sem:
                await a.connect(b)

        async with asyncio.TaskGroup() as tg:
            for a, b in pairs:
                tg.create_task(dial(a, b))

    async def close(self) -> None:
        """Closes every node at once (each within 10 s: one after another, a node's
        hang-ups and its services' exits took about 1.5 s, 9 s for ten nodes), then
        stops the thread."""

        async def close(node: P2PNode) -> None:
            try:
                await asyncio.wait_for(node.close(), 10)
            except (TimeoutError, bridge.BridgeClosed) as e:
                log.warning("node_close_failed", peer=node.peer_id, error=repr(e))

        failed = await asyncio.gather(*(close(node) for node in self.nodes), return_exceptions=True)
        self.nodes.clear()
        await asyncio.to_thread(self.thread.stop)
        for error in failed:  # the thread is stopped first, whatever a node raised
            if isinstance(error, BaseException):
                raise error
