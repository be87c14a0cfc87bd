"""Liveness and registration on a real anvil: a task whose requester stalls can be ended
by anyone after a grace period (the rest of the deposit goes to the workers who took
part), a requester allowlist keeps Sybils out, and MAX_WORKERS fits one settle
transaction (calldata and the EIP-7825 gas cap)."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest
from eth_abi import encode

from discofl_p2p.agents.watchdog import watch_for_abandonment
from discofl_p2p.chain.anvil import Anvil
from discofl_p2p.chain.client import Phase, TaskClient, TaskParams, connect
from discofl_p2p.chain.devchain import advance_time, derive_account, ensure_time_past, fund
from discofl_p2p.chain.encoding import Submission, commitment, earners_in_order, encode_scores, pack_openings
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.chain.limits import (
    DEFAULT_GRACE_PERIOD_S,
    ETH,
    MAX_PERIOD_S,
    MAX_TOP_K,
    MAX_TX_CALLDATA_BYTES,
    MAX_TX_GAS,
    MAX_WORKERS,
    MIN_GRACE_PERIOD_S,
)
from discofl_p2p.chain.scripted import deploy_and_register, play_round, settle_at_scale
from discofl_p2p.trust.settlement import close_shares
from tests.conftest import run

GRACE = MIN_GRACE_PERIOD_S
PERIOD = 100
MARGIN = 30
"""Seconds short of a grace end at which a call must still revert: anvil's clock follows
the wall clock, so a slow machine moves it on between two calls of a test."""


def _params(**kw) -> TaskParams:
    base = dict(
        rounds=2,
        top_k=2,
        max_workers=3,
        deposit_wei=10 * ETH + 1,  # odd: an equal split of it leaves a remainder
        submission_period_s=PERIOD,
        evaluation_period_s=PERIOD,
        grace_period_s=GRACE,
    )
    base.update(kw)
    return TaskParams(**base)


def _reverts(name: str):
    return pytest.raises(ContractRevert, match=rf"\b{name}\(")


async def _outsider(w3, client: TaskClient, seed: int) -> TaskClient:
    out = client.as_account(derive_account(seed, "outsider"))
    await fund(w3, out.account.address, 10 * ETH)
    return out


async def _commit(task, worker: TaskClient, round_: int, rng: random.Random) -> Submission:
    a = worker.account.address
    digest, salt = hashlib.sha256(rng.randbytes(32)).digest(), rng.randbytes(32)
    c = commitment(task.requester.address, round_, a, digest, salt)
    await worker.submit_model(round_, c)
    return Submission(a, c, digest, salt)


async def _conserved(client: TaskClient, accounts: list[str]) -> None:
    st = await client.state()
    assert st.held + st.total_withdrawn + st.refunded == st.deposit
    owed = sum([await client.withdrawable_of(a) for a in accounts])
    assert st.held == owed + (st.deposit - st.total_credited - st.refunded)


async def _withdraw_exactly(w3, client: TaskClient, amount: int) -> None:
    """`client` withdraws and receives exactly `amount` wei (net of its gas)."""
    before = await w3.eth.get_balance(client.account.address)
    res = await client.withdraw()
    gas_price = (await w3.eth.get_transaction(res.tx_hash))["gasPrice"]
    after = await w3.eth.get_balance(client.account.address)
    assert res.events[0].args["amount"] == amount
    assert after - before == amount - res.gas_used * gas_price


# ---------------------------------------------------------------- requester stalls


def test_requester_stalls_in_submission_then_anyone_ends_the_task_for_the_submitters(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params()
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=301)
            req, (w1, w2, w3_) = task.requester, task.workers
            outsider = await _outsider(w3, task.requester, 301)
            everyone = [req.account.address, outsider.account.address] + [w.account.address for w in task.workers]
            rng = random.Random(1)
            await _commit(task, w1, 1, rng)
            await _commit(task, w2, 1, rng)  # w3 never submits; the requester never opens
            deadline = (await req.state()).deadline
            assert await req.view("graceEnd") == deadline + GRACE
            with _reverts("GracePeriodNotOver"):
                await outsider.end_abandoned_task()  # before the deadline
            await ensure_time_past(w3, deadline)
            with _reverts("GracePeriodNotOver"):
                await outsider.end_abandoned_task()  # the deadline passed, the grace did not
            await ensure_time_past(w3, deadline + GRACE - MARGIN)
            with _reverts("GracePeriodNotOver"):
                await outsider.end_abandoned_task()
            await _conserved(req, everyone)

            await ensure_time_past(w3, deadline + GRACE)
            res = await outsider.end_abandoned_task()
            (ev,) = res.events
            share, rest = p.deposit_wei // 2, p.deposit_wei % 2
            assert ev.name == "TaskAbandoned"
            assert ev.args == {
                "phase": int(Phase.SUBMISSION),
                "round": 1,
                "participants": 2,
                "share": share,
                "requesterCredit": rest,
            }
            st = await req.state()
            assert (st.phase, st.total_credited, st.participant_count) == (Phase.ABANDONED, p.deposit_wei, 2)
            assert await req.view("graceEnd") == 0  # nothing runs any more
            await _conserved(req, everyone)
            # The task is over: no call of the protocol goes on, and nobody ends it twice.
            with _reverts("WrongPhase"):
                await req.open_evaluation(1, [])
            with _reverts("WrongPhase"):
                await w3_.submit_model(1, bytes(32))
            with _reverts("WrongPhase"):
                await req.close_task()
            with _reverts("WrongPhase"):
                await outsider.end_abandoned_task()

            assert await req.withdrawable_of(w1.account.address) == share
            await _withdraw_exactly(w3, w1, share)
            await _withdraw_exactly(w3, w2, share)
            with _reverts("NothingToWithdraw"):
                await w1.withdraw()  # the share is paid once
            for nobody in (w3_, outsider):  # registered without a model, or never registered
                assert await req.withdrawable_of(nobody.account.address) == 0
                with _reverts("NothingToWithdraw"):
                    await nobody.withdraw()
            await _withdraw_exactly(w3, req, rest)  # the rounding remainder
            await _conserved(req, everyone)
            st = await req.state()
            assert st.held == 0 and st.total_withdrawn == p.deposit_wei and st.refunded == 0
        finally:
            await w3.provider.disconnect()

    run(go())


def test_requester_stalls_in_evaluation_then_earlier_credits_and_shares_are_paid(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=3, top_k=1, reveal_period_s=2 * PERIOD)  # a reveal period of its own
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=302)
            req, (w1, w2, w3_) = task.requester, task.workers
            everyone = [req.account.address] + [w.account.address for w in task.workers]
            rng = random.Random(2)
            # Round 1 is played in full: the model at position 0 takes the whole pot.
            await play_round(task, 1, rng, lambda n: [0])
            earned = {w.account.address: await req.credit_of(w.account.address) for w in task.workers}
            assert sum(earned.values()) == p.deposit_wei // 3
            # Round 2: only w1 and w2 submit; evaluation opens and is never settled.
            subs = [await _commit(task, w, 2, rng) for w in (w1, w2)]
            await advance_time(w3, PERIOD + 1)
            await req.open_evaluation(2, [s.digest for s in subs if s.digest])
            await w1.commit_scores(2, encode_scores([0.5, 0.5]), bytes(32))
            st = await req.state()
            # The grace period runs from the reveal deadline: until then the round may still settle.
            assert st.reveal_deadline == st.deadline + 2 * PERIOD
            assert await req.view("graceEnd") == st.reveal_deadline + GRACE
            await ensure_time_past(w3, st.reveal_deadline + GRACE - MARGIN)
            with _reverts("GracePeriodNotOver"):
                await w3_.end_abandoned_task()
            await ensure_time_past(w3, st.reveal_deadline + GRACE)
            res = await w3_.end_abandoned_task()  # a participant may end it too
            pool = p.deposit_wei - p.deposit_wei // 3
            share, rest = pool // 3, pool % 3  # w3 took part in round 1: it counts
            (ev,) = res.events
            assert (ev.args["phase"], ev.args["round"], ev.args["participants"]) == (int(Phase.EVALUATION), 2, 3)
            assert (ev.args["share"], ev.args["requesterCredit"]) == (share, rest)
            with _reverts("WrongPhase"):
                await req.settle_round(2, [], [], [], [], [])
            for w in task.workers:
                due = earned[w.account.address] + share
                assert await req.withdrawable_of(w.account.address) == due
                await _withdraw_exactly(w3, w, due)
                await _conserved(req, everyone)
            if rest:
                await _withdraw_exactly(w3, req, rest)
            assert (await req.state()).held == 0
        finally:
            await w3.provider.disconnect()

    run(go())


def test_nobody_took_part_so_the_requester_gets_the_deposit_back_as_credit(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=1)
            task = await deploy_and_register(w3, anvil.ws_url, p, 2, seed=303)
            req, (w1, _) = task.requester, task.workers
            await advance_time(w3, PERIOD + GRACE + 1)
            res = await w1.end_abandoned_task()
            assert (res.events[0].args["participants"], res.events[0].args["share"]) == (0, 0)
            assert res.events[0].args["requesterCredit"] == p.deposit_wei
            with _reverts("NothingToWithdraw"):
                await w1.withdraw()
            await _withdraw_exactly(w3, req, p.deposit_wei)
        finally:
            await w3.provider.disconnect()

    run(go())


def test_finished_task_the_requester_never_closes_is_closed_by_anyone_after_the_grace(anvil):
    """Round 1 pays two of three workers (Top-K 2/3 and 1/3; the third, ranked last,
    gets 0), round 2 ranks nobody. After the grace period an outsider closes the task:
    round 2's pot goes to the two workers in proportion to what round 1 paid them,
    none to the worker the rounds paid nothing, and none back to the requester but the
    rounding remainder (`trust.settlement.close_shares`, checked here by hand too)."""

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=2, top_k=3)
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=304)
            req, (w1, *_) = task.requester, task.workers
            outsider = await _outsider(w3, task.requester, 304)
            everyone = [req.account.address, outsider.account.address] + [w.account.address for w in task.workers]
            rng = random.Random(4)
            await play_round(task, 1, rng, lambda n: [1, 0, 2])
            res = await play_round(task, 2, rng, lambda n: [])  # ranks nobody: its pot is left over
            assert res["settleRound"] > 0
            st = await req.state()
            assert st.phase == Phase.FINISHED
            finished_at = (await w3.eth.get_block("latest"))["timestamp"]
            assert await req.view("graceEnd") == finished_at + GRACE
            credits = {w.account.address: await req.credit_of(w.account.address) for w in task.workers}
            pot1 = p.deposit_wei // 2
            assert sorted(credits.values()) == [0, pot1 * 2 // 6, pot1 - pot1 * 2 // 6]
            leftover = p.deposit_wei - st.total_credited
            assert leftover == p.deposit_wei - pot1

            with _reverts("GracePeriodNotOver"):
                await outsider.close_task()
            await ensure_time_past(w3, finished_at + GRACE - MARGIN)
            with _reverts("GracePeriodNotOver"):
                await w1.close_task()
            with _reverts("WrongPhase"):
                await outsider.end_abandoned_task()  # every round was settled: nothing to share
            with _reverts("WrongPhase"):
                await w1.withdraw()  # credits are paid once the task has ended
            await ensure_time_past(w3, finished_at + GRACE)
            with _reverts("WrongPhase"):
                await outsider.end_abandoned_task()
            earners = earners_in_order(credits)
            assert len(earners) == 2
            with _reverts("BadEarners"):
                await outsider.close_task(earners[:1])  # an earner left out
            with _reverts("BadEarners"):
                await outsider.close_task(earners[::-1])  # not ascending
            with _reverts("BadEarners"):
                await outsider.close_task([earners[0], earners[0], earners[1]])  # a repeat
            before = await w3.eth.get_balance(req.account.address)
            res = await outsider.close_task()  # the client rebuilds the list from RoundSettled
            # Round 2's unpaid pot does not go back to the requester: the workers share it
            # by what round 1 paid them; only the rounding remainder is refunded.
            split = close_shares(leftover, credits, list(credits))
            by_hand = {a: leftover * c // pot1 for a, c in credits.items() if c}
            assert split.shares == by_hand and split.refund == leftover - sum(by_hand.values()) < 2
            *shared, closed = res.events
            assert {e.args["worker"]: e.args["amount"] for e in shared} == split.shares
            assert all(e.name == "CloseShareCredited" for e in shared) and closed.name == "TaskClosed"
            assert (closed.args["refund"], closed.args["participants"], closed.args["share"]) == (split.refund, 0, 0)
            assert await w3.eth.get_balance(req.account.address) - before == split.refund  # outsider paid the gas
            st = await req.state()
            assert (st.phase, st.refunded) == (Phase.CLOSED, split.refund)
            await _conserved(req, everyone)
            for w in task.workers:  # each worker: what the rounds credited it, plus its share
                a = w.account.address
                due = credits[a] + split.shares.get(a, 0)
                assert await req.withdrawable_of(a) == due
                if due:
                    await _withdraw_exactly(w3, w, due)
                else:  # ranked last in round 1: the rounds paid it nothing, and so does the close
                    with _reverts("NothingToWithdraw"):
                        await w.withdraw()
            with _reverts("NothingToWithdraw"):
                await outsider.withdraw()
            assert (await req.state()).held == 0
        finally:
            await w3.provider.disconnect()

    run(go())


def test_grace_end_is_not_defined_outside_a_running_or_finished_task(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(), 1, seed=305, start=False)
            assert await task.requester.view("graceEnd") == 0
            with _reverts("WrongPhase"):
                await task.workers[0].end_abandoned_task()  # registration: the requester may cancel
            with _reverts("NotRequester"):
                await task.workers[0].close_task()
            # Defaults: a day of grace; open registration.
            assert DEFAULT_GRACE_PERIOD_S == 86_400 and TaskParams(1, 1, 1, 1).grace_period_s == DEFAULT_GRACE_PERIOD_S
            assert await task.requester.view("gracePeriod") == GRACE
            assert await task.requester.view("allowlistOnly") is False
        finally:
            await w3.provider.disconnect()

    run(go())


@pytest.mark.parametrize(
    "grace, ok",
    [(MIN_GRACE_PERIOD_S - 1, False), (MIN_GRACE_PERIOD_S, True), (MAX_PERIOD_S, True), (MAX_PERIOD_S + 1, False)],
)
def test_grace_period_bounds(anvil, grace, ok):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            acct = derive_account(306, "requester")
            await fund(w3, acct.address, 100 * ETH)
            if ok:
                client, _ = await TaskClient.deploy(w3, acct, _params(grace_period_s=grace), ws_url=anvil.ws_url)
                assert await client.view("gracePeriod") == grace
            else:
                with _reverts("InvalidGracePeriod"):
                    await TaskClient.deploy(w3, acct, _params(grace_period_s=grace), ws_url=anvil.ws_url)
        finally:
            await w3.provider.disconnect()

    run(go())


def test_the_longest_periods_still_leave_a_reachable_grace_end(anvil):
    # deadline + grace is computed in 256 bits and returned as such: no overflow at
    # the limits, so the exit stays reachable (anvil's clock can be moved that far).
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            p = _params(rounds=1, submission_period_s=MAX_PERIOD_S, grace_period_s=MAX_PERIOD_S)
            task = await deploy_and_register(w3, anvil.ws_url, p, 1, seed=307)
            st = await task.requester.state()
            assert await task.requester.view("graceEnd") == st.deadline + MAX_PERIOD_S
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- allowlist


def test_allowlisted_task_refuses_outsiders_and_takes_the_listed_workers(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            base = _params(max_workers=3)
            # A task that is never used funds the accounts and names them.
            probe = await deploy_and_register(w3, anvil.ws_url, base, 3, seed=310, register=False, start=False)
            listed = [w.account.address for w in probe.workers[:2]]
            p = TaskParams(**{**base.__dict__, "allowlist_only": True, "allowlist": tuple(listed)})
            req, res = await TaskClient.deploy(w3, probe.requester.account, p, ws_url=anvil.ws_url)
            assert [e.name for e in res.events] == ["WorkerAllowed", "WorkerAllowed", "TaskCreated"]
            assert [e.args["worker"] for e in res.events[:2]] == listed
            assert res.events[2].args["allowlistOnly"] is True
            w1, w2, late = (req.as_account(w.account) for w in probe.workers)
            outsider = await _outsider(w3, req, 310)
            assert await req.view("allowlistOnly") is True

            await w1.register()
            with _reverts("NotAllowed"):
                await outsider.register()
            with _reverts("NotAllowed"):
                await late.register()
            with _reverts("NotRequester"):
                await w1.allow_workers([late.account.address])
            res = await req.allow_workers([late.account.address])
            assert [(e.name, e.args["worker"]) for e in res.events] == [("WorkerAllowed", late.account.address)]
            assert await req.view("allowed", late.account.address) is True
            await late.register()
            await w2.register()
            await req.start_training()
            with _reverts("WrongPhase"):
                await req.allow_workers([outsider.account.address])  # only during registration
            st = await req.state()
            assert (st.phase, st.worker_count) == (Phase.SUBMISSION, 3)
            registered = {e.args["worker"] for e in await req.past_events() if e.name == "WorkerRegistered"}
            assert registered == {*listed, late.account.address}
        finally:
            await w3.provider.disconnect()

    run(go())


def test_open_task_keeps_open_registration_and_refuses_an_allowlist(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(), 1, seed=311, start=False)
            req = task.requester
            outsider = await _outsider(w3, task.requester, 311)
            with _reverts("AllowlistDisabled"):
                await req.allow_workers([outsider.account.address])
            await outsider.register()  # the default: anyone registers, up to maxWorkers
            # A list without the flag is a mistake, not a silently open task.
            bad = TaskParams(**{**_params().__dict__, "allowlist": (outsider.account.address,)})
            with _reverts("AllowlistDisabled"):
                await TaskClient.deploy(w3, req.account, bad, ws_url=anvil.ws_url)
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- MAX_WORKERS


def _settle_calldata(workers: int, ranked: int) -> bytes:
    """settleRound's calldata with every submitter opened and `ranked` ranked models."""
    rng = random.Random(workers)
    models = [rng.randbytes(32) for _ in range(workers)]
    submitters = ["0x" + rng.randbytes(20).hex() for _ in range(workers)]
    positions = list(range(workers))
    openings = pack_openings(submitters, positions, [rng.randbytes(32) for _ in range(workers)])
    args = encode(
        ["uint32", "bytes32[]", "bytes", "uint16[]", "uint256[]"],
        [1, models, openings, list(range(ranked)), [10**18] * ranked],
    )
    return b"\x00" * 4 + args


def test_max_workers_settle_calldata_fits_the_transaction_size_limit():
    # The worst case: every submitter opened, the longest ranking, explicit amounts.
    data = _settle_calldata(MAX_WORKERS, MAX_TOP_K)
    # Heads, lengths, a digest and a 54-byte opening per submitter (54 x 768 fills whole words).
    assert len(data) == 4 + 5 * 32 + 4 * 32 + (32 + 54) * MAX_WORKERS + 2 * 32 * MAX_TOP_K
    assert len(data) + 200 <= 0.8 * MAX_TX_CALLDATA_BYTES  # 200: the signed envelope; a 20 % margin
    # EIP-7623's floor price of that calldata alone stays far below the per-transaction cap.
    tokens = sum(4 if b else 1 for b in data)
    assert 21_000 + 10 * tokens < MAX_TX_GAS / 4


def test_settle_gas_grows_linearly_and_fits_the_gas_cap_at_max_workers(anvil):
    # Two small points; the slope is per submitter (two hashes, the calldata floor).
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            (g10, b10), (g40, b40) = [await settle_at_scale(w3, anvil.ws_url, w, seed=320 + w) for w in (10, 40)]
            slope = (g40 - g10) / 30
            assert 2_000 < slope < 5_000, slope
            assert (b40 - b10) == 30 * 32 + 32 * (-(-54 * 40 // 32) + (-54 * 10 // 32))  # digests, padded openings
            assert g10 + slope * (MAX_WORKERS - 10) < MAX_TX_GAS / 4
        finally:
            await w3.provider.disconnect()

    run(go())


@pytest.mark.slow
def test_settle_at_max_workers_runs_under_the_eip7825_gas_cap():
    # A separate anvil that enforces EIP-7825 (`--enable-tx-gas-limit`): anvil 1.7.1's
    # default fork does not, by default.
    async def go(a: Anvil):
        w3 = await connect(a.ws_url)
        try:
            gas, size = await settle_at_scale(w3, a.ws_url, MAX_WORKERS, seed=330, top_k=MAX_TOP_K)
            assert gas < MAX_TX_GAS / 4
            assert size + 200 <= 0.8 * MAX_TX_CALLDATA_BYTES
            info = (await w3.provider.make_request("anvil_nodeInfo", []))["result"]
            assert info["hardFork"].lower() not in ("cancun", "shanghai", "paris", "london")
        finally:
            await w3.provider.disconnect()

    with Anvil(extra_args=["--enable-tx-gas-limit"]) as a:
        run(go(a))


def test_anvil_enforces_the_gas_cap_only_when_asked():
    async def go(a: Anvil, enforced: bool):
        w3 = await connect(a.ws_url)
        try:
            acct = derive_account(340, "cap")
            await fund(w3, acct.address, 10 * ETH)
            tx = {
                "to": acct.address,
                "value": 0,
                "gas": MAX_TX_GAS + 1,
                "nonce": 0,
                "chainId": await w3.eth.chain_id,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
            }
            raw = acct.sign_transaction(tx).raw_transaction
            if enforced:
                with pytest.raises(Exception, match="tx_gas_limit_cap"):
                    await w3.eth.send_raw_transaction(raw)
            else:
                receipt = await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(raw))
                assert receipt["status"] == 1
        finally:
            await w3.provider.disconnect()

    for enforced in (False, True):
        with Anvil(extra_args=["--enable-tx-gas-limit"] if enforced else []) as a:
            run(go(a, enforced))


def test_a_workers_watchdog_ends_a_task_whose_requester_stalls(anvil):
    """Two workers commit; the requester never opens evaluation. A worker's watchdog
    does nothing before the grace period is over, then ends the task itself (time
    travel on anvil); another worker's watchdog then finds nothing to do."""

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(max_workers=2), 2, seed=310)
            req, (w1, w2) = task.requester, task.workers
            rng = random.Random(10)
            for w in (w1, w2):
                await _commit(task, w, 1, rng)
            watch = asyncio.create_task(watch_for_abandonment(w1, poll_s=0.1))
            grace_end = await req.view("graceEnd")
            await ensure_time_past(w3, grace_end - MARGIN)
            await asyncio.sleep(0.5)  # several polls
            assert not watch.done() and (await req.state()).phase == Phase.SUBMISSION
            await ensure_time_past(w3, grace_end)
            assert await asyncio.wait_for(watch, 30) is True
            (ended,) = [e for e in await req.past_events() if e.name == "TaskAbandoned"]
            assert (await w3.eth.get_transaction(ended.tx_hash))["from"] == w1.account.address  # type: ignore[arg-type]
            assert (await req.state()).phase == Phase.ABANDONED
            assert await watch_for_abandonment(w2, poll_s=0.1) is False
        finally:
            await w3.provider.disconnect()

    run(go())


def test_a_workers_watchdog_closes_a_finished_task_the_requester_leaves_open(anvil):
    """Credits are paid only once the task has ended, so a requester that never closes
    must not lock them: after the grace period a worker's watchdog closes the task
    itself (sharing the unpaid rest as the requester would have), and then withdraws."""

    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            task = await deploy_and_register(w3, anvil.ws_url, _params(rounds=1, top_k=2), 3, seed=311)
            req, (w1, *_) = task.requester, task.workers
            await play_round(task, 1, random.Random(11), lambda n: [0])
            assert (await req.state()).phase == Phase.FINISHED
            watch = asyncio.create_task(watch_for_abandonment(w1, poll_s=0.1))
            grace_end = await req.view("graceEnd")
            await ensure_time_past(w3, grace_end - MARGIN)
            await asyncio.sleep(0.5)  # several polls
            assert not watch.done() and (await req.state()).phase == Phase.FINISHED
            await ensure_time_past(w3, grace_end)
            assert await asyncio.wait_for(watch, 30) is True
            (closed,) = [e for e in await req.past_events() if e.name == "TaskClosed"]
            assert (await w3.eth.get_transaction(closed.tx_hash))["from"] == w1.account.address  # type: ignore[arg-type]
            assert (await req.state()).phase == Phase.CLOSED and closed.args["refund"] == 0
            paid = [w for w in task.workers if await req.withdrawable_of(w.account.address)]
            assert len(paid) == 1  # round 1 paid one worker its whole pot: nothing was left to share
            await _withdraw_exactly(w3, paid[0], _params().deposit_wei)
        finally:
            await w3.provider.disconnect()

    run(go())
