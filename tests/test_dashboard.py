"""The live dashboard against a real anvil task: its JSON API and event stream, and the
page in a real headless Chromium driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestClient, TestServer

from discofl_p2p.chain.client import TaskParams, connect
from discofl_p2p.chain.scripted import ScriptedTask, deploy_and_register, play_round
from discofl_p2p.commands.audit import audit_task
from discofl_p2p.dashboard.reader import TaskReader
from discofl_p2p.dashboard.server import make_app, run_dashboard, start_site
from tests.conftest import run

HOSTILE = "<img src=x onerror=alert(1)>"
WAIT_S = 60.0


def _eth(wei: int) -> str:
    """The page's exact ETH text for an amount in wei (app.js formatEth)."""
    whole, frac = divmod(wei, 10**18)
    digits = f"{frac:018d}".rstrip("0")
    return f"{whole}.{digits} ETH" if digits else f"{whole} ETH"


def _top2(n: int) -> list[int]:
    return list(range(min(2, n)))


async def _until(reader: TaskReader, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S) -> dict[str, Any]:
    """The reader's first snapshot for which `pred` holds (waits on its changes)."""

    async def wait() -> dict[str, Any]:
        version = -1
        while True:
            snap = reader.snapshot()
            if snap["task"] is not None and pred(snap):
                return snap
            version = await reader.wait_newer(max(version, snap["version"]))

    return await asyncio.wait_for(wait(), timeout)


async def _settled(task: ScriptedTask) -> list[dict[str, Any]]:
    return [e.args for e in await task.requester.past_events() if e.name == "RoundSettled"]


# ----------------------------------------------------------------------- the API


def test_api_matches_the_chain_and_the_stream_pushes_each_round(anvil):
    async def body() -> None:
        w3 = await connect(anvil.ws_url)
        try:
            params = TaskParams(rounds=3, top_k=2, max_workers=4, deposit_wei=3 * 10**18 + 7)
            task = await deploy_and_register(w3, anvil.ws_url, params, 3, seed=7101)
            rng = random.Random(7101)
            for r in (1, 2):
                await play_round(task, r, rng, _top2)
            contract = task.requester.address
            reader = TaskReader(anvil.ws_url, contract)
            async with TestClient(TestServer(make_app(reader))) as client:
                await _until(reader, lambda s: sum(r["settled"] for r in s["rounds"]) == 2)
                t = await (await client.get("/api/task")).json()
                assert (t["contract"], t["phase"], t["round"], t["rounds"], t["top_k"]) == (
                    contract,
                    "SUBMISSION",
                    3,
                    3,
                    2,
                )
                assert t["deadline"] == await task.requester.view("deadline")
                assert t["deposit_wei"] == str(params.deposit_wei)

                workers = await (await client.get("/api/workers")).json()
                assert [w["address"] for w in workers] == [w.account.address for w in task.workers]
                assert [w["index"] for w in workers] == [0, 1, 2]

                settled = await _settled(task)
                rounds = await (await client.get("/api/rounds")).json()
                assert [r["round"] for r in rounds] == [1, 2, 3]
                assert [r["settled"] for r in rounds] == [True, True, False]
                total: dict[str, int] = {}
                for ev, got in zip(settled, rounds):
                    paid = dict(zip(ev["rankedOwners"], ev["rewards"]))
                    assert got["rewards_wei"] == {a: str(v) for a, v in paid.items()}
                    assert got["ranking"] == list(ev["rankedOwners"])
                    assert len(got["models"]) == 3 and all(len(m) == 66 for m in got["models"])
                    assert sorted(got["owner_at"]) == sorted(w.account.address for w in task.workers)
                    assert {s["evaluator"] for s in got["scores"]} == {w.account.address for w in task.workers}
                    for a, v in paid.items():
                        total[a] = total.get(a, 0) + v
                assert {w["address"]: int(w["rewards_wei"]) for w in workers} == {
                    w.account.address: total.get(w.account.address, 0) for w in task.workers
                }
                # Contributions equal what `discofl-p2p audit` recomputes from the chain.
                audits = (await audit_task(anvil.ws_url, contract)).rounds
                for a, got in zip(audits, rounds):
                    assert got["contributions"] == {
                        w: {
                            "median": c.median,
                            "quality": c.quality,
                            "honesty_raw": c.honesty_raw,
                            "honesty": c.honesty,
                            "score": c.score,
                        }
                        for w, c in a.contribution.items()
                    }
                snapshot = await (await client.get("/api/snapshot")).json()
                assert snapshot["rounds"] == rounds and snapshot["workers"] == workers

                # The event stream sends the current snapshot, then pushes the next round.
                resp = await client.get("/api/stream")
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                first = await asyncio.wait_for(_next_sse(resp), WAIT_S)
                assert first["task"]["round"] == 3
                await play_round(task, 3, rng, _top2)

                async def until_finished() -> dict[str, Any]:
                    while True:
                        snap = await _next_sse(resp)
                        if snap["task"]["phase"] == "FINISHED":
                            return snap

                last = await asyncio.wait_for(until_finished(), WAIT_S)
                ev3 = (await _settled(task))[2]
                assert last["rounds"][2]["rewards_wei"] == {
                    a: str(v) for a, v in zip(ev3["rankedOwners"], ev3["rewards"])
                }
                resp.close()
        finally:
            await w3.provider.disconnect()

    run(body())


async def _next_sse(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The data of the next `snapshot` event on a text/event-stream response."""
    name, data = "", []
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            if name == "snapshot":
                return json.loads("\n".join(data))
            name, data = "", []


def test_api_takes_names_from_a_run_directory_and_needs_a_contract(anvil, tmp_path):
    async def body() -> None:
        w3 = await connect(anvil.ws_url)
        try:
            params = TaskParams(rounds=2, top_k=2, max_workers=3, deposit_wei=10**18)
            task = await deploy_and_register(w3, anvil.ws_url, params, 2, seed=7102)
            _write_run(tmp_path, task)
            # No --contract: the run's log names the deployed contract.
            reader = TaskReader(anvil.ws_url, None, tmp_path)
            async with TestClient(TestServer(make_app(reader))) as client:
                await _until(reader, lambda s: len(s["workers"]) == 2)
                workers = await (await client.get("/api/workers")).json()
                assert [w["name"] for w in workers] == [HOSTILE, "w2"]
                assert workers[0]["behavior"] == "<b>bold</b>"
                run_info = await (await client.get("/api/run")).json()
                assert run_info["contract"] == task.requester.address
                assert run_info["accuracy"][0]["per_worker"] == {task.workers[0].account.address: 0.5}
                p2p = [
                    (
                        n["agent"],
                        n["models_served"],
                        n["bytes_served"],
                        n["models_fetched"],
                        n["bytes_fetched"],
                        n["peers"],
                    )
                    for n in run_info["p2p"]
                ]
                assert sorted(p2p, key=str) == sorted(P2P_OF_RUN, key=str)
                # The page and its script come with a policy that forbids inline script.
                page = await client.get("/")
                assert "script-src" not in page.headers["Content-Security-Policy"]
                assert "default-src 'self'" in page.headers["Content-Security-Policy"]
                assert (await client.get("/static/../reader.py")).status == 404
        finally:
            await w3.provider.disconnect()

    run(body())
    with pytest.raises(ValueError, match="needs --contract"):
        TaskReader(anvil.ws_url, None, None)


def _two_workers(ws_url: str, seed: int) -> ScriptedTask:
    """A one-round task with two registered workers, deployed and left waiting."""

    async def deploy() -> ScriptedTask:
        w3 = await connect(ws_url)
        try:
            params = TaskParams(rounds=1, top_k=2, max_workers=3, deposit_wei=10**18)
            return await deploy_and_register(w3, ws_url, params, 2, seed=seed)
        finally:
            await w3.provider.disconnect()

    return run(deploy())


def test_dashboard_command_serves_a_task_until_interrupted(anvil):
    """`discofl-p2p dashboard` as a user runs it: its own process, the URL on stdout,
    the task's workers in the API, and SIGINT ends it with exit 0."""

    task = _two_workers(anvil.ws_url, seed=7104)
    cmd = [sys.executable, "-m", "discofl_p2p", "dashboard", "--rpc-url", anvil.rpc_url]
    proc = subprocess.Popen(
        [*cmd, "--contract", task.requester.address, "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/?)", line)
        assert url, line

        async def workers() -> list[dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + WAIT_S
                while True:
                    got = await (await session.get(url.group(1).rstrip("/") + "/api/workers")).json()
                    if len(got) == 2 or time.monotonic() > deadline:
                        return list(got)
                    await asyncio.sleep(0.2)

        assert [w["address"] for w in run(workers())] == [w.account.address for w in task.workers]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0
    no_target = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert no_target.returncode == 2 and "give --contract, or --run" in no_target.stderr


def _write_run(out: Path, task: ScriptedTask) -> None:
    """A scenario output directory whose results.json names worker 1 with markup."""
    w1, w2 = (w.account.address for w in task.workers)
    results = {
        "task": {"contract": task.requester.address},
        "workers": [
            {"name": HOSTILE, "address": w1, "behavior": "<b>bold</b>", "peer_id": "<script>alert(2)</script>"},
            {"name": "w2", "address": w2, "behavior": "honest", "peer_id": "12D3KooWtest"},
        ],
        "rounds": [{"round": 1, "test_accuracy": {HOSTILE: 0.5, "nobody": 0.9}}],
        "final": {"test_accuracy": 0.75},
    }
    (out / "results.json").write_text(json.dumps(results))
    deployed = {"event": "task_deployed", "contract": task.requester.address}
    (out / "log.jsonl").write_text(json.dumps(deployed) + "\n")
    # Processes mode, before the merge: each agent's own log, with its transfers.
    (out / "logs").mkdir(exist_ok=True)
    lines = {
        "requester": [{"event": "node_started", "agent": "requester", "peer_id": "12D3KooWreq"}],
        "w2": [
            {"event": "node_started", "agent": "w2", "peer_id": "12D3KooWtest", "address": w2},
            {"event": "w0_fetched", "agent": "w2", "round": 0, "bytes": 1000},
            {"event": "model_fetched", "agent": "w2", "round": 1, "provider": "12D3KooWreq", "bytes": 500},
            {
                "event": "model_fetched",
                "agent": "w2",
                "round": 1,
                "provider": "<script>alert(2)</script>",
                "bytes": 300,
            },
            {"event": "model_fetched", "agent": "w2", "round": 1, "provider": ["not", "a peer"], "bytes": 7},
        ],
    }
    for name, events in lines.items():
        (out / "logs" / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + "{half a li")


P2P_OF_RUN = [  # what _write_run's logs say, per node (the hostile worker named by its peer id)
    ("requester", 2, 1500, 0, 0, 1),
    ("w2", 0, 0, 3, 1800, 2),
    (HOSTILE, 1, 300, 0, 0, 1),
]


def test_scenario_dashboard_finds_the_contract_in_the_run_log(anvil, tmp_path):
    task = _two_workers(anvil.ws_url, seed=7105)
    said: list[str] = []
    with run_dashboard(0, anvil.ws_url, tmp_path, said.append) as url:
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert said == [f"dashboard: {url}"]
        _write_run(tmp_path, task)  # the requester deploys while the page is up

        async def poll() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http:
                while True:  # the reader checks the run directory once a second
                    async with http.get(url + "api/task") as r:
                        t = await r.json()
                    if t is not None:
                        return t
                    await asyncio.sleep(0.1)

        t = run(asyncio.wait_for(poll(), WAIT_S))
        assert (t["contract"], t["phase"], t["worker_count"]) == (task.requester.address, "SUBMISSION", 2)
    with run_dashboard(None, anvil.ws_url, tmp_path, said.append) as nothing:
        assert nothing is None and len(said) == 1


# ----------------------------------------------------------------------- the browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


needs_chromium = pytest.mark.skipif(
    _chromium() is None, reason="chromium not found on PATH (CI installs the Debian package `chromium`)"
)


class Browser:
    """A headless Chromium, one page, driven over the DevTools protocol (websockets)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: Any = None
        self._id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        binary = _chromium()
        assert binary is not None
        self.profile.mkdir(parents=True, exist_ok=True)
        self._log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115 - closed in __aexit__
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",  # tests may run as root
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1400,1000",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT_S
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {(self.profile / 'chromium.log').read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        self.ws = await websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            fut = self._pending.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, WAIT_S)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    async def eval(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait(self, expression: str, what: str, timeout: float = WAIT_S) -> Any:
        """Polls the DOM until `expression` is truthy; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()"  # still loading
        while True:
            value = await self.eval(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what}; last: {await self.eval(DOM_STATE)}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        height = await self.eval("document.documentElement.scrollHeight")
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=1400, height=int(height), deviceScaleFactor=1, mobile=False
        )
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


DOM_STATE = """JSON.stringify({
  phase: document.getElementById('phase').textContent,
  round: document.getElementById('round').textContent,
  countdown: document.getElementById('countdown').textContent,
  connection: document.getElementById('connection').textContent,
  workers: [...document.querySelectorAll('#workers tbody tr')].map(tr => ({
    address: tr.dataset.address,
    name: tr.querySelector('.name').textContent,
    reward: tr.querySelector('.reward').textContent,
  })),
  rounds: Object.fromEntries([...document.querySelectorAll('section.round')].map(s => [s.dataset.round,
    Object.fromEntries([...s.querySelectorAll('table.rewards tbody tr')].map(
      tr => [tr.dataset.address, tr.querySelector('.reward').textContent]))])),
  heatmaps: document.querySelectorAll('svg.heatmap').length,
  bars: document.querySelectorAll('#cumulative rect').length,
  marker: window.__notReloaded === true,
})"""


async def _dom(browser: Browser) -> dict[str, Any]:
    return json.loads(await browser.eval(DOM_STATE))


@needs_chromium
def test_browser_follows_a_live_task(anvil, tmp_path):
    async def body() -> None:
        w3 = await connect(anvil.ws_url)
        try:
            params = TaskParams(rounds=3, top_k=2, max_workers=4, deposit_wei=3 * 10**18 + 1)
            task = await deploy_and_register(w3, anvil.ws_url, params, 3, seed=7103)
            addrs = [w.account.address for w in task.workers]
            rng = random.Random(7103)
            runner, url = await start_site(make_app(TaskReader(anvil.ws_url, task.requester.address)), "127.0.0.1", 0)
            try:
                async with Browser(tmp_path / "chromium") as b:
                    await b.send("Page.navigate", url=url)
                    await b.wait(
                        "document.getElementById('round').textContent === '1' && "
                        "document.querySelectorAll('#workers tbody tr').length === 3",
                        "round 1 and three workers",
                    )
                    await b.eval("window.__notReloaded = true")
                    dom = await _dom(b)
                    assert dom["phase"] == "SUBMISSION" and dom["connection"] == "live"
                    assert [w["address"] for w in dom["workers"]] == addrs
                    assert all(w["reward"] == "0 ETH" for w in dom["workers"])
                    assert dom["countdown"][:2].isdigit() and ":" in dom["countdown"]  # about an hour left

                    for r in (1, 2):  # rounds played while the page is open
                        await play_round(task, r, rng, _top2)
                        await b.wait(
                            f"document.getElementById('round').textContent === '{r + 1}' && "
                            f"document.querySelector('section.round[data-round=\"{r}\"] table.rewards') !== null",
                            f"round {r + 1} with round {r}'s rewards",
                        )

                    dom = await _dom(b)
                    assert dom["marker"], "the page reloaded instead of updating in place"
                    settled = await _settled(task)
                    total = dict.fromkeys(addrs, 0)
                    for i, ev in enumerate(settled, start=1):
                        paid = dict(zip(ev["rankedOwners"], ev["rewards"]))
                        assert dom["rounds"][str(i)] == {a: _eth(paid.get(a, 0)) for a in addrs}
                        for a, v in paid.items():
                            total[a] += v
                    assert {w["address"]: w["reward"] for w in dom["workers"]} == {a: _eth(v) for a, v in total.items()}
                    assert sum(total.values()) > 0
                    assert dom["heatmaps"] == 2  # rounds 1 and 2 were scored, round 3 not yet
                    assert dom["bars"] >= 2
                    await b.screenshot(tmp_path / "dashboard.png")
                    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            finally:
                await runner.cleanup()
        finally:
            await w3.provider.disconnect()

    run(body())


@pytest.mark.slow
@needs_chromium
def test_browser_shows_hostile_names_as_text(anvil, tmp_path):
    async def body() -> None:
        w3 = await connect(anvil.ws_url)
        try:
            params = TaskParams(rounds=2, top_k=2, max_workers=3, deposit_wei=10**18)
            task = await deploy_and_register(w3, anvil.ws_url, params, 2, seed=7104)
            await play_round(task, 1, random.Random(7104), _top2)
            run_dir = tmp_path / "run"
            run_dir.mkdir()
            _write_run(run_dir, task)
            reader = TaskReader(anvil.ws_url, task.requester.address, run_dir)
            runner, url = await start_site(make_app(reader), "127.0.0.1", 0)
            try:
                async with Browser(tmp_path / "chromium") as b:
                    await b.send("Page.navigate", url=url)
                    await b.wait(
                        "document.querySelector('section.round[data-round=\"1\"] table.rewards') !== null",
                        "round 1's rewards",
                    )
                    text = await b.eval("document.body.textContent")
                    assert HOSTILE in text and "<b>bold</b>" in text
                    assert await b.eval("document.querySelectorAll('img').length") == 0
                    assert await b.eval("document.querySelectorAll('main b, main script').length") == 0
                    names = await b.eval("[...document.querySelectorAll('#workers td.name')].map(e => e.textContent)")
                    assert names == [HOSTILE, "w2"]
                    p2p = await b.eval(
                        "[...document.querySelectorAll('#p2p tbody tr')].map(tr => ['.name', '.served', '.peers']"
                        ".map(c => tr.querySelector(c).textContent))"
                    )
                    assert sorted(p2p) == [[HOSTILE, "300 B", "1"], ["requester", "1.5 KiB", "1"], ["w2", "0 B", "2"]]
                    # The name is an SVG text node in the charts too, not markup.
                    assert await b.eval("document.querySelector('#cumulative').querySelectorAll('image').length") == 0
                    await b.screenshot(tmp_path / "hostile.png")
            finally:
                await runner.cleanup()
        finally:
            await w3.provider.disconnect()

    run(body())
