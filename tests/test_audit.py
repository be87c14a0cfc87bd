"""The audit recomputes settled rounds from the chain and catches a requester who
ranks against the scores."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from dataclasses import replace

import pytest

from discofl_p2p.chain.client import TaskParams, connect
from discofl_p2p.chain.encoding import encode_scores, reveal
from discofl_p2p.chain.scripted import commit_all, deploy_and_register, score_all
from discofl_p2p.commands.audit import audit_task
from discofl_p2p.trust.rewards import top_k_rewards
from discofl_p2p.trust.settlement import audit_top_k_round
from tests.conftest import run


def test_audit_of_a_round_is_exact():
    scores = {"a": [None, 0.9, 0.2], "b": [0.9, None, 0.2], "c": [0.9, 0.9, None]}
    honest = audit_top_k_round(1, ["a", "b", "c"], ["a", "b", "c"], scores, 2, 1000, ["a", "b"], [1000, 0])
    assert honest.ok and honest.expected_ranking == ["a", "b"]
    cheat = audit_top_k_round(1, ["a", "b", "c"], ["a", "b", "c"], scores, 2, 1000, ["c", "a"], [1000, 0])
    assert not cheat.ok


def _play(anvil, dishonest: bool) -> str:
    """One round on a real contract where worker i's model is worth (i + 1) / 5 to
    everyone; the requester pays the right ranking, or the reverse."""

    async def go() -> str:
        w3 = await connect(anvil.ws_url)
        try:
            p = TaskParams(rounds=1, top_k=3, max_workers=4, deposit_wei=10**18)
            task = await deploy_and_register(w3, anvil.ws_url, p, 4, seed=40 + dishonest)
            req = task.requester
            subs = await commit_all(task, 1, random.Random(1))
            digests = [s.digest for s in subs]
            await req.open_evaluation(1, digests)
            rows = [encode_scores([None if j == i else (j + 1) / 5 for j in range(4)]) for i in range(4)]
            await score_all(task.workers, 1, rows)
            ranking = [0, 1, 2] if dishonest else [3, 2, 1]
            await req.settle_round(1, digests, *reveal(req.address, 1, subs, digests), ranking)
            return req.address
        finally:
            await w3.provider.disconnect()

    return run(go())


def test_audit_on_chain_accepts_an_honest_requester_and_catches_a_dishonest_one(anvil):
    for dishonest in (False, True):
        contract = _play(anvil, dishonest)
        task = run(audit_task(anvil.ws_url, contract))
        (audit,), rule = task.rounds, task.rule
        assert rule == "TOP_K" and task.unsettled == []
        assert (audit.excluded, audit.withheld, audit.unpaid) == ([], [], 0)
        assert audit.expected_rewards == top_k_rewards(10**18, 3)
        assert audit.ok is (not dishonest)
        # Worker 4's model is worth most to everyone: it must be ranked first.
        best = max(audit.contribution, key=lambda w: audit.contribution[w].score)
        assert audit.expected_ranking[0] == best
        assert (audit.paid_ranking[0] == best) is (not dishonest)


def test_the_audit_of_an_anchored_rule_fails_a_round_without_anchor_scores(anvil):
    (audit,) = run(audit_task(anvil.ws_url, _play(anvil, dishonest=False), "anchored")).rounds
    assert audit.anchor_missing and not audit.ok


def test_the_audit_takes_the_rules_parameters(anvil):
    """A task settled under trimmed with trim = 0.4 (the median of 3 evaluators) is
    audited with that parameter, not the rule's default 0.25 (the mean of 3)."""
    from discofl_p2p.trust.blockflow import ranking, score_matrix
    from discofl_p2p.trust.scoring import ScoringContext, make_scoring_rule

    async def go() -> tuple[str, list[str]]:
        w3 = await connect(anvil.ws_url)
        try:
            p = TaskParams(rounds=1, top_k=2, max_workers=4, deposit_wei=10**18)
            task = await deploy_and_register(w3, anvil.ws_url, p, 4, seed=46)
            req = task.requester
            subs = await commit_all(task, 1, random.Random(3))
            digests, owners = [s.digest for s in subs], [s.worker for s in subs]
            await req.open_evaluation(1, digests)
            # Model 0: two evaluators say 0.9, one 0.1 (median 0.9, mean 0.63); model 1: 0.7 from all.
            table = [[None, 0.9, 0.9, 0.1], [0.7, None, 0.7, 0.7], [0.5, 0.5, None, 0.5], [0.4, 0.4, 0.4, None]]
            rows = {o: [table[k][i] for k in range(4)] for i, o in enumerate(owners)}
            await score_all(task.workers, 1, [encode_scores(rows[o]) for o in owners])
            matrix, everyone = score_matrix(owners, rows), sorted(owners, key=str.lower)
            by = {
                t: ranking(make_scoring_rule("trimmed", trim=t)(matrix, everyone, ScoringContext()), 2)
                for t in (0.25, 0.4)
            }
            assert by[0.25] != by[0.4]  # not vacuous: the parameter decides the ranking
            ranked = [owners.index(o) for o in by[0.4]]
            await req.settle_round(1, digests, *reveal(req.address, 1, subs, digests), ranked)
            return req.address, by[0.4]
        finally:
            await w3.provider.disconnect()

    contract, ranked = run(go())
    (default,) = run(audit_task(anvil.ws_url, contract, "trimmed")).rounds
    assert not default.ok
    (tuned,) = run(audit_task(anvil.ws_url, contract, "trimmed", {"trim": 0.4})).rounds
    assert tuned.ok and tuned.paid_ranking == ranked

    # The dashboard recomputes the contributions with the same parameters.
    from discofl_p2p.dashboard.reader import TaskReader, stop_task

    async def dashboard() -> dict:
        reader = TaskReader(anvil.ws_url, contract, None, "trimmed", {"trim": 0.4})
        follow = asyncio.create_task(reader.run_forever())
        try:
            while not (snap := reader.snapshot())["rounds"] or not snap["rounds"][0]["contributions"]:
                await asyncio.wait_for(reader.wait_newer(snap["version"]), 30)
            return snap["rounds"][0]["contributions"]
        finally:
            await stop_task(follow)

    assert {w: c["score"] for w, c in run(dashboard()).items()} == {w: c.score for w, c in tuned.contribution.items()}


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--scoring", "trimmed", "--scoring-param", "trim=0.6"],
            "--scoring-param: task.scoring_params.trim: must be in [0, 0.5)",
        ),
        (
            ["--scoring", "trimmed", "--scoring-param", "cut=0.1"],
            "unknown parameter of scoring rule 'trimmed'; it takes: trim",
        ),
        (["--scoring", "trimmed", "--scoring-param", 'trim="x"'], "trim: must be int or float, got str 'x'"),
        (["--scoring", "consensus", "--scoring-param", "trim=0.1"], "scoring rule 'consensus' takes no parameters"),
        (["--scoring", "median"], "--scoring: task.scoring: unknown scoring rule 'median'"),
        (["--scoring", "trimmed", "--scoring-param", "trim"], "expected KEY=VALUE, got 'trim'"),
        (["--scoring", "trimmed", "--scoring-param", "trim=0.1.2"], "trim: not a TOML value"),
    ],
)
def test_the_audit_checks_scoring_params_as_the_scenario_does(args, words, capsys):
    from discofl_p2p.commands.cli import main

    try:
        code = main(["audit", "--rpc-url", "http://127.0.0.1:1", "--contract", "0x" + "11" * 20, *args])
    except SystemExit as e:  # argparse refuses a malformed KEY=VALUE itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in " ".join(err.split()), err


@pytest.mark.parametrize("dishonest", [False, True])
def test_audit_command_exits_1_on_a_dishonest_settlement_and_0_on_an_honest_one(anvil, dishonest):
    contract = _play(anvil, dishonest)
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "audit", "--rpc-url", anvil.rpc_url, "--contract", contract],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    if dishonest:
        assert proc.returncode == 1, out
        assert "audit: MISMATCH" in proc.stdout and "DOES NOT MATCH the chain" in proc.stdout, out
    else:
        assert proc.returncode == 0, out
        assert "audit: every settled round matches" in proc.stdout and "MISMATCH" not in proc.stdout, out


def test_an_honest_requester_passes_the_audit_when_ties_are_broken_whatever_the_registration_order(anvil):
    """Every model is worth the same to everyone: the ranking is all ties. Workers
    register in descending address order (as concurrent registrations may land); the
    requester breaks ties as `settle` does (address order), and so must the audit."""
    from discofl_p2p.chain.limits import ETH
    from discofl_p2p.trust.blockflow import contribution_scores, score_matrix
    from discofl_p2p.trust.settlement import settle, tie_order

    async def go() -> str:
        w3 = await connect(anvil.ws_url)
        try:
            p = TaskParams(rounds=1, top_k=4, max_workers=4, deposit_wei=ETH)
            task = await deploy_and_register(w3, anvil.ws_url, p, 4, seed=77, register=False, start=False)
            req = task.requester
            task.workers.sort(key=lambda w: w.account.address.lower(), reverse=True)
            for w in task.workers:
                await w.register()
            await req.start_training()
            subs = await commit_all(task, 1, random.Random(2))
            digests = [s.digest for s in subs]
            await req.open_evaluation(1, digests)
            owners = [s.worker for s in subs]
            rows = {w.account.address: [None if o == w.account.address else 0.5 for o in owners] for w in task.workers}
            await score_all(task.workers, 1, [encode_scores(rows[w.account.address]) for w in task.workers])
            contrib = contribution_scores(score_matrix(owners, rows), tie_order({o: o for o in owners}))
            ranked, _ = settle(contrib, owners, {}, policy="top_k", top_k=4, pot=ETH, floor=0.0, bonus=0.0)
            assert ranked != owners  # registration order would rank otherwise
            await req.settle_round(
                1, digests, *reveal(req.address, 1, subs, digests), [owners.index(o) for o in ranked]
            )
            return req.address
        finally:
            await w3.provider.disconnect()

    (audit,) = run(audit_task(anvil.ws_url, run(go()))).rounds
    assert audit.ok, (audit.expected_ranking, audit.paid_ranking)


def test_a_requester_that_withholds_every_model_keeps_nothing_and_the_audit_proves_it(anvil):
    """The demonstrated attack: publish [], pass every submitter NOT_OPENED, rank nobody.
    Before, the whole deposit went back to the requester and the audit said ok. Now the
    workers post their openings (disputeExclusion), the unpaid pot is shared by them at
    close (the requester gets only the rounding remainder), and the audit fails,
    naming every withheld valid opening."""
    from discofl_p2p.chain.devchain import advance_time

    deposit = 10**18 + 1  # not a multiple of 3: a rounding remainder of 2 wei

    async def go() -> tuple[str, dict[str, int], int]:
        w3 = await connect(anvil.ws_url)
        try:
            p = TaskParams(rounds=1, top_k=3, max_workers=3, deposit_wei=deposit)
            task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=90)
            req = task.requester
            subs = await commit_all(task, 1, random.Random(4))
            await req.open_evaluation(1, [])
            for w, s in zip(task.workers, subs, strict=True):
                await w.dispute_exclusion(1, s.digest, s.salt)
            await advance_time(w3, p.evaluation_period_s + p.reveal_period_s + 1)  # nobody scores: past it all
            await req.settle_round(1, [], *reveal(req.address, 1, [replace(s, salt=None) for s in subs], []), [])
            closed = (await req.close_task()).events[-1]
            paid = {w.account.address: (await w.withdraw()).events[0].args["amount"] for w in task.workers}
            return req.address, paid, closed.args["refund"]
        finally:
            await w3.provider.disconnect()

    contract, paid, refund = run(go())
    assert refund == deposit % 3 == 2
    assert set(paid.values()) == {deposit // 3}
    task = run(audit_task(anvil.ws_url, contract))
    (audit,) = task.rounds
    assert sorted(audit.excluded) == sorted(audit.withheld) == sorted(paid) and audit.unpaid == deposit
    assert not audit.ok and not task.ok
    assert (task.closed, task.refund, task.participant_share) == (True, 2, deposit // 3)


def test_a_dispute_of_a_copy_is_no_proof_of_withholding(anvil):
    """A worker that copied another's model is left out rightly (one model, one
    owner); its opening is valid, but it names a listed model: not withheld."""
    from discofl_p2p.chain.encoding import Submission, commitment

    async def go() -> str:
        w3 = await connect(anvil.ws_url)
        try:
            p = TaskParams(rounds=1, top_k=2, max_workers=2, deposit_wei=10**18)
            task = await deploy_and_register(w3, anvil.ws_url, p, 2, seed=91)
            req, (w1, w2) = task.requester, task.workers
            (original,) = await commit_all(replace(task, workers=[w1]), 1, random.Random(5))
            salt = b"\x05" * 32
            c2 = commitment(req.address, 1, w2.account.address, original.digest, salt)
            await w2.submit_model(1, c2)
            copy = Submission(w2.account.address, c2, original.digest, salt)
            await req.open_evaluation(1, [original.digest])
            await w2.dispute_exclusion(1, original.digest, salt)
            await score_all(task.workers, 1, [encode_scores([None]), encode_scores([0.9])])
            subs = [original, replace(copy, salt=None)]
            await req.settle_round(1, [original.digest], *reveal(req.address, 1, subs, [original.digest]), [0])
            return req.address
        finally:
            await w3.provider.disconnect()

    (audit,) = run(audit_task(anvil.ws_url, run(go()))).rounds
    assert len(audit.excluded) == 1 and audit.withheld == [] and audit.ok


def test_the_audit_checks_the_amounts_of_an_explicit_policy_through_settle(anvil):
    """Under the Explicit rule the requester posts the amounts: the audit recomputes them
    with `settle` (here the proportional policy) and catches amounts that differ."""
    from discofl_p2p.chain.client import RewardRule
    from discofl_p2p.trust.blockflow import contribution_scores, score_matrix
    from discofl_p2p.trust.settlement import settle, tie_order

    def play(dishonest: bool) -> str:
        async def go() -> str:
            w3 = await connect(anvil.ws_url)
            try:
                p = TaskParams(rounds=1, top_k=3, max_workers=3, deposit_wei=10**18, rule=RewardRule.EXPLICIT)
                task = await deploy_and_register(w3, anvil.ws_url, p, 3, seed=92 + dishonest)
                req = task.requester
                subs = await commit_all(task, 1, random.Random(6))
                digests = [s.digest for s in subs]
                await req.open_evaluation(1, digests)
                owners = [s.worker for s in subs]
                rows = {o: [None if j == i else (j + 2) / 5 for j in range(3)] for i, o in enumerate(owners)}
                await score_all(task.workers, 1, [encode_scores(rows[w.account.address]) for w in task.workers])
                contrib = contribution_scores(score_matrix(owners, rows), tie_order({o: o for o in owners}))
                ranked, rewards = settle(
                    contrib, owners, {}, policy="proportional", top_k=3, pot=10**18, floor=0.0, bonus=0.0
                )
                amounts = [rewards[o] for o in ranked]
                if dishonest:
                    amounts[0], amounts[-1] = amounts[0] - 10**15, amounts[-1] + 10**15
                positions = [owners.index(o) for o in ranked]
                await req.settle_round(1, digests, *reveal(req.address, 1, subs, digests), positions, amounts)
                return req.address
            finally:
                await w3.provider.disconnect()

        return run(go())

    for dishonest in (False, True):
        task = run(audit_task(anvil.ws_url, play(dishonest), policy="proportional"))
        assert task.rule == "EXPLICIT" and task.ok is (not dishonest)


def test_the_audit_checks_the_close_shares_the_unpaid_rest_by_the_rounds_pay(anvil):
    """Round 1 is settled honestly (Top-K pays 4/6, 2/6 and 0 of its pot); round 2
    publishes nothing and pays nobody (no worker disputes, so nothing is withheld). The
    close shares round 2's pot by round 1's pay, and the audit recomputes exactly that
    with `close_shares`; a close that paid anything else would fail it."""
    from dataclasses import replace as replace_dc

    from discofl_p2p.chain.devchain import advance_time
    from discofl_p2p.trust.settlement import close_shares

    deposit = 10**18 + 1

    async def go() -> str:
        w3 = await connect(anvil.ws_url)
        try:
            p = TaskParams(rounds=2, top_k=3, max_workers=4, deposit_wei=deposit)
            task = await deploy_and_register(w3, anvil.ws_url, p, 4, seed=94)
            req = task.requester
            subs = await commit_all(task, 1, random.Random(1))
            digests = [s.digest for s in subs]
            await req.open_evaluation(1, digests)
            await score_all(task.workers, 1, [encode_scores([(j + 1) / 5 for j in range(4)]) for _ in range(4)])
            await req.settle_round(1, digests, *reveal(req.address, 1, subs, digests), [3, 2, 1])
            subs = await commit_all(task, 2, random.Random(2))
            await req.open_evaluation(2, [])
            await advance_time(w3, p.evaluation_period_s + p.reveal_period_s + 1)
            await req.settle_round(2, [], *reveal(req.address, 2, [replace(s, salt=None) for s in subs], []), [])
            await req.close_task()
            return req.address
        finally:
            await w3.provider.disconnect()

    task = run(audit_task(anvil.ws_url, run(go())))
    assert [a.ok for a in task.rounds] == [True, True] and task.rounds[1].unpaid == deposit - deposit // 2
    first = task.rounds[0]
    earned = dict(zip(first.paid_ranking, first.paid_rewards))
    expected = close_shares(deposit - deposit // 2, earned, list(earned))
    assert task.close_expected == expected and len(expected.shares) == 2  # the worker ranked 3rd earned 0
    assert task.close_paid == expected.shares and task.refund == expected.refund and task.ok
    tampered = replace_dc(task, close_paid={w: v + 1 for w, v in task.close_paid.items()})
    assert not tampered.close_ok and not tampered.ok
