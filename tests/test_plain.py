"""The plain single-process loop (the reference for the overhead of decentralisation)."""

from __future__ import annotations

import pytest

from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import run_plain

SMALL = """\
[task]
name = "plain"
rounds = 2
top_k = 4
seed = 3

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


def test_plain_loop_learns_and_scores_the_garbage_trainer_below_the_honest():
    sc = parse_scenario(SMALL)
    out = run_plain(sc)
    assert len(out.contributions) == 2
    for p in out.contributions:
        assert set(p) == {"honest-1", "honest-2", "honest-3", "garbage-1"}
        assert all(0 <= v <= 1 for v in p.values())
        assert all(p["garbage-1"] < p[f"honest-{i}"] for i in (1, 2, 3))
    # Two rounds of one epoch on 3 x 120 digits: well above chance (0.1); the final
    # model leaves the garbage trainer's out.
    assert out.final_accuracy is not None and out.final_accuracy > 0.5
    assert out.wall_s > 0
    # Every random choice is seeded from the scenario: a second run is the same run.
    again = run_plain(sc)
    assert again.final_accuracy == out.final_accuracy and again.contributions == out.contributions


def test_jobs_in_parallel_change_only_the_wall_time():
    """Training and evaluation on two threads at once (as the agents' pool runs them)
    give the very same run: every job is single-threaded and seeded on its own."""
    sc = parse_scenario(SMALL)
    one, two = run_plain(sc), run_plain(sc, jobs=2)
    assert two.contributions == one.contributions and two.final_accuracy == one.final_accuracy
    for r, rec in one.rounds.items():
        other = two.rounds[r]
        assert (other.models, other.scores, other.ranking, other.rewards_wei, other.test_accuracy) == (
            rec.models,
            rec.scores,
            rec.ranking,
            rec.rewards_wei,
            rec.test_accuracy,
        )
    with pytest.raises(ValueError, match="jobs must be at least 1, not 0"):
        run_plain(sc, jobs=0)
