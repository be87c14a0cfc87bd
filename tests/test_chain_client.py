"""The chain client against real anvil processes: the event stream across long pauses,
dropped connections and wide block ranges; nonces, fees and deadlines as on a chain
that is not a development chain.

These tests mine thousands of blocks and move the base fee, so they run on anvils of
their own rather than the session's. `RpcProxy` is a WebSocket JSON-RPC relay in front
of anvil that records every request and can drop its client connections, refuse
`eth_getLogs` over more than a block range (as public RPC providers do), or present
itself as another client (geth) that has no anvil-only methods.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from discofl_p2p.chain.anvil import Anvil
from discofl_p2p.chain.client import LOG_RANGE, ChainEvent, Phase, TaskClient, TaskParams, connect
from discofl_p2p.chain.devchain import derive_account, ensure_time_past, fund, is_anvil
from discofl_p2p.chain.encoding import Submission, encode_scores, reveal
from discofl_p2p.chain.limits import ETH, FUNDING_WEI
from discofl_p2p.chain.scripted import ScriptedTask, commit_all, deploy_and_register, play_round, score_all
from tests.conftest import run

GWEI = 10**9


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    with Anvil() as a:
        yield a


@pytest.fixture
def fresh_chain() -> Iterator[Anvil]:
    """An anvil for one test: anvil_mine costs grow with the chain's length (about
    2 us per block already there, for each block mined), so long chains stay apart."""
    with Anvil() as a:
        yield a


@pytest.fixture(scope="module")
def interval_chain() -> Iterator[Anvil]:
    """Mines a block every half second whether or not a transaction waits, and only then."""
    with Anvil(block_time=0.5) as a:
        yield a


class RpcProxy:
    """A WebSocket JSON-RPC relay in front of a node; see the module docstring."""

    def __init__(self, upstream: str, *, max_log_range: int | None = None, client_version: str | None = None):
        self.upstream = upstream
        self.max_log_range = max_log_range
        self.client_version = client_version
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._live: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RpcProxy:
        self._server = await serve(self._relay, "127.0.0.1", 0, max_size=None)
        self.url = f"ws://127.0.0.1:{next(iter(self._server.sockets)).getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def drop(self, *, clean: bool) -> None:
        """Ends every client connection now: with a close frame (a server going away)
        or by resetting the TCP connection (a network failure)."""
        for conn in list(self._live):
            if clean:
                t = asyncio.create_task(conn.close())
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            else:
                conn.transport.abort()

    def log_ranges(self) -> list[tuple[Any, Any]]:
        return [
            (r["params"][0]["fromBlock"], r["params"][0]["toBlock"])
            for r in self.requests
            if r["method"] == "eth_getLogs"
        ]

    async def _relay(self, client: ServerConnection) -> None:
        self.connections += 1
        self._live.add(client)
        try:
            async with ws_connect(self.upstream, max_size=None) as up:
                down = asyncio.create_task(self._down(up, client))
                try:
                    async for msg in client:
                        reply = self._answer(json.loads(msg))
                        await (client.send(json.dumps(reply)) if reply else up.send(msg))
                finally:
                    down.cancel()
                    await asyncio.wait([down])
        except ConnectionClosed:
            pass
        finally:
            self._live.discard(client)

    @staticmethod
    async def _down(up: Any, client: ServerConnection) -> None:
        try:
            async for msg in up:
                await client.send(msg)
        except ConnectionClosed:
            pass

    def _answer(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """Our own reply to `req`, or None to pass it to the node."""
        self.requests.append(req)
        method, rid = req["method"], req["id"]
        if self.client_version is not None:
            if method == "web3_clientVersion":
                return {"jsonrpc": "2.0", "id": rid, "result": self.client_version}
            if method.startswith(("evm_", "anvil_")):
                return _error(rid, -32601, f"the method {method} does not exist/is not available")
        if self.max_log_range is not None and method == "eth_getLogs":
            f = req["params"][0]
            lo, hi = f.get("fromBlock", "latest"), f.get("toBlock", "latest")
            if not (lo.startswith("0x") and hi.startswith("0x")):
                return _error(rid, -32602, "this relay wants block numbers, not tags, in eth_getLogs")
            if int(hi, 16) - int(lo, 16) + 1 > self.max_log_range:
                return _error(rid, -32005, f"query exceeds max block range {self.max_log_range}")
        return None


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def _params() -> TaskParams:
    return TaskParams(rounds=1, top_k=2, max_workers=4, deposit_wei=ETH)


async def _mine(w3: AsyncWeb3, blocks: int) -> None:
    await w3.provider.make_request("anvil_mine", [hex(blocks)])


async def _next(stream: AsyncGenerator[ChainEvent, None], timeout: float = 30) -> ChainEvent:
    return await asyncio.wait_for(anext(stream), timeout)


async def _on_chain(w3: AsyncWeb3, address: str) -> list[tuple[int, int, str]]:
    """Every log of the contract, read directly from anvil in one request."""
    logs = await w3.eth.get_logs({"address": address, "fromBlock": 0, "toBlock": "latest"})
    return [(log["blockNumber"], log["logIndex"], log["transactionHash"].to_0x_hex()) for log in logs]


def _keys(events: list[ChainEvent]) -> list[tuple[int, int, str]]:
    return [(e.block_number, e.log_index, e.tx_hash) for e in events]


# The steps of play_round, one at a time, so that a test can act between them.


async def _open(task: ScriptedTask, subs: list[Submission]) -> list[bytes]:
    models = [s.digest for s in subs if s.digest is not None]
    await task.requester.open_evaluation(1, models)
    return models


async def _score(task: ScriptedTask, subs: list[Submission]) -> None:
    await score_all(task.workers, 1, [encode_scores([None if s is own else 0.5 for s in subs]) for own in subs])


async def _settle(task: ScriptedTask, subs: list[Submission], models: list[bytes]) -> None:
    await task.requester.settle_round(1, models, *reveal(task.requester.address, 1, subs, models), [0, 1])


ROUND_EVENTS = (
    ["ModelCommitted"] * 3
    + ["EvaluationOpened"]
    + ["ScoresCommitted"] * 3
    + ["ScoresRevealed"] * 3
    + ["RoundSettled", "TrainingFinished"]
)


# ---------------------------------------------------------------- the event stream


@pytest.mark.slow
def test_stream_delivers_every_event_once_after_a_pause_of_thousands_of_blocks(fresh_chain):
    """The consumer stops reading while 1,100 blocks (and a round's events) arrive, more
    than web3's queue of 500 subscription messages; before the head reader task, that
    queue filled, web3 stopped reading the socket, and the stream's next request timed
    out. Then it waits for the next event while 600 more blocks come."""

    async def go():
        w3 = await connect(fresh_chain.ws_url)
        try:
            task = await deploy_and_register(w3, fresh_chain.ws_url, _params(), 3, seed=101)
            stream = task.requester.events()
            got = [await _next(stream) for _ in range(6)]
            assert got[-1].name == "RoundStarted"
            await _mine(w3, 550)  # the consumer is busy (training, say)
            await play_round(task, 1, random.Random(1), lambda n: [0, 1])
            await _mine(w3, 550)
            await asyncio.sleep(0.5)  # every notification reaches the client meanwhile
            while got[-1].name != "TrainingFinished":
                got.append(await _next(stream))
            waiting = asyncio.create_task(_next(stream))
            await _mine(w3, 600)
            await task.requester.close_task()
            got.append(await waiting)
            assert [e.name for e in got[6:]] == ROUND_EVENTS + ["TaskClosed"]
            assert _keys(got) == await _on_chain(w3, task.requester.address)  # each once, in order
            with pytest.raises(TimeoutError):  # and nothing after
                await _next(stream, timeout=0.5)
            await stream.aclose()
        finally:
            await w3.provider.disconnect()

    run(go())


def test_stream_reconnects_after_its_websocket_drops(chain):
    """The stream's WebSocket is cut three times: reset while the consumer is paused
    (events happen during the reconnection), closed cleanly while the consumer waits
    for the next event, and reset just before the consumer asks again (so the stream's
    next request meets a dead socket). Every event arrives exactly once, in order."""

    async def go():
        w3 = await connect(chain.ws_url)  # transactions go straight to anvil
        try:
            async with RpcProxy(chain.ws_url) as proxy:
                task = await deploy_and_register(w3, chain.ws_url, _params(), 3, seed=102)
                req = task.requester
                watcher = TaskClient(w3, req.address, req.account, ws_url=proxy.url)
                stream = watcher.events()
                got = [await _next(stream) for _ in range(6)]
                assert proxy.connections == 1

                proxy.drop(clean=False)
                subs = await commit_all(task, 1, random.Random(2))
                got += [await _next(stream) for _ in range(3)]
                assert proxy.connections == 2

                waiting = asyncio.create_task(_next(stream))
                await asyncio.sleep(0.2)
                proxy.drop(clean=True)
                models = await _open(task, subs)
                got.append(await waiting)
                assert proxy.connections == 3

                await _score(task, subs)
                proxy.drop(clean=False)
                got += [await _next(stream) for _ in range(6)]  # 3 commits, 3 reveals
                await _settle(task, subs, models)
                got += [await _next(stream) for _ in range(2)]
                assert proxy.connections >= 4

                assert [e.name for e in got[6:]] == ROUND_EVENTS
                assert _keys(got) == await _on_chain(w3, req.address)
                with pytest.raises(TimeoutError):
                    await _next(stream, timeout=0.5)
                await stream.aclose()
        finally:
            await w3.provider.disconnect()

    run(go())


@pytest.mark.slow
def test_logs_are_read_in_bounded_block_ranges(fresh_chain):
    """A round's events spread over more than 2,000 blocks, read through a relay that
    refuses eth_getLogs over more than LOG_RANGE blocks: past_events() and events()
    (which catches up from block 0 as after a long pause) return every event once."""

    async def go():
        w3 = await connect(fresh_chain.ws_url)
        try:
            async with RpcProxy(fresh_chain.ws_url, max_log_range=LOG_RANGE) as proxy:
                task = await deploy_and_register(w3, fresh_chain.ws_url, _params(), 3, seed=103)
                subs = await commit_all(task, 1, random.Random(3))
                await _mine(w3, 1100)
                models = await _open(task, subs)
                await _score(task, subs)
                await _mine(w3, 1100)
                await _settle(task, subs, models)
                truth = await _on_chain(w3, task.requester.address)
                assert truth[-1][0] - truth[0][0] > LOG_RANGE
                w3p = await connect(proxy.url)
                try:
                    with pytest.raises(Web3RPCError, match="max block range"):  # the relay does refuse
                        await w3p.eth.get_logs({"fromBlock": 0, "toBlock": hex(truth[-1][0])})
                    req = task.requester
                    watcher = TaskClient(w3p, req.address, req.account, ws_url=proxy.url)
                    assert _keys(await watcher.past_events()) == truth
                    stream = watcher.events()
                    got = [await _next(stream) for _ in range(len(truth))]
                    await stream.aclose()
                    assert [e.name for e in got[6:]] == ROUND_EVENTS
                    assert _keys(got) == truth
                finally:
                    await w3p.provider.disconnect()
                ranges = [(int(lo, 16), int(hi, 16)) for lo, hi in proxy.log_ranges()[1:]]
                assert len(ranges) >= 4 and all(hi - lo < LOG_RANGE for lo, hi in ranges)
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- transactions


def test_nonce_is_fetched_again_after_a_failed_send(chain):
    """A send fails (no money for gas); meanwhile the account transacts elsewhere. The
    client's next transaction must use the chain's nonce, not its stale cached one."""

    async def go():
        w3 = await connect(chain.ws_url)
        try:
            a = await deploy_and_register(w3, chain.ws_url, _params(), 0, seed=104, start=False)
            b = await deploy_and_register(w3, chain.ws_url, _params(), 0, seed=105, start=False)
            poor = derive_account(104, "poor")
            on_a = a.requester.as_account(poor)
            with pytest.raises(Web3RPCError, match=r"(?i)insufficient funds"):
                await on_a.register()  # estimation passes; the send is refused
            await fund(w3, poor.address, FUNDING_WEI)
            await b.requester.as_account(poor).register()  # another client of the same account
            assert await w3.eth.get_transaction_count(poor.address) == 1
            res = await on_a.register()
            assert (await w3.eth.get_transaction(res.tx_hash))["nonce"] == 1
            assert (await a.requester.state()).worker_count == 1
        finally:
            await w3.provider.disconnect()

    run(go())


def test_fees_follow_the_chain(chain):
    """With the base fee at 300 gwei (far above the old fixed 50 gwei cap) a transaction
    still goes through, priced from the chain: tip = eth_maxPriorityFeePerGas, max fee
    = 2 x latest base fee + tip."""

    async def go():
        w3 = await connect(chain.ws_url)
        try:
            task = await deploy_and_register(w3, chain.ws_url, _params(), 1, seed=106, register=False, start=False)
            await w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(300 * GWEI)])
            await _mine(w3, 1)
            assert (await w3.eth.get_block("latest"))["baseFeePerGas"] == 300 * GWEI
            res = await task.workers[0].register()
            tx = await w3.eth.get_transaction(res.tx_hash)
            tip = await w3.eth.max_priority_fee
            assert tx["maxPriorityFeePerGas"] == tip
            assert tx["maxFeePerGas"] == 2 * 300 * GWEI + tip
            await w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
            await _mine(w3, 1)
        finally:
            await w3.provider.disconnect()

    run(go())


# ---------------------------------------------------------------- interval mining, other chains


@pytest.mark.slow
def test_ensure_time_past_waits_on_a_chain_that_is_not_anvil(interval_chain):
    """Behind a relay that calls itself geth and has no evm_/anvil_ methods, the
    deadline passes only by the chain mining: ensure_time_past waits for that block and
    never calls an anvil-only method. On anvil itself it mines the block at once."""

    async def go():
        async with RpcProxy(interval_chain.ws_url, client_version="Geth/v1.14.12-stable/linux-amd64/go1.23.4") as proxy:
            w3p = await connect(proxy.url)
            try:
                assert not await is_anvil(w3p)
                deadline = (await w3p.eth.get_block("latest"))["timestamp"] + 2
                t0 = time.monotonic()
                await ensure_time_past(w3p, deadline, poll_s=0.2)
                assert (await w3p.eth.get_block("latest"))["timestamp"] > deadline
                assert time.monotonic() - t0 < 10
                assert not [r["method"] for r in proxy.requests if r["method"].startswith(("evm_", "anvil_"))]
            finally:
                await w3p.provider.disconnect()
        w3 = await connect(interval_chain.ws_url)
        try:
            assert await is_anvil(w3)
            deadline = (await w3.eth.get_block("latest"))["timestamp"] + 3600
            await ensure_time_past(w3, deadline)
            assert (await w3.eth.get_block("latest"))["timestamp"] > deadline
        finally:
            await w3.provider.disconnect()

    run(go())


@pytest.mark.slow
def test_scripted_round_on_an_interval_mining_anvil(interval_chain):
    """A whole scripted task, watched through events(), on an anvil that mines every
    0.5 s instead of once per transaction."""

    async def go():
        w3 = await connect(interval_chain.ws_url)
        try:
            before = await w3.eth.block_number
            await asyncio.sleep(1.2)
            assert await w3.eth.block_number > before  # blocks come with no transaction
            task = await deploy_and_register(w3, interval_chain.ws_url, _params(), 3, seed=107)
            stream = task.requester.events()
            await play_round(task, 1, random.Random(7), lambda n: [1, 0])
            got = [await _next(stream) for _ in range(6 + len(ROUND_EVENTS))]
            await stream.aclose()
            assert [e.name for e in got[6:]] == ROUND_EVENTS
            assert _keys(got) == await _on_chain(w3, task.requester.address)
            assert (await task.requester.state()).phase == Phase.FINISHED
        finally:
            await w3.provider.disconnect()

    run(go())


def test_find_anvil_takes_the_platform_package_npm_installed(tmp_path, monkeypatch):
    """`npm ci` installs @foundry-rs/anvil's binary in the one platform package of this
    machine; any of them is found, not only linux-amd64's."""
    from discofl_p2p.chain.anvil import find_anvil

    monkeypatch.delenv("DISCOFL_ANVIL", raising=False)
    binary = tmp_path / "node_modules" / "@foundry-rs" / "anvil-darwin-arm64" / "bin" / "anvil"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_anvil(search_from=tmp_path) == binary


def test_disconnect_lets_a_cancellation_of_its_caller_through(anvil):
    """web3 8.0.0's provider.disconnect() swallows a CancelledError that reaches it while
    it waits for its listener task, so a task cancelled there carries on (the dashboard
    once did not stop on SIGINT); `disconnect` lets it through."""
    from discofl_p2p.chain.client import disconnect

    async def cancelled_while_closing(close) -> bool:
        w3 = await connect(anvil.ws_url)
        task = asyncio.create_task(close(w3))
        await asyncio.sleep(0)  # it has started closing
        task.cancel()
        await asyncio.wait([task])
        return task.cancelled()

    async def body():
        return (
            await cancelled_while_closing(lambda w3: w3.provider.disconnect()),
            await cancelled_while_closing(disconnect),
        )

    assert run(body()) == (False, True)
