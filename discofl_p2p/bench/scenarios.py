"""`discofl-p2p bench scenarios`: the figures of whole tasks, in one run.

- final test accuracy of garbage.toml against baseline.toml (compact CNN);
- the adversaries' reward share in garbage, collusion and biased, under the paper's
  Top-K schedule and under the contribution-proportional policy with a quality floor;
- the overhead of decentralisation: garbage.toml's wall time over a plain
  single-process loop doing the same training and evaluation (scenario/plain.py),
  once one job at a time and once at equal parallelism (as many jobs at once as the
  agents' pool runs: one per core).

`quick` trims every scenario to one round on little data: the same code paths in a
fraction of the time, for smoke tests; its figures mean nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from discofl_p2p.report.results import adversary_share
from discofl_p2p.scenario.config import Scenario, load_scenario
from discofl_p2p.scenario.plain import PlainOutcome, run_plain
from discofl_p2p.scenario.runner import RunOutcome, run_scenario

SCENARIOS = ("baseline", "garbage", "collusion", "biased")


@dataclasses.dataclass(frozen=True)
class ScenarioFigures:
    runs: dict[tuple[str, str], RunOutcome]  # (scenario, policy) -> outcome
    plain: PlainOutcome  # garbage.toml as a plain loop, one job at a time
    plain_parallel: PlainOutcome  # the same, `jobs` at a time
    jobs: int  # the agents' pool size: one job per core
    floor: float


def _variant(sc: Scenario, policy: str, floor: float, quick: bool) -> Scenario:
    task = dataclasses.replace(sc.task, reward_policy=policy, quality_floor=floor)
    if not quick:
        return dataclasses.replace(sc, task=task)
    return dataclasses.replace(
        sc,
        task=dataclasses.replace(task, rounds=1),
        data=dataclasses.replace(sc.data, samples_per_worker=100),
        model=dataclasses.replace(sc.model, epochs=1),
    )


def measure(
    directory: Path, ws_url: str, *, floor: float = 0.5, quick: bool = False, say: Callable[[str], None] = print
) -> ScenarioFigures:
    runs: dict[tuple[str, str], RunOutcome] = {}
    for name in SCENARIOS:
        sc = load_scenario(directory / f"{name}.toml")
        for policy in ["top_k"] if name == "baseline" else ["top_k", "proportional"]:
            say(f"running {name}.toml with the {policy} policy ...")
            runs[(name, policy)] = asyncio.run(run_scenario(_variant(sc, policy, floor, quick), ws_url))
    garbage = _variant(load_scenario(directory / "garbage.toml"), "top_k", floor, quick)
    say("running garbage.toml as a plain single-process loop ...")
    plain = run_plain(garbage)
    jobs = os.cpu_count() or 2  # as the agents' pool (TaskSetup.cpu)
    say(f"running garbage.toml as a plain loop, {jobs} jobs at a time ...")
    plain_parallel = run_plain(garbage, jobs=jobs)
    return ScenarioFigures(runs, plain, plain_parallel, jobs, floor)


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def render(f: ScenarioFigures) -> list[Table | str]:
    acc = Table(title="Final test accuracy (compact CNN, held-out split)")
    acc.add_column("scenario")
    acc.add_column("final model", justify="right")
    acc.add_column("wall s", justify="right")
    for name in ("baseline", "garbage"):
        o = f.runs[(name, "top_k")]
        acc.add_row(f"{name}.toml", _acc(o.final_accuracy), f"{o.wall_s:.1f}")
    acc.add_row("garbage, plain loop", _acc(f.plain.final_accuracy), f"{f.plain.wall_s:.1f}")
    acc.add_row(
        f"garbage, plain loop, {f.jobs} jobs", _acc(f.plain_parallel.final_accuracy), f"{f.plain_parallel.wall_s:.1f}"
    )

    share = Table(title=f"Adversaries' share of all rewards (proportional: quality floor {f.floor})")
    share.add_column("scenario")
    share.add_column("paper Top-K", justify="right")
    share.add_column("proportional + floor", justify="right")
    for name in ("garbage", "collusion", "biased"):
        share.add_row(
            f"{name}.toml",
            f"{adversary_share(f.runs[(name, 'top_k')]):.2%}",
            f"{adversary_share(f.runs[(name, 'proportional')]):.2%}",
        )
    g = f.runs[("garbage", "top_k")]
    overhead = (
        f"overhead of decentralisation, garbage.toml: {g.wall_s:.1f} s with chain, network and agents / "
        f"{f.plain.wall_s:.1f} s plain loop = {g.wall_s / f.plain.wall_s:.2f} (goal <= 1.5)"
    )
    equal = (
        f"at equal parallelism ({f.jobs} jobs at a time in both): {g.wall_s:.1f} s / "
        f"{f.plain_parallel.wall_s:.1f} s = {g.wall_s / f.plain_parallel.wall_s:.2f} (goal <= 1.2)"
    )
    return [acc, share, overhead, equal]
