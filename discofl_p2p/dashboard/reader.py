"""What the dashboard shows, read from the chain alone (and, optionally, a run directory).

`TaskReader` follows one DiscoFLTask: it reads every past event, then follows new ones
with `TaskClient.events()`, and after each batch rebuilds a `snapshot()`: a plain,
JSON-ready dict with the task's state, its workers and its rounds. Contributions are
recomputed with BlockFlow from the ScoresRevealed events and the settleRound calldata
(which says which position each submitter's model holds), as `discofl-p2p audit` does.

It is read-only: it never signs or sends a transaction, and holds no key.

`load_run(DIR)` reads what a scenario run wrote (results.json, log.jsonl, and in
processes mode the agents' own logs/*.jsonl until they are merged into log.jsonl):
worker names, behaviours and peer ids, per-round test accuracy, the task's contract,
and the p2p figures per node (`traffic.p2p_figures`).
Every string from there is passed on as data, never as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_typing import HexStr
from web3 import AsyncWeb3

from discofl_p2p.chain.client import ChainEvent, RewardRule, TaskClient, TaskState, connect, disconnect
from discofl_p2p.chain.encoding import NOT_OPENED, decode_scores
from discofl_p2p.dashboard.traffic import p2p_figures
from discofl_p2p.trust.anchor import anchor_of
from discofl_p2p.trust.blockflow import score_matrix
from discofl_p2p.trust.scoring import (
    DEFAULT_SCORING,
    NEEDS_ANCHOR,
    ScoringContext,
    honesty_record,
    make_scoring_rule,
)

_log = logging.getLogger("discofl.dashboard")

RUN_POLL_S = 1.0
"""How often the run directory's files are checked for changes (a scenario writes them)."""


def _addr(value: object) -> str | None:
    """A checksummed address, or None for anything that is not one."""
    if not isinstance(value, str):
        return None
    try:
        return AsyncWeb3.to_checksum_address(value)
    except ValueError:
        return None


@dataclass
class RunInfo:
    """What a scenario's output directory says about the task (all optional)."""

    dir: str = ""
    contract: str | None = None
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # address -> name/behavior/peer_id/group
    accuracy: list[dict[str, Any]] = field(default_factory=list)  # [{round, per_worker: {address: acc}}]
    final_accuracy: float | None = None
    p2p: list[dict[str, Any]] = field(default_factory=list)  # traffic.p2p_figures
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "contract": self.contract,
            "accuracy": self.accuracy,
            "final_accuracy": self.final_accuracy,
            "p2p": self.p2p,
            "errors": self.errors,
        }


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def load_run(run_dir: Path) -> RunInfo:
    """Reads results.json and log.jsonl of a scenario run, whichever exist; tolerates
    partial or malformed files (a run still being written), recording what failed."""
    info = RunInfo(dir=str(run_dir))
    names: dict[str, str] = {}  # name -> address
    results = run_dir / "results.json"
    logs = _log_files(run_dir)
    deployed = _deployed(logs)
    if results.is_file():
        try:
            data = json.loads(results.read_text())
            task = data.get("task") or {}
            info.contract = _addr(task.get("contract"))
            for w in data.get("workers") or []:
                a = _addr(w.get("address"))
                if a is None:
                    continue
                info.workers[a] = {
                    k: w.get(k) if isinstance(w.get(k), str) else None for k in ("name", "behavior", "peer_id", "group")
                }
                if isinstance(w.get("name"), str):
                    names[w["name"]] = a
            for r in data.get("rounds") or []:
                acc = r.get("test_accuracy") or {}
                per = {names[n]: float(v) for n, v in acc.items() if n in names and _number(v) is not None}
                if isinstance(r.get("round"), int):
                    info.accuracy.append({"round": r["round"], "per_worker": per})
            info.final_accuracy = _number((data.get("final") or {}).get("test_accuracy"))
            if deployed is not None and info.contract not in (None, deployed):
                # A results.json left by an earlier run in the same directory.
                info = RunInfo(dir=str(run_dir), errors=["results.json is from another task: ignored"])
                names = {}
        except (OSError, ValueError, AttributeError, TypeError) as e:
            info.errors.append(f"results.json: {e}")
    info.contract = deployed or info.contract
    events: list[dict[str, Any]] = []
    for log in logs:
        try:
            with open(log) as f:
                for line in f:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue  # a line being written
                    if not isinstance(ev, dict):
                        continue
                    events.append(ev)
                    if ev.get("event") == "task_closed" and info.final_accuracy is None:
                        info.final_accuracy = _number(ev.get("final_accuracy"))
        except OSError as e:
            info.errors.append(f"{log.relative_to(run_dir)}: {e}")
    peer_names = {w["peer_id"]: w["name"] for w in info.workers.values() if w.get("peer_id") and w.get("name")}
    info.p2p = p2p_figures(events, peer_names)
    return info


def _log_files(run_dir: Path) -> list[Path]:
    """The run's logs: log.jsonl, and the agent processes' logs/*.jsonl until the
    runner has merged them into log.jsonl (its `logs_merged` line)."""
    main = run_dir / "log.jsonl"
    try:
        merged = '"logs_merged"' in main.read_text()
    except OSError:
        merged = False
    own = [] if merged else sorted((run_dir / "logs").glob("*.jsonl"))
    return [p for p in (main, *own) if p.is_file()]


def _deployed(logs: list[Path]) -> str | None:
    """The contract the run's logs say the requester deployed (its last task_deployed)."""
    found = None
    for log in logs:
        try:
            with open(log) as f:
                for line in f:
                    if '"task_deployed"' in line:
                        try:
                            found = _addr(json.loads(line).get("contract")) or found
                        except (ValueError, AttributeError):
                            continue
        except OSError:
            continue
    return found


def _run_stamp(run_dir: Path) -> tuple[float, ...]:
    out = []
    for path in (run_dir / "results.json", *_log_files(run_dir)):
        try:
            st = path.stat()
            out += [st.st_mtime, float(st.st_size)]
        except OSError:
            out += [0.0, 0.0]
    return tuple(out)


@dataclass
class _Round:
    round: int
    deadline: int | None = None
    evaluation_deadline: int | None = None
    committed: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    settled: ChainEvent | None = None
    owner_at: list[str | None] | None = None
    excluded: list[str] = field(default_factory=list)
    anchor: list[float | None] | None = None  # the requester's AnchorScores row (anchored rules)


class TaskReader:
    """Follows one task on the chain; `snapshot()` is its latest view, `version` counts
    rebuilds, and `wait_newer(v)` waits for a version above `v`."""

    def __init__(
        self,
        ws_url: str,
        contract: str | None = None,
        run_dir: Path | None = None,
        scoring: str = DEFAULT_SCORING,
        scoring_params: Mapping[str, Any] | None = None,
    ) -> None:
        """`scoring` and `scoring_params`: the task's contribution scoring rule and its
        parameters ([task] scoring, scoring_params; the chain holds neither), with which
        the contributions are recomputed as `audit` does."""
        if contract is None and run_dir is None:
            raise ValueError("the dashboard needs --contract, or --run naming a run that deployed one")
        self.scoring = make_scoring_rule(scoring, **(scoring_params or {}))
        self.needs_anchor = scoring in NEEDS_ANCHOR
        self.ws_url = ws_url
        self.contract = _addr(contract) if contract else None
        if contract and self.contract is None:
            raise ValueError(f"not an address: {contract!r}")
        self.run_dir = run_dir
        self.run = RunInfo()
        self.version = 0
        self.error: str | None = None
        self._snapshot: dict[str, Any] = self._empty()
        self._changed = asyncio.Event()
        self._events: list[ChainEvent] = []
        self._calldata: dict[int, dict[str, Any]] = {}  # round -> decoded settleRound arguments
        self._static: dict[str, Any] = {}
        self._client: TaskClient | None = None
        self._w3: AsyncWeb3 | None = None
        self._dirty = asyncio.Event()
        self._block = 0
        self.on_change: list[Callable[[], None]] = []

    # ---------------------------------------------------------------- public

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    async def wait_newer(self, version: int) -> int:
        while self.version <= version:
            changed = self._changed
            await changed.wait()
        return self.version

    async def run_forever(self) -> None:
        """Reads the run directory and the chain, and keeps the snapshot current."""
        async with asyncio.TaskGroup() as tg:
            if self.run_dir is not None:
                tg.create_task(self._watch_run())
            tg.create_task(self._follow())

    # ---------------------------------------------------------------- internals

    def _empty(self) -> dict[str, Any]:
        return {"version": 0, "task": None, "workers": [], "rounds": [], "run": self.run.to_json(), "error": None}

    async def _watch_run(self) -> None:
        assert self.run_dir is not None
        stamp: tuple[float, ...] = ()
        while True:
            now = await asyncio.to_thread(_run_stamp, self.run_dir)
            if now != stamp:
                stamp = now
                self.run = await asyncio.to_thread(load_run, self.run_dir)
                self._dirty.set()
            await asyncio.sleep(RUN_POLL_S)

    async def _follow(self) -> None:
        while self.contract is None:  # named by the run directory once the task is deployed
            self.contract = self.run.contract
            if self.contract is None:
                self._dirty.clear()
                await self._dirty.wait()
        self._w3 = await connect(self.ws_url)
        try:
            # Read-only: this client is never asked to sign, so it gets no account.
            client = TaskClient(self._w3, self.contract, None, ws_url=self.ws_url)  # type: ignore[arg-type]
            self._client = client
            names = (
                "requester",
                "rounds",
                "topK",
                "maxWorkers",
                "deposit",
                "rule",
                "submissionPeriod",
                "evaluationPeriod",
            )
            vals = await asyncio.gather(*(client.view(n) for n in names))
            self._static = dict(zip(names, vals))
            self._static["chain_id"] = await self._w3.eth.chain_id
            head = await self._w3.eth.block_number
            self._block = head
            self._events = await client.past_events(0, head)
            await self._rebuild()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._rebuilder())
                async for ev in client.events(head + 1):
                    self._events.append(ev)
                    self._block = max(self._block, ev.block_number)
                    self._dirty.set()
        finally:
            await disconnect(self._w3)  # lets the reader's cancellation through

    async def _rebuilder(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._rebuild()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - show the error, keep following
                _log.warning("dashboard rebuild failed: %r", e)
                self.error = repr(e)
                self._publish({**self._snapshot, "error": self.error})

    def _publish(self, snap: dict[str, Any]) -> None:
        self.version += 1
        snap["version"] = self.version
        self._snapshot = snap
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for cb in self.on_change:
            cb()

    async def _rebuild(self) -> None:
        client, w3 = self._client, self._w3
        if client is None or w3 is None:
            self._publish({**self._empty(), "run": self.run.to_json()})
            return
        events = list(self._events)
        # The state as of the last block whose events are in: the view stays consistent
        # while the event stream catches up with the chain.
        block = self._block
        state, latest = await asyncio.gather(client.state(block), w3.eth.get_block("latest"))
        for ev in events:
            if ev.name == "RoundSettled" and ev.args["round"] not in self._calldata:
                tx = await w3.eth.get_transaction(HexStr(ev.tx_hash))
                self._calldata[ev.args["round"]] = client.settlement_args(tx["input"])
        self._publish(self._build(events, state, int(latest["timestamp"]), block))

    def _build(self, events: list[ChainEvent], state: TaskState, chain_time: int, block: int) -> dict[str, Any]:
        s = self._static
        registered: list[str] = []
        index: dict[str, int] = {}
        rounds: dict[int, _Round] = {}
        withdrawn: dict[str, int] = {}
        close_share: dict[str, int] = {}
        for ev in events:
            a = ev.args
            if ev.name == "WorkerRegistered":
                registered.append(a["worker"])
                index[a["worker"]] = a["index"]
            elif ev.name == "RoundStarted":
                rounds.setdefault(a["round"], _Round(a["round"])).deadline = a["deadline"]
            elif ev.name == "ModelCommitted":
                rounds.setdefault(a["round"], _Round(a["round"])).committed.append(a["worker"])
            elif ev.name == "EvaluationOpened":
                r = rounds.setdefault(a["round"], _Round(a["round"]))
                r.models = ["0x" + bytes(m).hex() for m in a["models"]]
                r.evaluation_deadline = a["deadline"]
            elif ev.name == "ScoresRevealed":
                rounds.setdefault(a["round"], _Round(a["round"])).scores[a["evaluator"]] = decode_scores(
                    bytes(a["scores"])
                )
            elif ev.name == "AnchorScores":
                rounds.setdefault(a["round"], _Round(a["round"])).anchor = decode_scores(bytes(a["scores"]))
            elif ev.name == "RoundSettled":
                r = rounds.setdefault(a["round"], _Round(a["round"]))
                r.settled = ev
                args = self._calldata.get(a["round"])
                if args is not None:
                    r.owner_at = [None] * len(args["models"])
                    for who, pos in zip(args["submitters"], args["positions"]):
                        if pos == NOT_OPENED:
                            r.excluded.append(who)
                        elif pos < len(r.owner_at):
                            r.owner_at[pos] = who
            elif ev.name == "Withdrawn":
                withdrawn[a["worker"]] = withdrawn.get(a["worker"], 0) + a["amount"]
            elif ev.name == "CloseShareCredited":  # the close's share of the unpaid rest
                close_share[a["worker"]] = close_share.get(a["worker"], 0) + a["amount"]
        cumulative = dict.fromkeys(registered, 0) | close_share
        out_rounds = []
        history: list[dict[str, float]] = []  # earlier rounds' honesty, as the requester keeps it
        for n in sorted(rounds):
            r = rounds[n]
            rewards: dict[str, int] = {}
            contributions = None
            ranking: list[str] = []
            positions: list[int] = []
            if r.settled is not None:
                ranking = list(r.settled.args["rankedOwners"])
                positions = list(r.settled.args["ranking"])
                for who, amount in zip(ranking, r.settled.args["rewards"]):
                    rewards[who] = rewards.get(who, 0) + amount
                    cumulative[who] = cumulative.get(who, 0) + amount
            # An anchored rule needs the round's AnchorScores; without them, no contributions.
            if r.owner_at is not None and (r.anchor is not None or not self.needs_anchor):
                owner_at = [o or "" for o in r.owner_at]
                matrix = score_matrix(owner_at, r.scores)
                anchor = anchor_of(owner_at, r.anchor) if r.anchor is not None else None
                c = self.scoring(matrix, registered, ScoringContext(history=tuple(history), anchor=anchor))
                history.append(honesty_record(c, matrix))
                contributions = {
                    w: {
                        "median": x.median,
                        "quality": x.quality,
                        "honesty_raw": x.honesty_raw,
                        "honesty": x.honesty,
                        "score": x.score,
                    }
                    for w, x in c.items()
                }
            out_rounds.append(
                {
                    "round": n,
                    "deadline": r.deadline,
                    "evaluation_deadline": r.evaluation_deadline,
                    "committed": r.committed,
                    "models": r.models,
                    "scores": [{"evaluator": e, "scores": v} for e, v in r.scores.items()],
                    "owner_at": r.owner_at,
                    "excluded": r.excluded,
                    "contributions": contributions,
                    "settled": r.settled is not None,
                    "ranking": ranking,
                    "ranking_positions": positions,
                    "rewards_wei": {w: str(v) for w, v in rewards.items()},
                }
            )
        workers = []
        for who in registered:
            known = self.run.workers.get(who, {})
            workers.append(
                {
                    "address": who,
                    "index": index[who],
                    "name": known.get("name"),
                    "behavior": known.get("behavior"),
                    "peer_id": known.get("peer_id"),
                    "group": known.get("group"),
                    "rewards_wei": str(cumulative.get(who, 0)),
                    "withdrawn_wei": str(withdrawn.get(who, 0)),
                }
            )
        task = {
            "contract": self.contract,
            "chain_id": s["chain_id"],
            "requester": s["requester"],
            "rounds": s["rounds"],
            "top_k": s["topK"],
            "max_workers": s["maxWorkers"],
            "rule": RewardRule(s["rule"]).name,
            "submission_period_s": s["submissionPeriod"],
            "evaluation_period_s": s["evaluationPeriod"],
            "deposit_wei": str(s["deposit"]),
            "phase": state.phase.name,
            "round": state.round,
            "deadline": state.deadline,
            "chain_time": chain_time,
            "block": block,
            "worker_count": state.worker_count,
            "submitted_count": state.submitted_count,
            "scored_count": state.scored_count,
            "model_count": state.model_count,
            "total_credited_wei": str(state.total_credited),
            "total_withdrawn_wei": str(state.total_withdrawn),
            "refunded_wei": str(state.refunded),
            "held_wei": str(state.held),
            "updated_at": time.time(),
        }
        return {
            "version": self.version,
            "task": task,
            "workers": workers,
            "rounds": out_rounds,
            "run": self.run.to_json(),
            "error": None,
        }


async def stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
