"""The command line: help, version, and clear errors for a chain that is not there."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from discofl_p2p import __version__


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "discofl_p2p", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_subcommands_and_version_prints():
    out = _cli("--help").stdout
    for cmd in ("scenario", "demo", "bench", "requester", "worker", "up"):
        assert cmd in out
    assert _cli("--version").stdout.strip() == f"discofl-p2p {__version__}"
    assert all(b in _cli("bench", "--help").stdout for b in ("gas", "ml", "p2p", "scenarios"))


def test_demo_plays_a_whole_task_and_every_wei_is_accounted_for(anvil):
    p = _cli("demo", "--rpc-url", anvil.rpc_url)
    assert p.returncode == 0, p.stdout + p.stderr
    balance = r"withdrawn (\d+) \+ refunded (\d+) \+ held 0 = (\d+) wei;\s*deposit \3 wei: OK"
    assert re.search(balance, p.stdout), p.stdout


def test_unreachable_chain_and_missing_anvil_are_clear_errors():
    p = _cli("demo", "--rpc-url", "http://127.0.0.1:1")
    assert p.returncode == 3 and "cannot reach the chain" in p.stderr and "Traceback" not in p.stderr
    p = _cli("demo", env={"DISCOFL_ANVIL": "/nonexistent/anvil"})
    assert p.returncode == 3 and "DISCOFL_ANVIL=/nonexistent/anvil is not an executable file" in p.stderr
