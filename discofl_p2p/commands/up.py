"""`discofl-p2p up FILE`: the local multi-node demo.

Starts anvil, the dashboard (its URL printed first), the requester and one process
per worker (`scenario FILE --processes`), shows the rounds as they go, and ends with
the results table and one line per process: its pid, how it exited and its log.
Ctrl-C (SIGINT) stops everything in order: the workers, then the requester, then the
dashboard, then anvil; no process is left behind. Exit codes as `scenario`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from discofl_p2p.commands.scenario import scenario_main
from discofl_p2p.scenario.config import ScenarioError, load_scenario


def up_main(file: str, out_dir: str | None, seed: int | None, port: int, console: Console | None = None) -> int:
    console = console or Console()
    try:
        sc = load_scenario(file, seed=seed)
    except ScenarioError:
        return scenario_main(file, out_dir, seed, None, console)  # reports the error, exit 2
    out = Path(out_dir or Path("runs") / f"{sc.task.name}-seed{sc.task.seed}")
    code = scenario_main(file, str(out), seed, None, console, dashboard=port, processes=True)
    for line in process_summary(out / "log.jsonl"):
        console.print(line, highlight=False)
    return code


def process_summary(log: Path) -> list[str]:
    """One line per agent process of a run, from the runner's lines in its log:
    name, pid, exit code (negative: the signal that ended it) and its log file."""
    started: dict[str, dict] = {}
    exited: dict[str, int | None] = {}
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return []
    for text in lines:
        try:
            ev = json.loads(text)
        except ValueError:
            continue
        if not isinstance(ev, dict) or "process" in ev:  # an agent's own (merged) line
            continue
        if ev.get("event") == "process_started":
            started[ev["agent"]] = ev
        elif ev.get("event") == "process_exited":
            exited[ev["agent"]] = ev.get("code")
    return [
        f"process {name}: pid {ev['pid']}, exit code {exited.get(name, 'unknown')}, log {ev['log']}"
        for name, ev in started.items()
    ]
