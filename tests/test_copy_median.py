"""The copy-the-median late scorer (issue 10, item 3): copying the others' scores earns
full honesty when they are public before one commits; with commit-reveal of scores
there is nothing to copy before the commit deadline, and the attack gains nothing."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from discofl_p2p.agents.behaviors import SCORING_BEHAVIOURS
from discofl_p2p.agents.behaviors.copy_median import median_row
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.runner import Simulation
from discofl_p2p.trust.blockflow import contribution_scores, score_matrix
from tests.conftest import TINY, run, with_simulation

HONEST_ROWS = {
    "a": [None, 0.9, 0.4, 0.7],
    "b": [0.6, None, 0.5, 0.8],
    "c": [0.7, 0.8, None, 0.6],
}
OWNERS = ["a", "b", "c", "d"]


def test_the_attack_works_when_scores_are_public_before_it_commits():
    """The threat commit-reveal removes: d copies the others' median and gets full
    honesty without judging anything, while a blind guess does not."""
    copier = SCORING_BEHAVIOURS["copy_median"]()
    rows = list(HONEST_ROWS.values())
    copied = copier.copy_scores(rows, [0.1, 0.1, 0.1, None])
    assert copied == median_row(rows, 4) == [0.6, 0.8, 0.4, 0.7]
    contrib = contribution_scores(score_matrix(OWNERS, HONEST_ROWS | {"d": copied}), OWNERS)
    assert contrib["d"].honesty == 1.0
    blind = [0.1, 0.1, 0.1, None]  # what it has without anybody's scores: its own guess
    assert copier.copy_scores([], blind) is blind
    contrib = contribution_scores(score_matrix(OWNERS, HONEST_ROWS | {"d": blind}), OWNERS)
    assert contrib["d"].honesty < 0.5


COPY_MEDIAN = (
    TINY.format(name="copy-median").replace("rounds = 1", "rounds = 2").replace("timeout_s = 120", "timeout_s = 150")
    + """
[[workers]]
name = "copier"
count = 1
score = "copy_median"
score_params = { wait_s = 2.0 }
"""
)


@pytest.mark.slow
def test_under_commit_reveal_the_copier_sees_nothing_to_copy(anvil):
    """A full run (anvil, libp2p, training): the copier waits for others' scores while
    it may still commit, finds none on the chain (the others' rows are hashes until
    every worker committed), commits its own blind and so gains nothing; every row is
    then revealed and the rounds settle without waiting for a deadline."""
    sc = parse_scenario(COPY_MEDIAN)

    async def body(sim: Simulation, *_: object):
        with capture_logs() as logs:
            async with asyncio.timeout(sc.timeout_s):
                await sim.run()
        return logs, await sim.outcome()

    logs, outcome = run(with_simulation(anvil, sc, body))
    tries = [e for e in logs if e["event"] == "copy_median"]
    assert [(e["agent"], e["round"]) for e in tries] == [("copier-1", 1), ("copier-1", 2)]
    assert all(e["rows_seen"] == 0 and e["copied"] is False for e in tries)
    revealed = [(e["agent"], e["round"]) for e in logs if e["event"] == "scores_revealed"]
    assert sorted(revealed) == sorted((w.name, r) for w in outcome.workers for r in (1, 2))
    # Every row was committed before any was revealed.
    order = [e["event"] for e in logs if e["event"] in ("scores_committed", "scores_revealed") and e["round"] == 1]
    assert order == ["scores_committed"] * 4 + ["scores_revealed"] * 4
    assert not [e for e in logs if e["event"] in ("evaluation_deadline_passed", "reveal_refused")]
    assert set(outcome.rounds[2].scores) == {w.name for w in outcome.workers}
