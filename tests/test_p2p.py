"""The libp2p model store: real hosts on loopback, hostile peers included."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from structlog.testing import capture_logs

from discofl_p2p.p2p import bridge
from discofl_p2p.p2p.cid import CIDError, cid_from_digest, cid_of, digest_of, matches
from discofl_p2p.p2p.node import BlobUnavailable, NodeConfig, P2PNetwork, key_from_seed, load_or_create_key
from discofl_p2p.p2p.protocol import BAD_REQUEST, BLOB_PROTOCOL, encode_response_header, read_request
from tests.conftest import run

TOPIC = "discofl/test-task/announce"


async def _wait_mesh(node, topic: str, peers: int, timeout: float = 15.0) -> None:
    """Gossipsub drops what is published before the mesh forms: wait until it has."""
    async with asyncio.timeout(timeout):
        while await node.topic_peers(topic) < peers:
            await asyncio.sleep(0.05)


def test_cid_helpers():
    cid = cid_of(b"hello")
    assert cid.startswith("bafkrei")
    assert cid_from_digest(digest_of(cid)) == cid
    assert matches(cid, b"hello") and not matches(cid, b"hellO")
    with pytest.raises(CIDError, match="not a CID"):
        digest_of("not-a-cid")
    with pytest.raises(CIDError, match="expected CIDv1 raw sha2-256"):
        digest_of("bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua")  # dag-cbor


def test_key_file_is_stable_and_private(tmp_path):
    path = tmp_path / "node.key"
    a = load_or_create_key(path)
    b = load_or_create_key(path)
    assert a.public_key.serialize() == b.public_key.serialize()
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        load_or_create_key(path)
    assert key_from_seed(1, "a").public_key.serialize() == key_from_seed(1, "a").public_key.serialize()
    assert key_from_seed(1, "a").public_key.serialize() != key_from_seed(2, "a").public_key.serialize()


def test_ten_nodes_fetch_everything_announce_to_all_and_a_late_joiner_catches_up():
    async def go():
        async with P2PNetwork() as net:
            nodes = [await net.add_node(key_from_seed(7, f"n{i}")) for i in range(9)]
            await net.connect_all()
            queues = [await n.subscribe(TOPIC) for n in nodes]
            blobs = [os.urandom(64 * 1024 + i) for i in range(9)]
            cids = [await n.put(b, task="T", round_=1) for n, b in zip(nodes, blobs)]

            # every node fetches every other node's blob
            async def fetch_all(i: int) -> None:
                for j, cid in enumerate(cids):
                    if i != j:
                        assert await nodes[i].get(cid, [nodes[j].peer_id]) == blobs[j]

            async with asyncio.TaskGroup() as tg:
                for i in range(9):
                    tg.create_task(fetch_all(i))

            # announcements reach every subscriber, signed by their sender
            for n in nodes:
                await _wait_mesh(n, TOPIC, 4)
            for n, cid in zip(nodes, cids):
                await n.announce(TOPIC, {"kind": "model", "round": 1, "cid": cid})
            for i, q in enumerate(queues):
                got = {}
                async with asyncio.timeout(15):
                    while len(got) < 8:
                        ann = await q.get()
                        got[ann.sender] = ann.payload["cid"]
                assert got == {nodes[j].peer_id: cids[j] for j in range(9) if j != i}

            # a late joiner missed every announcement; it pulls the round from its peers
            late = await net.add_node(key_from_seed(7, "late"))
            for n in nodes:
                await late.connect(n)
            held = {}
            for n in nodes:
                for cid in await late.ask_held(n.peer_id, "T", 1):
                    held[cid] = n.peer_id
            assert set(held) == set(cids)
            for cid, provider in held.items():
                assert matches(cid, await late.get(cid, [provider]))
            assert await late.ask_held(nodes[0].peer_id, "T", 2) == []

    run(go())


# ---------------------------------------------------------------- hostile providers


async def _evil(net: P2PNetwork, label: str, handler) -> object:
    node = await net.add_node(key_from_seed(8, label))
    node.set_stream_handler(BLOB_PROTOCOL, handler)
    return node


def test_corrupt_oversized_lying_stalled_and_vanishing_providers_fall_through_to_a_replica():
    blob = os.urandom(1 << 20)
    cid = cid_of(blob)

    async def corrupt(stream):
        await read_request(stream)
        bad = bytes([blob[0] ^ 1]) + blob[1:]
        await stream.write(encode_response_header(0, len(bad)) + bad)
        await stream.close()

    async def oversized(stream):
        await read_request(stream)
        await stream.write(encode_response_header(0, 1 << 40))
        await bridge.sleep(30)

    async def vanishing(stream):
        await read_request(stream)
        await stream.write(encode_response_header(0, len(blob)) + blob[: len(blob) // 2])
        await stream.reset()

    async def stalled(stream):
        await read_request(stream)
        await stream.write(encode_response_header(0, len(blob)) + blob[:1000])
        await bridge.sleep(60)

    async def go():
        async with P2PNetwork(NodeConfig(fetch_timeout_s=1.5)) as net:
            client = await net.add_node(key_from_seed(8, "client"))
            replica = await net.add_node(key_from_seed(8, "replica"))
            await replica.put(blob)
            evil = {
                name: await _evil(net, name, h)
                for name, h in [
                    ("corrupt", corrupt),
                    ("oversized", oversized),
                    ("vanishing", vanishing),
                    ("stalled", stalled),
                ]
            }
            for n in [replica, *evil.values()]:
                await client.connect(n)
            with capture_logs() as logs:
                got = await client.get(cid, [evil[k].peer_id for k in evil] + [replica.peer_id], keep=True)
            assert got == blob and client.holds(cid)
            reasons = {e["provider"]: e["reason"] for e in logs if e["event"] == "fetch_failed"}
            assert "does not match its CID" in reasons[evil["corrupt"].peer_id]
            assert "over the cap" in reasons[evil["oversized"].peer_id]
            assert (
                "stream ended" in reasons[evil["vanishing"].peer_id] or "Stream" in reasons[evil["vanishing"].peer_id]
            )
            assert "timed out" in reasons[evil["stalled"].peer_id]

            # with no honest provider left, the error names every provider's failure
            with pytest.raises(BlobUnavailable) as ei:
                await client.get(cid_of(b"other"), [evil["corrupt"].peer_id, evil["stalled"].peer_id])
            assert set(ei.value.reasons) == {evil["corrupt"].peer_id, evil["stalled"].peer_id}

            # the fetched copy is re-served: the model outlives its author
            third = await net.add_node(key_from_seed(8, "third"))
            await third.connect(client)
            await replica.close()
            assert await third.get(cid, [replica.peer_id, client.peer_id]) == blob

    run(go())


def test_malformed_request_frame_and_pubsub_rpc_do_not_crash_the_node():
    async def go():
        async with P2PNetwork() as net:
            victim = await net.add_node(key_from_seed(9, "victim"))
            attacker = await net.add_node(key_from_seed(9, "attacker"))
            honest = await net.add_node(key_from_seed(9, "honest"))
            await net.connect_all()
            cid = await victim.put(b"still here")
            q = await honest.subscribe(TOPIC)
            await victim.subscribe(TOPIC)

            with capture_logs() as logs:
                # a request frame that claims 4 GiB
                answer = await attacker.send_raw(victim.peer_id, BLOB_PROTOCOL, struct.pack(">I", 0xFFFFFFFF))
                assert answer[:9] == encode_response_header(BAD_REQUEST, 0)
                # a request that is not JSON
                await attacker.send_raw(victim.peer_id, BLOB_PROTOCOL, struct.pack(">I", 3) + b"{{{")
                # a pubsub RPC that protobuf cannot decode
                await attacker.send_raw(victim.peer_id, "/meshsub/1.1.0", b"\x05\xff\xff\xff\xff\xff", read_timeout=0.5)
                async with asyncio.timeout(10):  # the victim's read loop logs it in its own time
                    while not any(e["event"] == "pubsub_rpc_rejected" for e in logs):
                        await asyncio.sleep(0.02)
            events = [e["event"] for e in logs]
            assert events.count("request_rejected") == 2
            assert "pubsub_rpc_rejected" in events

            # the victim still serves blobs and gossips
            assert await honest.get(cid, [victim.peer_id]) == b"still here"
            await _wait_mesh(victim, TOPIC, 1)
            await victim.announce(TOPIC, {"alive": True})
            ann = await asyncio.wait_for(q.get(), 10)
            assert ann.payload == {"alive": True} and ann.sender == victim.peer_id

    run(go())


def test_fifty_concurrent_10_mib_fetches_between_two_nodes_complete():
    """py-libp2p's yamux deadlocks with more than about 16 concurrent large streams on
    one connection; transfers per peer are bounded on both sides."""

    async def go():
        async with P2PNetwork() as net:
            server = await net.add_node(key_from_seed(10, "server"))
            client = await net.add_node(key_from_seed(10, "client"))
            await client.connect(server)
            blobs = [os.urandom(10 << 20) for _ in range(10)]
            cids = [await server.put(b) for b in blobs]
            async with asyncio.timeout(120):
                results = await asyncio.gather(*(client.get(cids[i % 10], [server.peer_id]) for i in range(50)))
            assert all(r == blobs[i % 10] for i, r in enumerate(results))

    run(go())


def test_shutdown_with_a_transfer_in_flight_is_orderly():
    async def go():
        net = P2PNetwork()
        await net.__aenter__()
        a = await net.add_node(key_from_seed(11, "a"))
        b = await net.add_node(key_from_seed(11, "b"))
        await b.connect(a)
        cid = await a.put(os.urandom(30 << 20))
        fetch = asyncio.create_task(b.get(cid, [a.peer_id]))
        await asyncio.sleep(0.05)
        with capture_logs() as logs:
            fetch.cancel()
            await net.close()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        assert not net.thread.running
        assert not [e for e in logs if e.get("log_level") in ("error", "critical")]

    run(go())


def test_restricted_blob_is_served_only_to_named_peers_until_shared_and_messages_arrive():
    async def go():
        async with P2PNetwork() as net:
            author = await net.add_node(key_from_seed(12, "author"))
            requester = await net.add_node(key_from_seed(12, "requester"))
            prober = await net.add_node(key_from_seed(12, "prober"))
            await net.connect_all()
            cid = await author.put(b"my model", task="T", round_=1, only_for=[requester.peer_id])
            with pytest.raises(BlobUnavailable, match="not found"):
                await prober.get(cid, [author.peer_id])
            assert await requester.get(cid, [author.peer_id]) == b"my model"
            await author.share(cid)
            assert await prober.get(cid, [author.peer_id]) == b"my model"

            inbox = await requester.serve_messages("/discofl/test-msg/1.0.0")
            await author.send_message(requester.peer_id, "/discofl/test-msg/1.0.0", {"cid": cid})
            sender, payload = await asyncio.wait_for(inbox.get(), 5)
            assert sender == author.peer_id and payload == {"cid": cid}
            with capture_logs() as logs:
                await prober.send_raw(requester.peer_id, "/discofl/test-msg/1.0.0", struct.pack(">I", 2) + b"[]")
            assert [e["event"] for e in logs] == ["message_rejected"]
            assert inbox.empty()

    run(go())


def test_two_node_processes_serve_and_fetch_with_key_files(tmp_path):
    """One node per process (`discofl-p2p node`), the same API as the simulations."""
    import json as _json
    import signal
    import subprocess
    import sys

    blob = os.urandom(300_000)
    (tmp_path / "model.bin").write_bytes(blob)
    cmd = [sys.executable, "-m", "discofl_p2p", "node"]
    server = subprocess.Popen(
        cmd + ["--key", str(tmp_path / "a.key"), "--serve", str(tmp_path / "model.bin")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ident = _json.loads(server.stdout.readline())
        served = _json.loads(server.stdout.readline())
        assert served["cid"] == cid_of(blob)
        addr = f"{ident['addrs'][0].split('/p2p/')[0]}/p2p/{ident['peer_id']}"
        client = subprocess.run(
            cmd
            + [
                "--key",
                str(tmp_path / "b.key"),
                "--connect",
                addr,
                "--fetch",
                served["cid"],
                "--out",
                str(tmp_path / "got.bin"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        assert (tmp_path / "got.bin").read_bytes() == blob
        # the same key file gives the same identity next time
        again = subprocess.run(
            cmd + ["--key", str(tmp_path / "b.key"), "--for", "0.1"], capture_output=True, text=True, timeout=60
        )
        first_b = _json.loads(client.stdout.splitlines()[0])["peer_id"]
        assert _json.loads(again.stdout.splitlines()[0])["peer_id"] == first_b != ident["peer_id"]
        bad = subprocess.run(
            cmd + ["--key", str(tmp_path / "c.key"), "--connect", "/ip4/127.0.0.1/tcp/1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "expected a multiaddr ending in /p2p/PEER_ID" in bad.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert '"stopped": true' in out
