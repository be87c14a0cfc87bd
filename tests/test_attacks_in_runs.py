"""The data, free-riding and scoring attacks: their maths on tensors and score rows,
then each happening in a real run of the plain loop (real training on small data; the
plain loop gives the full stack's scores, contributions, rankings and rewards, see
tests/test_replay.py, which also runs several of them on the full stack)."""

from __future__ import annotations

import pytest
import torch

from discofl_p2p.agents.behaviors import guess_positions, is_ring, make_behaviour
from discofl_p2p.agents.jobs import evaluate_job, initial_state
from discofl_p2p.bench.robustness.cell import final_model, run_cell
from discofl_p2p.ml.poison import backdoor_data, backdoor_success_set, flip_class, flip_success_set, stamp_trigger
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import run_plain
from discofl_p2p.scenario.runner import build_setup

# ---------------------------------------------------------------------- pure maths


def test_flip_class_and_its_success_set():
    y = torch.tensor([1, 7, 1, 3])
    assert flip_class(y, 1, 7).tolist() == [7, 7, 7, 3]
    x = torch.arange(4.0).reshape(4, 1, 1, 1)
    xs, ys = flip_success_set(x, y, 1, 7)
    assert xs.flatten().tolist() == [0.0, 2.0] and ys.tolist() == [7, 7]


def test_backdoor_stamps_a_corner_square_and_adds_stamped_copies_labelled_target():
    x = torch.zeros(10, 1, 8, 8)
    x[0, 0, 0, 0] = 2.0  # the images' maximum: the trigger's value
    s = stamp_trigger(x, 3)
    assert s[:, 0, 4:7, 4:7].eq(2.0).all() and s[1:, 0, :4].eq(0).all() and s[:, 0, 7].eq(0).all()
    y = torch.arange(10) % 3
    bx, by = backdoor_data(x, y, fraction=0.5, target=2, size=3, seed=1)
    assert len(by) == 15 and by[10:].eq(2).all() and bx[10:, 0, 4:7, 4:7].eq(2.0).all()
    assert torch.equal(bx[:10], x) and torch.equal(by[:10], y)
    sx, sy = backdoor_success_set(x, y, 2, 3)
    assert len(sy) == int((y != 2).sum()) and sy.eq(2).all() and sx[:, 0, 4:7, 4:7].eq(2.0).all()


def _s(*w: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(w), "n": torch.tensor(7)}


BASE, TRAINED, PREV = _s(1.0, 1.0), _s(2.0, 0.0), _s(0.0, 0.0)
SEEN = [(0.8, _s(3.0, 1.0)), (0.9, _s(1.0, 3.0))]


def test_noisy_copy_submits_last_rounds_best_plus_small_seeded_noise():
    b = make_behaviour("noisy_copy", {"std": 1e-3})
    out = b.submission(TRAINED, BASE, SEEN, 1, PREV)
    assert torch.allclose(out["w"], SEEN[1][1]["w"], atol=1e-2) and not torch.equal(out["w"], SEEN[1][1]["w"])
    assert torch.equal(out["w"], b.submission(TRAINED, BASE, SEEN, 1, PREV)["w"]) and out["n"].item() == 7
    assert not b.trains()


def test_mimic_applies_a_seen_models_update_to_its_own_base():
    out = make_behaviour("mimic").submission(BASE, BASE, SEEN, 1, PREV)
    assert out["w"].tolist() == [2.0, 4.0]  # base (1, 1) + the best model's update (1, 3) - (0, 0)
    assert make_behaviour("mimic").submission(BASE, BASE, [], 1, None)["w"].tolist() == [1.0, 1.0]  # round 1


def test_sybil_identities_train_as_their_operator():
    b = make_behaviour("sybil", {"_operator": "syb-1"})
    assert b.data_owner("syb-2") == "syb-1" and make_behaviour().data_owner("h-1") == "h-1"
    out = b.submission(TRAINED, BASE, SEEN, 3, PREV)
    assert torch.allclose(out["w"], TRAINED["w"], atol=1e-4) and not torch.equal(out["w"], TRAINED["w"])


TRUE = [0.5, None, 0.9, 0.7, 0.2]


def test_stealthy_ring_shifts_by_delta_and_targeted_downscoring_hits_the_best():
    assert is_ring("stealthy_ring") and is_ring("collusion") and not is_ring("targeted_downscore")
    ring = make_behaviour(score="stealthy_ring", score_params={"ring": "r", "delta": 0.1})
    assert ring.scores(TRUE, {3}, 0) == pytest.approx([0.4, None, 0.8, 0.8, 0.1])
    down = make_behaviour(score="targeted_downscore", score_params={"k": 2})
    assert down.scores(TRUE, None, 0) == [0.5, None, 0.0, 0.0, 0.2]


def test_a_ring_guesses_ring_size_minus_one_scored_positions():
    g = guess_positions(TRUE, 3, 7)
    assert len(g) == 2 and g <= {0, 2, 3, 4} and g == guess_positions(TRUE, 3, 7)


# ---------------------------------------------------------------------- in real runs

RUN = """
[task]
name = "{name}"
rounds = 3
top_k = 4
reward_policy = "proportional"
seed = 3
[data]
samples_per_worker = 80
test_fraction = 0.1
[model]
name = "logreg"
lr = 0.01
[[workers]]
name = "honest"
count = {honest}
"""


def _group(name: str, count: int, **keys: str) -> str:
    return f'[[workers]]\nname = "{name}"\ncount = {count}\n' + "".join(f"{k} = {v}\n" for k, v in keys.items())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("train", "params"), [("targeted_flip", {"source": 1, "target": 7}), ("backdoor", {"target": 0})]
)
def test_a_targeted_attack_succeeds_where_the_honest_run_does_not(train, params):
    """3 of 6 workers poison their data: the final model's attack success rate on the
    held-out test split, against the same aim measured on the all-honest run's model."""
    keys = {"train": f'"{train}"', "train_params": "{ " + ", ".join(f"{k} = {v}" for k, v in params.items()) + " }"}
    out = run_cell(RUN.format(name=train, honest=3) + _group("adv", 3, **keys))
    sc = parse_scenario(RUN.format(name=train, honest=6))
    ctx, w0 = build_setup(sc)
    clean_model = final_model(run_plain(sc), ctx.aggregate, initial_state(w0))
    aim = make_behaviour(train, params).training.success_set(*ctx.test_set)
    assert aim is not None and len(aim[1]) > 20
    clean = evaluate_job(w0, clean_model, *aim, "accuracy")
    assert out["attack_success"] > clean + 0.2, (clean, out["attack_success"])


MIXED = RUN.format(name="mixed", honest=3).replace("= 80", "= 40") + "".join(
    [
        _group("copy", 1, train='"noisy_copy"'),
        _group("mimic", 1, train='"mimic"'),
        _group("syb", 2, train='"sybil"'),
        _group("stealth", 2, score='"stealthy_ring"', score_params='{ ring = "s", shares_cids = true, delta = 0.1 }'),
        _group("down", 1, score='"targeted_downscore"', score_params="{ k = 2 }"),
        _group("guess", 2, score='"collusion"', score_params='{ ring = "g" }'),
    ]
)


@pytest.mark.slow
def test_free_riders_and_scoring_attacks_in_one_run():
    out = run_plain(parse_scenario(MIXED))
    r2, r3 = out.rounds[2], out.rounds[3]
    # Free riders pass CID de-duplication (a plain copy is excluded as a replay).
    for n in ("copy-1", "mimic-1", "syb-1", "syb-2"):
        assert n in r2.models and n in r3.models and not r2.excluded and not r3.excluded, n
    assert "mimic-1" in out.rounds[1].excluded  # round 1: nothing to copy, it submits w0
    paid = {n: sum(r.rewards_wei[n] for r in out.rounds.values()) for n in out.rounds[3].rewards_wei}
    assert paid["mimic-1"] > 0 and paid["syb-1"] > 0 and paid["syb-2"] > 0, paid
    # The noisy copy is last round's model that it scored best, plus noise.
    copied = max(out.rounds[2].scores["copy-1"].items(), key=lambda kv: kv[1])[0]
    assert r3.models["copy-1"] != r2.models[copied]
    # Sybil identities submit one model (up to their noise), and score alike.
    a, b = out.last_models["syb-1"], out.last_models["syb-2"]
    assert max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point()) < 1e-4
    rows = [{m: v for m, v in r3.scores[n].items() if not m.startswith("syb")} for n in ("syb-1", "syb-2")]
    assert rows[0] == pytest.approx(rows[1], abs=1e-3) and len(rows[0]) == 10
    # The stealthy ring: its mate's score 0.1 above an honest score from the same row's
    # scale, never the 1.0 / 0.0 of a plain ring; the down-scorer zeroes 2 models.
    for n, mate in (("stealth-1", "stealth-2"), ("stealth-2", "stealth-1")):
        row = r3.scores[n]
        assert 0.0 < row[mate] < 1.0 and any(0 < v < 1 for m, v in row.items() if m != mate)
    assert sorted(r3.scores["down-1"].values())[:2] == [0.0, 0.0]
    assert sum(1 for v in r3.scores["down-1"].values() if v > 0) >= 7
    # The guessing ring: each member guessed 1 position every round; the hit rate is
    # recorded (1 mate among 11 others: 1/11 by chance).
    for r in out.rounds.values():
        assert set(r.ring_guesses) == {"guess-1", "guess-2"}
        assert all(g == 1 and 0 <= h <= 1 for h, g in r.ring_guesses.values())
