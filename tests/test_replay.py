"""Determinism and the plain loop's equivalence with the full stack.

Two runs of one scenario with one seed give the same scores, contributions, rankings
and rewards (salts and the published order are secrets and decide nothing), and the
plain single-process loop (`scenario/plain.py`) gives exactly those too. Real anvil,
real libp2p nodes, real training on small data."""

from __future__ import annotations

import asyncio

import pytest

from discofl_p2p.commands.audit import audit_task
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import run_plain
from discofl_p2p.scenario.runner import RunOutcome, run_scenario
from tests.conftest import run

SMALL = """\
timeout_s = 240

[task]
name = "{name}"
rounds = 3
top_k = {top_k}
reward_policy = "{policy}"
submission_timeout_s = 60
evaluation_timeout_s = 60
seed = 5

[data]
samples_per_worker = 150

[model]
name = "logreg"
epochs = 1
lr = 0.01

[[workers]]
name = "honest"
count = 3

[[workers]]
name = "garbage"
count = 1
behavior = "garbage"
"""

ADVERSARIES = """
[[workers]]
name = "ring"
count = 2
behavior = "collusion"
params = { ring = "r1", shares_cids = true }

[[workers]]
name = "alie"
count = 1
train = "alie"
train_params = { z = 1.5 }
score = "biased_scorer"

[[workers]]
name = "rider"
count = 1
behavior = "free_rider"
params = { mode = "copy" }
"""


def _learning(rounds) -> dict[int, tuple]:
    """What must replay: per round, the models' CIDs (bit for bit: a model that differs
    in its last bits often keeps every score), the scores, contributions, ranking,
    rewards, exclusions and the requester's anchor scores (the published order and
    salts are secrets, and are not compared)."""
    return {
        r: (
            rec.models,
            rec.scores,
            rec.contribution,
            rec.ranking,
            rec.rewards_wei,
            dict(sorted(rec.excluded.items())),
            rec.anchor,
        )
        for r, rec in rounds.items()
    }


def _full(text: str, anvil) -> RunOutcome:
    return asyncio.run(run_scenario(parse_scenario(text), anvil.ws_url))


@pytest.mark.slow
def test_two_runs_of_one_scenario_give_the_same_scores_contributions_rankings_and_rewards(anvil):
    text = SMALL.format(name="replay", top_k=4, policy="top_k")
    a, b = _full(text, anvil), _full(text, anvil)
    assert a.contract != b.contract
    assert _learning(a.rounds) == _learning(b.rounds)
    assert a.rewards_wei == b.rewards_wei and a.final_accuracy == b.final_accuracy
    # Not vacuous: every round was scored and paid, the garbage trainer least.
    assert sorted(a.rounds) == [1, 2, 3]
    for rec in a.rounds.values():
        assert len(rec.scores) == 4 and sum(rec.rewards_wei.values()) > 0
        assert min(rec.contribution, key=lambda n: rec.contribution[n]) == "garbage-1"
    # The plain loop gives the same too.
    plain = run_plain(parse_scenario(text))
    assert _learning(plain.rounds) == _learning(a.rounds)
    assert plain.final_accuracy == a.final_accuracy
    assert plain.rewards_wei == a.rewards_wei and plain.refunded_wei == a.refunded_wei


@pytest.mark.slow
def test_the_plain_loop_equals_the_full_stack_with_adversaries(anvil):
    """Garbage, a collusion ring sharing its CIDs, an ALIE attacker scoring everyone
    low, and a copying free rider (excluded as a replay), under proportional rewards."""
    text = SMALL.format(name="equiv", top_k=8, policy="proportional") + ADVERSARIES
    full = _full(text, anvil)
    plain = run_plain(parse_scenario(text))
    assert _learning(plain.rounds) == _learning(full.rounds)
    assert plain.final_accuracy == full.final_accuracy
    assert sum(plain.rounds[3].rewards_wei.values()) == sum(full.rounds[3].rewards_wei.values()) > 0
    # The close too: each worker's total (rounds + its share of the unpaid rest) and the refund.
    assert plain.rewards_wei == full.rewards_wei and plain.refunded_wei == full.refunded_wei
    # Not vacuous: the free rider's copy was excluded from round 2 on, the ring scored
    # its own models 1.0.
    assert "replays" in full.rounds[2].excluded["rider-1"]
    assert full.rounds[3].scores["ring-1"]["ring-2"] == 1.0


NEW_ATTACKS = """
[[workers]]
name = "syb"
count = 2
train = "sybil"

[[workers]]
name = "copy"
count = 1
train = "noisy_copy"
score = "targeted_downscore"

[[workers]]
name = "stealth"
count = 2
train = "backdoor"
score = "stealthy_ring"
score_params = { ring = "s", shares_cids = true, delta = 0.1 }

[[workers]]
name = "extra"
count = 1
"""


@pytest.mark.slow
def test_the_plain_loop_equals_the_full_stack_with_the_new_attacks(anvil):
    """Sybil identities (their operator's data split and seeds), a noisy copy that
    down-scores the best models, and a stealthy ring of backdoor trainers sharing CIDs,
    on the full stack (anvil, libp2p) and in the plain loop. Ten workers: with the
    tenth, the aggregate of a worker whose first candidate was a decoded peer model
    (tensors in the parser's order) differed in its last bits (`ml/aggregation._stack`)."""
    text = SMALL.format(name="equiv-new", top_k=6, policy="proportional") + NEW_ATTACKS
    full = _full(text, anvil)
    plain = run_plain(parse_scenario(text))
    assert _learning(plain.rounds) == _learning(full.rounds)
    assert plain.final_accuracy == full.final_accuracy
    # Not vacuous: the free riders passed de-duplication, the ring shifted its scores.
    assert {"syb-1", "syb-2", "copy-1"} <= set(full.rounds[3].models) and not full.rounds[3].excluded
    assert 0 < full.rounds[3].scores["stealth-1"]["stealth-2"] < 1
    assert min(full.rounds[3].scores["copy-1"].values()) == 0.0


ANCHORED = """\
timeout_s = 180

[task]
name = "anchored"
rounds = 2
top_k = 3
scoring = "anchored"
root_samples = 100
submission_timeout_s = 60
evaluation_timeout_s = 60
seed = 6

[data]
samples_per_worker = 150

[model]
name = "logreg"
epochs = 1
lr = 0.01

[[workers]]
name = "honest"
count = 3

[[workers]]
name = "ring"
count = 2
behavior = "collusion"
params = { ring = "r1", shares_cids = true }
"""


@pytest.mark.slow
def test_the_anchored_rule_runs_end_to_end_replays_in_the_plain_loop_and_passes_the_audit(anvil):
    """The requester scores every model on its root set and posts the scores
    (AnchorScores); it settles with them, the plain loop computes the same anchor, and
    the audit recomputes every round from the chain. A ring of 2 in 5 that scores itself
    1 and the others 0 is measured against the anchor and earns nothing."""
    full = _full(ANCHORED, anvil)
    plain = run_plain(parse_scenario(ANCHORED))
    assert _learning(plain.rounds) == _learning(full.rounds)
    assert plain.final_accuracy == full.final_accuracy
    for rec in full.rounds.values():
        assert set(rec.anchor) == set(rec.models) and all(0.3 < v < 1 for v in rec.anchor.values())
        assert rec.rewards_wei["ring-1"] == rec.rewards_wei["ring-2"] == 0 < sum(rec.rewards_wei.values())
    audit = run(audit_task(anvil.ws_url, full.contract, "anchored"))
    assert [a.round for a in audit.rounds] == [1, 2] and audit.ok
    assert all(not a.anchor_missing for a in audit.rounds)
    # Not vacuous: another rule's figures do not match what was settled with the anchor.
    assert not run(audit_task(anvil.ws_url, full.contract, "blockflow")).ok
