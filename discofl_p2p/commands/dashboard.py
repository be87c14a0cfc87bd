"""`discofl-p2p dashboard --rpc-url URL --contract ADDR`: a live page for one task.

Serves the page, the JSON API and the event stream of `discofl_p2p.dashboard` on
127.0.0.1 unless `--host` says otherwise, until interrupted. Read-only: it holds no key.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from discofl_p2p.dashboard.reader import TaskReader
from discofl_p2p.dashboard.server import make_app, start_site
from discofl_p2p.scenario.config import ScenarioError, check_scoring_params
from discofl_p2p.trust.scoring import DEFAULT_SCORING


async def serve(
    ws_url: str,
    contract: str | None,
    host: str,
    port: int,
    run_dir: Path | None,
    scoring: str,
    scoring_params: dict[str, Any],
) -> None:
    runner, url = await start_site(make_app(TaskReader(ws_url, contract, run_dir, scoring, scoring_params)), host, port)
    print(f"dashboard: {url} (Ctrl-C stops it)", flush=True)
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await runner.cleanup()


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
        asyncio.run(serve(ws_url, contract, host, port, run, scoring, params))
    except KeyboardInterrupt:
        pass
    except ValueError as e:
        print(f"discofl-p2p dashboard: {e}", file=sys.stderr)
        return 2
    return 0
