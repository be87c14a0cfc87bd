"""Determinism and the plain loop's equivalence with the full stack.

Two runs of one scenario with one seed give the same scores, contributions, rankings
and rewards (salts and the published order are secrets and decide nothing), and the
plain single-process loop (`scenario/plain.py`) gives exactly those too. Real anvil,
real libp2p nodes, real training on small data."""

from __future__ import annotations

import asyncio

import pytest

from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import run_plain
from discofl_p2p.scenario.runner import RunOutcome, run_scenario

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
    """What must replay: per round, the scores, contributions, ranking, rewards and
    exclusions (the published order and salts are secrets, and are not compared)."""
    return {
        r: (rec.scores, rec.contribution, rec.ranking, rec.rewards_wei, dict(sorted(rec.excluded.items())))
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
    # Not vacuous: the free rider's copy was excluded from round 2 on, the ring scored
    # its own models 1.0.
    assert "replays" in full.rounds[2].excluded["rider-1"]
    assert full.rounds[3].scores["ring-1"]["ring-2"] == 1.0
