"""Adversary behaviours as pure strategies."""

from __future__ import annotations

import torch

from discofl_p2p.agents.behaviors import Behavior


def _state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), v), "n": torch.tensor(2)}


def test_training_data_attacks():
    x, y = torch.zeros(50, 1, 28, 28), torch.arange(50) % 10
    gx, gy = Behavior("garbage").training_data(x, y, seed=1)
    assert gx.std() > 0.5 and not torch.equal(gy, y)
    assert torch.equal(Behavior("label_flip").training_data(x, y, 1)[1], 9 - y)
    assert Behavior("honest").training_data(x, y, 1)[1] is y
    assert not Behavior("garbage").starts_from_aggregate() and Behavior("label_flip").starts_from_aggregate()


def test_submission_attacks():
    trained, agg, seen = _state(2.0), _state(1.0), [(0.5, _state(5.0)), (0.9, _state(7.0))]
    assert Behavior("model_poisoning", {"mode": "sign_flip"}).submission(trained, agg, seen, 0)["w"][0] == -2.0
    assert Behavior("model_poisoning", {"mode": "scale", "factor": 3}).submission(trained, agg, seen, 0)["w"][0] == 6.0
    noise = Behavior("model_poisoning", {"mode": "noise", "std": 1.0}).submission(trained, agg, seen, 0)
    assert not torch.equal(noise["w"], trained["w"]) and noise["n"].item() == 2
    assert Behavior("free_rider").submission(trained, agg, seen, 0) is agg
    assert Behavior("free_rider", {"mode": "copy"}).submission(trained, agg, seen, 0)["w"][0] == 7.0
    assert not Behavior("free_rider").trains()


def test_scoring_attacks():
    true = [0.9, None, 0.8, 0.1]
    assert Behavior("honest").scores(true, None, 0) == true
    assert Behavior("biased_scorer", {"value": 0.05}).scores(true, None, 0) == [0.05, None, 0.05, 0.05]
    assert Behavior("lazy_evaluator", {"value": 0.5}).scores(true, None, 0) == [0.5, None, 0.5, 0.5]
    ring = Behavior("collusion", {"ring": "r", "shares_cids": True})
    assert ring.scores(true, {2}, 0) == [0.0, None, 1.0, 0.0]
    guess = Behavior("collusion", {"ring": "r", "_ring_size": 3}).scores(true, None, 0)
    assert guess[1] is None and sorted(s for s in guess if s is not None) == [0.0, 1.0, 1.0]


def test_participation():
    stop = Behavior("dropout", {"round": 2})
    assert not stop.stopped(1) and stop.stopped(2) and stop.stopped(3) and not stop.late(2)
    late = Behavior("dropout", {"round": 2, "mode": "late"})
    assert late.late(2) and not late.late(1) and not late.stopped(3)
