"""`discofl-p2p bench gas|ml|p2p|scenarios|robustness`: benchmarks that print figures.

The measurements live in `discofl_p2p.bench`; this module starts what they need (an
anvil) and prints. `--quick` runs the same code on tiny inputs, for smoke tests: its
figures are not the ones the docs report.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich.console import Console

from discofl_p2p.bench import gas, ml, p2p, scenarios
from discofl_p2p.chain.anvil import Anvil, to_ws_url


def bench_gas(rpc_url: str | None, rounds: int, *, quick: bool = False, as_json: bool = False) -> int:
    sizes = (6,) if quick else (6, 50)

    async def run(ws_url: str) -> tuple[dict[int, dict[str, list[int]]], str]:
        return {w: await gas.measure(ws_url, w, rounds) for w in sizes}, await gas.fork_of(ws_url)

    if rpc_url:
        results, fork = asyncio.run(run(to_ws_url(rpc_url)))
    else:
        with Anvil() as anvil:
            results, fork = asyncio.run(run(anvil.ws_url))
    if as_json:
        print(json.dumps(gas.as_json(results, fork)))
    else:
        Console(width=160).print(gas.render(results, rounds))
        print(f"hardfork: {fork}")
    return 0


def bench_ml(*, quick: bool = False) -> int:
    console = Console(width=120)
    if quick:
        console.print(ml.throughput_table(n_train=256, n_eval=512))
        console.print(ml.aggregation_table(sizes=(6,)))
    else:
        console.print(ml.throughput_table())
        console.print(ml.aggregation_table())
    return 0


def bench_p2p(*, quick: bool = False) -> int:
    figures = asyncio.run(p2p.measure(quick=quick))
    console = Console(width=120)
    for part in p2p.render(figures):
        console.print(part)
    return 0


def bench_scenarios(directory: str, floor: float, *, quick: bool = False) -> int:
    import logging

    import structlog

    # Figures only on the terminal: the agents' info lines are for scenario logs.
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = Console(width=120)
    with Anvil() as anvil:
        figures = scenarios.measure(Path(directory), anvil.ws_url, floor=floor, quick=quick, say=console.print)
    for part in scenarios.render(figures):
        console.print(part)
    return 0


def bench_robustness(
    matrix: str | None,
    out: str,
    *,
    quick: bool = False,
    jobs: int = 1,
    full_stack_sample: int = 0,
    paper: bool = False,
    cached_only: bool = False,
) -> int:
    from discofl_p2p.bench import robustness
    from discofl_p2p.bench.robustness.matrix import MatrixError
    from discofl_p2p.scenario.config import ScenarioError

    console = Console(width=120)
    if cached_only and (paper or full_stack_sample):
        console.print("discofl-p2p bench robustness: --cached-only runs nothing, so it cannot go with "
                      + ("--paper" if paper else "--full-stack-sample"))  # fmt: skip
        return 2
    if paper:
        from discofl_p2p.bench.robustness.paper import run_paper

        console.print(run_paper(Path(out), say=console.print))
        console.print(f"results in {out}: paper.md, paper.json, paper-accuracy.png, paper-rewards.png, "
                      "paper-cumulative.png")  # fmt: skip
        return 0
    path = Path(matrix) if matrix else robustness.default_matrix(quick=quick)
    try:
        run = robustness.run_robustness(path, Path(out), jobs=jobs, say=console.print, cached_only=cached_only)
    except (MatrixError, ScenarioError) as e:
        console.print(f"discofl-p2p bench robustness: {e}")
        return 2
    console.print((run.out / "summary.md").read_text().split("## Per attack")[0].rstrip())
    console.print(f"results in {run.out}: results.csv, summary.md, {len(run.heatmaps)} heatmap(s)")
    console.print(
        f"computed {run.sweep.computed} cells in {run.sweep.wall_s:.1f} s: {run.sweep.cells_per_minute:.1f} cells/min"
    )
    if full_stack_sample > 0:
        from discofl_p2p.bench.robustness.fullstack import compare_on_full_stack, pick
        from discofl_p2p.bench.robustness.matrix import cells, load_matrix

        sample = pick(cells(load_matrix(path)), full_stack_sample)
        compared = compare_on_full_stack(sample, run.out, say=console.print)
        differ = [c for c in compared if c.differences]
        console.print(
            f"full stack: {len(compared) - len(differ)} of {len(compared)} sampled cells equal to the plain loop"
            + (f"; {len(differ)} differ (see full-stack-sample.json)" if differ else "")
        )
        return 1 if differ else 0
    return 0
