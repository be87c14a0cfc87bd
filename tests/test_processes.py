"""One OS process per agent: `requester`/`worker` commands, `scenario --processes`, `up`.

Real processes on a real anvil: the same tiny task run in process and with one process
per agent ends with the same rankings and rewards; Ctrl-C on `up` leaves no process
behind; bad arguments are refused before anything starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from discofl_p2p.agents.context import Recorder
from discofl_p2p.commands.cli import main
from discofl_p2p.commands.up import process_summary
from discofl_p2p.scenario.processes import merge_logs, run_processes
from discofl_p2p.scenario.records import RecordsError, merge_rounds, read_records, write_records
from discofl_p2p.scenario.runner import run_scenario
from tests.conftest import TINY, run, tiny


def test_processes_mode_settles_as_in_process(tmp_path, anvil):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY.format(name="procs"))
    sc = tiny("procs")
    inproc = run(run_scenario(sc, anvil.ws_url))
    procs = run(run_processes(sc, file, anvil.ws_url, tmp_path / "run"))

    assert procs.contract != inproc.contract
    assert procs.rewards_wei == inproc.rewards_wei and sum(procs.rewards_wei.values()) > 0
    for r, rec in inproc.rounds.items():
        assert procs.rounds[r].ranking == rec.ranking
        assert procs.rounds[r].rewards_wei == rec.rewards_wei
        assert procs.rounds[r].contribution == pytest.approx(rec.contribution)
        assert set(procs.rounds[r].gas) == set(rec.gas)  # every worker's records came back
    assert procs.final_accuracy == pytest.approx(inproc.final_accuracy)
    pids = [w.pid for w in procs.workers]
    assert len(set(pids)) == 3 and os.getpid() not in pids
    assert [w.peer_id for w in procs.workers] == [w.peer_id for w in inproc.workers]  # the same keys

    # The run's timeline: every process's log merged into log.jsonl, in time order.
    events = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    merged = [e for e in events if "process" in e]
    assert [e["timestamp"] for e in merged] == sorted(e["timestamp"] for e in merged)
    assert {e["process"] for e in merged} == {"requester", "honest-1", "honest-2", "honest-3"}
    assert {(e.get("agent"), e["event"]) for e in merged} >= {
        ("requester", "round_settled"),
        *((f"honest-{i}", "scores_revealed") for i in (1, 2, 3)),
    }
    assert events[-1]["event"] == "logs_merged"
    # The overlay is on by default with a process per agent, off in one process: each
    # author fetches its own model back (its cover fetch) as well as the others'.
    assert (inproc.overlay, procs.overlay) == (False, True)
    fetched = [(e["agent"], e["round"]) for e in merged if e["event"] == "model_fetched"]
    assert sorted(fetched) == sorted((f"honest-{i}", r) for i in (1, 2, 3) for r in procs.rounds for _ in range(3))


def _descendants(pid: int) -> set[int]:
    """Every living process below `pid`, from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        out |= kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigint_stops_up_in_order_with_no_process_left(tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY.format(name="upsig").replace("submission_timeout_s = 30", "submission_timeout_s = 60"))
    out = tmp_path / "run"
    up = subprocess.Popen(
        [sys.executable, "-m", "discofl_p2p", "up", str(file), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # mid-run: the first round has started
            log = out / "logs" / "requester.jsonl"
            if log.is_file() and '"round_started"' in log.read_text():
                break
            assert up.poll() is None, up.communicate()
            time.sleep(0.2)
        children = _descendants(up.pid)
        assert len(children) >= 5  # anvil, the requester, three workers
        up.send_signal(signal.SIGINT)
        stdout, stderr = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 130, stderr
    assert "dashboard: http://127.0.0.1:" in stdout and "interrupted" in stderr
    assert not [p for p in children if _alive(p)]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    exits = [e["agent"] for e in events if e["event"] == "process_exited" and "process" not in e]
    assert exits[-1] == "requester" and sorted(exits[:-1]) == ["honest-1", "honest-2", "honest-3"]
    assert all("process honest-" in s or "process requester" in s for s in process_summary(out / "log.jsonl"))
    records = read_records(out / "records" / "honest-1.json")
    assert records["finished"] is False and records["pid"] in children


def test_agent_commands_refuse_bad_arguments(tmp_path, capsys):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY.format(name="args"))
    key = tmp_path / "w.key"
    key.write_text("0x" + "11" * 32)
    boot = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJJXjhN6qJqxR9GMq4Vw9F9kTFALUJ1UyL7cDqxSQYNxU"
    base = ["worker", "--rpc-url", "http://127.0.0.1:1", "--contract", "0x" + "22" * 20, "--scenario", str(file)]
    cases = [
        ([*base, "--key", str(key), "--bootstrap", boot, "--name", "honest-9"], "--name 'honest-9': not a worker"),
        ([*base, "--key", str(key), "--bootstrap", "/ip4/127.0.0.1/tcp/1", "--name", "honest-1"], "--bootstrap"),
        ([*base, "--key", str(tmp_path / "none"), "--bootstrap", boot, "--name", "honest-1"], "--key"),
        ([*base, "--key", str(file), "--bootstrap", boot, "--name", "honest-1"], "64 hex digits"),
        (
            ["requester", "--rpc-url", "x", "--key", str(key), "--scenario", str(file), "--workers", str(file)],
            "not JSON",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:  # a required option missing: argparse's exit 2
        main(["worker", "--rpc-url", "x"])
    assert e.value.code == 2


def test_records_round_trip_and_merge(tmp_path):
    req, wk = Recorder(), Recorder()
    rec = req.record(1)
    rec.ranking, rec.rewards_wei, rec.scores = ["b", "a"], {"a": 1, "b": 10**19}, {"a": {"b": 0.5}}
    wk.add_gas(1, "a", 70_000)
    write_records(tmp_path / "r.json", req, agent="requester", final_accuracy=0.5)
    write_records(tmp_path / "a.json", wk, agent="a")
    parts = [read_records(tmp_path / n) for n in ("r.json", "a.json")]
    merged = merge_rounds(p["rounds"] for p in parts)
    assert merged[1].ranking == ["b", "a"] and merged[1].rewards_wei["b"] == 10**19
    assert merged[1].gas == {"a": 70_000} and merged[1].scores == {"a": {"b": 0.5}}
    assert parts[0]["final_accuracy"] == 0.5
    (tmp_path / "bad.json").write_text('{"rounds": [{"round": 1, "evil": 1}]}')
    with pytest.raises(RecordsError, match=r"bad.json: rounds\[0\]"):
        read_records(tmp_path / "bad.json")


def test_merge_logs_orders_every_process_by_time(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "log.jsonl").write_text('{"event": "process_started", "timestamp": "2026-01-01T00:00:00Z"}\n')
    a, b = tmp_path / "logs/a.jsonl", tmp_path / "logs/b.jsonl"
    a.write_text('{"event": "x", "timestamp": "2026-01-01T00:00:02Z"}\nnot json\n')
    b.write_text('{"event": "y", "timestamp": "2026-01-01T00:00:01Z"}\n')
    assert merge_logs(tmp_path, [a, b]) == 2
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("process")) for e in lines] == [
        ("process_started", None),
        ("y", "b"),
        ("x", "a"),
        ("logs_merged", None),
    ]


KILL = (
    TINY.replace("submission_timeout_s = 30", "submission_timeout_s = 8").replace(
        "evaluation_timeout_s = 30", "evaluation_timeout_s = 8"
    )
    + '\n[faults]\nkill = {{ "honest-3" = 1 }}\n'
)
"""TINY with honest-3's process killed (SIGKILL) when round 1 starts, and short deadlines."""


@pytest.mark.slow
def test_a_worker_killed_mid_round_is_settled_without(tmp_path):
    res, events = run_faulty(tmp_path, KILL.format(name="kill"))
    [fault] = res["faults"]
    assert (fault["kind"], fault["worker"], fault["round"], fault["signal"]) == ("kill", "honest-3", 1, "SIGKILL")
    codes = {w["name"]: w["exit_code"] for w in res["workers"]}
    assert codes == {"honest-1": 0, "honest-2": 0, "honest-3": -signal.SIGKILL}
    [r1] = res["rounds"]
    assert sorted(r1["models"]) == sorted(r1["ranking"]) == ["honest-1", "honest-2"]
    missed = {e["event"]: e["missing"] for e in events if e["event"].endswith("_deadline_passed")}
    assert missed["submission_deadline_passed"] == ["honest-3"]
    # Score commits close at the evaluation deadline; the requester then settles on the
    # last reveal (nothing logged as forced) or at the reveal deadline (logged, honest-3
    # missing): either way without honest-3.
    assert set(missed) <= {"submission_deadline_passed", "evaluation_deadline_passed"}
    assert missed.get("evaluation_deadline_passed", ["honest-3"]) == ["honest-3"]
    assert res["final"]["rewards_wei"]["honest-3"] == "0"


def run_faulty(tmp_path: Path, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs the scenario `text` with --processes as a user would; checks that it exits 0
    and that nothing is lost (the whole deposit paid to the survivors or refunded);
    returns its results.json and its merged log."""
    file = tmp_path / "faults.toml"
    file.write_text(text)
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "scenario", str(file), "--processes", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    paid = sum(int(v) for v in res["final"]["rewards_wei"].values()) + int(res["final"]["deposit_refunded_wei"])
    assert paid + int(res["final"]["held_wei"]) == int(res["task"]["deposit_wei"])
    return res, [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_faults_kill_is_validated_and_needs_processes(tmp_path, capsys):
    from discofl_p2p.scenario.config import ScenarioError, parse_scenario

    with pytest.raises(ScenarioError, match=r"faults.kill.honest-9: no worker is named 'honest-9'"):
        parse_scenario(KILL.format(name="k").replace('"honest-3" = 1', '"honest-9" = 1'))
    with pytest.raises(ScenarioError, match=r"faults.kill.honest-3: must be a round from 1 to 1, got 2"):
        parse_scenario(KILL.format(name="k").replace('"honest-3" = 1', '"honest-3" = 2'))
    file = tmp_path / "kill.toml"
    file.write_text(KILL.format(name="k"))
    assert main(["scenario", str(file), "--out", str(tmp_path / "run")]) == 2
    assert "faults.kill kills an agent's OS process: run it with --processes" in capsys.readouterr().err


def test_a_partitioned_node_refuses_then_recovers_and_a_lossy_link_drops():
    """The p2p edge of the injected faults, on two real nodes: while A is partitioned
    B cannot fetch from it and A's own request waits; after, both get through. A lossy
    link with loss 1 drops every stream, seeded draws replay."""
    from discofl_p2p.p2p import BlobUnavailable, NodeConfig, P2PNetwork
    from discofl_p2p.p2p.linkfault import LinkFaults
    from discofl_p2p.p2p.node import key_from_seed

    async def body() -> None:
        async with P2PNetwork(NodeConfig(fetch_timeout_s=3, request_timeout_s=3)) as net:
            a = await net.add_node(key_from_seed(7, "a"))
            b = await net.add_node(key_from_seed(7, "b"))
            await a.connect(b)  # A knows B's address, as a worker knows the requester's
            cid_a, cid_b = await a.put(b"held by a"), await b.put(b"held by b")
            await a.partition(1.5)
            await asyncio.sleep(0.2)
            with pytest.raises(BlobUnavailable):
                await b.get(cid_a, [a.peer_id], deadline_s=1.0)
            t0 = time.monotonic()
            assert await a.get(cid_b, [b.peer_id]) == b"held by b"  # held until the partition ended
            assert time.monotonic() - t0 > 0.8
            assert await b.get(cid_a, [a.peer_id]) == b"held by a"
            counts = a.link_faults
            assert counts["connections_closed"] >= 1 and counts["streams_held"] == 1

            await b.degrade(0.05, 1.0, "seed")
            with pytest.raises(BlobUnavailable, match="dropped by the injected lossy link"):
                await b.get(cid_a, [a.peer_id])
            assert b.link_faults["streams_dropped"] == b.link_faults["streams_delayed"] == 1

    run(body())
    draws = []
    for _ in range(2):
        f = LinkFaults()
        f.degrade(0, 0.5, "21/honest-2/lossy")
        assert f.lossy is not None
        draws.append([f.lossy.dropped() for _ in range(20)])
    assert draws[0] == draws[1] and 0 < sum(draws[0]) < 20


NET_FAULTS = (
    TINY.replace("submission_timeout_s = 30", "submission_timeout_s = 20")
    + '\n[faults]\npartition = {{ "honest-1" = {{ round = 1, seconds = 8 }} }}\n'
    + 'lossy = {{ "honest-2" = {{ round = 1, delay_ms = 100, loss = 0.3 }} }}\n'
)
"""TINY with honest-1 cut off the network for 8 s (longer than its training, shorter
than the 10 s its opening may take) and honest-2 on a slow lossy link,
both from the start of round 1."""


@pytest.mark.slow
def test_a_partitioned_worker_and_a_lossy_link_are_survived(tmp_path):
    res, events = run_faulty(tmp_path, NET_FAULTS.format(name="netfaults"))
    faults = {f["kind"]: f for f in res["faults"]}
    assert sorted(faults) == ["lossy", "partition"]
    part, lossy = faults["partition"], faults["lossy"]
    assert (part["worker"], part["round"], part["seconds"]) == ("honest-1", 1, 8)
    assert (lossy["worker"], lossy["delay_ms"], lossy["loss"]) == ("honest-2", 100, 0.3)
    [r1] = res["rounds"]
    # The partition is shorter than every timeout: honest-1 comes back and is ranked.
    # Its peers were cut off (connections closed); the opening it sent the requester
    # waited for the end of the partition, if it had trained before then.
    assert part["outcome"] == "recovered" and "honest-1" in r1["models"]
    assert part["link"]["connections_closed"] >= 1
    mine = [e for e in events if e.get("process") == "honest-1"]
    [started] = [e for e in mine if e["event"] == "partition_started"]
    assert started["seconds"] == 8
    [ended] = [e for e in mine if e["event"] == "partition_ended"]
    assert ended["connections_closed"] == part["link"]["connections_closed"]
    at = {e["event"]: e["timestamp"] for e in mine}
    assert at["opening_sent"] > ended["timestamp"]
    if at["model_trained"] < ended["timestamp"]:
        assert part["link"]["streams_held"] >= 1
    # The lossy link delayed every stream of honest-2 and dropped some, as its log says;
    # whatever it dropped, honest-2 recovered or was excluded with the reason recorded.
    dropped = [e for e in events if e.get("process") == "honest-2" and e["event"] == "stream_dropped"]
    assert lossy["link"]["streams_delayed"] >= 1 and lossy["link"]["streams_dropped"] == len(dropped)
    if lossy["outcome"] == "recovered":
        assert "honest-2" in r1["models"]
    else:
        assert lossy["outcome"] == "excluded" and lossy["reasons"]
    codes = {w["name"]: w["exit_code"] for w in res["workers"]}
    assert codes["honest-1"] == codes["honest-3"] == 0


def test_link_faults_are_validated_and_need_processes(tmp_path, capsys):
    from discofl_p2p.scenario.config import ScenarioError, parse_scenario

    text = NET_FAULTS.format(name="k")
    cases = [  # (edit of the file, the error it gets: file:line: key: message)
        (("seconds = 8", "seconds = 0"), r":\d+: faults.partition.honest-1.seconds: must be a number of seconds > 0"),
        (("loss = 0.3", "loss = 1.5"), r"faults.lossy.honest-2.loss: must be a probability in \[0, 1\], got 1.5"),
        (("delay_ms = 100, ", ""), r"faults.lossy.honest-2: missing 'delay_ms'"),
        (("round = 1, seconds", "round = 2, seconds"), r"faults.partition.honest-1.round: must be a round from 1 to 1"),
        (('"honest-1" =', '"honest-9" ='), r"faults.partition.honest-9: no worker is named 'honest-9'"),
        (("loss = 0.3", "loss = 0.3, jitter = 1"), r"faults.lossy.honest-2.jitter: unknown key"),
    ]
    for (old, new), error in cases:
        with pytest.raises(ScenarioError, match=error):
            parse_scenario(text.replace(old, new))
    file = tmp_path / "net.toml"
    file.write_text(text)
    assert main(["scenario", str(file), "--out", str(tmp_path / "run")]) == 2
    assert "faults.partition acts on a worker process's network: run it with --processes" in capsys.readouterr().err


def test_a_faulted_worker_is_recovered_only_if_published_every_round_and_exited_normally():
    from discofl_p2p.agents.context import RoundRecord
    from discofl_p2p.scenario.faultplan import fault_outcome

    rounds = {
        1: RoundRecord(1, models={"a": "c1", "b": "c2"}),
        2: RoundRecord(2, models={"b": "c3"}, excluded={"a": "model failed the checks against w0"}),
        3: RoundRecord(3, models={"b": "c4"}),
    }
    assert fault_outcome("b", 1, rounds, 0, "") == {"outcome": "recovered"}
    assert fault_outcome("a", 1, rounds, 0, "", {2: "could not fetch c5"}) == {
        "outcome": "excluded",
        "reasons": {
            "round 2": "model failed the checks against w0: could not fetch c5",
            "round 3": "no commitment before the submission deadline",
        },
    }
    # Round 1, before its fault, does not count; a process that gave up does.
    assert fault_outcome("b", 2, rounds, 1, "LinkDropped") == {
        "outcome": "excluded",
        "reasons": {"process": "exited with code 1: LinkDropped"},
    }


RESTART = (
    TINY.replace("rounds = 1", "rounds = 2").replace("evaluation_timeout_s = 30", "evaluation_timeout_s = 60")
    + '\n[faults]\nrestart_requester = {{ round = 2, phase = "evaluation" }}\n'
)
"""TINY over two rounds, with the requester's process killed (SIGKILL) as round 2's
evaluation opens, while the workers fetch the published models from it, and started
again with `--resume`."""


@pytest.mark.slow
def test_a_requester_killed_mid_round_resumes_and_settles_every_round_once(tmp_path):
    """The restarted requester replays the chain (round 1 settled, round 2 in
    evaluation), takes round 2's published order and checked models back from its
    store, serves them again, and settles round 2: each round is settled by exactly one
    transaction and paid once (run_faulty: the whole deposit paid or refunded, once)."""
    res, events = run_faulty(tmp_path, RESTART.format(name="restart"))
    [fault] = res["faults"]
    assert (fault["kind"], fault["round"], fault["phase"], fault["outcome"]) == (
        "restart_requester",
        2,
        "evaluation",
        "recovered",
    )
    assert fault["new_pid"] != fault["pid"] and fault["back_s"] > 0
    assert fault["resumed"]["round"] == 2 and fault["resumed"]["phase"] == "evaluation"
    assert fault["resumed"]["settled"] == [1]
    # The restarted requester's wall times come from block timestamps: round 1's,
    # settled before the crash, and round 2's, the time it was down included, match
    # its log (round_started by the first process, round_settled by the second) to
    # within block timestamps' whole seconds and anvil's lead over the wall clock.
    ours_before = [e for e in events if e.get("process") == "requester"]
    for rec in res["rounds"]:
        [t0] = [e["timestamp"] for e in ours_before if e["event"] == "round_started" and e["round"] == rec["round"]]
        [t1] = [e["timestamp"] for e in ours_before if e["event"] == "round_settled" and e["round"] == rec["round"]]
        logged = (datetime.fromisoformat(t1) - datetime.fromisoformat(t0)).total_seconds()
        assert abs(rec["wall_s"] - logged) < 2.5, (rec["round"], rec["wall_s"], logged)
    assert res["rounds"][1]["wall_s"] > fault["back_s"]
    ours = [e for e in events if e.get("process") == "requester"]
    assert [e["round"] for e in ours if e["event"] == "round_settled"] == [1, 2]
    assert len([e for e in ours if e["event"] == "task_deployed"]) == 1
    assert len([e for e in ours if e["event"] == "requester_resumed"]) == 1
    # Nothing lost: every worker's model published and scored in both rounds, rewards
    # paid for both, and each worker withdrew what the chain says it earned.
    for rec in res["rounds"]:
        assert sorted(rec["models"]) == ["honest-1", "honest-2", "honest-3"] and not rec["excluded"]
        assert sum(int(v) for v in rec["rewards_wei"].values()) > 0
    assert {w["name"]: w["exit_code"] for w in res["workers"]} == dict.fromkeys(["honest-1", "honest-2", "honest-3"], 0)
    withdrawn: dict[str, int] = {}
    for e in events:
        if e["event"] == "withdrawn":
            withdrawn[e["agent"]] = withdrawn.get(e["agent"], 0) + int(e["amount"])
    assert all(withdrawn.get(n, 0) >= int(v) for n, v in res["final"]["rewards_wei"].items())
    refunded = int(res["final"]["deposit_refunded_wei"])
    assert sum(withdrawn.values()) + refunded <= int(res["task"]["deposit_wei"])


def test_restart_requester_is_validated_and_needs_processes(tmp_path, capsys):
    from discofl_p2p.scenario.config import ScenarioError, parse_scenario

    text = RESTART.format(name="k")
    cases = [  # (edit of the file, the error it gets: file:line: key: message)
        (("round = 2, ", "round = 3, "), r":\d+: faults.restart_requester.round: must be a round from 1 to 2, got 3"),
        (('"evaluation"', '"training"'), r"faults.restart_requester.phase: must be one of submission, evaluation"),
        (('phase = "evaluation"', "phase = 2"), r"faults.restart_requester.phase: must be str, got int 2"),
        (("round = 2, ", ""), r"faults.restart_requester: missing 'round'"),
        (("round = 2, ", "round = 2, after_s = 1, "), r"faults.restart_requester.after_s: unknown key"),
    ]
    for (old, new), error in cases:
        with pytest.raises(ScenarioError, match=error):
            parse_scenario(text.replace(old, new))
    file = tmp_path / "restart.toml"
    file.write_text(text)
    assert main(["scenario", str(file), "--out", str(tmp_path / "run")]) == 2
    assert "faults.restart_requester kills the requester's OS process: run it with --processes" in (
        capsys.readouterr().err
    )
