"""Defences measured in real runs of the plain loop (the same functions as the full
stack, `tests/test_replay.py`): the norm bound against update scaling."""

from __future__ import annotations

import pytest

from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import run_plain

SCALED = """\
[task]
rounds = 3
top_k = 3
seed = 1
norm_bound = {bound}

[data]
samples_per_worker = 100
test_fraction = 0.1

[model]
name = "logreg"
lr = 0.01

[[workers]]
name = "honest"
count = 6

[[workers]]
name = "adv"
count = 3
train = "{attack}"
"""


@pytest.mark.slow
def test_the_norm_bound_neutralises_update_scaling():
    """3 of 9 workers submit base + 10 x their update. Unbounded, they drag the final
    model far below what 3 garbage trainers cost (whose models carry nothing); with
    the bound (2 x the median distance to the median model) they cost no more than
    garbage does: what is left is the data the attackers did not contribute."""

    def final(attack: str, bound: float) -> float:
        acc = run_plain(parse_scenario(SCALED.format(attack=attack, bound=bound))).final_accuracy
        assert acc is not None
        return acc

    unbounded, bounded, garbage = final("update_scale", 0), final("update_scale", 2.0), final("garbage", 2.0)
    assert unbounded < garbage - 0.15  # measured: 0.548
    assert bounded >= garbage - 0.01  # measured: 0.777
