"""Scenario validation: every error names the file, the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from discofl_p2p.scenario.config import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
[task]
rounds = 2
top_k = 3

[data]
samples_per_worker = 100

[[workers]]
name = "honest"
count = 3

[[workers]]
name = "ring"
count = 2
behavior = "collusion"
params = { ring = "r1", shares_cids = true }
"""


def _error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as ei:
        parse_scenario(text, "s.toml")
    return ei.value


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path):
    sc = load_scenario(path)
    assert sc.n_workers >= sc.task.top_k or sc.task.reward_policy != "top_k"


def test_good_file_parses_with_defaults():
    sc = parse_scenario(GOOD, "s.toml", seed=9)
    assert sc.n_workers == 5 and sc.task.seed == 9 and sc.model.name == "compact_cnn"
    assert sc.workers[1].params == {"ring": "r1", "shares_cids": True}


@pytest.mark.parametrize(
    "edit, key, line, words",
    [
        (("top_k = 3", "top_k = 9"), "task.top_k", 3, "number of workers (5)"),
        (("rounds = 2", 'rounds = "2"'), "task.rounds", 2, "must be int, got str"),
        (("rounds = 2", "roundz = 2"), "task.roundz", 2, "unknown key"),
        (("samples_per_worker = 100", "samples_per_worker = 5000"), "data.samples_per_worker", 6, "exceeds"),
        (('name = "honest"\ncount = 3', 'name = "honest"\ncount = 0'), "workers[0].count", 10, ">= 1"),
        (('behavior = "collusion"', 'behavior = "colluder"'), "workers[1].behavior", 15, "unknown behaviour"),
        (("shares_cids = true", "shares_cids = 1"), "workers[1].params.shares_cids", 16, "must be bool"),
        (('name = "ring"\ncount = 2', 'name = "ring"\ncount = 1'), "workers[1].params.ring", 16, "has 1 member"),
        (
            ('params = { ring = "r1", shares_cids = true }', "params = { shares_cids = true }"),
            "workers[1].params",
            16,
            "needs params.ring",
        ),
        (('name = "ring"', 'name = "honest"'), "workers[1].name", 13, "used twice"),
    ],
)
def test_errors_name_key_and_line(edit, key, line, words):
    e = _error(GOOD.replace(*edit))
    assert (e.file, e.key, e.line) == ("s.toml", key, line), str(e)
    assert words in str(e) and str(e).startswith(f"s.toml:{line}: {key}:")


def test_bad_toml_and_missing_workers_and_unreadable_file(tmp_path):
    e = _error("[task\nrounds = 1\n")
    assert e.line == 1 and "not valid TOML" in str(e)
    e = _error("[task]\nrounds = 1\n")
    assert e.key == "workers" and "missing" in str(e)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")
