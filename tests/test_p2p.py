"""The libp2p model store: real hosts on loopback, hostile peers included."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys

import pytest
from libp2p.peer.id import ID
from structlog.testing import capture_logs

from discofl_p2p.p2p import bridge
from discofl_p2p.p2p.cid import CIDError, cid_from_digest, cid_of, digest_of, matches
from discofl_p2p.p2p.node import (
    MAX_ANNOUNCEMENT,
    BlobUnavailable,
    NodeConfig,
    P2PNetwork,
    key_from_seed,
    load_or_create_key,
)
from discofl_p2p.p2p.protocol import (
    BAD_REQUEST,
    BLOB_PROTOCOL,
    MAX_REQUEST,
    OK,
    ProtocolError,
    encode_request,
    encode_response_header,
    read_request,
)
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


def test_cid_codec_agrees_with_multiformats():
    """`cid_from_digest` and `digest_of` code our one CID shape by hand: they must give
    what `multiformats` gives, and leave every other spelling to it."""
    from multiformats import CID, multihash

    for seed in range(200):
        digest = hashlib.sha256(seed.to_bytes(4, "big")).digest()
        ref = str(CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256")))
        assert cid_from_digest(digest) == ref
        assert digest_of(ref) == digest
        assert digest_of(ref.upper()) == digest  # "B": base32 upper case, left to multiformats
        assert digest_of(str(CID("base58btc", 1, "raw", multihash.wrap(digest, "sha2-256")))) == digest
        with pytest.raises(CIDError):
            digest_of(ref[:-2])
    # Hostile spellings: the right digest or CIDError, never another error or digest.
    ref = cid_of(b"hello")
    for bad in (ref.replace("i", "\u0131", 1), ref + "\n", ref[:-1] + "\ud800", "b" + "a" * 60_000,
                ref[:-1] + chr(ord(ref[-1]) + 1), None, 7, b"bafy"):  # fmt: skip
        with pytest.raises(CIDError):
            digest_of(bad)  # type: ignore[arg-type]


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


@pytest.mark.slow
def test_ten_nodes_fetch_everything_announce_to_all_and_a_late_joiner_catches_up():
    async def go():
        with capture_logs() as logs:
            await healthy_network()
        # a healthy network logs nothing: every warning of the p2p code marks a refusal
        assert [e["event"] for e in logs] == []

    async def healthy_network():
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


@pytest.mark.slow
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
            # one fetch_failed per hostile provider, in the order tried, each with its exact reason
            assert [(e["event"], e["provider"], e["reason"]) for e in logs] == [
                ("fetch_failed", evil["corrupt"].peer_id, f"blob of {len(blob)} bytes does not match its CID"),
                (
                    "fetch_failed",
                    evil["oversized"].peer_id,
                    f"blob {cid[:16]}..: peer announces {1 << 40} bytes, over the cap of {256 << 20}",
                ),
                (
                    "fetch_failed",
                    evil["vanishing"].peer_id,
                    f"blob {cid[:16]}..: stream ended after {len(blob) // 2} of {len(blob)} bytes",
                ),
                ("fetch_failed", evil["stalled"].peer_id, "timed out after 1.5 s"),
            ]

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
            assert [(e["event"], e["peer"]) for e in logs] == [
                ("request_rejected", attacker.peer_id),
                ("request_rejected", attacker.peer_id),
                ("pubsub_rpc_rejected", attacker.peer_id),
            ]
            assert logs[0]["reason"] == f"request frame claims {0xFFFFFFFF} bytes, over the cap of {MAX_REQUEST}"
            assert logs[1]["reason"].startswith("request is not JSON: ")

            # the victim still serves blobs and gossips
            assert await honest.get(cid, [victim.peer_id]) == b"still here"
            await _wait_mesh(victim, TOPIC, 1)
            await victim.announce(TOPIC, {"alive": True})
            ann = await asyncio.wait_for(q.get(), 10)
            assert ann.payload == {"alive": True} and ann.sender == victim.peer_id

    run(go())


@pytest.mark.slow
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
            with capture_logs() as logs:
                async with asyncio.timeout(120):
                    results = await asyncio.gather(*(client.get(cids[i % 10], [server.peer_id]) for i in range(50)))
            assert all(r == blobs[i % 10] for i, r in enumerate(results))
            assert [e["event"] for e in logs] == []  # no request timed out on the serving side

    run(go())


def test_shutdown_with_a_transfer_in_flight_is_orderly():
    async def go():
        net = P2PNetwork()
        await net.__aenter__()
        a = await net.add_node(key_from_seed(11, "a"))
        b = await net.add_node(key_from_seed(11, "b"))
        await b.connect(a)
        size = 30 << 20
        cid = await a.put(os.urandom(size))
        fetch = asyncio.create_task(b.get(cid, [a.peer_id]))
        # evidence that the transfer is in flight: its first MiB has arrived, the rest has not
        await asyncio.wait_for(b.wait_received(1 << 20), 30)
        assert not fetch.done()
        with capture_logs() as logs:
            fetch.cancel()
            async with asyncio.timeout(15):
                await net.close()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        assert not net.thread.running
        assert (1 << 20) <= b.bytes_received < size and not b.holds(cid)
        # the one thing logged: the serving side saw the cancelled client go away, by a reset
        # of its stream or, when the network's close overtook that, of the connection
        assert [(e["event"], e["peer"]) for e in logs] == [("request_failed", b.peer_id)]
        assert logs[0]["error"] == "StreamReset()" or (
            logs[0]["error"].startswith("StreamError(") and "reset by" in logs[0]["error"]
        ), logs[0]["error"]
        # a closed network says so instead of hanging
        with pytest.raises(bridge.BridgeClosed):
            await b.get(cid, [a.peer_id])

    run(go())


def test_restricted_blob_is_served_only_to_named_peers_until_shared_and_messages_arrive():
    async def go():
        async with P2PNetwork() as net:
            author = await net.add_node(key_from_seed(12, "author"))
            requester = await net.add_node(key_from_seed(12, "requester"))
            prober = await net.add_node(key_from_seed(12, "prober"))
            await net.connect_all()
            cid = await author.put(b"my model", task="T", round_=1, only_for=[requester.peer_id])
            public = await author.put(b"someone's shared model", task="T", round_=1)
            with pytest.raises(BlobUnavailable, match="not found"):
                await prober.get(cid, [author.peer_id])
            # the pull fallback does not betray authorship: the restricted blob is listed
            # only to the peer it is served to
            assert await prober.ask_held(author.peer_id, "T", 1) == [public]
            assert await requester.ask_held(author.peer_id, "T", 1) == sorted([cid, public])
            assert await requester.get(cid, [author.peer_id]) == b"my model"
            await author.share(cid)
            assert await prober.get(cid, [author.peer_id]) == b"my model"
            assert await prober.ask_held(author.peer_id, "T", 1) == sorted([cid, public])

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
        ident = json.loads(server.stdout.readline())
        served = json.loads(server.stdout.readline())
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
        first_b = json.loads(client.stdout.splitlines()[0])["peer_id"]
        assert json.loads(again.stdout.splitlines()[0])["peer_id"] == first_b != ident["peer_id"]
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


# ---------------------------------------------------------------- hostile clients and gossip


def test_requests_that_break_the_protocol_are_refused_with_their_reason():
    async def go():
        async with P2PNetwork() as net:
            victim = await net.add_node(key_from_seed(13, "victim"))
            attacker = await net.add_node(key_from_seed(13, "attacker"))
            await attacker.connect(victim)
            cid = await victim.put(b"still here")
            cases = [
                (encode_request({"op": "delete", "cid": cid}), "request must be a JSON object with op 'get' or 'list'"),
                (encode_request({"op": "get", "cid": 7}), "get request needs a string 'cid'"),
                (
                    encode_request({"op": "list", "task": "T", "round": "1"}),
                    "list request needs a string 'task' and an integer 'round'",
                ),
                (encode_request([]), "request must be a JSON object"),  # type: ignore[arg-type]
            ]
            with capture_logs() as logs:
                for frame, _ in cases:
                    answer = await attacker.send_raw(victim.peer_id, BLOB_PROTOCOL, frame, read_timeout=10)
                    assert answer == encode_response_header(BAD_REQUEST, 0)
            assert [(e["event"], e["peer"], e["reason"]) for e in logs] == [
                ("request_rejected", attacker.peer_id, reason) for _, reason in cases
            ]
            with pytest.raises(ValueError, match=f"over {MAX_REQUEST}"):
                encode_request({"op": "get", "cid": "x" * MAX_REQUEST})
            assert await attacker.get(cid, [victim.peer_id]) == b"still here"

    run(go())


def test_a_silent_client_is_cut_off_by_the_request_timeout_and_frees_its_slot():
    """A peer that opens a stream and never finishes its request (slowloris) must not
    hold a serving slot: with one slot per peer, its next honest request still works."""

    async def go():
        cfg = NodeConfig(request_timeout_s=0.5, transfers_per_peer=1)
        async with P2PNetwork(cfg) as net:
            victim = await net.add_node(key_from_seed(14, "victim"))
            attacker = await net.add_node(key_from_seed(14, "attacker"))
            await attacker.connect(victim)
            cid = await victim.put(b"served again")
            with capture_logs() as logs:
                # two bytes of a four-byte length, then silence; the client would wait 60 s
                async with asyncio.timeout(10):
                    answer = await attacker.send_raw(victim.peer_id, BLOB_PROTOCOL, b"\x00\x00", read_timeout=60)
            assert answer == b""  # reset by the victim, no response written
            assert [(e["event"], e["peer"]) for e in logs] == [("request_timed_out", attacker.peer_id)]
            async with asyncio.timeout(10):
                assert await attacker.get(cid, [victim.peer_id]) == b"served again"

    run(go())


def test_hostile_list_answers_raise_a_protocol_error():
    answers = iter(
        [
            encode_response_header(OK, 9) + b"{not json",
            encode_response_header(OK, 7) + b'{"a":1}',
            encode_response_header(OK, 8) + b'["a", 1]',
            encode_response_header(OK, 1 << 30),
        ]
    )

    async def liar(stream):
        await read_request(stream)
        await stream.write(next(answers))
        await stream.close()

    async def go():
        async with P2PNetwork() as net:
            client = await net.add_node(key_from_seed(15, "client"))
            evil = await _evil(net, "liar", liar)
            await client.connect(evil)
            for expected in [
                "list answer is not JSON",
                "list answer is not a JSON list of strings",
                "list answer is not a JSON list of strings",
                f"list: peer announces {1 << 30} bytes, over the cap of {1 << 20}",
            ]:
                with pytest.raises(ProtocolError) as ei:
                    await client.ask_held(evil.peer_id, "T", 1)
                assert str(ei.value) == expected

    run(go())


def test_oversized_and_non_object_announcements_are_dropped():
    async def go():
        async with P2PNetwork() as net:
            victim = await net.add_node(key_from_seed(16, "victim"))
            attacker = await net.add_node(key_from_seed(16, "attacker"))
            await net.connect_all()
            q = await victim.subscribe(TOPIC)
            await attacker.subscribe(TOPIC)
            await _wait_mesh(attacker, TOPIC, 1)
            with pytest.raises(ValueError, match=f"over {MAX_ANNOUNCEMENT}"):
                await attacker.announce(TOPIC, {"pad": "x" * MAX_ANNOUNCEMENT})
            try:
                json.loads(b"{{")
            except ValueError as e:
                not_json = str(e)
            too_big = b'{"pad": "' + b"x" * MAX_ANNOUNCEMENT + b'"}'
            with capture_logs() as logs:
                # raw gossip, past announce()'s own checks, as a hostile peer would send it
                for raw in [too_big, b"[1, 2]", b"{{"]:
                    await attacker._thread.call(attacker._node.publish, TOPIC, raw)
                await attacker.announce(TOPIC, {"ok": True})
                ann = await asyncio.wait_for(q.get(), 10)  # gossip from one peer arrives in order
            assert ann.payload == {"ok": True} and q.empty()
            assert [(e["event"], e["peer"], e["reason"]) for e in logs] == [
                ("announcement_rejected", attacker.peer_id, f"{len(too_big)} bytes, over {MAX_ANNOUNCEMENT}"),
                ("announcement_rejected", attacker.peer_id, "not a JSON object"),
                ("announcement_rejected", attacker.peer_id, not_json),
            ]

    run(go())


@pytest.mark.slow
def test_node_command_exits_3_with_one_line_when_a_fetch_or_a_dial_fails(tmp_path):
    cmd = [sys.executable, "-m", "discofl_p2p", "node"]

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # run side by side (each process takes seconds to start; libp2p retries a failed dial)
    nobody = str(ID.from_pubkey(key_from_seed(17, "nobody").public_key))
    dial = start("--key", str(tmp_path / "c.key"), "--connect", f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}")
    bad = start("--key", str(tmp_path / "d.key"), "--connect", "/ip4/127.0.0.1/tcp/1/p2p/xyz")
    server = start("--key", str(tmp_path / "a.key"), "--for", "120")
    try:
        ident = json.loads(server.stdout.readline())
        addr = f"{ident['addrs'][0].split('/p2p/')[0]}/p2p/{ident['peer_id']}"
        missing = cid_of(b"a model nobody holds")
        out = tmp_path / "got.bin"
        fetch = subprocess.run(
            cmd + ["--key", str(tmp_path / "b.key"), "--connect", addr, "--fetch", missing, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # a CID the connected peer does not hold: exit 3, one line that names the reason
        assert fetch.returncode == 3, fetch.stderr
        assert (
            f"discofl-p2p node: could not fetch {missing}: {ident['peer_id'][:16]}..: "
            f"blob {missing[:16]}..: peer answered not found\n"
        ) in fetch.stderr
        assert "Traceback" not in fetch.stderr and not out.exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
        dial_out, dial_err = dial.communicate(timeout=60)
        bad_out, bad_err = bad.communicate(timeout=60)
    assert server.returncode == 0

    # a peer that is not there (nothing listens on port 1): exit 3, no traceback
    assert dial.returncode == 3, dial_err
    assert f"discofl-p2p node: cannot connect to {nobody}: " in dial_err
    assert "Traceback" not in dial_err and '"connected"' not in dial_out
    # a peer id that is not one is a usage error (2), caught before any node starts
    assert bad.returncode == 2, bad_err
    assert "'xyz' is not a peer id" in bad_err and bad_out == ""
