"""Scenarios: the TOML file and its validation, the runner that plays one on a chain
with agents, and the same task as a plain single-process loop."""

from discofl_p2p.scenario.config import Scenario, ScenarioError, WorkerGroup, load_scenario, parse_scenario
from discofl_p2p.scenario.plain import PlainOutcome, run_plain
from discofl_p2p.scenario.runner import RunOutcome, WorkerInfo, run_scenario

__all__ = [
    "PlainOutcome",
    "RunOutcome",
    "Scenario",
    "ScenarioError",
    "WorkerGroup",
    "WorkerInfo",
    "load_scenario",
    "parse_scenario",
    "run_plain",
    "run_scenario",
]
