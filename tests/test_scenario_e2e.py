"""Whole scenarios end to end: real anvil, real libp2p hosts, real training, through the
`discofl-p2p scenario` command in a subprocess (exit codes included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from discofl_p2p.chain.anvil import free_port
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import decode_scores
from discofl_p2p.trust.scoring import DEFAULT_SCORING
from tests.conftest import run

SMALL = """\
[task]
name = "small"
rounds = 2
top_k = 4
submission_timeout_s = 60
evaluation_timeout_s = 60
seed = 5

[data]
samples_per_worker = 500

[model]
epochs = 2
lr = 0.002

[[workers]]
name = "honest"
count = 3

[[workers]]
name = "garbage"
count = 1
behavior = "garbage"

[expect]
final_accuracy_min = {acc_min}
adversaries_below_honest = true
"""


def _scenario(
    tmp_path: Path, text: str, anvil, *, rpc_url: str | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "s.toml"
    f.write_text(text)
    out = tmp_path / "out"
    rpc_url = rpc_url or anvil.rpc_url
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "scenario", str(f), "--out", str(out), "--rpc-url", rpc_url],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out


def test_small_scenario_end_to_end_matches_the_chain(tmp_path, anvil):
    proc, out = _scenario(tmp_path, SMALL.format(acc_min=0.5), anvil)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((out / "results.json").read_text())
    for png in ("rewards.png", "accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(
        json.loads(line).get("event") == "task_deployed" for line in (out / "log.jsonl").read_text().splitlines()
    )

    # The schema other tools rely on.
    assert res["task"]["chain_id"] == 31337 and res["task"]["rounds"] == 2
    assert [w["behavior"] for w in res["workers"]] == ["honest"] * 3 + ["garbage"]
    assert res["task"]["scoring"] == DEFAULT_SCORING
    assert res["task"]["overlay"] is False  # in one process the star, unless [network] says otherwise
    assert [w["train_samples"] for w in res["workers"]] == [400] * 4  # 80 % of 500 digits each
    assert len(res["rounds"]) == 2
    for r in res["rounds"]:
        assert set(r["models"]) == {w["name"] for w in res["workers"]}
        assert set(r["test_accuracy"]) == set(r["models"]) and r["wall_s"] > 0
        assert all(0 <= p <= 1 for p in r["contribution"].values())
        assert all(g > 0 for g in r["gas"].values())
        assert sum(int(v) for v in r["rewards_wei"].values()) == int(res["task"]["deposit_wei"]) // 2

    # On-chain balances equal results.json, and the funds add up.
    async def chain_view():
        w3 = await connect(anvil.ws_url)
        try:
            c = TaskClient(w3, res["task"]["contract"], derive_account(0, "reader"))
            credits = {w["name"]: await c.credit_of(w["address"]) for w in res["workers"]}
            withdrawn = {w["name"]: 0 for w in res["workers"]}
            by_addr = {w["address"]: w["name"] for w in res["workers"]}
            scores = {}
            for ev in await c.past_events():
                if ev.name == "Withdrawn":
                    withdrawn[by_addr[ev.args["worker"]]] += ev.args["amount"]
                if ev.name == "ScoresRevealed":
                    scores[(ev.args["round"], by_addr[ev.args["evaluator"]])] = decode_scores(ev.args["scores"])
            return credits, withdrawn, await c.state(), scores
        finally:
            await w3.provider.disconnect()

    credits, withdrawn, st, scores = run(chain_view())
    final = {k: int(v) for k, v in res["final"]["rewards_wei"].items()}
    assert final == {n: credits[n] + withdrawn[n] for n in final}
    assert st.total_credited + st.refunded == st.deposit == int(res["task"]["deposit_wei"])
    assert int(res["final"]["deposit_refunded_wei"]) == st.refunded
    assert st.held + st.total_withdrawn + st.refunded == st.deposit
    # The adversary earns less than every honest worker.
    assert all(final["garbage-1"] < final[f"honest-{i}"] for i in (1, 2, 3))
    # Every worker's scores are on-chain, and the requester's matrix is built from them.
    assert len(scores) == 8
    assert res["final"]["expectations"] and all(e["ok"] for e in res["final"]["expectations"])

    # Anyone can recompute every round from the chain alone: the requester was honest.
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "discofl_p2p",
            "audit",
            "--rpc-url",
            anvil.rpc_url,
            "--contract",
            res["task"]["contract"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0 and "every settled round matches" in audit.stdout, audit.stdout + audit.stderr


def test_exit_codes_follow_expectations_and_file_validity(tmp_path, anvil):
    # One round, under the loyalty policy (explicit amounts on-chain), with an
    # accuracy expectation no model can meet.
    text = SMALL.format(acc_min=0.999).replace("rounds = 2", 'rounds = 1\nreward_policy = "loyalty"')
    proc, out = _scenario(tmp_path, text, anvil)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"]["task"]["reward_policy"] == "loyalty"
    paid = {k: int(v) for k, v in res["final"]["rewards_wei"].items()}
    assert sum(paid.values()) == int(res["task"]["deposit_wei"]) and paid["garbage-1"] == 0  # below the floor
    exp = res["final"]["expectations"]
    assert [(e["name"], e["ok"]) for e in exp] == [("final_accuracy_min", False), ("adversaries_below_honest", True)]
    assert "FAILED" in proc.stdout

    proc, out = _scenario(tmp_path / "bad", SMALL.format(acc_min=0.5).replace("top_k = 4", "top_k = 7"), anvil)
    assert proc.returncode == 2
    assert "s.toml:4: task.top_k:" in proc.stderr and not out.exists()


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_an_unreachable_chain_fails_the_run_with_exit_3(tmp_path, anvil):
    proc, out = _scenario(tmp_path, SMALL.format(acc_min=0.5), anvil, rpc_url=f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("discofl-p2p:")]
    assert len(lines) == 1 and lines[0].startswith("discofl-p2p: the run failed: ")
    assert "Could not connect to: ws://127.0.0.1:" in lines[0] and str(out / "log.jsonl") in lines[0]
    failed = [e for e in _events(out) if e["event"] == "run_failed"]
    assert len(failed) == 1 and "Could not connect" in failed[0]["errors"][0]
    assert not (out / "results.json").exists()


@pytest.mark.slow
def test_a_run_past_its_timeout_fails_with_exit_3(tmp_path, anvil):
    """A worker that never shows up holds the first round for its whole 60 s
    submission period, so a 10 s run cannot finish, however fast the machine."""
    text = (
        "timeout_s = 10\n"
        + SMALL.format(acc_min=0.5)
        + '\n[[workers]]\nname = "absent"\ncount = 1\nbehavior = "dropout"\nparams = { round = 1 }\n'
    ).replace("top_k = 4", "top_k = 5")
    proc, out = _scenario(tmp_path, text, anvil)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("discofl-p2p:")]
    assert len(lines) == 1 and lines[0].startswith("discofl-p2p: the run failed: ")
    assert "the task did not finish within timeout_s = 10 s (it reached round " in lines[0]
    failed = [e for e in _events(out) if e["event"] == "run_failed"]
    assert len(failed) == 1 and "RunTimedOut" in failed[0]["errors"][0]
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------- every behaviour in one run

# Deadlines: round 1 has every worker and advances as soon as all have acted; the
# deadlines only bound it, and they are many times what a phase takes on 2 loaded
# cores. Round 2 waits them out in full (the quitter and the sleeper never act in
# time), which is most of the zoo's wall time. The sleeper is late by construction:
# it acts only after the requester has moved past each phase, whatever its length.
BEHAVIOURS = """\
timeout_s = 600

[task]
name = "zoo"
rounds = 2
top_k = 8
submission_timeout_s = 30
evaluation_timeout_s = 30
seed = 6

[data]
samples_per_worker = 300

[model]
name = "logreg"  # fast: the zoo is about behaviours, not accuracy
epochs = 2
lr = 0.002

[[workers]]
name = "honest"
count = 3

[[workers]]
name = "garbage"
count = 1
behavior = "garbage"

[[workers]]
name = "flipper"
count = 1
behavior = "label_flip"

[[workers]]
name = "poisoner"
count = 1
behavior = "model_poisoning"
params = { mode = "sign_flip" }

[[workers]]
name = "copier"
count = 1
behavior = "free_rider"
params = { mode = "copy" }

[[workers]]
name = "biased"
count = 1
behavior = "biased_scorer"
params = { value = 0.05 }

[[workers]]
name = "lazy"
count = 1
behavior = "lazy_evaluator"
params = { value = 0.5 }

[[workers]]
name = "ring"
count = 2
behavior = "collusion"
params = { ring = "r1", shares_cids = true }

[[workers]]
name = "guessers"
count = 2
behavior = "collusion"
params = { ring = "r2", shares_cids = false }

[[workers]]
name = "quitter"
count = 1
behavior = "dropout"
params = { round = 2 }

[[workers]]
name = "sleeper"
count = 1
behavior = "dropout"
params = { round = 2, mode = "late" }

[faults]
announce_loss = 0.5
"""


@pytest.fixture(scope="module")
def zoo_out(tmp_path_factory, anvil) -> Path:
    tmp = tmp_path_factory.mktemp("zoo")
    proc, out = _scenario(tmp, BEHAVIOURS, anvil)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def zoo(zoo_out):
    return json.loads((zoo_out / "results.json").read_text())


@pytest.fixture(scope="module")
def zoo_log(zoo_out):
    return _events(zoo_out)


def _r(zoo, n):
    return zoo["rounds"][n - 1]


def _honest_mean(rec):
    return sum(rec["test_accuracy"][f"honest-{i}"] for i in (1, 2, 3)) / 3


@pytest.mark.slow
def test_garbage_trainer_submits_a_useless_model(zoo):
    assert _r(zoo, 2)["test_accuracy"]["garbage-1"] < 0.3 < _honest_mean(_r(zoo, 2))


@pytest.mark.slow
def test_label_flipper_submits_a_model_that_predicts_wrong_labels(zoo):
    assert _r(zoo, 2)["test_accuracy"]["flipper-1"] < 0.3 < _honest_mean(_r(zoo, 2))


@pytest.mark.slow
def test_poisoner_submits_a_sign_flipped_model(zoo):
    assert _r(zoo, 2)["test_accuracy"]["poisoner-1"] < 0.3


@pytest.mark.slow
def test_free_rider_resubmits_a_model_and_is_caught_by_its_cid(zoo):
    # Round 1: nothing to copy yet, so it submits w0's weights untrained; round 2: it
    # copies the best model it saw. Content addressing exposes both as replays.
    assert _r(zoo, 1)["excluded"]["copier-1"] == "replays w0"
    why = _r(zoo, 2)["excluded"]["copier-1"]
    assert why.startswith("replays ") and why.endswith("(round 1)")
    assert "copier-1" not in _r(zoo, 2)["models"] and _r(zoo, 2)["rewards_wei"]["copier-1"] == "0"


@pytest.mark.slow
def test_biased_and_lazy_evaluators_submit_constant_scores(zoo):
    for r in (1, 2):
        assert set(_r(zoo, r)["scores"]["biased-1"].values()) == {0.05}
        assert set(_r(zoo, r)["scores"]["lazy-1"].values()) == {0.5}
    assert _r(zoo, 2)["contribution"]["biased-1"] == 0  # |0.05 - median| >= 0.5


@pytest.mark.slow
def test_colluders_that_share_cids_favour_each_other(zoo):
    for r in (1, 2):
        s = _r(zoo, r)["scores"]
        assert s["ring-1"]["ring-2"] == 1.0 and s["ring-2"]["ring-1"] == 1.0
        assert {v for k, v in s["ring-1"].items() if k != "ring-2"} == {0.0}
    assert _r(zoo, 2)["contribution"]["ring-1"] == 0


@pytest.mark.slow
def test_colluders_under_anonymity_can_only_guess(zoo):
    for r in (1, 2):
        for g in ("guessers-1", "guessers-2"):
            row = _r(zoo, r)["scores"][g]
            # one 1.0 (a guess for its one fellow member), 0.0 for every other model
            assert sorted(row.values()) == [0.0] * (len(row) - 1) + [1.0]


@pytest.mark.slow
def test_dropouts_stop_or_miss_the_deadline(zoo):
    assert "quitter-1" in _r(zoo, 1)["models"] and "quitter-1" not in _r(zoo, 2)["models"]
    assert "quitter-1" not in _r(zoo, 2)["scores"]
    assert "sleeper-1" in _r(zoo, 1)["models"] and "sleeper-1" not in _r(zoo, 2)["models"]
    assert "sleeper-1" not in _r(zoo, 2)["scores"]
    assert _r(zoo, 2)["rewards_wei"]["quitter-1"] == "0" and _r(zoo, 2)["rewards_wei"]["sleeper-1"] == "0"
    assert "sleeper-1" not in _r(zoo, 2)["excluded"]  # never committed: nothing to exclude


@pytest.mark.slow
def test_the_late_worker_acts_after_each_phase_and_is_refused(zoo, zoo_log):
    """It sent its opening and commitment after evaluation opened, and its scores after
    the round settled: the requester and the contract refused all three."""
    late = [e for e in zoo_log if e.get("worker") == "sleeper-1" and e["event"].endswith("_refused")]
    assert [(e["event"], e["round"], e["error"]) for e in late] == [
        ("submission_refused", 2, "WrongPhase"),
        ("scores_refused", 2, "WrongPhase"),
    ]
    # Every on-time worker made both deadlines of both rounds.
    on_time = set(_r(zoo, 1)["models"]) | {"copier-1"}
    assert set(_r(zoo, 1)["scores"]) == on_time
    assert set(_r(zoo, 2)["scores"]) == on_time - {"quitter-1", "sleeper-1"}
    assert not [e for e in zoo_log if e["event"].endswith("_deadline_passed") and e["round"] == 1]


@pytest.mark.slow
def test_a_whole_scenario_runs_on_an_interval_mining_chain(tmp_path):
    """A stand-in for a real chain: blocks every second whether or not anything is sent,
    so every transaction waits for its block and deadlines pass on the chain's clock."""
    from discofl_p2p.chain.anvil import Anvil

    text = SMALL.format(acc_min=0.5).replace("rounds = 2", "rounds = 1")
    with Anvil(block_time=1) as chain:
        proc, out = _scenario(tmp_path, text, chain)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((out / "results.json").read_text())
    (r1,) = res["rounds"]
    assert set(r1["models"]) == {w["name"] for w in res["workers"]}
    assert sum(int(v) for v in r1["rewards_wei"].values()) == int(res["task"]["deposit_wei"])
