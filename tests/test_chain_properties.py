"""Property test (hypothesis): random sequences of valid and invalid calls by random
actors never break conservation of funds, and nobody takes more than their credit.

Each account's withdrawable amount is checked against the event log, not against
itself: what the RoundSettled events awarded it, plus its part of a TaskAbandoned event
(its share if a ModelCommitted event names it, the remainder for the requester), less
what the Withdrawn events paid it."""

from __future__ import annotations

import random

import pytest
from eth_utils import to_canonical_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofl_p2p.chain.client import TaskParams, connect
from discofl_p2p.chain.devchain import advance_time
from discofl_p2p.chain.encoding import Submission, commitment, encode_scores, pending_score_commitments, reveal
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.chain.limits import MIN_GRACE_PERIOD_S
from discofl_p2p.chain.scripted import deploy_and_register
from tests.conftest import run

ACTIONS = [
    "register",
    "start",
    "submit",
    "open",
    "scores",
    "reveal",
    "settle",
    "withdraw",
    "close",
    "wait",
    "grace",
    "abandon",
]
N_ACTORS = 4  # actor 0 is the requester, 1..3 may be workers


async def _play(ws_url: str, steps: list[tuple[str, int]], seed: int, rounds: int, top_k: int) -> None:
    w3 = await connect(ws_url)
    try:
        p = TaskParams(
            rounds=rounds,
            top_k=top_k,
            max_workers=3,
            deposit_wei=10**18 + seed,
            submission_period_s=100,
            evaluation_period_s=100,
            reveal_period_s=100,
            grace_period_s=MIN_GRACE_PERIOD_S,
        )
        task = await deploy_and_register(w3, ws_url, p, N_ACTORS - 1, seed=1000 + seed, register=False, start=False)
        req = task.requester
        actors = [req, *task.workers]
        rng = random.Random(seed)
        subs: dict[int, list[Submission]] = {}
        published: dict[int, list[bytes]] = {}
        score_rows: dict[tuple[int, str], tuple[bytes, bytes]] = {}  # (round, evaluator) -> (row, salt)
        addresses = [a.account.address for a in actors]
        withdrawn: dict[str, int] = dict.fromkeys(addresses, 0)  # from withdraw() results
        awarded: dict[str, int] = dict.fromkeys(addresses, 0)  # from RoundSettled events
        paid: dict[str, int] = dict.fromkeys(addresses, 0)  # from Withdrawn events
        took_part: set[str] = set()  # from ModelCommitted events
        next_block = 0
        r = 0

        for action, who in steps:
            me = actors[who]
            try:
                if action == "register":
                    await me.register()
                elif action == "start":
                    await me.start_training()
                elif action == "submit":
                    d, s = rng.randbytes(32), rng.randbytes(32)
                    c = commitment(req.address, r, me.account.address, d, s)
                    await me.submit_model(r, c)
                    subs.setdefault(r, []).append(Submission(me.account.address, c, d, s))
                elif action == "open":
                    models = [s.digest for s in subs.get(r, [])]
                    rng.shuffle(models)
                    await me.open_evaluation(r, models)
                    published[r] = models
                elif action == "scores":
                    row, salt = encode_scores([rng.random() for _ in published.get(r, [])]), rng.randbytes(32)
                    score_rows[(r, me.account.address)] = (row, salt)
                    await me.commit_scores(r, row, salt)
                elif action == "reveal":
                    row, salt = score_rows.get((r, me.account.address), (b"", bytes(32)))
                    pending = pending_score_commitments(await me.past_events(), r)
                    mine = [(w, b"\x01" + salt if w == me.account.address else b"\x00" + c) for w, c in pending]
                    await me.reveal_scores_packed(r, b"".join(to_canonical_address(w) + x for w, x in mine), row)
                elif action == "settle":
                    models = published.get(r, [])
                    ranking = rng.sample(range(len(models)), min(len(models), top_k))
                    await me.settle_round(r, models, *reveal(req.address, r, subs.get(r, []), models), ranking)
                elif action == "withdraw":
                    credit = await req.withdrawable_of(me.account.address)
                    res = await me.withdraw()
                    assert res.events[0].args["amount"] == credit  # exactly the credit, no more
                    withdrawn[me.account.address] += credit
                elif action == "close":
                    await me.close_task()
                elif action == "wait":
                    await advance_time(w3, 101)  # past a submission or evaluation deadline
                elif action == "grace":
                    await advance_time(w3, MIN_GRACE_PERIOD_S + 101)
                elif action == "abandon":
                    await me.end_abandoned_task()
            except ContractRevert:
                pass  # invalid calls must revert cleanly; the invariants below still hold

            st_ = await req.state()
            r = st_.round
            head = await w3.eth.block_number
            for ev in await req.past_events(next_block, head):
                if ev.name == "RoundSettled":
                    for owner, amount in zip(ev.args["rankedOwners"], ev.args["rewards"], strict=True):
                        awarded[owner] += amount
                elif ev.name == "Withdrawn":
                    paid[ev.args["worker"]] += ev.args["amount"]
                elif ev.name == "ModelCommitted":
                    took_part.add(ev.args["worker"])
                elif ev.name == "TaskAbandoned":
                    assert ev.args["participants"] == len(took_part)
                    for a in took_part:
                        awarded[a] += ev.args["share"]
                    awarded[req.account.address] += ev.args["requesterCredit"]
                elif ev.name == "CloseShareCredited":  # the unpaid rest, by what the rounds paid
                    assert awarded[ev.args["worker"]] > 0
                    awarded[ev.args["worker"]] += ev.args["amount"]
                elif ev.name == "TaskClosed":  # or, if no round paid anybody, by the participants
                    assert ev.args["participants"] == len(took_part) or ev.args["share"] == 0
                    for a in took_part if ev.args["participants"] else ():
                        awarded[a] += ev.args["share"]
            next_block = head + 1
            credits = [await req.withdrawable_of(a) for a in addresses]
            # Conservation: every wei is held, withdrawn or refunded.
            assert st_.held + st_.total_withdrawn + st_.refunded == p.deposit_wei
            # What the contract holds covers every outstanding credit.
            assert st_.held == sum(credits) + (p.deposit_wei - st_.total_credited - st_.refunded)
            assert st_.total_credited == sum(awarded.values()) and st_.total_withdrawn == sum(paid.values())
            assert st_.total_credited + st_.refunded <= p.deposit_wei
            # Per account, from the event log alone: nobody was paid more than it was
            # awarded, and its credit is exactly the difference.
            assert paid == withdrawn
            for a, c in zip(addresses, credits):
                assert paid[a] <= awarded[a]
                assert c == awarded[a] - paid[a], a
    finally:
        await w3.provider.disconnect()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, N_ACTORS - 1)), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
    rounds=st.integers(1, 3),
    top_k=st.integers(1, 3),
)
@pytest.mark.slow
def test_random_call_sequences_conserve_funds(anvil, steps, seed, rounds, top_k):
    # Bias towards progress: most sequences also include a protocol-shaped prefix.
    prefix = [
        ("register", 1),
        ("register", 2),
        ("start", 0),
        ("submit", 1),
        ("submit", 2),
        ("open", 0),
        ("scores", 1),
        ("scores", 2),
        ("settle", 0),
        ("withdraw", 1),
    ]
    # ...and some reach a stalled requester: a submitter, the grace period, an outsider ends it.
    stalled = [("register", 1), ("register", 2), ("start", 0), ("submit", 2), ("grace", 0), ("abandon", 3)]
    run(_play(anvil.ws_url, (prefix if seed % 2 else stalled if seed % 4 == 2 else []) + steps, seed, rounds, top_k))
