"""Scenario files: TOML, validated strictly before anything starts.

Every problem is a ScenarioError that names the file, the key (dotted path, with the
index of a [[workers]] group) and the line. Unknown keys, wrong types and impossible
values (top_k > workers, a collusion ring of one, a value the contract would refuse,
a non-finite float) are errors, not warnings.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import tomllib
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from discofl_p2p.agents.behaviors import AXES, DEFAULTS, SHORTHANDS, Param, is_ring
from discofl_p2p.chain.limits import ETH, MAX_DEPOSIT_WEI, MAX_PERIOD_S, MAX_ROUNDS, MAX_TOP_K, MAX_WORKERS
from discofl_p2p.ml.aggregation import AGGREGATORS
from discofl_p2p.ml.models import MODELS
from discofl_p2p.ml.splits import SCHEMES
from discofl_p2p.ml.training import METRICS
from discofl_p2p.trust.scoring import (
    DEFAULT_SCORING,
    NEEDS_ANCHOR,
    SCORING_PARAM_CHECKS,
    SCORING_RULES,
    scoring_params_of,
)


class ScenarioError(ValueError):
    """A scenario file is invalid: `file`, `key` and `line` say where."""

    def __init__(self, file: str, key: str, line: int | None, message: str) -> None:
        self.file, self.key, self.line, self.message = file, key, line, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


REWARD_POLICIES = ("top_k", "proportional", "loyalty")
DATASET_SIZES = {"mnist-embedded": 10_000, "mnist-full": 70_000}
"""Digits per data set: fixed, since ml/datasets.py checks the files' md5s."""


def aggregation_params_of(rule: str) -> dict[str, tuple[type, ...]]:
    """The keyword parameters of aggregation rule `rule` and the TOML types each takes,
    read from the rule's signature (its first parameter is the candidates)."""
    out: dict[str, tuple[type, ...]] = {}
    for p in list(inspect.signature(AGGREGATORS[rule], eval_str=True).parameters.values())[1:]:
        types = tuple(t for t in (typing.get_args(p.annotation) or (p.annotation,)) if t is not type(None))
        out[p.name] = (int, float) if float in types else types
    return out


def _krum_f(f: int, workers: int) -> str | None:
    if f < 0:
        return f"must be >= 0 (the number of Byzantine models tolerated), got {f}"
    if workers <= f + 2:
        return f"Krum needs more than f + 2 models; with {workers} workers f must be at most {workers - 3}, got {f}"
    return None


# Values a rule accepts without complaint but that make no sense, or that it rejects
# only when it runs: parameter -> (value, number of workers) -> what is wrong, or None.
AGGREGATION_PARAM_CHECKS: dict[str, Callable[[Any, int], str | None]] = {
    "keep_ratio": lambda v, w: None if 0 <= v <= 1 else f"must be in [0, 1] (a fraction of the best score), got {v}",
    "trim": lambda v, w: None if 0 <= v < 0.5 else f"must be in [0, 0.5) (the fraction cut at each end), got {v}",
    "f": _krum_f,
    "m": lambda v, w: None if 1 <= v <= w else f"must be between 1 and the number of workers ({w}), got {v}",
}


@dataclass(frozen=True)
class TaskSection:
    name: str = "task"
    rounds: int = 5
    top_k: int = 6
    deposit_eth: float = 10.0
    reward_policy: str = "top_k"
    quality_floor: float = 0.5
    loyalty_bonus: float = 0.1
    aggregation: str = "score_weighted"
    aggregation_params: dict[str, float | int] = field(default_factory=dict)
    norm_bound: float = 2.0  # ml.aggregation.norm_bounded before the rule; 0: off
    scoring: str = DEFAULT_SCORING  # trust.scoring.SCORING_RULES
    scoring_params: dict[str, float | int] = field(default_factory=dict)
    # The requester's root validation set for a rule in NEEDS_ANCHOR (anchored): that
    # many held-out samples, taken from the test split (ml.splits.partition); else unused.
    root_samples: int = 100
    submission_timeout_s: int = 120
    evaluation_timeout_s: int = 120
    reveal_timeout_s: int = 120  # the contract's revealPeriod; unset: evaluation_timeout_s
    metric: str = "accuracy"
    seed: int = 1

    @property
    def deposit_wei(self) -> int:
        """The deposit the requester sends, in wei."""
        return round(self.deposit_eth * ETH)


@dataclass(frozen=True)
class DataSection:
    dataset: str = "mnist-embedded"
    directory: str = ""
    split: str = "iid"
    alpha: float = 0.5
    test_fraction: float = 0.2
    samples_per_worker: int = 0  # 0: everything not held out, shared equally


@dataclass(frozen=True)
class ModelSection:
    name: str = "compact_cnn"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.0015
    lr_decay: float = 1.0  # per local epoch
    round_lr_decay: float = 1.0  # round r trains at lr * round_lr_decay ** (r - 1)
    optimizer: str = "adam"


@dataclass(frozen=True)
class WorkerGroup:
    """One [[workers]] group. Its behaviour is given either as a shorthand (`behavior`
    and its `params`, kept here as written) or part by part (`train`, `score`,
    `participation`, each with its `<part>_params`); either way the parts are resolved
    here. `behavior` is then a label: the shorthand, or the non-honest parts' names
    joined by "+" ("honest" when every part is)."""

    name: str
    count: int
    behavior: str = "honest"
    params: dict[str, Any] = field(default_factory=dict)
    train: str = "honest"
    train_params: dict[str, Any] = field(default_factory=dict)
    score: str = "honest"
    score_params: dict[str, Any] = field(default_factory=dict)
    participation: str = "always"
    participation_params: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, Any]:
        """`agents.behaviors.make_behaviour`'s arguments."""
        return {
            a: v
            for axis in AXES
            for a, v in ((axis, getattr(self, axis)), (f"{axis}_params", getattr(self, f"{axis}_params")))
        }


@dataclass(frozen=True)
class FaultsSection:
    announce_loss: float = 0.0  # fraction of gossip announcements never sent
    # worker name -> the round at whose start its process gets SIGKILL (processes mode)
    kill: dict[str, int] = field(default_factory=dict)
    # worker name -> {round, seconds}: from that round's start its node drops every p2p
    # connection and stream for that long (processes mode; p2p/linkfault.py)
    partition: dict[str, dict[str, Any]] = field(default_factory=dict)
    # worker name -> {round, delay_ms, loss}: from that round's start each p2p stream it
    # opens or accepts waits delay_ms and is dropped with probability loss, seeded
    lossy: dict[str, dict[str, Any]] = field(default_factory=dict)
    # {round, phase}: when the requester reaches that round's phase, its process gets
    # SIGKILL and is started again from its store (processes mode; `--resume`)
    restart_requester: dict[str, Any] = field(default_factory=dict)


RESTART_PHASES = ("submission", "evaluation", "settling", "settled")
"""The requester's round phases (its progress lines) at which `[faults]
restart_requester` can kill it."""


MAX_FETCH_WINDOW = 64
"""The most fetches an evaluator may keep in flight (`[network] fetch_window`)."""


@dataclass(frozen=True)
class NetworkSection:
    """How evaluators fetch a round's models (agents/worker.py, docs/p2p.md "The
    overlay"). `overlay`: from each other, each model's first copy from the requester;
    unset, it is on where each agent runs in its own process (`--processes`, `up`,
    `discofl-p2p worker`) and off in one process, where it is not as fast as the star
    (every model from the requester; `overlay_for`); `fetch_window`: how many models
    an evaluator fetches at once in the overlay."""

    overlay: bool | None = None
    fetch_window: int = 4


def overlay_for(network: NetworkSection, *, one_process_per_agent: bool) -> bool:
    """Whether evaluators fetch from each other: `[network] overlay` when the file sets
    it, else on exactly when each agent has its own process. In one process every
    node's transfers share one trio thread, so spreading them over peers saves
    nothing there and the overlay's evaluation phase was 12-23 % longer; with a process
    each it was faster than the star and cut the requester's upload about ninefold
    at W = 10 (docs/p2p.md)."""
    return one_process_per_agent if network.overlay is None else network.overlay


@dataclass(frozen=True)
class ExpectSection:
    final_accuracy_min: float | None = None
    adversary_reward_share_max: float | None = None
    adversaries_below_honest: bool | None = None


@dataclass(frozen=True)
class Scenario:
    path: str
    task: TaskSection
    data: DataSection
    model: ModelSection
    workers: list[WorkerGroup]
    faults: FaultsSection
    expect: ExpectSection
    timeout_s: int = 900
    network: NetworkSection = field(default_factory=NetworkSection)

    @property
    def n_workers(self) -> int:
        return sum(g.count for g in self.workers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


# ---------------------------------------------------------------------- loading


def load_scenario(path: str | Path, *, seed: int | None = None) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ScenarioError(str(p), "", None, f"cannot read: {e.strerror or e}") from None
    return parse_scenario(text, str(p), seed=seed)


def parse_scenario(text: str, file: str = "<scenario>", *, seed: int | None = None) -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ScenarioError(file, "", int(m.group(1)) if m else None, f"not valid TOML: {e}") from None
    v = _Validator(file, text)
    v.keys(raw, "", {"task", "data", "model", "workers", "faults", "expect", "network", "timeout_s"})
    task = v.section(raw, "task", TaskSection)
    if seed is not None:
        task = TaskSection(**{**asdict(task), "seed": seed})
    if not isinstance(raw.get("task"), dict) or "reveal_timeout_s" not in raw["task"]:
        # Unset: as long as evaluation, the window every scenario had before it had a key.
        task = TaskSection(**{**asdict(task), "reveal_timeout_s": task.evaluation_timeout_s})
    data = v.section(raw, "data", DataSection)
    model = v.section(raw, "model", ModelSection)
    faults = v.section(raw, "faults", FaultsSection)
    expect = v.section(raw, "expect", ExpectSection)
    network = v.section(raw, "network", NetworkSection)
    timeout_s = v.typed(raw.get("timeout_s", 900), int, "timeout_s")
    groups = v.workers(raw.get("workers"))
    sc = Scenario(file, task, data, model, groups, faults, expect, timeout_s, network)
    v.semantics(sc)
    return sc


def check_scoring_params(
    rule: str, params: dict[str, Any], where: str = "<command line>", rule_where: str | None = None
) -> None:
    """`params` for scoring rule `rule`, checked as a scenario's `[task] scoring_params`
    is (known to the rule, of its TOML type, valid), for the commands that take a rule
    without a scenario file (`audit`, `dashboard`). Raises ScenarioError naming the key,
    and `rule_where` (the option that named the rule) for an unknown rule."""
    if rule not in SCORING_RULES:
        why = f"unknown scoring rule {rule!r}; choose one of {', '.join(SCORING_RULES)}"
        raise _Validator(rule_where or where, "").fail("task.scoring", why)
    _Validator(where, "").scoring_params(rule, params)


class _Validator:
    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines = text.splitlines()
        # workers[i] -> part -> the key its parameters were given under ("params" for a shorthand)
        self.params_keys: dict[str, dict[str, str]] = {}

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, key, self.line_of(key), message)

    def line_of(self, key: str) -> int | None:
        """The line that defines `key` (e.g. "task.top_k", "workers[1].params.ring"),
        found by walking the table headers: tomllib keeps no positions."""
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
        if not parts:
            return None
        table, rest = parts[0], parts[1:]
        index = int(rest.pop(0)[1:-1]) if rest and rest[0].startswith("[") else None
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        seen, start = -1, None
        for i, line in enumerate(self.lines):
            if header.match(line):
                seen += 1
                if index is None or seen == index:
                    start = i
                    break
        if start is None:
            return self._top_level_line([table, *(p for p in rest if not p.startswith("["))])
        if not rest:
            return start + 1
        leaf = rest[-1]
        pattern = re.compile(rf"(^|[\s{{,.]){re.escape(leaf)}\s*=")
        sub = re.compile(rf"^\s*\[\s*{re.escape(table)}\.{re.escape(rest[0])}\s*\]")
        for i in range(start + 1, len(self.lines)):
            line = self.lines[i]
            if re.match(r"^\s*\[", line) and not sub.match(line):
                break
            if pattern.search(line.split("#", 1)[0]):
                return i + 1
        return start + 1

    def _top_level_line(self, path: list[str]) -> int | None:
        """A key defined before the first table header: `task = 1`, `task.rounds = 3`,
        or `task = { rounds = 3 }`. The line of the longest dotted prefix of `path`
        defined there, preferring one whose line also names the leaf."""
        end = next((i for i, line in enumerate(self.lines) if re.match(r"^\s*\[", line)), len(self.lines))
        code = [line.split("#", 1)[0] for line in self.lines[:end]]
        leaf = re.compile(rf"(^|[\s{{,.]){re.escape(path[-1])}\s*=")
        for n in range(len(path), 0, -1):
            prefix = re.compile(r"^\s*" + r"\s*\.\s*".join(map(re.escape, path[:n])) + r"\s*[.=]")
            hits = [i for i, line in enumerate(code) if prefix.match(line)]
            if hits:
                return next((i + 1 for i in hits if leaf.search(code[i])), hits[0] + 1)
        return None

    def keys(self, table: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(table, dict):
            raise self.fail(where, f"must be a table, got {type(table).__name__}")
        for k in table:
            if k not in allowed:
                key = f"{where}.{k}" if where else k
                raise self.fail(key, f"unknown key; allowed here: {', '.join(sorted(allowed))}")

    def typed(self, value: Any, typ: type | tuple[type, ...], key: str) -> Any:
        types = typ if isinstance(typ, tuple) else (typ,)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join("float" if t is float else t.__name__ for t in types)
            raise self.fail(key, f"must be {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value}")
        return value

    def section(self, raw: dict[str, Any], name: str, cls: type) -> Any:
        table = raw.get(name, {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.keys(table, name, set(fields))
        values: dict[str, Any] = {}
        for k, v in table.items():
            f = fields[k]
            typ = _field_type(f.type)
            if typ is dict:  # which keys and types it takes depends on another key: see semantics
                self.keys(v, f"{name}.{k}", set(v) if isinstance(v, dict) else set())
                values[k] = dict(v)
            else:
                values[k] = self.typed(v, typ, f"{name}.{k}")
                if typ == (int, float):
                    values[k] = float(values[k])
        return cls(**values)

    def link_faults(self, sc: Scenario, roster: set[str]) -> None:
        """`[faults] partition` and `lossy`: WORKER = { round = R, ... } for a worker of
        the roster, R a round of the task, and the fault's own keys in range."""
        shapes: dict[str, dict[str, tuple[str, float, float]]] = {
            "partition": {"seconds": ("a number of seconds > 0", 0.0, math.inf)},
            "lossy": {"delay_ms": ("a delay in ms >= 0", 0.0, math.inf), "loss": ("a probability in [0, 1]", 0.0, 1.0)},
        }
        for kind, shape in shapes.items():
            for name, spec in getattr(sc.faults, kind).items():
                key = f"faults.{kind}.{name}"
                if name not in roster:
                    raise self.fail(key, f"no worker is named {name!r} (names are GROUP-N, e.g. honest-1)")
                self.keys(spec, key, {"round", *shape})
                for k in ("round", *shape):
                    if k not in spec:
                        raise self.fail(key, f"missing {k!r} (keys: round, {', '.join(shape)})")
                r = self.typed(spec["round"], int, f"{key}.round")
                if not 1 <= r <= sc.task.rounds:
                    raise self.fail(f"{key}.round", f"must be a round from 1 to {sc.task.rounds}, got {r}")
                for k, (what, lo, hi) in shape.items():
                    v = self.typed(spec[k], (int, float), f"{key}.{k}")
                    if not lo <= v <= hi or (kind == "partition" and v == 0):
                        raise self.fail(f"{key}.{k}", f"must be {what}, got {v!r}")

    def restart_requester(self, sc: Scenario) -> None:
        """`[faults] restart_requester = { round = R, phase = P }`: R a round of the
        task, P one of the requester's round phases (RESTART_PHASES)."""
        spec, key = sc.faults.restart_requester, "faults.restart_requester"
        if not spec:
            return
        self.keys(spec, key, {"round", "phase"})
        for k in ("round", "phase"):
            if k not in spec:
                raise self.fail(key, f"missing {k!r} (keys: round, phase)")
        r = self.typed(spec["round"], int, f"{key}.round")
        if not 1 <= r <= sc.task.rounds:
            raise self.fail(f"{key}.round", f"must be a round from 1 to {sc.task.rounds}, got {r}")
        phase = self.typed(spec["phase"], str, f"{key}.phase")
        if phase not in RESTART_PHASES:
            raise self.fail(f"{key}.phase", f"must be one of {', '.join(RESTART_PHASES)}, got {phase!r}")

    def workers(self, groups: Any) -> list[WorkerGroup]:
        if groups is None:
            raise self.fail("workers", "missing: add at least one [[workers]] group")
        if not isinstance(groups, list) or not groups:
            raise self.fail("workers", "must be a non-empty array of [[workers]] tables")
        out, names, total = [], set(), 0
        part_keys = {*AXES, *(f"{axis}_params" for axis in AXES)}
        for i, g in enumerate(groups):
            key = f"workers[{i}]"
            self.keys(g, key, {"name", "count", "behavior", "params", *part_keys})
            by_parts = sorted(part_keys & set(g))
            if by_parts and ("behavior" in g or "params" in g):
                given = "behavior" if "behavior" in g else "params"
                raise self.fail(
                    f"{key}.{given}",
                    f"give either behavior (a shorthand, with params) or {', '.join(AXES)} (each with its "
                    f"<part>_params), not both; this group also sets {by_parts[0]}",
                )
            parts, label = self.behaviour_parts(key, g) if by_parts else self.shorthand(key, g)
            name = self.typed(g.get("name", label), str, f"{key}.name")
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", name):
                raise self.fail(f"{key}.name", "must be 1-32 letters, digits, '-' or '_', starting with a letter")
            if name in names:
                raise self.fail(f"{key}.name", f"group name {name!r} is used twice")
            names.add(name)
            if "count" not in g:
                raise self.fail(key, "missing key 'count'")
            count = self.typed(g["count"], int, f"{key}.count")
            if count < 1:
                raise self.fail(f"{key}.count", f"must be >= 1, got {count}")
            total += count
            if total > MAX_WORKERS:
                raise self.fail(
                    f"{key}.count",
                    f"brings the task to {total} workers; the contract registers at most {MAX_WORKERS} (MAX_WORKERS)",
                )
            params = {} if by_parts else dict(g.get("params", {}))
            out.append(WorkerGroup(name, count, label, params, **parts))
        return out

    def shorthand(self, key: str, g: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The parts that `behavior = NAME` (with `params`) stands for, and NAME."""
        behavior = self.typed(g.get("behavior", "honest"), str, f"{key}.behavior")
        if behavior not in SHORTHANDS:
            raise self.fail(f"{key}.behavior", f"unknown behaviour {behavior!r}; choose one of {', '.join(SHORTHANDS)}")
        params = g.get("params", {})
        part = SHORTHANDS[behavior]
        schema = AXES[part[0]][part[1]].PARAMS if part else {}
        if not schema and isinstance(params, dict) and params:
            raise self.fail(f"{key}.params.{next(iter(params))}", f"behaviour {behavior!r} takes no params")
        self.component_params(f"{key}.params", behavior, schema, params)
        self.params_keys[key] = dict.fromkeys(AXES, "params")
        parts: dict[str, Any] = {}
        if part:
            parts = {part[0]: part[1], f"{part[0]}_params": dict(params)}
        return parts, behavior

    def behaviour_parts(self, key: str, g: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The parts given one by one (`train`, `score`, `participation` and their
        `<part>_params`), checked against each part's schema in its registry, and the
        group's label."""
        parts: dict[str, Any] = {}
        for axis, registry in AXES.items():
            name = self.typed(g.get(axis, DEFAULTS[axis]), str, f"{key}.{axis}")
            if name not in registry:
                raise self.fail(
                    f"{key}.{axis}", f"unknown {axis} behaviour {name!r}; choose one of {', '.join(registry)}"
                )
            params = g.get(f"{axis}_params", {})
            schema = registry[name].PARAMS
            if not schema and isinstance(params, dict) and params:
                raise self.fail(
                    f"{key}.{axis}_params.{next(iter(params))}", f"{axis} behaviour {name!r} takes no params"
                )
            self.component_params(f"{key}.{axis}_params", name, schema, params)
            parts[axis], parts[f"{axis}_params"] = name, dict(params)
        self.params_keys[key] = {axis: f"{axis}_params" for axis in AXES}
        label = "+".join(parts[a] for a in AXES if parts[a] != DEFAULTS[a]) or "honest"
        return parts, label

    def component_params(self, where: str, name: str, schema: dict[str, Param], params: Any) -> None:
        """`params` against one behaviour's schema: known keys, TOML types, finite
        numbers, each value's own check, and the required ones present."""
        self.keys(params, where, set(schema))
        for k, v in params.items():
            self.typed(v, schema[k].types, f"{where}.{k}")
            check = schema[k].check
            problem = check(v) if check else None
            if problem:
                raise self.fail(f"{where}.{k}", problem)
        for k, p in schema.items():
            if p.required and k not in params:
                raise self.fail(where, f"{name} needs {where.rsplit('.', 1)[-1]}.{k} ({p.doc})")

    def semantics(self, sc: Scenario) -> None:
        t, d, m, w = sc.task, sc.data, sc.model, sc.n_workers
        checks = [
            ("task.rounds", t.rounds >= 1, f"must be >= 1, got {t.rounds}"),
            ("task.rounds", t.rounds <= MAX_ROUNDS, f"at most {MAX_ROUNDS} (the contract's rounds is a uint32)"),
            ("task.top_k", 1 <= t.top_k <= w, f"must be between 1 and the number of workers ({w}), got {t.top_k}"),
            ("task.top_k", t.top_k <= MAX_TOP_K, f"at most {MAX_TOP_K} (the contract's MAX_TOP_K)"),
            ("task.deposit_eth", t.deposit_eth > 0, f"must be > 0, got {t.deposit_eth}"),
            ("task.deposit_eth", t.deposit_wei >= 1, f"is 0 wei once converted, got {t.deposit_eth}"),
            (
                "task.deposit_eth",
                t.deposit_wei <= MAX_DEPOSIT_WEI,
                f"{t.deposit_wei} wei does not fit the contract's uint96 credits (at most {MAX_DEPOSIT_WEI} wei), "
                f"got {t.deposit_eth}",
            ),
            ("task.reward_policy", t.reward_policy in REWARD_POLICIES, f"choose one of {', '.join(REWARD_POLICIES)}"),
            (
                "task.reward_policy",
                t.reward_policy == "top_k" or w <= MAX_TOP_K,
                f"{t.reward_policy!r} pays every worker an explicit amount, so the contract ranks all of them: "
                f"at most {MAX_TOP_K} workers (MAX_TOP_K), this task has {w}",
            ),
            ("task.quality_floor", 0 <= t.quality_floor <= 1, "must be in [0, 1]"),
            ("task.loyalty_bonus", t.loyalty_bonus >= 0, "must be >= 0"),
            ("task.aggregation", t.aggregation in AGGREGATORS, f"choose one of {', '.join(AGGREGATORS)}"),
            (
                "task.norm_bound",
                t.norm_bound == 0 or t.norm_bound >= 1,
                "must be 0 (off) or >= 1 (a multiple of the median model's distance to the median; "
                f"below 1 it would pull in most honest models), got {t.norm_bound}",
            ),
            ("task.scoring", t.scoring in SCORING_RULES, f"choose one of {', '.join(SCORING_RULES)}"),
            ("task.submission_timeout_s", t.submission_timeout_s >= 1, "must be >= 1"),
            ("task.evaluation_timeout_s", t.evaluation_timeout_s >= 1, "must be >= 1"),
            ("task.reveal_timeout_s", t.reveal_timeout_s >= 1, "must be >= 1"),
            (
                "task.submission_timeout_s",
                t.submission_timeout_s <= MAX_PERIOD_S,
                f"at most {MAX_PERIOD_S} (MAX_PERIOD)",
            ),
            (
                "task.evaluation_timeout_s",
                t.evaluation_timeout_s <= MAX_PERIOD_S,
                f"at most {MAX_PERIOD_S} (MAX_PERIOD)",
            ),
            (
                "task.reveal_timeout_s",
                t.reveal_timeout_s <= MAX_PERIOD_S,
                f"at most {MAX_PERIOD_S} (MAX_PERIOD)",
            ),
            ("task.metric", t.metric in METRICS, f"choose one of {', '.join(METRICS)}"),
            ("task.seed", t.seed >= 0, "must be >= 0"),
            ("data.dataset", d.dataset in DATASET_SIZES, f"choose one of {', '.join(DATASET_SIZES)}"),
            ("data.split", d.split in SCHEMES, f"choose one of {', '.join(SCHEMES)}"),
            ("data.alpha", d.alpha > 0, "must be > 0"),
            ("data.test_fraction", 0 < d.test_fraction < 1, "must be in (0, 1)"),
            (
                "data.samples_per_worker",
                d.samples_per_worker == 0 or d.samples_per_worker >= 2,
                "must be 0 (an equal share of all) or >= 2 (each worker's share is split into train and validation)",
            ),
            ("model.name", m.name in MODELS, f"choose one of {', '.join(MODELS)}"),
            ("model.epochs", m.epochs >= 1, "must be >= 1"),
            ("model.batch_size", m.batch_size >= 1, "must be >= 1"),
            ("model.lr", m.lr > 0, "must be > 0"),
            ("model.lr_decay", 0 < m.lr_decay <= 1, "must be in (0, 1]"),
            ("model.round_lr_decay", 0 < m.round_lr_decay <= 1, "must be in (0, 1]"),
            ("model.optimizer", m.optimizer in ("adam", "sgd"), "choose adam or sgd"),
            ("faults.announce_loss", 0 <= sc.faults.announce_loss <= 1, "must be in [0, 1]"),
            (
                "network.fetch_window",
                1 <= sc.network.fetch_window <= MAX_FETCH_WINDOW,
                f"must be between 1 and {MAX_FETCH_WINDOW} (models an evaluator fetches at once)",
            ),
            ("timeout_s", sc.timeout_s >= 10, "must be >= 10"),
        ]
        for key, ok, msg in checks:
            if not ok:
                value = _get(sc, key)
                raise self.fail(key, f"{msg} (got {value!r})" if "got" not in msg else msg)
        size = DATASET_SIZES[d.dataset]
        pool = size - round(size * d.test_fraction)  # what ml/splits.partition leaves the workers
        if d.samples_per_worker * w > pool:
            raise self.fail(
                "data.samples_per_worker",
                f"{w} workers x {d.samples_per_worker} exceeds the {pool} digits {d.dataset} leaves "
                "after the test split",
            )
        if pool < 2 * w:
            raise self.fail(
                "data.test_fraction",
                f"leaves {pool} digits of {d.dataset} for {w} workers; each needs at least 2 (train and validation)",
            )
        n_test = round(size * d.test_fraction)
        if t.scoring in NEEDS_ANCHOR and not 1 <= t.root_samples < n_test:
            raise self.fail(
                "task.root_samples",
                f"scoring rule {t.scoring!r} scores every model on a root set of held-out samples: it must be "
                f"between 1 and {n_test - 1} (the {n_test} digits {d.dataset} holds out for testing, less one), "
                f"got {t.root_samples}",
            )
        self.aggregation_params(t.aggregation, t.aggregation_params, w)
        self.scoring_params(t.scoring, t.scoring_params)
        rings: dict[str, tuple[int, str]] = {}  # ring -> (members, the key of its first group's ring)
        for i, g in enumerate(sc.workers):
            keys = self.params_keys[f"workers[{i}]"]
            if is_ring(g.score):
                ring = g.score_params["ring"]
                size, where = rings.get(ring, (0, f"workers[{i}].{keys['score']}.ring"))
                rings[ring] = (size + g.count, where)
            if g.participation == "dropout" and g.participation_params.get("round", 1) > t.rounds:
                raise self.fail(
                    f"workers[{i}].{keys['participation']}.round",
                    f"round {g.participation_params['round']} is after the last round ({t.rounds})",
                )
        roster = {f"{g.name}-{i}" for g in sc.workers for i in range(1, g.count + 1)}
        for name, r in sc.faults.kill.items():
            if name not in roster:
                raise self.fail(
                    f"faults.kill.{name}", f"no worker is named {name!r} (names are GROUP-N, e.g. honest-1)"
                )
            if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= t.rounds:
                raise self.fail(f"faults.kill.{name}", f"must be a round from 1 to {t.rounds}, got {r!r}")
        self.link_faults(sc, roster)
        self.restart_requester(sc)
        for ring, (size, where) in rings.items():
            if size < 2:
                raise self.fail(where, f"collusion ring {ring!r} has 1 member; a ring needs at least 2")
        for k in ("final_accuracy_min", "adversary_reward_share_max"):
            val = getattr(sc.expect, k)
            if val is not None and not 0 <= val <= 1:
                raise self.fail(f"expect.{k}", f"must be in [0, 1], got {val}")

    def rule_params(
        self,
        section: str,
        what: str,
        params: dict[str, Any],
        accepted: dict[str, Any],
        check: Callable[[str, Any], str | None],
    ) -> None:
        """A rule's parameters (`task.<section>.<key>`): known to the rule (`accepted`,
        name -> type, read from its signature), of the right type, and valid (`check`
        returns the problem, if any)."""
        for k, v in params.items():
            key = f"task.{section}.{k}"
            if not accepted:
                raise self.fail(key, f"{what} takes no parameters")
            if k not in accepted:
                raise self.fail(key, f"unknown parameter of {what}; it takes: {', '.join(accepted)}")
            self.typed(v, accepted[k], key)
            problem = check(k, v)
            if problem:
                raise self.fail(key, problem)

    def aggregation_params(self, rule: str, params: dict[str, Any], n_workers: int) -> None:
        def check(k: str, v: Any) -> str | None:
            return AGGREGATION_PARAM_CHECKS[k](v, n_workers) if k in AGGREGATION_PARAM_CHECKS else None

        self.rule_params("aggregation_params", f"aggregation {rule!r}", params, aggregation_params_of(rule), check)

    def scoring_params(self, rule: str, params: dict[str, Any]) -> None:
        def check(k: str, v: Any) -> str | None:
            return SCORING_PARAM_CHECKS[k](v) if k in SCORING_PARAM_CHECKS else None

        self.rule_params("scoring_params", f"scoring rule {rule!r}", params, scoring_params_of(rule), check)


def _field_type(annotation: Any) -> Any:
    text = str(annotation)
    if text.startswith("dict"):
        return dict
    if "bool" in text:
        return bool
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return (int, float)
    return str


def _get(sc: Scenario, key: str) -> Any:
    obj: Any = sc
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj
