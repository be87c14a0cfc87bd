"""An asyncio client for one deployed DiscoFLTask, seen from one account.

Every transaction is estimated first, so a revert surfaces before anything is
sent, as a ContractRevert that names the contract's custom error. Transactions
of one account go out one at a time (the nonce is local); all clients of a process
share a bound on transactions in flight, because anvil stalls with about a
thousand pending.

Events come from `events()`, an async iterator over decoded contract logs: it
subscribes to new block headers on its own WebSocket connection and reads each
new block range's logs, so consumers react to events, never to a clock.
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import event_abi_to_log_topic
from web3 import AsyncWeb3, WebSocketProvider
from web3.exceptions import ContractLogicError, TransactionNotFound

from discofl_p2p.chain.artifact import load_artifact
from discofl_p2p.chain.errors import ContractRevert, decode_revert

MAX_IN_FLIGHT = 256
"""Transactions a process keeps unconfirmed at once (anvil stalls at about 1000)."""

_in_flight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


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


class RewardRule(enum.IntEnum):
    TOP_K = 0
    EXPLICIT = 1


@dataclass(frozen=True)
class TaskParams:
    """What the requester fixes at deployment."""

    rounds: int
    top_k: int
    max_workers: int
    deposit_wei: int
    initial_model: bytes = bytes(32)
    submission_period_s: int = 3600
    evaluation_period_s: int = 3600
    rule: RewardRule = RewardRule.TOP_K


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


async def connect(ws_url: str) -> AsyncWeb3:
    """Opens an AsyncWeb3 over a WebSocket; close it with `await w3.provider.disconnect()`."""
    w3 = AsyncWeb3(WebSocketProvider(ws_url, max_connection_retries=3))
    await w3.provider.connect()
    return w3


class TaskClient:
    """One account's handle on one DiscoFLTask contract."""

    def __init__(self, w3: AsyncWeb3, address: str, account: LocalAccount, *, ws_url: str = "") -> None:
        art = load_artifact()
        self.w3 = w3
        self.address = AsyncWeb3.to_checksum_address(address)
        self.account = account
        self.ws_url = ws_url
        self.contract = w3.eth.contract(address=self.address, abi=art["abi"])
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None
        self._topics = {event_abi_to_log_topic(e): e["name"] for e in art["abi"] if e["type"] == "event"}

    # -------------------------------------------------------------- setup

    @classmethod
    async def deploy(
        cls, w3: AsyncWeb3, account: LocalAccount, params: TaskParams, *, ws_url: str = ""
    ) -> tuple[TaskClient, TxResult]:
        art = load_artifact()
        factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        ctor = factory.constructor(
            params.rounds,
            params.top_k,
            params.max_workers,
            params.submission_period_s,
            params.evaluation_period_s,
            params.initial_model,
            int(params.rule),
        )
        deployer = cls(w3, "0x" + "00" * 20, account, ws_url=ws_url)
        receipt = await deployer._transact(ctor, "constructor", value=params.deposit_wei)
        client = cls(w3, receipt["contractAddress"], account, ws_url=ws_url)
        client._nonce, client._chain_id = deployer._nonce, deployer._chain_id
        return client, client._result(receipt)

    def as_account(self, account: LocalAccount) -> TaskClient:
        """The same contract, on the same connection, from another account."""
        return TaskClient(self.w3, self.address, account, ws_url=self.ws_url)

    # -------------------------------------------------------------- calls

    async def register(self) -> TxResult:
        return await self._call("register")

    async def start_training(self) -> TxResult:
        return await self._call("startTraining")

    async def submit_model(self, round_: int, commitment: bytes) -> TxResult:
        return await self._call("submitModel", round_, commitment)

    async def open_evaluation(self, round_: int, models: Sequence[bytes]) -> TxResult:
        return await self._call("openEvaluation", round_, list(models))

    async def submit_scores(self, round_: int, packed_scores: bytes) -> TxResult:
        return await self._call("submitScores", round_, packed_scores)

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
        """See DiscoFLTask.settleRound; `encoding.reveal()` builds the middle three."""
        return await self._call(
            "settleRound",
            round_,
            list(models),
            list(submitters),
            list(positions),
            list(openings),
            list(ranking),
            list(amounts),
        )

    async def withdraw(self) -> TxResult:
        return await self._call("withdraw")

    async def close_task(self) -> TxResult:
        return await self._call("closeTask")

    # -------------------------------------------------------------- views

    async def state(self) -> TaskState:
        f = self.contract.functions
        names = [
            "phase",
            "currentRound",
            "deadline",
            "workerCount",
            "submittedCount",
            "scoredCount",
            "modelCount",
            "totalCredited",
            "totalWithdrawn",
            "refunded",
            "deposit",
        ]
        vals = await asyncio.gather(*(getattr(f, n)().call() for n in names))
        held = await self.w3.eth.get_balance(self.address)
        v = dict(zip(names, vals))
        return TaskState(
            phase=Phase(v["phase"]),
            round=v["currentRound"],
            deadline=v["deadline"],
            worker_count=v["workerCount"],
            submitted_count=v["submittedCount"],
            scored_count=v["scoredCount"],
            model_count=v["modelCount"],
            total_credited=v["totalCredited"],
            total_withdrawn=v["totalWithdrawn"],
            refunded=v["refunded"],
            held=held,
            deposit=v["deposit"],
        )

    async def credit_of(self, address: str) -> int:
        return (await self.contract.functions.workers(address).call())[4]

    async def view(self, name: str, *args: Any) -> Any:
        """Any other public view, by its Solidity name."""
        return await getattr(self.contract.functions, name)(*args).call()

    # -------------------------------------------------------------- events

    async def past_events(self, from_block: int = 0, to_block: int | str = "latest") -> list[ChainEvent]:
        logs = await self.w3.eth.get_logs(
            {"address": self.address, "fromBlock": from_block, "toBlock": to_block}  # type: ignore[typeddict-item]
        )
        return [self._decode(log) for log in logs]

    async def events(self, from_block: int = 0) -> AsyncGenerator[ChainEvent, None]:
        """Every event of the contract from `from_block` on, in chain order, forever.

        Opens its own WebSocket (a subscription stream must not share a connection
        with another stream) and closes it when the consumer stops iterating.
        """
        if not self.ws_url:
            raise ValueError("events() needs the client's ws_url")
        w3 = await connect(self.ws_url)
        try:
            await w3.eth.subscribe("newHeads")
            next_block: int = from_block
            head: int = await w3.eth.block_number
            while True:
                if head >= next_block:
                    logs = await w3.eth.get_logs({"address": self.address, "fromBlock": next_block, "toBlock": head})
                    for log in logs:
                        yield self._decode(log)
                    next_block = head + 1
                async for msg in w3.socket.process_subscriptions():
                    head = int(msg["result"]["number"])
                    break
        finally:
            await w3.provider.disconnect()

    # -------------------------------------------------------------- internals

    def _decode(self, log: Any) -> ChainEvent:
        name = self._topics[bytes(log["topics"][0])]
        data = getattr(self.contract.events, name)().process_log(log)
        return ChainEvent(
            name=name,
            args=dict(data["args"]),
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
        fn = getattr(self.contract.functions, name)(*args)
        return self._result(await self._transact(fn, name))

    async def _transact(self, fn: Any, name: str, *, value: int = 0) -> Any:
        async with self._lock, _limiter():
            if self._nonce is None:
                self._nonce = await self.w3.eth.get_transaction_count(self.account.address, "pending")
                self._chain_id = await self.w3.eth.chain_id
            base = {"from": self.account.address, "value": value}
            try:
                gas = await fn.estimate_gas(base)
            except ContractLogicError as e:
                raise decode_revert(e.data if isinstance(e.data, str) else None, function=name) from None
            tx = await fn.build_transaction(
                {
                    **base,
                    "gas": gas + gas // 5 + 10_000,
                    "nonce": self._nonce,
                    "chainId": self._chain_id,
                    "maxFeePerGas": 50 * 10**9,
                    "maxPriorityFeePerGas": 10**9,
                }
            )
            signed = self.account.sign_transaction(tx)
            tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            self._nonce += 1
            receipt = await self._receipt(tx_hash)
        if receipt["status"] != 1:
            raise await self._replay_revert(tx, receipt, name)
        return receipt

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
