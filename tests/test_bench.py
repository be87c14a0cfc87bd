"""Every benchmark command runs end to end in its quick mode and prints its figures.

The figures of a quick run mean nothing (tiny inputs, a loaded machine); these tests
check that the commands work and print every row, not what the numbers are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from discofl_p2p.bench.gas import CALLS
from discofl_p2p.chain.client import connect
from discofl_p2p.ml.aggregation import AGGREGATORS
from discofl_p2p.ml.models import MODELS
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[\d,]+(\.\d+)?"


def _bench(*args: str, timeout: int = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "bench", *args, "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def _row(out: str, label: str, *, last: bool = False) -> str:
    """The (first, or last) table row that starts with `label` (cells between │)."""
    rows = [line for line in out.splitlines() if line.strip("│ ").split("│")[0].strip() == label]
    if not rows:
        raise AssertionError(f"no row {label!r} in:\n{out}")
    return rows[-1] if last else rows[0]


ROUND_CALLS = tuple(c for c in CALLS if c not in ("startTraining", "closeTask", "withdraw"))


@pytest.mark.slow
def test_bench_gas_quick_prints_every_call(anvil):
    out = _bench("gas", "--rounds", "1", "--rpc-url", anvil.rpc_url)
    for call in (*ROUND_CALLS, "withdraw"):
        gas = re.search(rf"│\s*({NUMBER})\s*│", _row(out, call))
        assert gas and int(gas.group(1).replace(",", "")) > 21_000, _row(out, call)
    assert "per worker per round, W = 6" in out


def test_bench_gas_json_names_the_fork_and_every_call(anvil):
    figures = json.loads(_bench("gas", "--rounds", "1", "--json", "--rpc-url", anvil.rpc_url))
    assert figures["fork"] == (run(_node_info(anvil.ws_url)))["hardFork"]
    calls = figures["calls"]["6"]
    assert set(calls) >= set(ROUND_CALLS)
    assert all(isinstance(g, int) and g > 21_000 for g in calls.values())
    # A worker sends two transactions a round; its reveal goes in the requester's batch
    # (one round: the bench's last round leaves one evaluator out, which reveals its own).
    assert calls["workerPerRound"] == calls["submitModel"] + calls["commitScores"]
    assert calls["revealScoresBatch"] > 21_000 and calls["revealScores"] > 21_000


async def _node_info(ws_url: str) -> dict[str, str]:
    w3 = await connect(ws_url)
    try:
        return (await w3.provider.make_request("anvil_nodeInfo", []))["result"]
    finally:
        await w3.provider.disconnect()


def test_bench_ml_quick_prints_every_model_and_rule():
    out = _bench("ml")
    for name in MODELS:
        assert re.search(rf"{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}", _row(out, name)), _row(out, name)
    for rule in AGGREGATORS:
        assert re.search(rf"{NUMBER} ms", _row(out, rule)), _row(out, rule)


def test_bench_p2p_quick_prints_throughput_all_to_all_and_memory():
    out = _bench("p2p")
    assert re.search(rf"1 MiB\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}", out), out
    assert re.search(rf"all-to-all, W = 4 nodes.*: {NUMBER} s \(full-mesh dialling before it: {NUMBER} s\)", out), out
    assert re.search(rf"spread over \d processes: {NUMBER} s \(dialling: {NUMBER} s\)", out), out
    assert re.search(rf"memory per idle node \(5 started\): Python heap -?{NUMBER} MB", out), out


@pytest.mark.slow
def test_bench_scenarios_quick_runs_every_scenario_and_the_plain_loop():
    out = _bench("scenarios", timeout=600)
    for name in ("baseline", "garbage", "collusion", "biased"):
        assert f"running {name}.toml with the top_k policy" in out
    for name in ("garbage", "collusion", "biased"):
        # the accuracy table comes first; the reward shares are the last table
        assert re.search(rf"{NUMBER}%\s*│\s*{NUMBER}%", _row(out, f"{name}.toml", last=True)), out
    for name in ("baseline", "garbage"):
        assert re.search(rf"│\s*{NUMBER}\s*│\s*{NUMBER}\s*│", _row(out, f"{name}.toml")), out
    assert re.search(rf"plain loop = {NUMBER} \(goal", out), out
    assert re.search(
        rf"at equal parallelism \(\d+ jobs at a time in both\): {NUMBER} s / {NUMBER} s = {NUMBER}", out
    ), out
