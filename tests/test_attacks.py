"""The attacks on the update (agents/behaviors/updates.py), on tensors: each submits
base + its crafted update, and leaves integer buffers as trained."""

from __future__ import annotations

import pytest
import torch

from discofl_p2p.agents.behaviors import TRAINING_BEHAVIOURS, RoundView, make_behaviour
from discofl_p2p.agents.behaviors.updates import alie_z, honest_update_estimates


def _s(*w: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(w), "n": torch.tensor(7)}


BASE, TRAINED = _s(1.0, 1.0), _s(2.0, 0.0)  # its own update: (+1, -1)
PREV = _s(0.0, 0.0)
SEEN = [(0.9, _s(3.0, 1.0)), (0.8, _s(1.0, 3.0))]  # last round's updates: (3, 1) and (1, 3)


def _submit(train: str, params: dict | None = None, *, seen=SEEN, previous=PREV, seed=0):
    b = make_behaviour(train, params)
    return b.submission(TRAINED, BASE, seen, seed, previous)


def test_sign_flip_reverses_the_update_not_the_weights():
    out = _submit("update_sign_flip")
    assert out["w"].tolist() == [0.0, 2.0] and out["n"].item() == 7
    assert _submit("update_sign_flip", {"factor": 3})["w"].tolist() == [-2.0, 4.0]


def test_scale_boosts_the_update():
    assert _submit("update_scale", {"factor": 5})["w"].tolist() == [6.0, -4.0]


def test_noise_replaces_the_update_with_seeded_gaussian_noise():
    a, b = _submit("update_noise", {"std": 2.0}, seed=1), _submit("update_noise", {"std": 2.0}, seed=1)
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], TRAINED["w"])
    assert not torch.equal(a["w"], _submit("update_noise", {"std": 2.0}, seed=2)["w"])
    assert _submit("update_noise", {"std": 0.0})["w"].tolist() == BASE["w"].tolist()


def test_alie_submits_mean_minus_z_std_of_the_updates_it_knows():
    # Its own (1, -1) and last round's (3, 1), (1, 3): mean (5/3, 1), population std.
    ups = torch.tensor([[1.0, -1.0], [3.0, 1.0], [1.0, 3.0]])
    mean, std = ups.mean(0), ups.std(0, correction=0)
    out = _submit("alie", {"z": 1.5})
    assert torch.allclose(out["w"], BASE["w"] + mean - 1.5 * std)
    # Round 1: only its own update is known, sigma = 0: it submits its honest model.
    assert torch.equal(_submit("alie", {"z": 1.5}, seen=(), previous=None)["w"], TRAINED["w"])


def test_ipm_submits_minus_epsilon_times_the_mean_update():
    out = _submit("ipm", {"epsilon": 0.5})
    assert torch.allclose(out["w"], BASE["w"] - 0.5 * torch.tensor([5 / 3, 1.0]))
    # The estimate is what the attacker honestly knows: its own update, then last round's.
    est = honest_update_estimates(RoundView(TRAINED, BASE, SEEN, PREV))
    assert [e["w"].tolist() for e in est] == [[1.0, -1.0], [3.0, 1.0], [1.0, 3.0]]


def test_alie_z_follows_the_papers_formula():
    # n = 50, m = 12: s = 26 - 12 = 14, z = Phi^-1(36 / 50) ~ 0.58
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)


def test_every_training_behaviour_keeps_names_shapes_and_dtypes():
    for name in TRAINING_BEHAVIOURS:
        out = _submit(name)
        assert set(out) == {"w", "n"} and out["w"].dtype == torch.float32 and out["n"].dtype == torch.int64, name
