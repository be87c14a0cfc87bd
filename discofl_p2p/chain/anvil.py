"""Finds, starts and stops a local anvil chain.

Anvil is a single native binary. We look for it where `make setup` puts it (the
project-local npm install), then on PATH, then in Foundry's default directory, and
fail with an error that says how to install it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

_NPM_PACKAGES = Path("node_modules/@foundry-rs")
"""Where `npm ci` puts @foundry-rs/anvil's native binary: in the one platform package
it installs for this machine (anvil-linux-amd64, anvil-darwin-arm64, ...), bin/anvil."""


class AnvilNotFound(RuntimeError):
    """No anvil binary was found anywhere we look."""


class AnvilStartError(RuntimeError):
    """Anvil was found but did not start answering RPC calls."""


def find_anvil(search_from: Path | None = None) -> Path:
    """Returns the anvil binary to use.

    Order: $DISCOFL_ANVIL, the npm install in this project (looked for from
    `search_from` and the package's source tree upwards), PATH, ~/.foundry/bin.
    """
    env = os.environ.get("DISCOFL_ANVIL")
    if env:
        p = Path(env)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise AnvilNotFound(f"DISCOFL_ANVIL={env} is not an executable file")
    starts = [Path(search_from or Path.cwd()), Path(__file__).resolve().parent]
    for start in starts:
        for d in [start, *start.resolve().parents]:
            for candidate in sorted((d / _NPM_PACKAGES).glob("anvil-*/bin/anvil")):
                if candidate.is_file():
                    return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    foundry = Path.home() / ".foundry" / "bin" / "anvil"
    if foundry.is_file():
        return foundry
    raise AnvilNotFound(
        "anvil was not found. Run `make setup` in the discofl-p2p checkout (it runs "
        "`npm ci`, which installs @foundry-rs/anvil into node_modules/), or install "
        "Foundry (https://getfoundry.sh), or set DISCOFL_ANVIL=/path/to/anvil, or "
        "pass --rpc-url to use a chain that is already running."
    )


def to_ws_url(url: str) -> str:
    """Anvil serves HTTP and WebSocket on one port: accept either scheme for --rpc-url."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url[len(http) :]
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Anvil:
    """A running anvil process on 127.0.0.1; a context manager that stops it on exit."""

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
        block_time: float | None = None,
        new_session: bool = False,
    ) -> None:
        """`block_time`: mine a block every `block_time` seconds, with whatever
        transactions wait, instead of one block per transaction (anvil's
        `--block-time`, interval mining, as a real chain does). `new_session`: anvil
        runs in its own session, so a terminal's Ctrl-C reaches only its owner, which
        stops it last (after the agent processes that use it)."""
        self.binary = binary or find_anvil()
        self.port = port or free_port()
        self.block_time = block_time
        self._args = [
            str(self.binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--accounts",
            "1",
            "--silent",
            *(["--block-time", f"{block_time:g}"] if block_time is not None else []),
            *extra_args,
        ]
        self._timeout = startup_timeout
        self._new_session = new_session
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Anvil:
        self._proc = subprocess.Popen(
            self._args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self._new_session,
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise AnvilStartError(f"anvil exited with code {self._proc.returncode}: {err.strip()}")
            if _answers(self.rpc_url):
                return self
            time.sleep(0.02)
        self.stop()
        raise AnvilStartError(f"anvil did not answer on {self.rpc_url} within {self._timeout} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(url: str) -> bool:
    body = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=0.5) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False
