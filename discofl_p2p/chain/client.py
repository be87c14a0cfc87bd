"""An asyncio client for one deployed DiscoFLTask, seen from one account.

Every transaction is estimated first, so a revert surfaces before anything is
sent, as a ContractRevert that names the contract's custom error. Transactions
of one account go out one at a time (the nonce is local); all clients of a process
share a bound on transactions in flight, because anvil stalls with about a
thousand pending.

Events come from `events()`, an async iterator over decoded contract logs: it
subscribes to new block headers on its own WebSocket connection and reads each
new block range's logs, so consumers react to events, never to a clock. A task the
stream owns reads the headers as they come and keeps only the newest, so a consumer
may pause for any number of blocks; a dropped connection is reopened and the stream
resumes after the last block it delivered.

Fees come from the chain (priority fee from `eth_maxPriorityFeePerGas`, max fee twice
the latest base fee plus that), and logs are read at most `LOG_RANGE` blocks a request,
so the client also works against a node that is not a development chain.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3, WebSocketProvider
from web3.exceptions import (
    ContractLogicError,
    PersistentConnectionClosedOK,
    ProviderConnectionError,
    TaskNotRunning,
    TimeExhausted,
    TransactionNotFound,
)
from websockets.exceptions import WebSocketException

from discofl_p2p.chain.abi_codec import AbiCodec
from discofl_p2p.chain.artifact import load_artifact
from discofl_p2p.chain.encoding import (
    PENDING_BYTES,
    ScoreReveal,
    create_address,
    earners_in_order,
    pack_openings,
    pack_score_reveals,
    pending_score_commitments,
    score_commitment,
    unpack_openings,
)
from discofl_p2p.chain.errors import ContractRevert, decode_revert
from discofl_p2p.chain.limits import DEFAULT_GRACE_PERIOD_S, REVEAL_CALLDATA_BYTES

MAX_IN_FLIGHT = 256
"""Transactions a process keeps unconfirmed at once (anvil stalls at about 1000)."""

LOG_RANGE = 2000
"""Most blocks one eth_getLogs request spans (public RPC providers refuse wider ones)."""

DEFAULT_PRIORITY_FEE = 10**9
"""The tip (wei per gas) when the chain does not suggest one."""

RECONNECT_DELAY_S = (0.05, 2.0)
"""First and longest wait between attempts to reopen the event stream's connection."""

_log = logging.getLogger("discofl.chain")
_T = TypeVar("_T")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError and ConnectionError
    WebSocketException,  # includes ConnectionClosed (OK and Error)
    ProviderConnectionError,
    PersistentConnectionClosedOK,
    TaskNotRunning,
    TimeExhausted,
)
"""What a request or subscription on a WebSocket that dropped (or hangs) raises."""

_in_flight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@functools.cache
def _codec() -> AbiCodec:
    """The contract's ABI, looked up once per process (web3 would per call)."""
    return AbiCodec(load_artifact()["abi"])


def _limiter() -> asyncio.Semaphore:
    """The in-flight bound of the running event loop (a semaphore binds to one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _in_flight:
        _in_flight[loop] = asyncio.Semaphore(MAX_IN_FLIGHT)
    return _in_flight[loop]


class Phase(enum.IntEnum):
    REGISTRATION = 0
    SUBMISSION = 1
    EVALUATION = 2
    FINISHED = 3
    CLOSED = 4
    ABANDONED = 5


class RewardRule(enum.IntEnum):
    TOP_K = 0
    EXPLICIT = 1


@dataclass(frozen=True)
class TaskParams:
    """What the requester fixes at deployment.

    `grace_period_s`: how long after a deadline (or after the last round settled)
    anyone may end a task whose requester stalls (`end_abandoned_task`, or
    `close_task` once finished). `allowlist_only`: only addresses the requester allows
    may register; `allowlist` are allowed at deployment (more with `allow_workers`).
    The defaults keep registration open to anyone.
    """

    rounds: int
    top_k: int
    max_workers: int
    deposit_wei: int
    initial_model: bytes = bytes(32)
    submission_period_s: int = 3600
    evaluation_period_s: int = 3600
    reveal_period_s: int = 3600
    """How long after the evaluation deadline the round's scores may be revealed."""
    rule: RewardRule = RewardRule.TOP_K
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S
    allowlist_only: bool = False
    allowlist: tuple[str, ...] = ()


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    gas_used: int
    block_number: int
    events: list[ChainEvent] = field(default_factory=list)


@dataclass(frozen=True)
class ChainEvent:
    name: str
    args: dict[str, Any]
    block_number: int
    log_index: int
    tx_hash: str


def awarded(events: Sequence[ChainEvent]) -> dict[str, int]:
    """What the settled rounds paid each worker, from the RoundSettled events (the
    credits closeTask shares the unpaid rest by)."""
    out: dict[str, int] = {}
    for e in events:
        if e.name == "RoundSettled":
            for who, amount in zip(e.args["rankedOwners"], e.args["rewards"], strict=True):
                out[who] = out.get(who, 0) + amount
    return out


@dataclass(frozen=True)
class TaskState:
    phase: Phase
    round: int
    deadline: int
    worker_count: int
    submitted_count: int
    scored_count: int
    model_count: int
    total_credited: int
    total_withdrawn: int
    refunded: int
    held: int
    deposit: int
    participant_count: int = 0
    """Registered workers that committed at least one model (they share an abandoned task)."""
    revealed_count: int = 0
    """Score commitments of the round revealed so far (scored_count counts the commitments)."""
    reveal_deadline: int = 0
    """The last second the round's scores may be revealed (0 before evaluation opens)."""


async def connect(ws_url: str) -> AsyncWeb3:
    """Opens an AsyncWeb3 over a WebSocket; close it with `await w3.provider.disconnect()`."""
    w3 = AsyncWeb3(WebSocketProvider(ws_url, max_connection_retries=3))
    await w3.provider.connect()
    return w3


async def disconnect(w3: AsyncWeb3) -> None:
    """Closes a connection that may already be dead, within a bounded time, and lets a
    cancellation of the caller through: web3 8.0.0's `provider.disconnect()` swallows a
    CancelledError that reaches it while it waits for its listener task, so a task
    cancelled there would carry on (here `wait_for` runs it as a task of its own)."""
    try:
        await asyncio.wait_for(w3.provider.disconnect(), timeout=5)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - a dead connection fails to close in many ways
        _log.debug("closing the event stream connection failed: %r", e)


class _StreamDropped(Exception):
    """The event stream's connection ended; it is being reopened."""


class _Heads:
    """The chain's latest block number, read from a newHeads subscription.

    `run()`, a task owned by one `events()` stream, reads every header notification as
    it arrives and keeps only the newest number, so nothing queues up however long the
    stream's consumer pauses (web3 stops reading the socket altogether once 500
    notifications wait). When the connection drops it reopens one, with backoff and
    without giving up, and reads the head afresh. `call()` runs a request on the
    current connection and turns a drop into `_StreamDropped`.
    """

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.latest = -1
        self.connections = 0
        self._w3: AsyncWeb3 | None = None
        self._ended = asyncio.Event()  # set when the current connection is over
        self._changed = asyncio.Event()  # set on a new head, connection or end
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"heads {self.ws_url}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # propagates a cancellation of the caller, not of task
        if not task.cancelled() and task.exception() is not None:
            _log.debug("event stream head reader failed: %r", task.exception())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_DELAY_S[0]
        try:
            while True:
                try:
                    w3, head = await self._open()
                except _CONNECTION_ERRORS as e:
                    _log.info("event stream cannot connect to %s: %r", self.ws_url, e)
                else:
                    started = loop.time()
                    await self._serve(w3, head)
                    if loop.time() - started > 1.0:  # a connection that lasted: retry at once
                        delay = RECONNECT_DELAY_S[0]
                await asyncio.sleep(delay)
                delay = min(2 * delay, RECONNECT_DELAY_S[1])
        finally:
            self._w3 = None
            self._ended.set()
            self._changed.set()

    async def _open(self) -> tuple[AsyncWeb3, int]:
        w3 = AsyncWeb3(
            WebSocketProvider(
                self.ws_url,
                max_connection_retries=1,
                websocket_kwargs={"ping_interval": 10, "ping_timeout": 30},
            )
        )
        await w3.provider.connect()
        try:
            await w3.eth.subscribe("newHeads")
            head = await w3.eth.block_number  # heads from before the subscription
        except BaseException:
            await disconnect(w3)
            raise
        return w3, head

    async def _serve(self, w3: AsyncWeb3, head: int) -> None:
        """Keeps `latest` current from one connection until it drops or is dropped."""
        ended = self._ended = asyncio.Event()
        self._w3, self.latest = w3, head
        self.connections += 1
        self._changed.set()
        pump = asyncio.create_task(self._pump(w3))
        end = asyncio.create_task(ended.wait())
        try:
            await asyncio.wait([pump, end], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._w3 = None
            ended.set()
            self._changed.set()
            pump.cancel()
            end.cancel()
            await asyncio.wait([pump, end])
            await disconnect(w3)
        error = None if pump.cancelled() else pump.exception()
        if error is not None and not isinstance(error, _CONNECTION_ERRORS):
            raise error
        _log.info("event stream connection to %s ended (%r); reconnecting", self.ws_url, error)

    async def _pump(self, w3: AsyncWeb3) -> None:
        async for msg in w3.socket.process_subscriptions():
            self.latest = int(msg["result"]["number"])
            self._changed.set()
        # The stream ends quietly when the server closed the connection cleanly.

    def _check(self) -> None:
        """Raises what stopped the head reader, if it stopped."""
        task = self._task
        if task is None:
            raise RuntimeError("the event stream's head reader was not started")
        if task.done():
            error = None if task.cancelled() else task.exception()
            raise error or RuntimeError("the event stream's head reader stopped")

    async def wait_past(self, block: int) -> int:
        """Waits until a connection is up and its head is at least `block`; returns the head."""
        while True:
            self._check()
            if self._w3 is not None and self.latest >= block:
                return self.latest
            self._changed.clear()
            await self._changed.wait()

    async def call(self, request: Callable[[AsyncWeb3], Awaitable[_T]]) -> _T:
        """`request` on the current connection; `_StreamDropped` if that connection
        fails or ends first (after which the reader reconnects)."""
        w3, ended = self._w3, self._ended
        if w3 is None or ended.is_set():
            raise _StreamDropped
        req = asyncio.ensure_future(request(w3))
        end = asyncio.create_task(ended.wait())
        try:
            await asyncio.wait([req, end], return_when=asyncio.FIRST_COMPLETED)
        finally:
            req.cancel()
            end.cancel()
            await asyncio.wait([req, end])
        if req.cancelled():
            raise _StreamDropped
        error = req.exception()
        if error is None:
            return req.result()
        if isinstance(error, _CONNECTION_ERRORS):
            if self._w3 is w3:  # make the reader reopen it, and use it no more
                self._w3 = None
                ended.set()
            raise _StreamDropped from error
        raise error


class TaskClient:
    """One account's handle on one DiscoFLTask contract."""

    def __init__(self, w3: AsyncWeb3, address: str, account: LocalAccount, *, ws_url: str = "") -> None:
        self.w3 = w3
        self.address = AsyncWeb3.to_checksum_address(address)
        self.account = account
        self.ws_url = ws_url
        self.codec = _codec()
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None

    @functools.cached_property
    def contract(self) -> Any:
        """web3's contract object, for callers that want web3's API. Built on first use:
        it costs tens of milliseconds, and this client itself encodes and decodes with
        `codec` (see abi_codec: web3's per-call ABI lookup cost milliseconds of CPU per
        transaction and per log)."""
        return self.w3.eth.contract(address=self.address, abi=load_artifact()["abi"])

    # -------------------------------------------------------------- setup

    @classmethod
    async def deploy(
        cls,
        w3: AsyncWeb3,
        account: LocalAccount,
        params: TaskParams,
        *,
        ws_url: str = "",
        on_address: Callable[[str], None] | None = None,
    ) -> tuple[TaskClient, TxResult]:
        """Deploys a task. `on_address` is called with the contract's address before the
        deployment is sent (the address follows from the account and its nonce), so a
        caller can record the task first: a crash can then lose nothing that was sent."""
        art = load_artifact()
        data = _codec().deploy_data(
            bytes.fromhex(art["bytecode"].removeprefix("0x")),
            params.rounds,
            params.top_k,
            params.max_workers,
            params.submission_period_s,
            params.evaluation_period_s,
            params.reveal_period_s,
            params.initial_model,
            int(params.rule),
            params.grace_period_s,
            params.allowlist_only,
            [AsyncWeb3.to_checksum_address(a) for a in params.allowlist],
        )
        deployer = cls(w3, "0x" + "00" * 20, account, ws_url=ws_url)
        deployer._nonce = await w3.eth.get_transaction_count(account.address, "pending")
        deployer._chain_id = await w3.eth.chain_id
        address = create_address(account.address, deployer._nonce)
        if on_address is not None:
            on_address(address)
        receipt = await deployer._transact({"data": data}, "constructor", value=params.deposit_wei)
        if receipt["contractAddress"] != address:  # only if the nonce moved under us
            raise RuntimeError(f"the task was deployed at {receipt['contractAddress']}, not at {address}")
        client = cls(w3, receipt["contractAddress"], account, ws_url=ws_url)
        client._nonce, client._chain_id = deployer._nonce, deployer._chain_id
        return client, client._result(receipt)

    def as_account(self, account: LocalAccount) -> TaskClient:
        """The same contract, on the same connection, from another account."""
        return TaskClient(self.w3, self.address, account, ws_url=self.ws_url)

    # -------------------------------------------------------------- calls

    async def register(self) -> TxResult:
        return await self._call("register")

    async def allow_workers(self, addresses: Sequence[str]) -> TxResult:
        """The requester lets these addresses register (a task deployed `allowlist_only`)."""
        return await self._call("allowWorkers", [AsyncWeb3.to_checksum_address(a) for a in addresses])

    async def start_training(self) -> TxResult:
        return await self._call("startTraining")

    async def submit_model(self, round_: int, commitment: bytes) -> TxResult:
        return await self._call("submitModel", round_, commitment)

    async def open_evaluation(self, round_: int, models: Sequence[bytes]) -> TxResult:
        return await self._call("openEvaluation", round_, list(models))

    async def commit_scores(self, round_: int, packed_scores: bytes, salt: bytes) -> TxResult:
        """Commits the packed scores blind (`encoding.score_commitment`); reveal them with
        the same salt once commits closed (`reveal_scores`)."""
        c = score_commitment(self.address, round_, self.account.address, salt, packed_scores)
        return await self._call("commitScores", round_, c)

    async def reveal_scores(
        self, round_: int, reveals: Mapping[str, ScoreReveal], *, from_block: int = 0
    ) -> list[TxResult]:
        """Reveals the rows in `reveals` (evaluator -> salt and row) that match their
        commitments: the requester's batch, or an evaluator's own row. One
        transaction, or several where one would carry more than REVEAL_CALLDATA_BYTES
        (each carries the whole pending list, read from the events first). A reveal
        that lands in between makes the list stale (`BadScoreReveal`); the caller may
        simply call again. Raises ValueError if none of `reveals` is pending and valid.
        `from_block`: where to read the events from (the round's EvaluationOpened block
        or earlier), so that a long chain is not read from its start each round."""
        pending = pending_score_commitments(await self.past_events(from_block), round_)
        _, _, valid = pack_score_reveals(self.address, round_, pending, reveals)
        if not valid:
            raise ValueError(f"round {round_}: none of {len(reveals)} reveals is pending and valid")
        row = len(reveals[valid[0]].packed)
        per_tx = max(1, (REVEAL_CALLDATA_BYTES - PENDING_BYTES * len(pending)) // max(row, 1))
        out = []
        for i in range(0, len(valid), per_tx):
            chunk = {w: reveals[w] for w in valid[i : i + per_tx]}
            packed, rows, revealed = pack_score_reveals(self.address, round_, pending, chunk)
            out.append(await self._call("revealScores", round_, packed, rows))
            pending = [(w, c) for w, c in pending if w not in set(revealed)]
        return out

    async def reveal_scores_packed(self, round_: int, pending: bytes, rows: bytes) -> TxResult:
        """revealScores with its arguments as given (`encoding.pack_score_reveals`
        builds them); `reveal_scores` is the checked way."""
        return await self._call("revealScores", round_, pending, rows)

    async def dispute_exclusion(self, round_: int, digest: bytes, salt: bytes) -> TxResult:
        """Posts the opening of this account's commitment of `round_` (its model was left
        out of the published list), until the evaluation deadline; `audit` checks it."""
        return await self._call("disputeExclusion", round_, digest, salt)

    async def post_anchor_scores(self, round_: int, packed_scores: bytes) -> TxResult:
        """The requester posts its own scores of the round's published models on its root
        validation set (the `anchored` rule's anchor), once, during evaluation."""
        return await self._call("postAnchorScores", round_, packed_scores)

    async def settle_round(
        self,
        round_: int,
        models: Sequence[bytes],
        submitters: Sequence[str],
        positions: Sequence[int],
        openings: Sequence[bytes],
        ranking: Sequence[int],
        amounts: Sequence[int] = (),
    ) -> TxResult:
        """See DiscoFLTask.settleRound; `encoding.reveal()` builds the middle three,
        which go packed into one `bytes` argument (`encoding.pack_openings`)."""
        return await self._call(
            "settleRound",
            round_,
            list(models),
            pack_openings(submitters, positions, openings),
            list(ranking),
            list(amounts),
        )

    def settlement_args(self, tx_input: Any) -> dict[str, Any]:
        """settleRound's arguments, read back from its transaction's input, with the
        packed openings unpacked into `submitters`, `positions` and `openings` (what
        the audit and the dashboard re-verify)."""
        raw = bytes.fromhex(tx_input.removeprefix("0x")) if isinstance(tx_input, str) else bytes(tx_input)
        _, args = self.codec.decode_input(raw)
        submitters, positions, openings = unpack_openings(bytes(args["openings"]))
        return {**args, "submitters": submitters, "positions": positions, "openings": openings}

    async def withdraw(self) -> TxResult:
        return await self._call("withdraw")

    async def close_task(self, earners: Sequence[str] | None = None) -> TxResult:
        """The requester closes (before training, or once finished); anyone may close a
        finished task once its grace period is over (the refund still goes to the
        requester). `earners` (every worker with a credit, in ascending address order)
        is rebuilt from the RoundSettled events when not given."""
        if earners is None:
            earners = earners_in_order(awarded(await self.past_events()))
        return await self._call("closeTask", [AsyncWeb3.to_checksum_address(a) for a in earners])

    async def end_abandoned_task(self) -> TxResult:
        """Anyone ends a task whose requester stalled past a deadline plus the grace period:
        the rest of the deposit is shared equally by the workers who committed a model."""
        return await self._call("endAbandonedTask")

    # -------------------------------------------------------------- views

    async def state(self, block: int | str = "latest") -> TaskState:
        """The task's counters and balance as of `block` (the latest by default)."""
        names = [
            "phase",
            "currentRound",
            "deadline",
            "workerCount",
            "submittedCount",
            "scoredCount",
            "revealedCount",
            "revealDeadline",
            "modelCount",
            "totalCredited",
            "totalWithdrawn",
            "refunded",
            "deposit",
            "participantCount",
        ]
        vals = await asyncio.gather(*(self.view(n, block=block) for n in names))
        held = await self.w3.eth.get_balance(self.address, block)  # type: ignore[arg-type]
        v = dict(zip(names, vals))
        return TaskState(
            phase=Phase(v["phase"]),
            round=v["currentRound"],
            deadline=v["deadline"],
            worker_count=v["workerCount"],
            submitted_count=v["submittedCount"],
            scored_count=v["scoredCount"],
            revealed_count=v["revealedCount"],
            reveal_deadline=v["revealDeadline"],
            model_count=v["modelCount"],
            total_credited=v["totalCredited"],
            total_withdrawn=v["totalWithdrawn"],
            refunded=v["refunded"],
            held=held,
            deposit=v["deposit"],
            participant_count=v["participantCount"],
        )

    async def credit_of(self, address: str) -> int:
        """What settlements credited `address` and it has not withdrawn (not its share of
        an abandoned task; see `withdrawable_of`)."""
        return int((await self.view("workers", address))[4])

    async def withdrawable_of(self, address: str) -> int:
        """What `withdraw()` would pay `address` now: its credit and, once the task was
        abandoned, its unclaimed share."""
        return int(await self.view("withdrawable", address))

    async def view(self, name: str, *args: Any, block: int | str = "latest") -> Any:
        """Any other public view, by its Solidity name, as of `block`: its value, or a
        list of its values when it returns several."""
        call = {"to": self.address, "data": self.codec.call_data(name, *args)}
        out = await self.w3.eth.call(call, block)  # type: ignore[arg-type]
        return self.codec.decode_output(name, bytes(out))

    # -------------------------------------------------------------- events

    async def past_events(self, from_block: int = 0, to_block: int | str = "latest") -> list[ChainEvent]:
        """Every event of the contract in [from_block, to_block], in chain order."""
        if isinstance(to_block, str):
            to_block = (await self.w3.eth.get_block(to_block))["number"]  # type: ignore[arg-type]
        out: list[ChainEvent] = []
        for lo in range(from_block, to_block + 1, LOG_RANGE):
            out += [self._decode(log) for log in await self._logs(self.w3, lo, min(lo + LOG_RANGE - 1, to_block))]
        return out

    async def events(self, from_block: int = 0) -> AsyncGenerator[ChainEvent, None]:
        """Every event of the contract from `from_block` on, in chain order, forever.

        Opens its own WebSocket (a subscription stream must not share a connection
        with another stream) and closes it when the consumer stops iterating
        (`aclose()`). Block heads are read by a task of the stream's own, so the
        consumer may pause for any number of blocks; logs are read at most LOG_RANGE
        blocks at a time; if the connection drops, the stream reconnects and resumes
        after the last block it delivered, so no event is lost or repeated.
        """
        if not self.ws_url:
            raise ValueError("events() needs the client's ws_url")
        heads = _Heads(self.ws_url)
        heads.start()
        try:
            next_block = from_block
            while True:
                head = await heads.wait_past(next_block)
                hi = min(head, next_block + LOG_RANGE - 1)
                try:
                    logs = await heads.call(functools.partial(self._logs, lo=next_block, hi=hi))
                except _StreamDropped:
                    continue  # the same range again, on the next connection
                for log in logs:
                    yield self._decode(log)
                next_block = hi + 1
        finally:
            await heads.stop()

    # -------------------------------------------------------------- internals

    async def _logs(self, w3: AsyncWeb3, lo: int, hi: int) -> list[Any]:
        return list(await w3.eth.get_logs({"address": self.address, "fromBlock": lo, "toBlock": hi}))

    def _decode(self, log: Any) -> ChainEvent:
        name, args = self.codec.decode_log(log["topics"], log["data"])
        return ChainEvent(
            name=name,
            args=args,
            block_number=log["blockNumber"],
            log_index=log["logIndex"],
            tx_hash=log["transactionHash"].to_0x_hex(),
        )

    def _result(self, receipt: Any) -> TxResult:
        events = [self._decode(log) for log in receipt["logs"] if log["address"] == self.address]
        return TxResult(
            tx_hash=receipt["transactionHash"].to_0x_hex(),
            gas_used=receipt["gasUsed"],
            block_number=receipt["blockNumber"],
            events=events,
        )

    async def _call(self, name: str, *args: Any) -> TxResult:
        call = {"to": self.address, "data": self.codec.call_data(name, *args)}
        return self._result(await self._transact(call, name))

    async def _transact(self, call: dict[str, Any], name: str, *, value: int = 0) -> Any:
        """Estimates, signs and sends `call` (`to` and `data`; no `to` deploys), then
        waits for its receipt."""
        async with self._lock, _limiter():
            if self._nonce is None:
                self._nonce = await self.w3.eth.get_transaction_count(self.account.address, "pending")
                self._chain_id = await self.w3.eth.chain_id
            base = {**call, "from": self.account.address, "value": value}
            try:
                gas = await self.w3.eth.estimate_gas(base)  # type: ignore[arg-type]
            except ContractLogicError as e:
                raise decode_revert(e.data if isinstance(e.data, str) else None, function=name) from None
            tx = {
                **base,
                "gas": gas + gas // 5 + 10_000,
                "nonce": self._nonce,
                "chainId": self._chain_id,
                **await self._fees(),
            }
            signed = self.account.sign_transaction(tx)
            try:
                tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except BaseException:
                # Whatever failed (stale nonce, no gas money, a dropped reply to a send
                # that went through), the next transaction asks the chain again.
                self._nonce = None
                raise
            self._nonce += 1
            receipt = await self._receipt(tx_hash)
        if receipt["status"] != 1:
            raise await self._replay_revert(tx, receipt, name)
        return receipt

    async def _fees(self) -> dict[str, int]:
        """EIP-1559 fees from the chain: the suggested tip (DEFAULT_PRIORITY_FEE if the
        node has none) and a max fee of twice the latest base fee plus the tip, which
        survives six full blocks of base fee rises; a legacy gas price on a chain
        without base fees."""
        latest = await self.w3.eth.get_block("latest")
        base_fee = latest.get("baseFeePerGas")
        if base_fee is None:
            return {"gasPrice": await self.w3.eth.gas_price}
        try:
            tip = int(await self.w3.eth.max_priority_fee)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - no suggestion (method and fee history both failed)
            _log.debug("no priority fee suggestion from the chain: %r", e)
            tip = DEFAULT_PRIORITY_FEE
        return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base_fee + tip}

    async def _receipt(self, tx_hash: Any) -> Any:
        try:
            return await self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.02)

    async def _replay_revert(self, tx: dict[str, Any], receipt: Any, name: str) -> ContractRevert:
        """A transaction that passed estimation but reverted when mined: ask why."""
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            await self.w3.eth.call(call, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except ContractLogicError as e:
            return decode_revert(e.data if isinstance(e.data, str) else None, function=name)
        return ContractRevert("RevertedWhenMined", (receipt["transactionHash"].to_0x_hex(),), function=name)
