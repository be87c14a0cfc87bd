"""`discofl-p2p bench scenarios`: the issue's figures for whole tasks, in one run.

- final test accuracy of garbage.toml against baseline.toml (compact CNN);
- the adversaries' reward share in garbage, collusion and biased, under the paper's
  Top-K schedule and under the contribution-proportional policy with a quality floor;
- the overhead of decentralisation: garbage.toml's wall time over a plain
  single-process loop doing the same training and evaluation (scenario/plain.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from discofl_p2p.chain.anvil import Anvil
from discofl_p2p.report.results import adversary_share
from discofl_p2p.scenario.config import Scenario, load_scenario
from discofl_p2p.scenario.plain import run_plain
from discofl_p2p.scenario.runner import RunOutcome, run_scenario


def _with_policy(sc: Scenario, policy: str, floor: float) -> Scenario:
    return dataclasses.replace(sc, task=dataclasses.replace(sc.task, reward_policy=policy, quality_floor=floor))


def scenarios_main(directory: str = "scenarios", floor: float = 0.5) -> int:
    # Figures only on the terminal: the agents' info lines are for scenario logs.
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    d = Path(directory)
    console = Console(width=120)
    runs: dict[tuple[str, str], RunOutcome] = {}
    with Anvil() as anvil:
        for name in ("baseline", "garbage", "collusion", "biased"):
            sc = load_scenario(d / f"{name}.toml")
            policies = ["top_k"] if name == "baseline" else ["top_k", "proportional"]
            for policy in policies:
                console.print(f"running {name}.toml with the {policy} policy ...")
                runs[(name, policy)] = asyncio.run(run_scenario(_with_policy(sc, policy, floor), anvil.ws_url))
    console.print("running garbage.toml as a plain single-process loop ...")
    plain = run_plain(load_scenario(d / "garbage.toml"))

    acc = Table(title="Final test accuracy (compact CNN, held-out split)")
    acc.add_column("scenario")
    acc.add_column("final model", justify="right")
    acc.add_column("wall s", justify="right")
    for name in ("baseline", "garbage"):
        o = runs[(name, "top_k")]
        acc.add_row(f"{name}.toml", f"{o.final_accuracy:.4f}", f"{o.wall_s:.1f}")
    acc.add_row("garbage, plain loop", f"{plain.final_accuracy:.4f}", f"{plain.wall_s:.1f}")
    console.print(acc)

    share = Table(title=f"Adversaries' share of all rewards (proportional: quality floor {floor})")
    share.add_column("scenario")
    share.add_column("paper Top-K", justify="right")
    share.add_column("proportional + floor", justify="right")
    for name in ("garbage", "collusion", "biased"):
        share.add_row(f"{name}.toml", f"{adversary_share(runs[(name, 'top_k')]):.2%}",
                      f"{adversary_share(runs[(name, 'proportional')]):.2%}")
    console.print(share)

    g = runs[("garbage", "top_k")]
    console.print(f"overhead of decentralisation, garbage.toml: {g.wall_s:.1f} s with chain, network and agents / "
                  f"{plain.wall_s:.1f} s plain loop = {g.wall_s / plain.wall_s:.2f} (goal <= 1.5)")
    return 0
