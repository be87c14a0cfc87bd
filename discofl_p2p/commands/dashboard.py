"""`discofl-p2p dashboard --rpc-url URL --contract ADDR`: a live page for one task.

Serves the page, the JSON API and the event stream of `discofl_p2p.dashboard` on
127.0.0.1 unless `--host` says otherwise, until interrupted. Read-only: it holds no key.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from discofl_p2p.dashboard.reader import TaskReader
from discofl_p2p.dashboard.server import make_app, start_site
from discofl_p2p.scenario.config import ScenarioError, check_scoring_params
from discofl_p2p.trust.scoring import DEFAULT_SCORING

SHUTDOWN_S = 10.0
"""How long the dashboard's shutdown may take before the command ends anyway."""


async def serve(
    ws_url: str,
    contract: str | None,
    host: str,
    port: int,
    run_dir: Path | None,
    scoring: str,
    scoring_params: dict[str, Any],
) -> None:
    """Serves until SIGINT or SIGTERM, then shuts the site down within SHUTDOWN_S."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    runner, url = await start_site(make_app(TaskReader(ws_url, contract, run_dir, scoring, scoring_params)), host, port)
    print(f"dashboard: {url} (Ctrl-C stops it)", flush=True)
    try:
        await stopping.wait()
    finally:
        try:
            async with asyncio.timeout(SHUTDOWN_S):
                await runner.cleanup()
        except TimeoutError:
            left = sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())
            print(f"discofl-p2p dashboard: shutdown took over {SHUTDOWN_S:g} s; left: {left}", file=sys.stderr)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` to its end, then cancels whatever it left running and waits for that
    at most 2 s: unlike `asyncio.run`, which waits for every leftover task without end,
    so that one stuck in its cleanup would keep the command from exiting (seen once in
    eight SIGINTs on a loaded machine; the cause was not found)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=2.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def dashboard_main(
    ws_url: str,
    contract: str | None,
    host: str,
    port: int,
    run_dir: str | None,
    scoring: str = DEFAULT_SCORING,
    scoring_params: dict[str, Any] | None = None,
) -> int:
    run = Path(run_dir) if run_dir else None
    if contract is None and run is None:
        print("discofl-p2p dashboard: give --contract, or --run naming a scenario's output directory", file=sys.stderr)
        return 2
    params = dict(scoring_params or {})
    try:
        check_scoring_params(scoring, params, "--scoring-param", rule_where="--scoring")
    except ScenarioError as e:
        print(f"discofl-p2p dashboard: {e}", file=sys.stderr)
        return 2
    try:
        _run(serve(ws_url, contract, host, port, run, scoring, params))
    except KeyboardInterrupt:  # Ctrl-C before serve took the signal over
        pass
    except ValueError as e:
        print(f"discofl-p2p dashboard: {e}", file=sys.stderr)
        return 2
    return 0
