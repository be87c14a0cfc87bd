"""Scenario validation: every error names the file, the key and the line."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from discofl_p2p.chain.limits import ETH, MAX_DEPOSIT_WEI, MAX_PERIOD_S, MAX_ROUNDS, MAX_TOP_K, MAX_WORKERS
from discofl_p2p.commands.scenario import EXIT_BAD_FILE, scenario_main
from discofl_p2p.scenario.config import (
    DataSection,
    ExpectSection,
    FaultsSection,
    ModelSection,
    ScenarioError,
    TaskSection,
    load_scenario,
    parse_scenario,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))

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


def _workers(*groups: tuple[str, int], policy: str = "top_k", dataset: str = "mnist-embedded") -> str:
    """A file with the given (name, count) groups of honest workers."""
    text = f'[task]\ntop_k = 1\nreward_policy = "{policy}"\n\n[data]\ndataset = "{dataset}"\n'
    return text + "".join(f'\n[[workers]]\nname = "{n}"\ncount = {c}\n' for n, c in groups)


# ---------------------------------------------------------------- the shipped files


def _assignments(text: str) -> Iterator[tuple[int, str, int, int]]:
    """(line, dotted key, start, end of its value) for every `key = value` of a file made
    of tables, arrays of tables and one-line inline tables: the test's own reading of
    the file, independent of the validator's."""
    table, seen = "", dict[str, int]()
    for n, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        if m := re.match(r"\s*\[\[\s*(\w+)\s*\]\]", code):
            seen[m[1]] = seen.get(m[1], -1) + 1
            table = f"{m[1]}[{seen[m[1]]}]"
        elif m := re.match(r"\s*\[\s*(\w+)\s*\]", code):
            table = m[1]
        elif m := re.match(r"\s*(\w+)\s*=\s*(.*?)\s*$", code):
            key = f"{table}.{m[1]}" if table else m[1]
            yield n, key, m.start(2), m.end(2)
            if m[2].startswith("{"):
                for inner in re.finditer(r"(\w+)\s*=\s*([^,}]*?)\s*(?=[,}])", m[2]):
                    yield n, f"{key}.{inner[1]}", m.start(2) + inner.start(2), m.start(2) + inner.end(2)


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a parsed file, lists of tables indexed."""
    if isinstance(value, dict) and (value or not prefix.endswith("params")):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _at(d: Any, key: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        d = d[int(part[1:-1])] if part.startswith("[") else d[part]
    return d


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_scenario_loads_with_every_value_it_sets(path):
    loaded = load_scenario(path).to_dict()
    leaves = list(_leaves(tomllib.loads(path.read_text())))
    assert len(leaves) >= 10
    for key, value in leaves:
        assert _at(loaded, key) == value, key


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_wrong_type_anywhere_in_a_shipped_file_names_that_key_and_its_line(path):
    text = path.read_text()
    lines = text.splitlines()
    edits = list(_assignments(text))
    # the test's reading of the file covers every key tomllib sees in it
    assert {k for _, k, _, _ in edits} >= {k for k, _ in _leaves(tomllib.loads(text))}
    for n, key, start, end in edits:
        line = lines[n - 1]
        bad = "\n".join([*lines[: n - 1], line[:start] + "[]" + line[end:], *lines[n:]])
        with pytest.raises(ScenarioError) as ei:
            parse_scenario(bad, path.name)
        e = ei.value
        assert (e.key, e.line) == (key, n), str(e)
        assert re.search(r"must be (a table|int|str|bool|float)", e.message), str(e)


def test_the_example_in_the_docs_is_valid():
    doc = (ROOT / "docs" / "scenarios.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert example, "docs/scenarios.md lost its example"
    sc = parse_scenario(example[1], "scenarios.md")
    assert sc.n_workers == 6 and sc.workers[1].params["ring"] == "r1"


def test_good_file_parses_with_defaults():
    sc = parse_scenario(GOOD, "s.toml", seed=9)
    assert sc.n_workers == 5 and sc.task.seed == 9 and sc.model.name == "compact_cnn"
    assert sc.workers[1].params == {"ring": "r1", "shares_cids": True}


# ---------------------------------------------------------------- errors: key, line, words

KRUM = 'top_k = 3\naggregation = "krum"\naggregation_params = '  # aggregation_params on line 5
MULTI = 'top_k = 3\naggregation = "multi_krum"\naggregation_params = '


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
        # aggregation parameters: only those the chosen rule takes, with sensible values
        (("top_k = 3", KRUM + "{ g = 1 }"), "task.aggregation_params.g", 5, "unknown parameter of aggregation 'krum'"),
        (
            ("top_k = 3", 'top_k = 3\naggregation = "sharpened"\naggregation_params = { f = 1 }'),
            "task.aggregation_params.f",
            5,
            "it takes: keep_ratio",
        ),
        (
            ("top_k = 3", "top_k = 3\naggregation_params = { keep_ratio = 0.5 }"),
            "task.aggregation_params.keep_ratio",
            4,
            "aggregation 'score_weighted' takes no parameters",
        ),
        (("top_k = 3", KRUM + "{ f = -1 }"), "task.aggregation_params.f", 5, "must be >= 0"),
        (("top_k = 3", KRUM + "{ f = 3 }"), "task.aggregation_params.f", 5, "with 5 workers f must be at most 2"),
        (("top_k = 3", KRUM + "{ f = 1.5 }"), "task.aggregation_params.f", 5, "must be int, got float"),
        (("top_k = 3", KRUM + "{ f = true }"), "task.aggregation_params.f", 5, "must be int, got bool"),
        (("top_k = 3", MULTI + "{ f = -2 }"), "task.aggregation_params.f", 5, "must be >= 0"),
        (("top_k = 3", MULTI + "{ m = 0 }"), "task.aggregation_params.m", 5, "between 1 and the number of workers"),
        (("top_k = 3", MULTI + "{ m = 6 }"), "task.aggregation_params.m", 5, "number of workers (5), got 6"),
        (
            ("top_k = 3", 'top_k = 3\naggregation = "trimmed_mean"\naggregation_params = { trim = 0.5 }'),
            "task.aggregation_params.trim",
            5,
            "[0, 0.5)",
        ),
        (
            ("top_k = 3", 'top_k = 3\naggregation = "sharpened"\naggregation_params = { keep_ratio = 1.5 }'),
            "task.aggregation_params.keep_ratio",
            5,
            "[0, 1]",
        ),
        (("top_k = 3", KRUM + "{ f = nan }"), "task.aggregation_params.f", 5, "must be int, got float"),
        # what the contract would refuse at deployment
        (("rounds = 2", "rounds = 4294967296"), "task.rounds", 2, "uint32"),
        (("top_k = 3", "top_k = 3\ndeposit_eth = 1e11"), "task.deposit_eth", 4, "uint96"),
        (("top_k = 3", "top_k = 3\ndeposit_eth = 1e-19"), "task.deposit_eth", 4, "0 wei"),
        (("top_k = 3", "top_k = 3\ndeposit_eth = inf"), "task.deposit_eth", 4, "finite number, got inf"),
        (("top_k = 3", "top_k = 3\ndeposit_eth = nan"), "task.deposit_eth", 4, "finite number, got nan"),
        (("top_k = 3", "top_k = 3\nseed = -1"), "task.seed", 4, ">= 0"),
        # behaviour parameters
        (('ring = "r1"', 'ring = ""'), "workers[1].params.ring", 16, "must not be empty"),
        (('ring = "r1"', 'ring = "  "'), "workers[1].params.ring", 16, "must not be empty"),
        (
            ("count = 3\n", "count = 3\nparams = { mode = 1 }\n"),
            "workers[0].params.mode",
            11,
            "'honest' takes no params",
        ),
        # data: each worker needs a train and a validation sample
        (("samples_per_worker = 100", "samples_per_worker = 1"), "data.samples_per_worker", 6, "or >= 2"),
        (
            ("samples_per_worker = 100", "samples_per_worker = 0\ntest_fraction = 0.9995"),
            "data.test_fraction",
            7,
            "at least 2",
        ),
    ],
)
def test_errors_name_key_and_line(edit, key, line, words):
    assert edit[0] in GOOD
    e = _error(GOOD.replace(*edit))
    assert (e.file, e.key, e.line) == ("s.toml", key, line), str(e)
    assert words in str(e) and str(e).startswith(f"s.toml:{line}: {key}:")


def test_every_behaviour_that_takes_no_params_says_so():
    for behavior in ("honest", "garbage", "label_flip"):
        e = _error(GOOD.replace('behavior = "collusion"', f'behavior = "{behavior}"'))
        assert (e.key, e.line) == ("workers[1].params.ring", 16)
        assert e.message == f"behaviour {behavior!r} takes no params"


# ---------------------------------------------------------------- non-finite floats


def _float_fields() -> Iterator[tuple[str, str]]:
    for section, cls in (
        ("task", TaskSection),
        ("data", DataSection),
        ("model", ModelSection),
        ("faults", FaultsSection),
        ("expect", ExpectSection),
    ):
        for f in dataclasses.fields(cls):
            if str(f.type).startswith("float"):
                yield section, f.name


def _set(section: str, assignment: str) -> str:
    """GOOD with `assignment` added to [section] (appended as a new table if GOOD has none)."""
    if f"[{section}]\n" in GOOD:
        return GOOD.replace(f"[{section}]\n", f"[{section}]\n{assignment}\n")
    return f"{GOOD}\n[{section}]\n{assignment}\n"


@pytest.mark.parametrize("section, name", list(_float_fields()), ids=lambda x: x)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_field_rejects_non_finite_values(section, name, value):
    text = _set(section, f"{name} = {value}")
    e = _error(text)
    assert (e.key, e.line) == (f"{section}.{name}", text.splitlines().index(f"{name} = {value}") + 1), str(e)
    assert e.message == f"must be a finite number, got {value.lstrip('+')}"


@pytest.mark.parametrize(
    "behavior, params, key",
    [
        ("model_poisoning", "{ mode = 'scale', factor = inf }", "factor"),
        ("model_poisoning", "{ mode = 'noise', std = nan }", "std"),
        ("biased_scorer", "{ value = nan }", "value"),
        ("lazy_evaluator", "{ value = -inf }", "value"),
    ],
)
def test_behaviour_params_reject_non_finite_values(behavior, params, key):
    text = GOOD + f'\n[[workers]]\nname = "x"\ncount = 1\nbehavior = "{behavior}"\nparams = {params}\n'
    e = _error(text)
    assert (e.key, e.line) == (f"workers[2].params.{key}", 22), str(e)
    assert "must be a finite number" in e.message


def test_a_negative_noise_std_is_an_error():
    text = GOOD + '\n[[workers]]\nname = "x"\ncount = 1\nbehavior = "model_poisoning"\nparams = { std = -1 }\n'
    e = _error(text)
    assert (e.key, e.line) == ("workers[2].params.std", 22) and ">= 0" in e.message


# ---------------------------------------------------------------- the contract's limits


def test_rounds_up_to_the_contract_limit():
    assert parse_scenario(GOOD.replace("rounds = 2", f"rounds = {MAX_ROUNDS}")).task.rounds == MAX_ROUNDS
    e = _error(GOOD.replace("rounds = 2", f"rounds = {MAX_ROUNDS + 1}"))
    assert (e.key, e.line) == ("task.rounds", 2)


def test_deposit_up_to_what_uint96_wei_holds():
    most = MAX_DEPOSIT_WEI // ETH  # whole ether under the limit
    sc = parse_scenario(GOOD.replace("top_k = 3", f"top_k = 3\ndeposit_eth = {most}"))
    assert abs(sc.task.deposit_wei - most * ETH) <= most * ETH * 1e-15  # a float in ether, as the runner has it
    e = _error(GOOD.replace("top_k = 3", f"top_k = 3\ndeposit_eth = {most + 1}"))
    assert (e.key, e.line) == ("task.deposit_eth", 4) and str(MAX_DEPOSIT_WEI) in e.message


def test_the_reveal_period_is_its_own_and_as_long_as_evaluation_when_unset():
    assert parse_scenario(_set("task", "evaluation_timeout_s = 45")).task.reveal_timeout_s == 45
    both = parse_scenario(_set("task", "evaluation_timeout_s = 45\nreveal_timeout_s = 7")).task
    assert (both.evaluation_timeout_s, both.reveal_timeout_s) == (45, 7)


@pytest.mark.parametrize("key", ["submission_timeout_s", "evaluation_timeout_s", "reveal_timeout_s"])
def test_periods_up_to_the_contract_limit(key):
    assert getattr(parse_scenario(_set("task", f"{key} = {MAX_PERIOD_S}")).task, key) == MAX_PERIOD_S
    e = _error(_set("task", f"{key} = {MAX_PERIOD_S + 1}"))
    assert (e.key, e.line) == (f"task.{key}", 2) and "MAX_PERIOD" in e.message
    e = _error(_set("task", f"{key} = 0"))
    assert (e.key, e.line) == (f"task.{key}", 2) and "must be >= 1" in e.message


def test_workers_up_to_the_contract_limit():
    # mnist-full: enough digits that every worker gets a train and a validation sample
    assert parse_scenario(_workers(("a", MAX_WORKERS), dataset="mnist-full")).n_workers == MAX_WORKERS
    e = _error(_workers(("a", MAX_WORKERS + 1), dataset="mnist-full"))
    assert (e.key, e.line) == ("workers[0].count", 10) and f"at most {MAX_WORKERS}" in e.message
    e = _error(_workers(("a", MAX_WORKERS - 1), ("b", 1), ("c", 1), dataset="mnist-full"))
    assert (e.key, e.line) == ("workers[2].count", 18) and f"{MAX_WORKERS + 1} workers" in e.message


def test_explicit_amount_policies_pay_at_most_max_top_k_workers():
    for policy in ("proportional", "loyalty"):
        assert parse_scenario(_workers(("a", MAX_TOP_K), policy=policy)).n_workers == MAX_TOP_K
        e = _error(_workers(("a", MAX_TOP_K - 1), ("b", 2), policy=policy))
        assert (e.key, e.line) == ("task.reward_policy", 3), str(e)
        assert f"this task has {MAX_TOP_K + 1}" in e.message
    # the paper's Top-K policy pays only top_k of them, however many there are
    assert parse_scenario(_workers(("a", MAX_TOP_K + 1))).n_workers == MAX_TOP_K + 1


# ---------------------------------------------------------------- data sets


def test_samples_per_worker_is_checked_against_the_full_data_set_too():
    # mnist-full has 70,000 digits; the default test_fraction 0.2 leaves 56,000 for the workers
    full = _workers(("a", 4), dataset="mnist-full").replace("[data]\n", "[data]\nsamples_per_worker = 14000\n")
    assert parse_scenario(full).data.samples_per_worker == 14000
    e = _error(full.replace("14000", "14001"))
    assert (e.key, e.line) == ("data.samples_per_worker", 6) and "56000 digits mnist-full" in e.message
    # the embedded set has 10,000 (8,000 after the test split): the same file asks too much of it
    e = _error(full.replace("mnist-full", "mnist-embedded"))
    assert (e.key, e.line) == ("data.samples_per_worker", 6) and "8000 digits mnist-embedded" in e.message


# ---------------------------------------------------------------- lines of unusual layouts


WORKERS = '\n[[workers]]\nname = "a"\ncount = 3\n'


def test_a_top_level_dotted_key_gets_its_line():
    e = _error('timeout_s = 900\ntask.top_k = 3\ntask.rounds = "3"\n' + WORKERS)
    assert (e.key, e.line) == ("task.rounds", 3), str(e)
    e = _error('task.top_k = 3\ntask.aggregation = "krum"\ntask.aggregation_params.f = -1\n' + WORKERS)
    assert (e.key, e.line) == ("task.aggregation_params.f", 3), str(e)


def test_a_top_level_inline_table_gets_its_line():
    e = _error("timeout_s = 900\ntask = { top_k = 3, roundz = 2 }\n" + WORKERS)
    assert (e.key, e.line) == ("task.roundz", 2), str(e)


def test_bad_toml_and_missing_workers_and_unreadable_file(tmp_path):
    e = _error("[task\nrounds = 1\n")
    assert e.line == 1 and "not valid TOML" in str(e)
    e = _error("[task]\nrounds = 1\n")
    assert e.key == "workers" and "missing" in str(e)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")


def test_the_command_exits_2_on_an_invalid_file_before_starting_anything(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(GOOD.replace("top_k = 3", 'top_k = 3\naggregation = "krum"\naggregation_params = { f = -1 }'))
    assert scenario_main(str(f), str(tmp_path / "out"), None, None) == EXIT_BAD_FILE
    assert f"{f}:5: task.aggregation_params.f:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- behaviours part by part

PARTS = GOOD + (
    '\n[[workers]]\nname = "alie"\ncount = 1\ntrain = "alie"\ntrain_params = { z = 1.5 }\n'
    'score = "collusion"\nscore_params = { ring = "r1" }\n'
)


def test_behaviour_parts_resolve_and_shorthands_map_to_them():
    sc = parse_scenario(PARTS, "s.toml")
    ring, alie = sc.workers[1], sc.workers[2]
    assert (ring.behavior, ring.score, ring.score_params, ring.train) == (
        "collusion",
        "collusion",
        {"ring": "r1", "shares_cids": True},
        "honest",
    )
    assert (alie.behavior, alie.train, alie.train_params, alie.score) == (
        "alie+collusion",
        "alie",
        {"z": 1.5},
        "collusion",
    )
    assert sc.workers[0].behavior == "honest" and sc.workers[0].participation == "always"


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (('train = "alie"', 'train = "alien"'), "workers[2].train", "unknown train behaviour 'alien'"),
        (("{ z = 1.5 }", "{ zz = 1.5 }"), "workers[2].train_params.zz", "unknown key; allowed here: z"),
        (("{ z = 1.5 }", "{ z = -1 }"), "workers[2].train_params.z", ">= 0"),
        (("{ z = 1.5 }", "{ z = nan }"), "workers[2].train_params.z", "finite number"),
        (('score_params = { ring = "r1" }', "score_params = {}"), "workers[2].score_params", "needs score_params.ring"),
        (('score = "collusion"', 'score = "honest"'), "workers[2].score_params.ring", "'honest' takes no params"),
        (('train = "alie"', 'behavior = "garbage"\ntrain = "alie"'), "workers[2].behavior", "not both"),
    ],
)
def test_behaviour_parts_are_checked_against_their_registry_schema(edit, key, words):
    assert edit[0] in PARTS
    e = _error(PARTS.replace(*edit))
    assert e.key == key and words in e.message, str(e)
    # the line that sets it
    assert key.rsplit(".", 1)[-1].split("_")[0] in PARTS.replace(*edit).splitlines()[e.line - 1], str(e)


def test_a_ring_given_part_by_part_counts_its_members_across_forms():
    one = PARTS.replace('name = "ring"\ncount = 2', 'name = "ring"\ncount = 1')
    parse_scenario(one, "s.toml")  # 1 shorthand member + 1 part-by-part member: a ring of 2
    e = _error(one.replace('score_params = { ring = "r1" }', 'score_params = { ring = "r2" }'))
    assert "has 1 member" in e.message


# ---------------------------------------------------------------- [network]


def test_network_section_switches_the_overlay_and_bounds_its_window():
    """Unset by default, with a window of 4: the overlay is then on with one process
    per agent and off (a star) in one process; `overlay = true` or `false` decides in
    both. The window is checked (1 to MAX_FETCH_WINDOW) and the errors name the key
    and its line."""
    from discofl_p2p.scenario.config import overlay_for
    from discofl_p2p.scenario.runner import build_setup

    sc = parse_scenario(GOOD, "s.toml")
    assert (sc.network.overlay, sc.network.fetch_window) == (None, 4)
    assert [overlay_for(sc.network, one_process_per_agent=p) for p in (False, True)] == [False, True]
    assert [build_setup(sc, one_process_per_agent=p)[0].overlay for p in (False, True)] == [False, True]
    on = parse_scenario(GOOD + "\n[network]\noverlay = true\nfetch_window = 2\n", "s.toml")
    assert (on.network.overlay, on.network.fetch_window) == (True, 2)
    assert [overlay_for(on.network, one_process_per_agent=p) for p in (False, True)] == [True, True]
    off = parse_scenario(GOOD + "\n[network]\noverlay = false\n", "s.toml")
    assert [overlay_for(off.network, one_process_per_agent=p) for p in (False, True)] == [False, False]
    for value, words in (("0", "between 1 and 64"), ("65", "between 1 and 64"), ('"4"', "must be int, got str")):
        e = _error(GOOD + f"\n[network]\nfetch_window = {value}\n")
        assert (e.key, e.line) == ("network.fetch_window", 19) and words in str(e), str(e)
    e = _error(GOOD + "\n[network]\noverlay = 1\n")
    assert (e.key, e.line, e.message) == ("network.overlay", 19, "must be bool, got int 1")
    e = _error(GOOD + "\n[network]\nwindow = 4\n")
    assert (e.key, e.line, e.message) == ("network.window", 19, "unknown key; allowed here: fetch_window, overlay")
