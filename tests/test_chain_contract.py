"""The DiscoFLTask contract on a real anvil: lifecycle, access rules, anonymity, deadlines."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import to_canonical_address
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError

from discofl_p2p.chain import client as client_module
from discofl_p2p.chain.artifact import load_artifact
from discofl_p2p.chain.client import ChainEvent, Phase, RewardRule, TaskClient, TaskParams, connect
from discofl_p2p.chain.devchain import advance_time, derive_account, fund
from discofl_p2p.chain.encoding import (
    NOT_OPENED,
    OPENING_BYTES,
    PENDING_BYTES,
    ScoreReveal,
    Submission,
    commitment,
    decode_scores,
    encode_scores,
    pack_openings,
    pack_score_reveals,
    pending_score_commitments,
    reveal,
    score_commitment,
    unpack_openings,
)
from discofl_p2p.chain.errors import ContractRevert, decode_revert
from discofl_p2p.chain.limits import (
    ETH,
    MAX_DEPOSIT_WEI,
    MAX_PERIOD_S,
    MAX_ROUNDS,
    MAX_TOP_K,
    MAX_WORKERS,
    MIN_GRACE_PERIOD_S,
)
from discofl_p2p.chain.scripted import commit_all, deploy_and_register, play_round, score_all
from discofl_p2p.trust.rewards import round_pot, top_k_rewards
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]


def _params(**kw):
    base = dict(rounds=2, top_k=3, max_workers=4, deposit_wei=10 * ETH)
    base.update(kw)
    return TaskParams(**base)


def _own(w: TaskClient, row: bytes, salt: bytes) -> dict[str, ScoreReveal]:
    """An evaluator's own reveal, as `TaskClient.reveal_scores` takes it."""
    return {w.account.address: ScoreReveal(salt, row)}


def _packed(records: list[tuple[str, bytes]]) -> bytes:
    """revealScores' `pending` from (evaluator, flag byte + salt or commitment)."""
    return b"".join(to_canonical_address(who) + rest for who, rest in records)


def _reverts(name: str):
    return pytest.raises(ContractRevert, match=rf"\b{name}\(")


needs_solc = pytest.mark.skipif(
    not (ROOT / "node_modules" / "solc").is_dir() or not shutil.which("node"), reason="needs `npm ci` (solc-js)"
)

# Compiles a standard-JSON input read from stdin with the project's solc-js.
_SOLC_STDIN = (
    "const solc = require('solc'); let s = '';"
    "process.stdin.on('data', (d) => (s += d)).on('end', () => process.stdout.write(solc.compile(s)));"
)


def _compile_test_contract(name: str) -> dict:
    """ABI and bytecode of tests/contracts/NAME.sol, compiled with the solc-js in node_modules."""
    source = (ROOT / "tests" / "contracts" / f"{name}.sol").read_text()
    std = {
        "language": "Solidity",
        "sources": {f"{name}.sol": {"content": source}},
        "settings": {"evmVersion": "cancun", "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}},
    }
    out = subprocess.run(
        ["node", "-e", _SOLC_STDIN], input=json.dumps(std), cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    res = json.loads(out)
    errors = [e["formattedMessage"] for e in res.get("errors", []) if e["severity"] == "error"]
    assert not errors, errors
    c = res["contracts"][f"{name}.sol"][name]
    return {"abi": c["abi"], "bytecode": "0x" + c["evm"]["bytecode"]["object"]}


async def _send(w3: AsyncWeb3, acct: LocalAccount, fn, name: str):
    """Signs and sends one call (or constructor) from `acct`; a revert during estimation
    becomes a ContractRevert named after the DiscoFLTask error it carries."""
    try:
        gas = await fn.estimate_gas({"from": acct.address})
    except ContractLogicError as e:
        raise decode_revert(e.data if isinstance(e.data, str) else None, function=name) from None
    tx = await fn.build_transaction(
        {
            "from": acct.address,
            "gas": 2 * gas,
            "nonce": await w3.eth.get_transaction_count(acct.address, "pending"),
            "maxFeePerGas": 50 * 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    tx_hash = await w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.02)
    assert receipt["status"] == 1, name
    return receipt


# ---------------------------------------------------------------- artifact


def test_artifact_matches_source_hash():
    source = (ROOT / "contracts" / "DiscoFLTask.sol").read_bytes()
    assert load_artifact()["sourceSha256"] == hashlib.sha256(source).hexdigest(), (
        "discofl_p2p/chain/artifacts/DiscoFLTask.json is stale: run `make compile`"
    )


@pytest.mark.slow
@needs_solc
def test_artifact_bytecode_matches_a_fresh_compile():
    out = subprocess.run(
        ["node", str(ROOT / "contracts" / "compile.cjs"), "--stdout"], check=True, capture_output=True, text=True
    ).stdout
    fresh = json.loads(out)
    committed = load_artifact()
    assert fresh["bytecode"] == committed["bytecode"], "stale artifact: run `make compile`"
    assert fresh["abi"] == committed["abi"]


# ---------------------------------------------------------------- lifecycle


def test_whole_lifecycle_pays_exactly_the_deposit(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=2, top_k=3, max_workers=4, deposit_wei=10 * ETH + 1)
            task = await deploy_and_register(w3, anvil.ws_url, p, 4, seed=11)
            req = task.requester
            rng = random.Random(1)
            st = await req.state()
            assert (st.phase, st.round, st.worker_count) == (Phase.SUBMISSION, 1, 4)
            await play_round(task, 1, rng, lambda n: [2, 0, 1])
            assert (await req.state()).round == 2
            await play_round(task, 2, rng, lambda n: [1, 3])
            st = await req.state()
            assert st.phase == Phase.FINISHED
            assert st.total_credited == p.deposit_wei  # two full rounds: the pot is spent
            credits = [await req.credit_of(w.account.address) for w in task.workers]
            assert sum(credits) == p.deposit_wei
            close = await req.close_task()
            assert close.events[0].name == "TaskClosed" and close.events[0].args["refund"] == 0
            for w, c in zip(task.workers, credits):
                if c:
                    before = await w3.eth.get_balance(w.account.address)
                    res = await w.withdraw()
                    after = await w3.eth.get_balance(w.account.address)
                    assert res.events[0].args["amount"] == c
                    assert after - before == c - res.gas_used * (await w3.eth.get_transaction(res.tx_hash))["gasPrice"]
                    assert await req.credit_of(w.account.address) == 0
            st = await req.state()
            assert st.held == 0 and st.total_withdrawn == p.deposit_wei
            names = [e.name for e in await req.past_events()]
            assert names[:6] == [
                "TaskCreated",
                "WorkerRegistered",
                "WorkerRegistered",
                "WorkerRegistered",
                "WorkerRegistered",
                "TrainingStarted",
            ]
            assert names.count("RoundSettled") == 2 and names[-1] == "Withdrawn"
        finally:
            await w3.provider.disconnect()

    run(go())


def test_event_stream_delivers_every_event_in_order(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(rounds=1), 3, seed=12)
            seen = []
            stream = task.requester.events()
            # Events from before the stream started are replayed, then live ones follow.
            async for ev in stream:
                seen.append(ev.name)
                if ev.name == "RoundStarted":
                    break
            await play_round(task, 1, random.Random(2), lambda n: [0])
            async for ev in stream:
                seen.append(ev.name)
                if ev.name == "TrainingFinished":
                    break
            await stream.aclose()
            assert seen == (
                ["TaskCreated"]
                + ["WorkerRegistered"] * 3
                + ["TrainingStarted", "RoundStarted"]
                + ["ModelCommitted"] * 3
                + ["EvaluationOpened"]
                + ["ScoresCommitted"] * 3
                + ["ScoresRevealed"] * 3
                + ["RoundSettled", "TrainingFinished"]
            )
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- deployment


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(rounds=0), "InvalidRounds"),
        (dict(top_k=0), "InvalidTopK"),
        (dict(top_k=5, max_workers=4), "InvalidTopK"),
        (dict(max_workers=0), "InvalidMaxWorkers"),
        (dict(deposit_wei=0), "ZeroDeposit"),
        (dict(submission_period_s=0), "InvalidPeriod"),
        (dict(evaluation_period_s=0), "InvalidPeriod"),
        (dict(submission_period_s=MAX_PERIOD_S + 1), "InvalidPeriod"),
        (dict(evaluation_period_s=MAX_PERIOD_S + 1), "InvalidPeriod"),
        (dict(evaluation_period_s=2**64 - 1), "InvalidPeriod"),
        (dict(reveal_period_s=0), "InvalidPeriod"),
        (dict(reveal_period_s=MAX_PERIOD_S + 1), "InvalidPeriod"),
    ],
)
def test_invalid_deployment_reverts_with_named_error(anvil, kw, error):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            acct = derive_account(13, "requester")
            await fund(w3, acct.address, 100 * ETH)
            with _reverts(error):
                await TaskClient.deploy(w3, acct, _params(**kw), ws_url=anvil.ws_url)
        finally:
            await w3.provider.disconnect()

    run(go())


def test_limits_py_equals_the_deployed_contract_and_each_limit_is_the_exact_boundary(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            acct = derive_account(50, "requester")
            await fund(w3, acct.address, 2 * MAX_DEPOSIT_WEI + 100 * ETH)  # room for two deposits, and gas
            at_limit = _params(
                rounds=MAX_ROUNDS,
                top_k=MAX_TOP_K,
                max_workers=MAX_WORKERS,
                deposit_wei=MAX_DEPOSIT_WEI,
                submission_period_s=MAX_PERIOD_S,
                evaluation_period_s=MAX_PERIOD_S,
                reveal_period_s=MAX_PERIOD_S,
                grace_period_s=MAX_PERIOD_S,
            )
            client, _ = await TaskClient.deploy(w3, acct, at_limit, ws_url=anvil.ws_url)
            assert await client.view("MAX_TOP_K") == MAX_TOP_K
            assert await client.view("MAX_WORKERS") == MAX_WORKERS
            assert await client.view("MAX_PERIOD") == MAX_PERIOD_S
            assert await client.view("MIN_GRACE_PERIOD") == MIN_GRACE_PERIOD_S
            assert await client.view("NOT_OPENED") == NOT_OPENED
            assert await client.view("OPENING_BYTES") == OPENING_BYTES
            assert await client.view("rounds") == MAX_ROUNDS
            assert await client.view("revealPeriod") == MAX_PERIOD_S
            st = await client.state()
            assert st.deposit == st.held == MAX_DEPOSIT_WEI
            for kw, error in [
                (dict(deposit_wei=MAX_DEPOSIT_WEI + 1), "DepositTooLarge"),
                (dict(top_k=MAX_TOP_K + 1), "InvalidTopK"),
                (dict(max_workers=MAX_WORKERS + 1), "InvalidMaxWorkers"),
                (dict(submission_period_s=MAX_PERIOD_S + 1), "InvalidPeriod"),
                (dict(evaluation_period_s=MAX_PERIOD_S + 1), "InvalidPeriod"),
                (dict(reveal_period_s=MAX_PERIOD_S + 1), "InvalidPeriod"),
                (dict(grace_period_s=MAX_PERIOD_S + 1), "InvalidGracePeriod"),
                (dict(grace_period_s=MIN_GRACE_PERIOD_S - 1), "InvalidGracePeriod"),
            ]:
                with _reverts(error):
                    await TaskClient.deploy(w3, acct, replace(at_limit, **kw), ws_url=anvil.ws_url)
        finally:
            await w3.provider.disconnect()

    run(go())


def test_largest_deposit_and_longest_periods_run_a_whole_task(anvil):
    # Every deadline is block time + period in a uint64, and every credit a uint96: at
    # the limits a task still runs both rounds and pays out the deposit to the wei.
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(
                rounds=2,
                top_k=1,
                max_workers=1,
                deposit_wei=MAX_DEPOSIT_WEI,
                submission_period_s=MAX_PERIOD_S,
                evaluation_period_s=MAX_PERIOD_S,
            )
            task = await deploy_and_register(w3, anvil.ws_url, p, 1, seed=51)
            req, (w,) = task.requester, task.workers
            rng = random.Random(9)
            for r in (1, 2):
                await play_round(task, r, rng, lambda n: [0])
            timed = [e for e in await req.past_events() if e.name in ("RoundStarted", "EvaluationOpened")]
            assert [e.name for e in timed] == ["RoundStarted", "EvaluationOpened"] * 2
            for e in timed:
                mined_at = (await w3.eth.get_block(e.block_number))["timestamp"]
                assert e.args["deadline"] == mined_at + MAX_PERIOD_S
            st = await req.state()
            assert st.phase == Phase.FINISHED and st.total_credited == MAX_DEPOSIT_WEI
            assert await req.credit_of(w.account.address) == MAX_DEPOSIT_WEI
            with _reverts("WrongPhase"):  # credits are paid once the task has ended
                await w.withdraw()
            await req.close_task()
            res = await w.withdraw()
            assert res.events[0].args["amount"] == MAX_DEPOSIT_WEI
            assert (await req.state()).held == 0
        finally:
            await w3.provider.disconnect()

    run(go())


def test_start_training_without_workers_reverts_no_workers(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(), 0, seed=52, start=False)
            req = task.requester
            with _reverts("NoWorkers"):
                await req.start_training()
            assert (await req.state()).phase == Phase.REGISTRATION
            # Registration is still open: one worker later, training starts.
            late = req.as_account(derive_account(52, "late"))
            await fund(w3, late.account.address, 10 * ETH)
            await late.register()
            await req.start_training()
            st = await req.state()
            assert (st.phase, st.round, st.worker_count) == (Phase.SUBMISSION, 1, 1)
        finally:
            await w3.provider.disconnect()

    run(go())


@pytest.fixture(scope="module")
def rejecting_worker_artifact() -> dict:
    return _compile_test_contract("RejectingWorker")


@needs_solc
def test_withdraw_to_a_worker_that_rejects_eth_reverts_transfer_failed_and_keeps_the_credit(
    anvil, rejecting_worker_artifact
):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=1, top_k=1, max_workers=1)
            task = await deploy_and_register(w3, anvil.ws_url, p, 0, seed=53, start=False)
            req = task.requester
            operator = derive_account(53, "operator")
            await fund(w3, operator.address, 10 * ETH)
            art = rejecting_worker_artifact
            ctor = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor()
            worker_addr = (await _send(w3, operator, ctor, "constructor"))["contractAddress"]
            worker = w3.eth.contract(address=worker_addr, abi=art["abi"])

            async def as_worker(fn: str, *args):
                data = req.contract.encode_abi(fn, list(args))
                return await _send(w3, operator, worker.functions.forward(req.address, data), fn)

            await as_worker("register")
            await req.start_training()
            digest, salt = b"\x0a" * 32, b"\x0b" * 32
            c = commitment(req.address, 1, worker_addr, digest, salt)
            await as_worker("submitModel", 1, c)
            await req.open_evaluation(1, [digest])
            row, row_salt = encode_scores([0.5]), b"\x0c" * 32
            await as_worker("commitScores", 1, score_commitment(req.address, 1, worker_addr, row_salt, row))
            await req.reveal_scores(1, {worker_addr: ScoreReveal(row_salt, row)})  # the requester's batch
            sub = [Submission(worker_addr, c, digest, salt)]
            await req.settle_round(1, [digest], *reveal(req.address, 1, sub, [digest]), [0])
            assert await req.credit_of(worker_addr) == p.deposit_wei
            await req.close_task()

            with _reverts("TransferFailed"):
                await as_worker("withdraw")
            # The failed transfer undid everything: the credit is intact and nothing left.
            st = await req.state()
            assert await req.credit_of(worker_addr) == p.deposit_wei
            assert (st.total_withdrawn, st.held) == (0, p.deposit_wei)
            assert await w3.eth.get_balance(worker_addr) == 0

            # Once the worker accepts ETH, the same withdraw pays exactly the credit.
            await _send(w3, operator, worker.functions.setAccepting(True), "setAccepting")
            receipt = await as_worker("withdraw")
            (paid,) = req.contract.events.Withdrawn().process_receipt(receipt)
            assert (paid["args"]["worker"], paid["args"]["amount"]) == (worker_addr, p.deposit_wei)
            assert await w3.eth.get_balance(worker_addr) == p.deposit_wei
            st = await req.state()
            assert (st.total_withdrawn, st.held) == (p.deposit_wei, 0)
            assert await req.credit_of(worker_addr) == 0
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- access rules


def test_access_rules(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=1, top_k=2, max_workers=3)
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=14, start=False)
            req, (w1, w2, w3_) = task.requester, task.workers
            outsider = req.as_account(derive_account(14, "outsider"))
            await fund(w3, outsider.account.address, 10 * ETH)

            with _reverts("RegistrationFull"):
                await outsider.register()
            with _reverts("AlreadyRegistered"):
                await w1.register()
            with _reverts("RequesterCannotRegister"):
                await req.register()
            with _reverts("NotRequester"):
                await w1.start_training()
            with _reverts("WrongPhase"):
                await w1.submit_model(1, bytes(32))  # before training starts
            await req.start_training()
            with _reverts("WrongPhase"):
                await w1.register()  # registration is over
            with _reverts("WrongPhase"):
                await req.start_training()

            digest, salt = b"\x01" * 32, b"\x02" * 32
            c1 = commitment(req.address, 1, w1.account.address, digest, salt)
            with _reverts("NotRegistered"):
                await outsider.submit_model(1, c1)
            with _reverts("WrongRound"):
                await w1.submit_model(2, c1)
            await w1.submit_model(1, c1)
            with _reverts("AlreadySubmitted"):
                await w1.submit_model(1, c1)
            with _reverts("NotRequester"):
                await w1.open_evaluation(1, [digest])
            with _reverts("DeadlineNotReached"):
                await req.open_evaluation(1, [digest])  # w2, w3 have not submitted yet
            row, row_salt = encode_scores([0.5]), b"\x03" * 32
            with _reverts("WrongPhase"):
                await w1.commit_scores(1, row, row_salt)
            with _reverts("WrongPhase"):
                await req.close_task()  # training is running
            with _reverts("WrongPhase"):
                await w1.close_task()
            with _reverts("GracePeriodNotOver"):
                await w1.end_abandoned_task()  # the requester is not late

            await advance_time(w3, p.submission_period_s + 1)
            with _reverts("DeadlinePassed"):
                await w2.submit_model(1, c1)  # late
            with _reverts("ModelCountMismatch"):
                await req.open_evaluation(1, [digest, digest])
            await req.open_evaluation(1, [digest])
            with _reverts("NotRegistered"):
                await outsider.commit_scores(1, row, row_salt)
            await w2.commit_scores(1, row, row_salt)
            with _reverts("AlreadyScored"):
                await w2.commit_scores(1, row, row_salt)
            with _reverts("CommitsStillOpen"):
                await w2.reveal_scores(1, _own(w2, row, row_salt))  # w1, w3 may still commit: nothing public yet
            sub = [Submission(w1.account.address, c1, digest, salt)]
            args = reveal(req.address, 1, sub, [digest])
            with _reverts("NotRequester"):
                await w1.settle_round(1, [digest], *args, [0])
            with _reverts("DeadlineNotReached"):
                await req.settle_round(1, [digest], *args, [0])  # w1, w3 have not scored
            await advance_time(w3, p.evaluation_period_s + 1)
            with _reverts("DeadlinePassed"):
                await w3_.commit_scores(1, row, row_salt)
            with pytest.raises(ValueError, match="none of 1 reveals is pending"):
                await w3_.reveal_scores(1, _own(w3_, row, row_salt))  # it committed nothing
            w2_c = score_commitment(req.address, 1, w2.account.address, row_salt, row)
            pending = [(w2.account.address, w2_c)]
            with _reverts("BadScoreReveal"):  # an entry that was never committed
                await w3_.reveal_scores_packed(1, _packed([(w3_.account.address, b"\x01" + row_salt)]), row)
            w2_open = _packed([(w2.account.address, b"\x01" + row_salt)])
            with _reverts("BadScoresLength"):
                await w2.reveal_scores_packed(1, w2_open, row + row)
            with _reverts("BadScoreReveal"):  # not what it committed
                await w2.reveal_scores_packed(1, w2_open, encode_scores([0.6]))
            with _reverts("NothingRevealed"):
                await w2.reveal_scores_packed(1, _packed([(w2.account.address, b"\x00" + w2_c)]), b"")
            with _reverts("BadPendingLength"):
                await w2.reveal_scores_packed(1, b"\x01" * 52, row)
            with _reverts("DeadlineNotReached"):
                await req.settle_round(1, [digest], *args, [0])  # w2 has not revealed yet
            packed_pending, rows_arg, _ = pack_score_reveals(req.address, 1, pending, _own(w2, row, row_salt))
            await w2.reveal_scores_packed(1, packed_pending, rows_arg)
            with _reverts("BadScoreReveal"):  # revealed: no longer pending, so the same list is stale
                await w2.reveal_scores_packed(1, packed_pending, rows_arg)
            with pytest.raises(ValueError, match="none of 1 reveals is pending"):
                await w2.reveal_scores(1, _own(w2, row, row_salt))
            with _reverts("RankingTooLong"):
                await req.settle_round(1, [digest], *args, [0, 0, 0])
            with _reverts("BadRanking"):
                await req.settle_round(1, [digest], *args, [1])
            with _reverts("AmountsMismatch"):
                await req.settle_round(1, [digest], *args, [0], [1])
            await req.settle_round(1, [digest], *args, [0])
            with _reverts("WrongPhase"):
                await req.settle_round(1, [digest], *args, [0])
            with _reverts("GracePeriodNotOver"):
                await w1.close_task()  # a finished task: anyone may close it, after the grace period
            with _reverts("WrongPhase"):
                await w1.withdraw()  # credits are paid once the task has ended
            await req.close_task()
            with _reverts("WrongPhase"):
                await req.close_task()
            with _reverts("NothingToWithdraw"):
                await w2.withdraw()
            st = await req.state()
            assert st.phase == Phase.CLOSED
            assert st.refunded == 0 and st.total_credited == p.deposit_wei  # w1 took the whole pot
        finally:
            await w3.provider.disconnect()

    run(go())


def test_cancel_before_training_refunds_everything(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(), 2, seed=15, start=False)
            res = await task.requester.close_task()
            assert res.events[0].args["refund"] == 10 * ETH
            st = await task.requester.state()
            assert st.held == 0 and st.refunded == 10 * ETH
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- anonymity


async def _round_to_settlement(task, rng):
    req = task.requester
    subs = await commit_all(task, 1, rng)
    models = [s.digest for s in subs]
    rng.shuffle(models)
    await req.open_evaluation(1, models)
    await score_all(task.workers, 1, [encode_scores([0.9] * len(models))] * len(task.workers))
    return subs, models


def test_chain_holds_no_link_between_worker_and_model_during_evaluation(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(max_workers=4), 4, seed=16)
            subs, models = await _round_to_settlement(task, random.Random(3))
            events = await task.requester.past_events()
            committed = [e for e in events if e.name == "ModelCommitted"]
            # Commitments are salted hashes: no digest appears next to any worker.
            for e in committed:
                assert e.args["commitment"] not in models
            opened = next(e for e in events if e.name == "EvaluationOpened")
            assert sorted(opened.args["models"]) == sorted(s.digest for s in subs)
            # ...and without the salts, no commitment can be matched to a listed model.
            for s in subs:
                for m in models:
                    assert commitment(task.requester.address, 1, s.worker, m, bytes(32)) != s.commitment
        finally:
            await w3.provider.disconnect()

    run(go())


def test_packed_openings_round_trip_and_refuse_what_does_not_fit():
    """settleRound's `openings`: 54 bytes per submitter (address, position, salt or raw
    commitment), read back exactly as the audit reads them."""
    rng = random.Random(5)
    submitters = [derive_account(5, f"w{i}").address for i in range(3)]
    positions, openings = [2, NOT_OPENED, 0], [rng.randbytes(32) for _ in range(3)]
    packed = pack_openings(submitters, positions, openings)
    assert (
        len(packed) == 3 * OPENING_BYTES and packed[20:22] == b"\x00\x02" and packed[54 + 20 : 54 + 22] == b"\xff\xff"
    )
    assert unpack_openings(packed) == (submitters, positions, openings)
    for bad in ((submitters, positions, openings[:2]), (submitters, [0x10000, 0, 1], openings)):
        with pytest.raises(ValueError):
            pack_openings(*bad)
    with pytest.raises(ValueError, match="multiple of 54"):
        unpack_openings(packed[:-1])


def test_wrong_reveals_are_rejected(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(max_workers=3, top_k=3), 3, seed=17)
            req = task.requester
            subs, models = await _round_to_settlement(task, random.Random(4))
            submitters, positions, openings = reveal(req.address, 1, subs, models)
            assert NOT_OPENED not in positions

            bad_salt = list(openings)
            bad_salt[0] = bytes(32)
            swapped = list(positions)
            swapped[0], swapped[1] = swapped[1], swapped[0]
            duplicated = list(positions)
            duplicated[1] = duplicated[0]
            reordered = [submitters[1], submitters[0], submitters[2]]
            for args in [
                (submitters, positions, bad_salt),
                (submitters, swapped, openings),
                (submitters, duplicated, openings),
                (reordered, positions, openings),
            ]:
                with _reverts("BadReveal"):
                    await req.settle_round(1, models, *args, [0])
            tampered = list(models)
            tampered[0] = bytes(32)
            with _reverts("ModelListMismatch"):
                await req.settle_round(1, tampered, submitters, positions, openings, [0])
            with _reverts("OpeningsLength"):  # a submitter left out of the packed openings
                await req.settle_round(1, models, submitters[:2], positions[:2], openings[:2], [0])
            # Excluding a submission without removing its model from the list fails too.
            excl = list(positions)
            excl[0] = NOT_OPENED
            with _reverts("BadReveal"):
                await req.settle_round(1, models, submitters, excl, [subs[0].commitment, *openings[1:]], [0])
            res = await req.settle_round(1, models, submitters, positions, openings, [0, 1, 2])
            ev = res.events[0]
            owner_of = {models[p]: s for s, p in zip(submitters, positions)}
            assert ev.args["rankedOwners"] == [owner_of[models[i]] for i in (0, 1, 2)]
        finally:
            await w3.provider.disconnect()

    run(go())


def test_anchor_scores_are_the_requesters_once_per_round_in_evaluation(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(max_workers=2, top_k=2, rounds=2), 2, seed=23)
            req, w1 = task.requester, task.workers[0]
            row = encode_scores([0.8, 0.25])
            with _reverts("WrongPhase"):
                await req.post_anchor_scores(1, row)  # submission: nothing is published yet
            subs, models = await _round_to_settlement(task, random.Random(6))
            with _reverts("NotRequester"):
                await w1.post_anchor_scores(1, row)
            with _reverts("WrongRound"):
                await req.post_anchor_scores(2, row)
            with _reverts("BadScoresLength"):
                await req.post_anchor_scores(1, encode_scores([0.8]))
            res = await req.post_anchor_scores(1, row)
            assert [(e.name, e.args["round"], decode_scores(e.args["scores"])) for e in res.events] == [
                ("AnchorScores", 1, [0.8, 0.25])
            ]
            assert await req.view("anchoredRound") == 1
            with _reverts("AlreadyScored"):
                await req.post_anchor_scores(1, row)
            await req.settle_round(1, models, *reveal(req.address, 1, subs, models), [0])
            with _reverts("WrongPhase"):
                await req.post_anchor_scores(1, row)  # settled: round 2 is in submission
        finally:
            await w3.provider.disconnect()

    run(go())


def test_a_submitter_who_withholds_its_opening_is_excluded_not_blocking(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(max_workers=3, top_k=2, rounds=1), 3, seed=18)
            req = task.requester
            subs = await commit_all(task, 1, random.Random(5))
            subs[1] = Submission(subs[1].worker, subs[1].commitment)  # never sent its opening
            models = [subs[2].digest, subs[0].digest]
            await req.open_evaluation(1, models)
            await score_all(task.workers, 1, [encode_scores([0.5, 0.5])] * 3)
            submitters, positions, openings = reveal(req.address, 1, subs, models)
            assert positions == [1, NOT_OPENED, 0]
            with _reverts("BadRanking"):
                await req.settle_round(1, models, submitters, positions, openings, [0, 0])
            res = await req.settle_round(1, models, submitters, positions, openings, [1, 0])
            assert res.events[0].args["rankedOwners"] == [subs[0].worker, subs[2].worker]
            assert await req.credit_of(subs[1].worker) == 0
            assert await req.credit_of(subs[0].worker) == 10 * ETH  # K=2: all to rank 1
        finally:
            await w3.provider.disconnect()

    run(go())


def test_round_settles_after_deadline_with_missing_workers(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(max_workers=3, top_k=3, rounds=2)
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=19)
            req, (w1, w2, _) = task.requester, task.workers
            d, s = b"\x07" * 32, b"\x08" * 32
            c = commitment(req.address, 1, w1.account.address, d, s)
            await w1.submit_model(1, c)
            await advance_time(w3, p.submission_period_s + 1)
            await req.open_evaluation(1, [d])
            await w2.commit_scores(1, encode_scores([0.8]), b"\x09" * 32)
            await advance_time(w3, p.evaluation_period_s + 1)
            await w2.reveal_scores(1, _own(w2, encode_scores([0.8]), b"\x09" * 32))  # the only committer revealed
            args = reveal(req.address, 1, [Submission(w1.account.address, c, d, s)], [d])
            await req.settle_round(1, [d], *args, [0])
            st = await req.state()
            assert (st.phase, st.round, st.submitted_count) == (Phase.SUBMISSION, 2, 0)
            assert await req.credit_of(w1.account.address) == round_pot(p.deposit_wei, 2, 1)
        finally:
            await w3.provider.disconnect()

    run(go())


def test_scores_stay_hidden_until_commits_close_and_an_unrevealed_row_waits_only_for_the_reveal_deadline(anvil):
    """Commit-reveal of scores: while commits are open the chain holds only hashes
    (nothing a late evaluator could copy); a row committed but never revealed holds the
    round only until the reveal deadline, and counts as no evaluation."""

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(max_workers=3, top_k=1, rounds=1)
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=23)
            req, (w1, w2, w3_) = task.requester, task.workers
            subs = await commit_all(task, 1, random.Random(9))
            models = [s.digest for s in subs]
            await req.open_evaluation(1, models)
            rows = {w: encode_scores([0.25 * (i + 1)] * 3) for i, w in enumerate((w1, w2))}
            salts = {w1: b"\x11" * 32, w2: b"\x12" * 32}
            for w in (w1, w2):
                await w.commit_scores(1, rows[w], salts[w])
            seen = await req.past_events()
            assert "ScoresRevealed" not in [e.name for e in seen]
            assert all(rows[w] not in bytes(e.args.get("commitment", b"")) for e in seen for w in rows)
            with _reverts("CommitsStillOpen"):
                await w1.reveal_scores(1, _own(w1, rows[w1], salts[w1]))  # w3 has not committed
            await advance_time(w3, p.evaluation_period_s + 1)
            with _reverts("DeadlinePassed"):
                await w3_.commit_scores(1, rows[w1], b"\x13" * 32)  # too late to commit a copy
            await w1.reveal_scores(1, _own(w1, rows[w1], salts[w1]))
            args = reveal(req.address, 1, subs, models)
            with _reverts("DeadlineNotReached"):
                await req.settle_round(1, models, *args, [0])  # w2 committed and may still reveal
            st = await req.state()
            assert (st.scored_count, st.revealed_count) == (2, 1)
            await advance_time(w3, p.reveal_period_s + 1)  # past the reveal deadline
            with _reverts("DeadlinePassed"):
                await w2.reveal_scores(1, _own(w2, rows[w2], salts[w2]))
            await req.settle_round(1, models, *args, [0])
            revealed = [e.args["evaluator"] for e in await req.past_events() if e.name == "ScoresRevealed"]
            assert revealed == [w1.account.address]
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- rewards


def test_on_chain_top_k_split_equals_python_reference_to_the_wei(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(), 1, seed=20, start=False)
            rng = random.Random(6)
            pots = [0, 1, 7, 10**18, 2**96 - 1] + [rng.randrange(1, 2**96) for _ in range(4)]
            for k in range(1, 21):
                for pot in pots:
                    on_chain = await task.requester.view("topKRewards", pot, k)
                    assert on_chain == top_k_rewards(pot, k), (k, pot)
                    assert sum(on_chain) == pot
        finally:
            await w3.provider.disconnect()

    run(go())


CALL_OF_EVENT = {
    "ModelCommitted": "submitModel",
    "EvaluationOpened": "openEvaluation",
    "ScoresCommitted": "commitScores",
    "ScoresRevealed": "revealScoresBatch",  # play_round: the requester posts every row in one call
    "RoundSettled": "settleRound",
}


@pytest.mark.parametrize("workers, top_k", [(1, 1), (2, 2), (5, 5), (7, 6)])
def test_settlement_credits_the_python_reference(anvil, workers, top_k):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            deposit = random.Random(workers).randrange(10**17, 10**20)
            p = _params(rounds=3, top_k=top_k, max_workers=workers, deposit_wei=deposit)
            task = await deploy_and_register(w3, anvil.ws_url, p, workers, seed=21 + workers)
            rng = random.Random(7)
            expected = {w.account.address: 0 for w in task.workers}
            for r in (1, 2, 3):
                ranking = rng.sample(range(workers), rng.randint(0, top_k))
                gas = await play_round(task, r, rng, lambda n, ranking=ranking: ranking)
                # play_round reports, per call, the gas the chain charged (max over workers).
                of_round = [e for e in await task.requester.past_events() if e.args.get("round") == r]
                charged: dict[str, int] = {}
                for e in of_round:
                    if e.name in CALL_OF_EVENT:
                        used = (await w3.eth.get_transaction_receipt(e.tx_hash))["gasUsed"]
                        call = CALL_OF_EVENT[e.name]
                        charged[call] = max(charged.get(call, 0), used)
                assert gas == charged
                assert set(gas) == set(CALL_OF_EVENT.values()) and min(gas.values()) > 21_000
                assert [e.name for e in of_round].count("ModelCommitted") == workers
                ev = next(e for e in of_round if e.name == "RoundSettled")
                want = top_k_rewards(round_pot(deposit, 3, r), len(ranking))
                assert ev.args["rewards"] == want
                for who, amount in zip(ev.args["rankedOwners"], want):
                    expected[who] += amount
            for w in task.workers:
                assert await task.requester.credit_of(w.account.address) == expected[w.account.address]
        finally:
            await w3.provider.disconnect()

    run(go())


def test_explicit_amounts_rule_caps_at_the_pot(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=1, top_k=2, max_workers=2, rule=RewardRule.EXPLICIT, deposit_wei=1000)
            task = await deploy_and_register(w3, anvil.ws_url, p, 2, seed=30)
            with _reverts("AmountsExceedPot"):
                await play_round(task, 1, random.Random(8), lambda n: [0, 1], amounts=lambda k: [600, 401])
        finally:
            await w3.provider.disconnect()

    run(go())


def test_score_codec_round_trips_and_rejects_bad_scores():
    packed = encode_scores([0.0, 1.0, None, 0.12346])
    assert len(packed) == 8
    assert decode_scores(packed) == [0.0, 1.0, None, 0.1235]
    assert decode_scores(b"\x27\x11") == [None]  # 10001 is out of range: treated as abstain
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="score 0"):
            encode_scores([bad])


def test_the_requester_reveals_every_row_in_one_batch_and_an_evaluator_it_leaves_out_reveals_its_own(anvil):
    """Batch reveal (docs/contract.md, *Scores: commit, then reveal*): the requester
    posts the rows its evaluators handed it in one revealScores call, only once commits
    closed; a wrong row fails the whole call on-chain, and the client leaves it out
    instead (that evaluator stays unrevealed); an evaluator left out reveals its own
    row, and the round settles with every row, before the reveal deadline; a batch
    built before that reveal is stale and refused; a second commit is refused."""

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(max_workers=4, top_k=2, rounds=2)
            task = await deploy_and_register(w3, anvil.ws_url, p, 4, seed=31)
            req, ws = task.requester, task.workers
            subs = await commit_all(task, 1, random.Random(31))
            models = [s.digest for s in subs]
            await req.open_evaluation(1, models)
            rows = {w.account.address: encode_scores([0.1 * (i + 1)] * 4) for i, w in enumerate(ws)}
            salts = {w.account.address: bytes([0x40 + i]) * 32 for i, w in enumerate(ws)}
            held = {a: ScoreReveal(salts[a], rows[a]) for a in rows}
            for w in ws[:3]:
                await w.commit_scores(1, rows[w.account.address], salts[w.account.address])
            with _reverts("AlreadyScored"):
                await ws[0].commit_scores(1, rows[ws[0].account.address], salts[ws[0].account.address])
            with _reverts("CommitsStillOpen"):
                await req.reveal_scores(1, held)  # w4 may still commit: no row may be public
            await ws[3].commit_scores(1, rows[ws[3].account.address], salts[ws[3].account.address])
            a1, a2, a3, a4 = (w.account.address for w in ws)

            # A wrong row makes the contract refuse the whole call ...
            pending = pending_score_commitments(await req.past_events(), 1)
            forged = {**held, a2: ScoreReveal(salts[a2], encode_scores([1.0] * 4))}
            good, good_rows, _ = pack_score_reveals(req.address, 1, pending, held)
            bad_rows = good_rows[:8] + forged[a2].packed + good_rows[16:]
            with _reverts("BadScoreReveal"):
                await req.reveal_scores_packed(1, good, bad_rows)
            # ... so the client leaves it out, unrevealed; and the requester omits a4.
            omitted = {a: r for a, r in forged.items() if a != a4}
            [batch] = await req.reveal_scores(1, omitted)
            assert [e.args["evaluator"] for e in batch.events] == [a1, a3]
            assert (await req.state()).revealed_count == 2
            args = reveal(req.address, 1, subs, models)
            with _reverts("DeadlineNotReached"):
                await req.settle_round(1, models, *args, [0])  # two rows are still pending

            # a4 reveals its own row: a list built before that is stale.
            stale, stale_rows, _ = pack_score_reveals(
                req.address, 1, pending_score_commitments(await req.past_events(), 1), {a2: held[a2]}
            )
            [own] = await ws[3].reveal_scores(1, {a4: held[a4]})
            with _reverts("BadScoreReveal"):
                await req.reveal_scores_packed(1, stale, stale_rows)
            await ws[1].reveal_scores(1, {a2: held[a2]})  # read again: it goes through
            assert own.events[0].args["scores"] == rows[a4]
            await req.settle_round(1, models, *args, [0])  # every row in: no wait for the deadline
            events = await req.past_events()
            revealed = {e.args["evaluator"]: bytes(e.args["scores"]) for e in events if e.name == "ScoresRevealed"}
            assert {a: revealed[a] for a in rows} == rows
        finally:
            await w3.provider.disconnect()

    run(go())


def test_a_batch_too_big_for_one_transaction_is_split(anvil, monkeypatch):
    """`reveal_scores` splits the rows over several transactions when one would carry
    more than REVEAL_CALLDATA_BYTES (each carries the pending list once more)."""
    monkeypatch.setattr(client_module, "REVEAL_CALLDATA_BYTES", 3 * PENDING_BYTES + 2 * 3 * 2)

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(max_workers=3, top_k=1), 3, seed=37)
            subs = await commit_all(task, 1, random.Random(37))
            await task.requester.open_evaluation(1, [s.digest for s in subs])
            held: dict[str, ScoreReveal] = {}
            for i, w in enumerate(task.workers):
                held[w.account.address] = ScoreReveal(bytes([i + 1]) * 32, encode_scores([0.5] * 3))
                await w.commit_scores(1, held[w.account.address].packed, held[w.account.address].salt)
            results = await task.requester.reveal_scores(1, held)
            assert [len(r.events) for r in results] == [2, 1]
            assert (await task.requester.state()).revealed_count == 3
        finally:
            await w3.provider.disconnect()

    run(go())


def test_the_pending_list_follows_the_events_and_packs_only_rows_that_open_their_commitments():
    """revealScores' arguments as pure functions: the pending list is the round's
    ScoresCommitted in order less its ScoresRevealed; a reveal is packed (flag 1, its
    salt, its row) only if it opens its commitment, any other entry keeps its raw one."""
    me, a, b, c = "0x" + "cd" * 20, *(derive_account(0, f"pending/{i}").address for i in range(3))
    rows = {w: encode_scores([0.1 * (i + 1)]) for i, w in enumerate((a, b, c))}
    salts = {w: bytes([i + 1]) * 32 for i, w in enumerate((a, b, c))}
    commits = {w: score_commitment(me, 3, w, salts[w], rows[w]) for w in (a, b, c)}

    def ev(name: str, round_: int, who: str) -> ChainEvent:
        return ChainEvent(name, {"round": round_, "evaluator": who, "commitment": commits[who]}, 0, 0, "")

    events = [ev("ScoresCommitted", 3, w) for w in (b, a, c)]
    events += [ev("ScoresRevealed", 3, a), ev("ScoresCommitted", 2, a)]  # another round's is not pending
    pending = pending_score_commitments(events, 3)
    assert pending == [(b, commits[b]), (c, commits[c])]
    held = {b: ScoreReveal(salts[b], rows[b]), c: ScoreReveal(salts[c], rows[a]), a: ScoreReveal(salts[a], rows[a])}
    packed, packed_rows, revealed = pack_score_reveals(me, 3, pending, held)
    assert revealed == [b] and packed_rows == rows[b] and len(packed) == 2 * PENDING_BYTES
    assert packed[:PENDING_BYTES] == to_canonical_address(b) + b"\x01" + salts[b]
    assert packed[PENDING_BYTES:] == to_canonical_address(c) + b"\x00" + commits[c]  # c's row is not its own
