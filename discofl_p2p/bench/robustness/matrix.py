"""The sweep's matrix: a TOML file of axes and base scenario settings, and the cells
it expands to, each a scenario text that `parse_scenario` validates.

```toml
workers = 18                 # honest + adversaries, in every cell
seeds = [1, 2, 3]            # every cell runs once per seed (task.seed)
threshold = 0.05             # breakdown: accuracy loss above this (5 points)

[base.task]                  # copied into every cell's scenario ([task], [data], [model])
rounds = 3
[base.data]
samples_per_worker = 100
[base.model]
name = "logreg"

[axes]
fractions = ["0", "1/6", "1/3"]                 # adversaries = floor(fraction x workers)
splits = [{ split = "iid" }, { split = "dirichlet", alpha = 0.3 }]   # [data] keys
aggregations = ["score_weighted", { aggregation = "krum", f = 2 }]  # a rule, or a rule and its params
policies = ["top_k", "proportional"]
scorings = "all"             # [task] scoring: "all" the rules a runner can use, or a list like
                             # aggregations; only when the scenario schema has it

[attacks.garbage]            # name -> a [[workers]] group's behaviour keys
train = "garbage"
[attacks.ring]
score = "collusion"
score_params = { ring = "r1", shares_cids = true }
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from discofl_p2p.scenario import config
from discofl_p2p.scenario.config import Scenario, TaskSection, parse_scenario

MATRICES = Path(__file__).parent / "matrices"
HONEST = "none"
"""The attack label of a cell without adversaries (fraction 0: every attack's baseline)."""
BEHAVIOUR_KEYS = {"behavior", "params", "train", "train_params", "score", "score_params", "participation",
                  "participation_params"}  # fmt: skip


class MatrixError(ValueError):
    """The matrix file is invalid; the message names the file and the key."""


def has_scoring_axis() -> bool:
    """Whether this build's scenario schema has `[task] scoring` (a contribution
    scoring rule); without it the matrix has no scoring axis."""
    return "scoring" in {f.name for f in dataclasses.fields(TaskSection)}


def runnable_scorings() -> list[str]:
    """The scoring rules the scenario schema accepts, read from it: its
    `SCORING_RULES` (the anchored rule included: its runners compute the anchor)."""
    return list(getattr(config, "SCORING_RULES", ()))


@dataclass(frozen=True)
class Option:
    """One value of an axis: its label, and the scenario keys it sets."""

    label: str
    keys: dict[str, Any]


@dataclass(frozen=True)
class Matrix:
    path: str
    workers: int
    seeds: list[int]
    threshold: float
    base: dict[str, dict[str, Any]]
    fractions: list[Fraction]
    splits: list[Option]
    aggregations: list[Option]
    policies: list[str]
    scorings: list[Option]  # one Option("", {}) when the schema has no scoring rule
    attacks: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    """One cell of the sweep and one seed."""

    attack: str  # HONEST at fraction 0
    fraction: Fraction
    adversaries: int
    split: str
    aggregation: str
    policy: str
    scoring: str
    seed: int
    text: str  # the scenario file

    @property
    def defence(self) -> tuple[str, str, str]:
        return (self.aggregation, self.policy, self.scoring)

    @property
    def key(self) -> str:
        """The cache file's name: readable, and the scenario's hash (a changed base
        setting never reuses a stale result)."""
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:12]
        return f"{key_prefix(self.attack, self.adversaries, self.split, *self.defence, self.seed)}-{digest}"

    def scenario(self) -> Scenario:
        return parse_scenario(self.text, f"<cell {self.key}>")


def key_prefix(
    attack: str, adversaries: int | str, split: str, aggregation: str, policy: str, scoring: str, seed: int | str
) -> str:
    """A cell's cache name before its scenario hash (`Cell.key`), from the columns
    results.csv also has: readable, with every character but letters, digits and
    "-_." replaced by "_"."""
    slug = f"{attack}-a{adversaries}-{split}-{aggregation}-{policy}-{scoring}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in slug) + f"-s{seed}"


def builtin(name: str) -> Path:
    """A matrix shipped with the package: "default" or "quick"."""
    return MATRICES / f"{name}.toml"


def load_matrix(path: str | Path) -> Matrix:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MatrixError(f"{p}: {e}") from None

    def fail(key: str, message: str) -> MatrixError:
        return MatrixError(f"{p}: {key}: {message}")

    unknown = set(raw) - {"workers", "seeds", "threshold", "base", "axes", "attacks"}
    if unknown:
        raise fail(", ".join(sorted(unknown)), "unknown key")
    axes = raw.get("axes", {})
    unknown = set(axes) - {"fractions", "splits", "aggregations", "policies", "scorings"}
    if unknown:
        raise fail("axes." + ", axes.".join(sorted(unknown)), "unknown axis")
    workers = raw.get("workers", 9)
    seeds = raw.get("seeds", [1, 2, 3])
    if not isinstance(workers, int) or workers < 2:
        raise fail("workers", f"must be an integer >= 2, got {workers!r}")
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise fail("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
    base = raw.get("base", {})
    if set(base) - {"task", "data", "model"}:
        raise fail("base", "takes only [base.task], [base.data] and [base.model]")
    try:
        fractions = [Fraction(str(f)) for f in axes.get("fractions", ["0", "1/6", "1/3", "4/9", "1/2"])]
    except ValueError as e:
        raise fail("axes.fractions", str(e)) from None
    if any(not 0 <= f < 1 for f in fractions):
        raise fail("axes.fractions", "each must be in [0, 1)")
    if Fraction(0) not in fractions:
        fractions.insert(0, Fraction(0))  # the all-honest reference of accuracy loss
    scorings = axes.get("scorings")
    if scorings is not None and not has_scoring_axis():
        raise fail("axes.scorings", "this build's scenarios have no [task] scoring")
    if scorings == "all":
        scorings = runnable_scorings()
    elif scorings is not None and not isinstance(scorings, list):
        raise fail("axes.scorings", f'"all" or a list of rules, got {scorings!r}')
    attacks = raw.get("attacks", {})
    if not attacks:
        raise fail("attacks", "give at least one [attacks.NAME] table")
    for name, keys in attacks.items():
        if not isinstance(keys, dict) or set(keys) - BEHAVIOUR_KEYS:
            raise fail(f"attacks.{name}", f"takes a [[workers]] group's behaviour keys: {', '.join(BEHAVIOUR_KEYS)}")
        if name == HONEST:
            raise fail(f"attacks.{name}", f"{HONEST!r} labels the cells without adversaries")
    return Matrix(
        path=str(p),
        workers=workers,
        seeds=seeds,
        threshold=float(raw.get("threshold", 0.05)),
        base=base,
        fractions=sorted(set(fractions)),
        splits=[_option(s, "split") for s in axes.get("splits", [{"split": "iid"}])],
        aggregations=[_option(a, "aggregation") for a in axes.get("aggregations", ["score_weighted"])],
        policies=list(axes.get("policies", ["top_k"])),
        scorings=[_option(s, "scoring") for s in scorings] if scorings else [_default_scoring()],
        attacks=attacks,
    )


def _default_scoring() -> Option:
    """The schema's default scoring rule, or no axis at all."""
    return _option(str(TaskSection().scoring), "scoring") if has_scoring_axis() else Option("", {})


def _option(value: Any, main: str) -> Option:
    """ "median" or { aggregation = "krum", f = 2 } -> Option("krum(f=2)", {...})."""
    if isinstance(value, str):
        return Option(value, {main: value})
    rest = {k: v for k, v in value.items() if k != main}
    label = f"{value[main]}({','.join(f'{v}' if main == 'split' else f'{k}={v}' for k, v in rest.items())})"
    return Option(label if rest else str(value[main]), dict(value))


def adversaries(fraction: Fraction, workers: int) -> int:
    """floor(fraction x workers): never more adversaries than the stated fraction."""
    return math.floor(fraction * workers)


def cells(m: Matrix) -> list[Cell]:
    """Every cell and seed; fraction 0 once per split, defence and seed (attack "none").

    Defence by defence, then split, then seed: a sweep runs them in this order, so one
    cut short leaves whole defences behind it, which `--cached-only` reports."""
    out = []
    for agg in m.aggregations:
        for policy in m.policies:
            for scoring in m.scorings:
                for split in m.splits:
                    for seed in m.seeds:
                        for fraction in m.fractions:
                            for attack in [HONEST] if fraction == 0 else list(m.attacks):
                                n = adversaries(fraction, m.workers)
                                text = scenario_text(m, attack, n, split, agg, policy, scoring, seed)
                                out.append(
                                    Cell(attack, fraction, n, split.label, agg.label, policy, scoring.label, seed, text)
                                )
    return out


def scenario_text(
    m: Matrix, attack: str, n_adv: int, split: Option, agg: Option, policy: str, scoring: Option, seed: int
) -> str:
    task = dict(m.base.get("task", {}))
    task.update(name="robustness", seed=seed, reward_policy=policy, aggregation=agg.keys["aggregation"])
    if params := {k: v for k, v in agg.keys.items() if k != "aggregation"}:
        task["aggregation_params"] = params
    if scoring.keys:
        task["scoring"] = scoring.keys["scoring"]
        if params := {k: v for k, v in scoring.keys.items() if k != "scoring"}:
            task["scoring_params"] = params
    data = {**m.base.get("data", {}), **split.keys}
    lines = [_table("task", task), _table("data", data), _table("model", dict(m.base.get("model", {})))]
    lines.append(_table("[workers]", {"name": "honest", "count": m.workers - n_adv}))
    if n_adv and attack != HONEST:
        lines.append(_table("[workers]", {"name": "adv", "count": n_adv, **m.attacks[attack]}))
    return "\n".join(lines)


def _table(name: str, keys: dict[str, Any]) -> str:
    return "\n".join([f"[{name}]", *(f"{k} = {_value(v)}" for k, v in keys.items())]) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise MatrixError(f"cannot write {v!r} into a scenario")
