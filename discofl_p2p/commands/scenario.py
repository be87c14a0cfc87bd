"""`discofl-p2p scenario FILE`: the edge where a run is configured, shown and written.

Exit codes: 0 the run finished and every expectation held; 1 an expectation failed;
2 the scenario file is invalid (nothing was started); 3 the run itself failed; 130 it
was interrupted (SIGINT; with --processes, after every agent process has stopped).

`--processes` runs each agent in its own OS process (`scenario/processes.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import structlog
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from discofl_p2p.chain.anvil import Anvil, AnvilNotFound, AnvilStartError, to_ws_url
from discofl_p2p.chain.limits import ETH
from discofl_p2p.dashboard.server import run_dashboard
from discofl_p2p.report.overlay import fetch_shares_of_log
from discofl_p2p.report.plots import plot_accuracy, plot_rewards
from discofl_p2p.report.results import check_expectations, write_results
from discofl_p2p.scenario.config import ScenarioError, load_scenario
from discofl_p2p.scenario.processes import RunInterrupted, run_processes
from discofl_p2p.scenario.runner import RunOutcome, run_scenario

PHASES = ("submission", "evaluation", "settling", "settled")
EXIT_OK, EXIT_EXPECTATION, EXIT_BAD_FILE, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def configure_logging(log_file: TextIO) -> None:
    """Structured JSON lines into the run's log file; libp2p's own chatter off."""
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    logging.getLogger("web3").setLevel(logging.ERROR)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=log_file),
        cache_logger_on_first_use=False,
    )


def scenario_main(
    file: str,
    out_dir: str | None,
    seed: int | None,
    rpc_url: str | None,
    console: Console | None = None,
    *,
    dashboard: int | None = None,
    processes: bool = False,
) -> int:
    console = console or Console(stderr=False)
    try:
        sc = load_scenario(file, seed=seed)
    except ScenarioError as e:
        _error(f"invalid scenario: {e}")
        return EXIT_BAD_FILE
    if sc.faults.kill and not processes:
        _error(f"invalid scenario: {file}: faults.kill kills an agent's OS process: run it with --processes (or up)")
        return EXIT_BAD_FILE
    if sc.faults.restart_requester and not processes:
        _error(
            f"invalid scenario: {file}: faults.restart_requester kills the requester's OS process: "
            "run it with --processes (or up)"
        )
        return EXIT_BAD_FILE
    for kind in ("partition", "lossy"):
        if getattr(sc.faults, kind) and not processes:
            _error(
                f"invalid scenario: {file}: faults.{kind} acts on a worker process's network: run it with --processes"
            )
            return EXIT_BAD_FILE
    out = Path(out_dir or Path("runs") / f"{sc.task.name}-seed{sc.task.seed}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.jsonl").write_text("")
    # Appending: in processes mode the agents' logs are merged into the same file.
    with open(out / "log.jsonl", "a") as log_file:
        configure_logging(log_file)
        try:
            outcome = _run_with_progress(sc, rpc_url, console, out, dashboard, Path(file) if processes else None)
        except (AnvilNotFound, AnvilStartError) as e:
            _error(f"cannot start the chain: {e}")
            return EXIT_RUN_FAILED
        except RunInterrupted as e:
            structlog.get_logger("discofl").warning("run_interrupted", reason=str(e))
            _error(f"interrupted: {e}; every agent process has stopped (logs: {out / 'logs'})")
            return EXIT_INTERRUPTED
        except Exception as e:  # noqa: BLE001 - report what failed, keep the log
            errors = [repr(x) for x in leaf_errors(e)]
            structlog.get_logger("discofl").error("run_failed", errors=errors)
            _error(f"the run failed: {'; '.join(errors)} (log: {out / 'log.jsonl'})")
            return EXIT_RUN_FAILED
    expectations = check_expectations(outcome)
    results = write_results(outcome, expectations, out / "results.json")
    plot_rewards(results, out / "rewards.png")
    plot_accuracy(results, out / "accuracy.png")
    console.print(summary_table(outcome, results))
    console.print(fetch_shares_of_log(out / "log.jsonl").describe(), highlight=False)
    for x in expectations:
        mark = "[green]ok[/]" if x.ok else "[bold red]FAILED[/]"
        console.print(f"expectation {x.name}: {_fmt(x.value)} (limit {_fmt(x.limit)}) {mark}")
    console.print(
        f"results: {out / 'results.json'}, plots: {out / 'rewards.png'}, {out / 'accuracy.png'}, "
        f"log: {out / 'log.jsonl'}"
    )
    return EXIT_OK if all(x.ok for x in expectations) else EXIT_EXPECTATION


def _run_with_progress(
    sc,
    rpc_url: str | None,
    console: Console,
    out: Path | None = None,
    dashboard: int | None = None,
    processes_of: Path | None = None,
) -> RunOutcome:
    """Runs the scenario under a progress display: in this process, or with one
    process per agent when `processes_of` (the scenario's file) is given."""
    progress = Progress(
        TextColumn("round {task.fields[round]}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    bars: dict[int, TaskID] = {}

    def on_phase(r: int, phase: str) -> None:
        if phase == "closed":
            return
        if r not in bars:
            bars[r] = progress.add_task(phase, total=len(PHASES), round=f"{r}/{sc.task.rounds}")
        progress.update(bars[r], description=phase, completed=PHASES.index(phase) + 1)
        if not console.is_terminal:
            console.print(f"round {r}/{sc.task.rounds}: {phase}")

    def run(ws_url: str) -> RunOutcome:
        if processes_of is None:
            return asyncio.run(run_scenario(sc, ws_url, on_phase=on_phase))
        assert out is not None
        return asyncio.run(run_until_interrupted(sc, processes_of, ws_url, out, on_phase))

    with progress:
        if rpc_url:
            with run_dashboard(
                dashboard, to_ws_url(rpc_url), out, console.print, sc.task.scoring, sc.task.scoring_params
            ):
                return run(to_ws_url(rpc_url))
        with (
            Anvil(new_session=processes_of is not None) as anvil,
            run_dashboard(dashboard, anvil.ws_url, out, console.print, sc.task.scoring, sc.task.scoring_params),
        ):
            return run(anvil.ws_url)


async def run_until_interrupted(
    sc, file: Path, ws_url: str, out: Path, on_phase: Callable[[int, str], None]
) -> RunOutcome:
    """`run_processes` with SIGINT and SIGTERM stopping the agent processes in order
    (RunInterrupted) instead of killing this process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_processes(sc, file, ws_url, out, on_phase=on_phase, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def summary_table(outcome: RunOutcome, results: dict) -> Table:
    last = results["rounds"][-1] if results["rounds"] else {"test_accuracy": {}, "contribution": {}}
    t = Table(
        title=f"{outcome.scenario.task.name}: final model test accuracy "
        f"{_fmt(outcome.final_accuracy)}, adversary reward share "
        f"{results['final']['adversary_reward_share']:.2%}, {outcome.wall_s:.1f} s"
    )
    for col in ("worker", "behaviour", "last test acc.", "last p_k", "reward (ETH)", "share"):
        t.add_column(col, justify="left" if col in ("worker", "behaviour") else "right")
    total = sum(outcome.rewards_wei.values()) or 1
    for w in outcome.workers:
        reward = outcome.rewards_wei[w.name]
        t.add_row(
            w.name,
            w.behavior,
            _fmt(last["test_accuracy"].get(w.name)),
            _fmt(last["contribution"].get(w.name)),
            f"{reward / ETH:.4f}",
            f"{reward / total:.1%}",
        )
    t.add_row("requester", "refund", "", "", f"{outcome.refunded_wei / ETH:.4f}", "")
    return t


def _error(message: str) -> None:
    """Errors go to stderr unwrapped, so that `file:line: key: ...` stays one line."""
    print(f"discofl-p2p: {message}", file=sys.stderr)


def leaf_errors(e: BaseException) -> list[BaseException]:
    """The individual errors inside (nested) exception groups from the TaskGroups."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in leaf_errors(sub)]
    return [e]


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
