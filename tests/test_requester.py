"""The requester: its decisions about openings as pure functions, and its registration
timeout on a real anvil with real libp2p nodes."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from structlog.testing import capture_logs

from discofl_p2p.agents.identity import sign_binding
from discofl_p2p.agents.requester import (
    Opening,
    OpeningRejected,
    _Round,
    batch_due,
    batch_wait_s,
    parse_opening,
    parse_score_reveal,
    place_opening,
    select_openings,
)
from discofl_p2p.chain.client import Phase
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import ScoreReveal, commitment, encode_scores, score_commitment
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.p2p.cid import cid_of, digest_of
from discofl_p2p.scenario.runner import Simulation
from tests.conftest import run, tiny, with_simulation

CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
TASK = "0x" + "cd" * 20  # the task contract the bindings name
ACCT_W, ACCT_V = derive_account(0, "opening/w"), derive_account(0, "opening/v")
W, V = ACCT_W.address, ACCT_V.address
NAMES = {W: "w-1", V: "v-1"}
BIND = {
    ("peer-w", W): sign_binding(ACCT_W, TASK, "peer-w"),
    ("peer-v", V): sign_binding(ACCT_V, TASK, "peer-v"),
    ("peer-w2", W): sign_binding(ACCT_W, TASK, "peer-w2"),
}
GOOD = {"task": "t", "round": 1, "worker": W, "salt": "00" * 32, "cid": CID, "binding": BIND[("peer-w", W)]}


def _parse(peer: str, msg: object, bound: dict[str, str] | None = None) -> Opening:
    return parse_opening(peer, msg, task_id="t", contract=TASK, names=NAMES, bound=bound or {})


# ---------------------------------------------------------------- parse_opening


def test_an_opening_counts_only_from_a_peer_that_can_sign_for_the_workers_address():
    """A hostile peer cannot pre-empt a worker's opening, not even with a well-formed
    one: the binding (the worker's signature of contract, address and peer id) does
    not verify for any other peer, and it cannot sign one itself."""
    with pytest.raises(OpeningRejected, match="cannot sign for w-1's address"):
        _parse("peer-evil", GOOD)  # w-1's binding, lifted from its message
    with pytest.raises(OpeningRejected, match="cannot sign for w-1's address"):
        _parse("peer-v", {**GOOD, "binding": BIND[("peer-v", V)]})  # another worker's own binding
    evil = derive_account(0, "opening/evil")
    with pytest.raises(OpeningRejected, match="cannot sign for w-1's address"):
        _parse("peer-evil", {**GOOD, "binding": sign_binding(evil, TASK, "peer-evil")})
    other_task = sign_binding(ACCT_W, "0x" + "ee" * 20, "peer-w")
    with pytest.raises(OpeningRejected, match="cannot sign for w-1's address"):
        _parse("peer-w", {**GOOD, "binding": other_task})  # replayed from another task
    for junk in (None, 7, "0x00", "zz" * 65, ["0x"]):
        with pytest.raises(OpeningRejected, match="cannot sign"):
            _parse("peer-w", {**GOOD, "binding": junk})
    assert _parse("peer-w", GOOD) == Opening("peer-w", 1, W, CID, bytes(32))


def test_once_bound_a_worker_speaks_only_through_its_first_peer():
    """The first peer that proved control of the address is the worker's; another
    peer, even with a valid binding of its own, is refused from then on."""
    second = {**GOOD, "binding": BIND[("peer-w2", W)]}
    assert _parse("peer-w2", second).peer == "peer-w2"  # before any binding: accepted
    with pytest.raises(OpeningRejected, match="w-1 is bound to another peer"):
        _parse("peer-w2", second, bound={W: "peer-w"})
    assert _parse("peer-w", GOOD, bound={W: "peer-w"}).peer == "peer-w"


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({**GOOD, "task": "other"}, "wrong task"),
        ({**GOOD, "worker": "0xStranger"}, "unknown worker"),
        ({**GOOD, "worker": [W]}, "unknown worker"),
        ({**GOOD, "salt": "00"}, "bad salt"),
        ({**GOOD, "salt": "zz" * 32}, "bad salt"),
        ({**GOOD, "salt": 7}, "bad salt"),
        ({**GOOD, "cid": "not-a-cid"}, "bad CID"),
        ({**GOOD, "cid": GOOD["cid"].upper()}, "not in canonical form"),  # the same digest, re-spelled
        ({**GOOD, "cid": GOOD["cid"][:9] + GOOD["cid"][9:20].upper() + GOOD["cid"][20:]}, "not in canonical form"),
        ({**GOOD, "cid": GOOD["cid"] + "="}, "not in canonical form"),
        ({**GOOD, "round": "1"}, "not an integer"),
        ({**GOOD, "round": True}, "not an integer"),
        ({k: v for k, v in GOOD.items() if k != "salt"}, "missing field 'salt'"),
        ({k: v for k, v in GOOD.items() if k != "round"}, "missing field 'round'"),
        (["not", "a", "dict"], "not a JSON object"),
    ],
)
def test_malformed_openings_are_rejected_with_a_reason(msg, reason):
    with pytest.raises(OpeningRejected, match=reason):
        _parse("peer-w", msg)


# ---------------------------------------------------------------- place_opening


def test_an_opening_is_taken_only_while_its_round_collects_openings():
    op = _parse("peer-w", GOOD)
    r1 = _Round(1)
    assert place_opening(op, {1: r1}, {}, last_round=3) == "now"
    r1.openings[W] = (CID, bytes(32))
    with pytest.raises(OpeningRejected, match="not accepting"):  # one opening per worker and round
        place_opening(op, {1: r1}, {}, last_round=3)
    with pytest.raises(OpeningRejected, match="not accepting"):  # its round has moved on
        place_opening(op, {1: _Round(1, phase="evaluation")}, {}, last_round=3)
    with pytest.raises(OpeningRejected, match="not accepting"):  # an old round
        place_opening(op, {1: _Round(1, phase="settling"), 2: _Round(2)}, {}, last_round=3)


def test_an_opening_ahead_of_its_round_is_kept_once_per_worker():
    """A worker can see RoundStarted before the requester does: its opening waits, but
    only one per worker (bounded memory), and never for a round past the last."""
    rounds = {1: _Round(1, phase="settling")}
    early_op = _parse("peer-w", {**GOOD, "round": 2})
    assert place_opening(early_op, rounds, {}, last_round=3) == "early"
    with pytest.raises(OpeningRejected, match="already have an early opening"):
        place_opening(early_op, rounds, {2: [early_op]}, last_round=3)
    other = _parse("peer-v", {**GOOD, "round": 2, "worker": V, "binding": BIND[("peer-v", V)]})
    assert place_opening(other, rounds, {2: [early_op]}, last_round=3) == "early"
    with pytest.raises(OpeningRejected, match="not accepting"):
        place_opening(_parse("peer-w", {**GOOD, "round": 4}), rounds, {}, last_round=3)
    with pytest.raises(OpeningRejected, match="not accepting"):
        place_opening(_parse("peer-w", {**GOOD, "round": 0}), rounds, {}, last_round=3)


# ---------------------------------------------------------------- select_openings

CONTRACT = "0x" + "ab" * 20
WORKERS = ["0x" + f"{i:02x}" * 20 for i in range(1, 7)]
WNAMES = {w: f"w-{i}" for i, w in enumerate(WORKERS, 1)}


def _submit(round_: int, worker: str, blob: bytes, salt: bytes) -> tuple[str, bytes, bytes]:
    cid = cid_of(blob)
    return cid, salt, commitment(CONTRACT, round_, worker, digest_of(cid), salt)


def test_select_openings_publishes_the_valid_and_says_why_each_other_is_left_out():
    w1, w2, w3, w4, w5, w6 = WORKERS
    subs = {
        w1: _submit(2, w1, b"model one", b"\x01" * 32),
        w2: _submit(2, w2, b"model two", b"\x02" * 32),
        w3: _submit(2, w3, b"model three", b"\x03" * 32),
        w4: _submit(2, w4, b"an old model", b"\x04" * 32),
        w5: _submit(2, w5, b"model one", b"\x05" * 32),  # w1's model, committed after w1
        w6: _submit(2, w6, b"model six", b"\x06" * 32),
    }
    openings = {w: (cid, salt) for w, (cid, salt, _) in subs.items() if w != w6}
    openings[w5] = (subs[w5][0].upper(), subs[w5][1])  # re-spelled: the same digest, another CID string
    # w2 sends a salt that does not open its commitment (a model swapped after committing).
    openings[w2] = (subs[w2][0], b"\x09" * 32)
    valid, excluded = select_openings(
        contract=CONTRACT,
        round_=2,
        order=WORKERS,
        commitments={w: c for w, (_, _, c) in subs.items()},
        openings=openings,
        passed={w1, w2, w4, w5, w6},  # w3's model failed the checks against w0
        published_before={cid_of(b"an old model"): "w-4 (round 1)", cid_of(b"w0"): "w0"},
        names=WNAMES,
    )
    assert valid == {w1: (subs[w1][0], subs[w1][1])}
    assert excluded == {
        "w-2": "opening does not match the commitment",
        "w-3": "model failed the checks against w0",
        "w-4": "replays w-4 (round 1)",
        "w-5": "same model as w-1 (round 2)",
        "w-6": "no opening received",
    }


def test_select_openings_a_commitment_binds_the_contract_the_round_and_the_worker():
    """An opening is checked against this task, this round and this worker: a
    commitment made for another round or lifted from another worker does not open."""
    w1, w2 = WORKERS[:2]
    cid, salt, c_round1 = _submit(1, w1, b"m", b"\x07" * 32)
    common = {
        "contract": CONTRACT,
        "round_": 2,
        "openings": {w1: (cid, salt), w2: (cid, salt)},
        "passed": {w1, w2},
        "published_before": {},
        "names": WNAMES,
    }
    valid, excluded = select_openings(order=[w1, w2], commitments={w1: c_round1, w2: c_round1}, **common)
    assert valid == {} and set(excluded.values()) == {"opening does not match the commitment"}
    c_w1 = commitment(CONTRACT, 2, w1, digest_of(cid), salt)
    valid, excluded = select_openings(order=[w2, w1], commitments={w1: c_w1, w2: c_w1}, **common)
    assert valid == {w1: (cid, salt)} and excluded == {"w-2": "opening does not match the commitment"}


# ---------------------------------------------------------------- registration timeout


def test_training_starts_with_the_workers_that_registered_in_time(anvil):
    """Two of three workers register; after the registration timeout the requester
    starts training with those two, and logs registration_incomplete."""

    async def body(sim: Simulation, *_: object):
        client = sim.requester.client
        for w in sim.workers[:2]:
            await w.client.register()
        with capture_logs() as logs:
            requester = asyncio.create_task(sim.requester.run())
            events = client.events()
            try:
                async with asyncio.timeout(60):
                    started = [ev async for ev in _until(events, "RoundStarted")]
            finally:
                await events.aclose()
            st = await client.state()
            with pytest.raises(ContractRevert):  # too late: training has started
                await sim.workers[2].client.register()
            requester.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await requester
        return logs, started, st

    logs, events, st = run(with_simulation(anvil, tiny("regpart"), body, registration_timeout_s=0.5))
    incomplete = [e for e in logs if e["event"] == "registration_incomplete"]
    assert incomplete == [{"event": "registration_incomplete", "log_level": "warning", "registered": 2, "expected": 3}]
    assert [e.args["workers"] for e in events if e.name == "TrainingStarted"] == [2]
    assert st.phase == Phase.SUBMISSION and st.round == 1 and st.worker_count == 2


async def _until(events, name: str):
    async for ev in events:
        yield ev
        if ev.name == name:
            return


def test_nobody_registering_is_a_clear_error(anvil):
    async def body(sim: Simulation, *_: object):
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.timeout(60):
                await sim.requester.run()
        return caught.value, await sim.requester.client.state()

    group, st = run(with_simulation(anvil, tiny("regnone"), body, registration_timeout_s=0.5))
    leaves = group.exceptions
    assert len(leaves) == 1 and isinstance(leaves[0], RuntimeError)
    assert str(leaves[0]) == "no worker registered within the registration timeout (0.5 s)"
    assert st.phase == Phase.REGISTRATION and st.worker_count == 0


def test_only_the_tasks_own_workers_may_register(anvil):
    """The requester deploys with an allowlist of its workers: an outsider cannot take a
    seat (and make every round wait for its deadlines); the workers can."""
    from discofl_p2p.chain.devchain import derive_account, fund
    from discofl_p2p.chain.limits import FUNDING_WEI

    async def body(sim: Simulation, *_: object):
        client = sim.requester.client
        outsider = client.as_account(derive_account(99, "outsider"))
        await fund(client.w3, outsider.account.address, FUNDING_WEI)
        with pytest.raises(ContractRevert) as refused:
            await outsider.register()
        for w in sim.workers:
            await w.client.register()
        return refused.value.name, await client.state()

    refused, st = run(with_simulation(anvil, tiny("allowlist"), body))
    assert refused == "NotAllowed"
    assert st.worker_count == 3


def test_create_address_is_ethereums():
    from discofl_p2p.chain.encoding import create_address

    # The well-known vectors of CREATE (deployer 0x6ac7..., nonces 0 and 1) and larger
    # nonces, whose RLP takes a length prefix.
    deployer = "0x6ac7ea33f8831ea9dcc53393aaa88b25a785dbf0"
    assert create_address(deployer, 0) == "0xcd234A471b72ba2F1Ccf0A70FCABA648a5eeCD8d"
    assert create_address(deployer, 1) == "0x343c43A37D37dfF08AE8C4A11544c718AbB4fCF8"
    assert len({create_address(deployer, n) for n in (127, 128, 255, 256, 2**40)}) == 5
    with pytest.raises(ValueError, match="nonce -1 out of range"):
        create_address(deployer, -1)


def test_the_task_is_stored_before_its_deployment_is_sent(anvil, tmp_path):
    """A requester that dies between recording its task and deploying it leaves a store
    that names the task's address; resuming says no task was deployed, and nothing
    was sent. A deployment that goes through lands at the address recorded."""
    from discofl_p2p.agents.requester import RequesterAgent
    from discofl_p2p.agents.requester_store import RequesterStore, StoreError
    from discofl_p2p.chain.client import TaskClient, TaskParams, connect
    from discofl_p2p.chain.devchain import derive_account, fund
    from discofl_p2p.chain.limits import ETH, FUNDING_WEI

    class Crash(Exception):
        pass

    async def body():
        w3 = await connect(anvil.ws_url)
        try:
            acct = derive_account(77, "requester-crash")
            await fund(w3, acct.address, FUNDING_WEI + ETH)
            params = TaskParams(rounds=1, top_k=1, max_workers=2, deposit_wei=ETH)
            store = RequesterStore(tmp_path / "crashed")

            def record_then_die(address: str) -> None:
                store.create(address, b"w0")
                raise Crash

            with pytest.raises(Crash):
                await TaskClient.deploy(w3, acct, params, ws_url=anvil.ws_url, on_address=record_then_die)
            address, _ = store.task()
            assert await w3.eth.get_transaction_count(acct.address) == 0  # nothing was sent
            client = TaskClient(w3, address, acct, ws_url=anvil.ws_url)
            with pytest.raises(StoreError, match=r"no contract at .*no task to resume") as refused:
                await RequesterAgent.resume(client, None, None, None, None, {}, store)  # type: ignore[arg-type]
            recorded: list[str] = []
            deployed, _ = await TaskClient.deploy(w3, acct, params, ws_url=anvil.ws_url, on_address=recorded.append)
            return address, str(refused.value), recorded, deployed.address
        finally:
            await w3.provider.disconnect()

    address, refused, recorded, deployed = run(body())
    assert str(tmp_path / "crashed" / "task.json") in refused
    assert recorded == [deployed] == [address]  # the same nonce: the address recorded before the crash


def test_the_requester_store_keeps_what_only_it_knows_and_reads_it_back(tmp_path):
    """What a restarted requester reads back (openings, the published order, checked
    models) is what the first process wrote; a second task in the same directory, a
    blob whose bytes no longer match its CID, and a corrupt round file are refused."""
    from discofl_p2p.agents.requester_store import RequesterStore, StoreError
    from discofl_p2p.p2p.cid import cid_of

    store = RequesterStore(tmp_path / "s")
    store.create("0xC0", b"w0 bytes")
    with pytest.raises(StoreError, match="already holds a task"):
        store.create("0xC1", b"other")
    store.add_opening(1, "0xA", "peerA", "cidA", b"\x01" * 32)
    store.save_selection(1, ["0xA"], {"honest-2": "no opening received"})
    cid = store.save_blob(1, b"model of A")
    store.save_blob(2, b"model of round 2")
    store.save_settled(1, {"honest-1": 0.5})
    store.add_score_reveal(1, "0xB", b"\x02" * 32, b"\x00\x07")

    again = RequesterStore(tmp_path / "s")  # a new process
    assert again.task() == ("0xC0", b"w0 bytes")
    [(worker, op)] = again.openings(1).items()
    assert (worker, op.peer, op.cid, op.salt) == ("0xA", "peerA", "cidA", b"\x01" * 32)
    sel = again.selection(1)
    assert sel is not None and sel.owner_at == ["0xA"] and sel.excluded == {"honest-2": "no opening received"}
    assert again.selection(2) is None and again.openings(2) == {}
    assert cid == cid_of(b"model of A") and again.blob(1, cid) == b"model of A"
    assert again.test_accuracy(1) == {"honest-1": 0.5}
    assert again.score_reveals(1) == {"0xB": (b"\x02" * 32, b"\x00\x07")} and again.score_reveals(2) == {}
    (tmp_path / "s" / "blobs" / "1" / cid).write_bytes(b"tampered")
    assert again.blob(1, cid) is None
    again.forget_before(2)
    assert not (tmp_path / "s" / "blobs" / "1").exists() and (tmp_path / "s" / "blobs" / "2").exists()
    assert not list((tmp_path / "s").glob(".*.tmp"))  # every write was renamed into place
    (tmp_path / "s" / "round-3.json").write_text("[")
    with pytest.raises(StoreError, match=r"round-3\.json"):
        RequesterStore(tmp_path / "s").openings(3)
    (tmp_path / "s" / "round-4.json").write_text('{"score_reveals": {"0xB": {"salt": "zz"}}}')
    with pytest.raises(StoreError, match=r"round-4\.json: bad score reveal"):
        RequesterStore(tmp_path / "s").score_reveals(4)


# ---------------------------------------------------------------- score reveals for the batch

ROW, ROW_SALT = encode_scores([0.5, None]), b"\x05" * 32
REVEAL = {"kind": "scores", "task": "t", "round": 2, "worker": W, "salt": ROW_SALT.hex(), "scores": ROW.hex()}
COMMITTED = {2: {W: score_commitment(TASK, 2, W, ROW_SALT, ROW)}}


def _parse_reveal(peer: str, msg: dict, bound: dict[str, str] | None = None):
    kw = {"task_id": "t", "contract": TASK, "names": NAMES, "commitments": COMMITTED}
    return parse_score_reveal(peer, msg, bound=bound or {}, **kw)


def test_a_score_reveal_is_taken_only_from_the_workers_peer_and_only_if_it_opens_its_commitment():
    """What the requester puts in its batch: a row that matches the evaluator's
    ScoresCommitted commitment, sent by the worker's bound peer (or, unbound, with its
    binding); anything else is refused with a reason, so the batch never fails on-chain."""
    assert _parse_reveal("peer-w", REVEAL, {W: "peer-w"}) == (2, W, ScoreReveal(ROW_SALT, ROW))
    assert _parse_reveal("peer-w", {**REVEAL, "binding": BIND[("peer-w", W)]})[1] == W  # not bound yet
    with pytest.raises(OpeningRejected, match="not sent by w-1's peer"):
        _parse_reveal("peer-w2", {**REVEAL, "binding": BIND[("peer-w2", W)]}, {W: "peer-w"})  # bound elsewhere
    with pytest.raises(OpeningRejected, match="not sent by w-1's peer"):
        _parse_reveal("peer-evil", {**REVEAL, "binding": BIND[("peer-w", W)]})  # a lifted binding
    bad = [
        ({**REVEAL, "scores": encode_scores([0.6, None]).hex()}, "do not match the commitment"),
        ({**REVEAL, "salt": "06" * 32}, "do not match the commitment"),
        ({**REVEAL, "round": 1}, "no score commitment"),
        ({**REVEAL, "round": True}, "no score commitment"),
        ({**REVEAL, "worker": V}, "no score commitment"),
        ({**REVEAL, "salt": "00"}, "bad salt"),
        ({**REVEAL, "scores": "zz"}, "bad salt or scores"),
        ({**REVEAL, "task": "other"}, "wrong task"),
        ({k: v for k, v in REVEAL.items() if k != "scores"}, "missing field 'scores'"),
    ]
    for msg, reason in bad:
        with pytest.raises(OpeningRejected, match=reason):
            _parse_reveal("peer-w" if msg.get("worker") == W else "peer-v", msg, {W: "peer-w", V: "peer-v"})


def test_the_batch_goes_once_commits_close_with_every_row_or_after_its_wait_with_those_it_has():
    everyone = {W, V}
    r = _Round(2, phase="evaluation", score_commits={W, V})
    assert not batch_due(r, everyone, waited=True)  # no row held
    r.reveals[W] = ScoreReveal(ROW_SALT, ROW)
    assert not batch_due(r, everyone, waited=False)  # V's row may still come
    assert batch_due(r, everyone, waited=True)
    r.reveals[V] = ScoreReveal(ROW_SALT, ROW)
    assert batch_due(r, everyone, waited=False)
    open_ = _Round(2, phase="evaluation", score_commits={W}, reveals=dict(r.reveals))
    assert not batch_due(open_, everyone, waited=True)  # V may still commit: commits are open
    open_.commits_total = 1  # the evaluation deadline passed
    assert batch_due(open_, everyone, waited=False)
    r.scores = {W: [0.5, None], V: [0.5, None]}  # both revealed (each its own)
    assert not batch_due(r, everyone, waited=True)
    assert batch_wait_s(120) == 5.0 and batch_wait_s(8) == 2.0
