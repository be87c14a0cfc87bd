"""The requester agent: deploys the task, publishes w0, admits workers, runs rounds,
scores contributions off-chain, settles on-chain, builds the final model, closes.

It is one state machine fed by one queue that merges four sources: contract events,
openings that workers send it directly, results of its own blob checks, and deadline
timers. Every task it starts belongs to its TaskGroup and ends with it.

Its decisions about openings are pure functions with no I/O, which the agent calls:
`parse_opening` (is this message an opening for this task, from a peer that proves,
by the worker's signed binding, that it speaks for the worker's address?),
`place_opening` (does its round take it now, later, or not at all?) and
`select_openings` (which submissions are published, and why the others are not).

It logs each round's lifecycle as info events (agent "requester", round, seconds
since the round started): round_started, opening_accepted, model_checked (ok or
not, seconds), evaluation_opened (published and excluded counts, gas),
scores_received, anchor_posted (under an anchored scoring rule: its own scores of the
round's models on its root set, posted on-chain; seconds, gas), round_settled
(ranking, gas), and task_closed.

With a store (`requester_store.py`) it keeps on disk what only it knows (openings,
the secret published order, the checked models), and `resume` takes a task back
after a crash: it replays the contract's events (`_replay`, state only), then
`_carry_on` does what was due and not done, once. A round the chain holds as settled
is never settled again, so nothing is paid twice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from discofl_p2p.agents.context import OPENING_PROTOCOL, Recorder, TaskSetup
from discofl_p2p.agents.identity import verify_binding
from discofl_p2p.agents.jobs import evaluate_job, initial_state
from discofl_p2p.agents.requester_store import RequesterStore, StoreError
from discofl_p2p.chain.client import ChainEvent, Phase, RewardRule, TaskClient, TaskParams
from discofl_p2p.chain.devchain import ensure_time_past
from discofl_p2p.chain.encoding import (
    ScoreReveal,
    Submission,
    commitment,
    decode_scores,
    encode_scores,
    reveal,
    score_commitment,
)
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.ml.weights import StateDict, decode_state, encode_state
from discofl_p2p.p2p.cid import CIDError, cid_from_digest, cid_of, digest_of
from discofl_p2p.p2p.node import Inbox, P2PNode
from discofl_p2p.trust.anchor import anchor_of
from discofl_p2p.trust.blockflow import Contribution, score_matrix
from discofl_p2p.trust.rewards import round_pot
from discofl_p2p.trust.scoring import (
    DEFAULT_SCORING,
    NEEDS_ANCHOR,
    ScoringContext,
    honesty_record,
    make_scoring_rule,
)
from discofl_p2p.trust.settlement import settle, streaks_after, tie_order

log = structlog.get_logger("discofl.requester")

REVEAL_ATTEMPTS = 3
"""How often it posts its batch of reveals when an evaluator's own reveal made its
pending list stale in between (`BadScoreReveal`)."""


def batch_wait_s(reveal_period_s: float) -> float:
    """How long after commits close it waits for the evaluators' rows before it posts
    those it has: a quarter of the reveal period, at most 5 s (evaluators send their
    rows as soon as commits close). An evaluator reveals its own row once half the
    reveal period passed without it on-chain (`worker.self_reveal_after_s`), so the
    batch comes first."""
    return min(5.0, reveal_period_s / 4)


@dataclass(frozen=True)
class RequesterConfig:
    rounds: int
    top_k: int
    deposit_wei: int
    reward_policy: str
    quality_floor: float
    loyalty_bonus: float
    submission_timeout_s: int
    evaluation_timeout_s: int
    reveal_timeout_s: int = 120  # the contract's revealPeriod
    registration_timeout_s: float = 60.0
    final_keep_ratio: float = 0.5  # the final model leaves out models with p < this x max p
    queue_size: int = 64  # items waiting for the state machine; its feeders wait beyond that
    scoring: str = DEFAULT_SCORING  # trust.scoring.SCORING_RULES
    scoring_params: dict[str, float | int] = field(default_factory=dict)


@dataclass
class _Round:
    number: int
    deadline: int = 0
    phase: str = "submission"
    commitments: dict[str, bytes] = field(default_factory=dict)  # worker address -> commitment
    order: list[str] = field(default_factory=list)  # submission (event) order
    openings: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # address -> (cid, salt)
    checked: dict[str, StateDict | None] = field(default_factory=dict)  # address -> valid state or None
    published: list[bytes] = field(default_factory=list)
    owner_at: list[str] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)  # evaluator -> per position (revealed)
    score_commits: set[str] = field(default_factory=set)  # evaluators that committed scores
    score_commitments: dict[str, bytes] = field(default_factory=dict)  # evaluator -> its score commitment
    reveals: dict[str, ScoreReveal] = field(default_factory=dict)  # rows evaluators handed it (checked)
    batch: asyncio.Task[None] | None = None  # its post of the reveals (revealScores), once per round
    early_reveals: dict[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)  # before its commit
    opened_block: int = 0  # the block of its EvaluationOpened
    batch_timer: str = ""  # the wait for the missing rows: "", "running", "done"
    commits_closed: bool = False  # every worker committed scores, or the evaluation deadline passed
    commits_total: int | None = None  # the chain's count of score commitments, read once the deadline passed
    excluded: dict[str, str] = field(default_factory=dict)  # worker name -> why
    valid: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # fixed when evaluation opens
    started: float = field(default_factory=time.monotonic)  # after a restart: from its block's timestamp
    started_at: int = 0  # after a restart: the timestamp of its RoundStarted block
    accuracy: asyncio.Task[None] | None = None  # test accuracy of the published models
    anchor: asyncio.Task[dict[str, float]] | None = None  # the posted anchor (NEEDS_ANCHOR): worker name -> score
    anchor_posted: dict[str, float] | None = None  # the same, read back from its event after a restart


def _reveals_complete(r: _Round, everyone: set[str]) -> bool:
    """Whether every committed score row of `r` is revealed and no more can be
    committed: all workers committed, or a reveal was seen (reveals open only once
    commits close, and every commitment's event comes before them), or the deadline
    passed and as many reveals were seen as the chain counted commitments."""
    closed = r.commits_closed or r.score_commits >= everyone or r.commits_total is not None
    return closed and set(r.scores) >= r.score_commits and len(r.scores) >= (r.commits_total or 0)


def batch_due(r: _Round, everyone: set[str], *, waited: bool) -> bool:
    """Whether the requester posts `r`'s reveals now: not yet posted, commits closed
    (every worker committed, or the deadline passed), and it holds a row from every
    evaluator that committed and has not revealed, or it waited `batch_wait_s` for
    the rest (an evaluator that crashed sends nothing; its row stays unrevealed unless
    it reveals it itself)."""
    closed = r.commits_closed or r.score_commits >= everyone or r.commits_total is not None
    missing = r.score_commits - set(r.scores)
    held = missing & set(r.reveals)
    return r.batch is None and closed and bool(held) and (waited or held == missing)


class OpeningRejected(ValueError):
    """An opening the requester does not take; the message says why."""


@dataclass(frozen=True)
class Opening:
    """A well-formed opening, from the worker's own peer: (CID, salt) for one round."""

    peer: str
    round: int
    worker: str
    cid: str
    salt: bytes


def parse_opening(
    peer: str,
    msg: object,
    *,
    task_id: str,
    contract: str,
    names: Mapping[str, str],
    bound: Mapping[str, str],
) -> Opening:
    """Checks a direct message as an opening: this task, a known worker, sent by a peer
    that proves control of the worker's address (its `binding`: the worker's signature
    of (contract, address, this peer id), `identity.py`), and that peer only once the
    first proof bound it (`bound`: address -> peer); so no other peer can pre-empt a
    worker's opening with a bogus one. Then an integer round, a 32-byte salt and a
    valid CID. Raises OpeningRejected."""
    if not isinstance(msg, dict):
        raise OpeningRejected("not a JSON object")
    try:
        r, worker, cid, salt = msg["round"], msg["worker"], msg["cid"], bytes.fromhex(msg["salt"])
    except KeyError as e:
        raise OpeningRejected(f"missing field {e}") from e
    except (TypeError, ValueError) as e:
        raise OpeningRejected(f"bad salt: {e}") from e
    if msg.get("task") != task_id or not isinstance(worker, str) or worker not in names or len(salt) != 32:
        raise OpeningRejected("wrong task, unknown worker or bad salt")
    if not verify_binding(msg.get("binding"), contract, worker, peer):
        raise OpeningRejected(f"sent by a peer that cannot sign for {names[worker]}'s address")
    if bound.get(worker, peer) != peer:
        raise OpeningRejected(f"{names[worker]} is bound to another peer")
    if not isinstance(r, int) or isinstance(r, bool):
        raise OpeningRejected("the round is not an integer")
    try:
        canonical = cid_from_digest(digest_of(cid))
    except (TypeError, ValueError, CIDError) as e:
        raise OpeningRejected(f"bad CID: {e}") from e
    if cid != canonical:
        # The same digest has other spellings (upper or mixed case, padding, another
        # base); a copy re-spelled would pass the duplicate check, which compares CIDs.
        raise OpeningRejected(f"bad CID: {cid!r} is not in canonical form; send {canonical}")
    return Opening(peer, r, worker, cid, salt)


def sender_speaks_for(
    peer: str, msg: Mapping[str, Any], worker: str, *, contract: str, bound: Mapping[str, str]
) -> bool:
    """Whether `peer` speaks for `worker`: its bound peer, or, while none is bound, a
    peer whose message carries the worker's signed binding to it."""
    if worker in bound:
        return bound[worker] == peer
    return verify_binding(msg.get("binding"), contract, worker, peer)


def parse_score_reveal(
    peer: str,
    msg: Mapping[str, Any],
    *,
    task_id: str,
    contract: str,
    names: Mapping[str, str],
    bound: Mapping[str, str],
    commitments: Mapping[int, Mapping[str, bytes]],
) -> tuple[int, str, ScoreReveal]:
    """Checks a direct message as an evaluator's reveal of its committed scores: this
    task, sent by the worker's bound peer (or, for a worker not bound yet, a peer that
    proves it speaks for the address by its signed binding; `sender_speaks_for`), a
    round whose commitments the requester holds, and a salt and row that match the
    worker's ScoresCommitted commitment, so that the batch never carries a row the
    contract would refuse. Returns (round, worker, reveal); raises OpeningRejected."""
    try:
        r, worker = msg["round"], msg["worker"]
        salt, packed = bytes.fromhex(msg["salt"]), bytes.fromhex(msg["scores"])
    except KeyError as e:
        raise OpeningRejected(f"missing field {e}") from e
    except (TypeError, ValueError) as e:
        raise OpeningRejected(f"bad salt or scores: {e}") from e
    if msg.get("task") != task_id or not isinstance(worker, str) or worker not in names or len(salt) != 32:
        raise OpeningRejected("wrong task, unknown worker or bad salt")
    if not sender_speaks_for(peer, msg, worker, contract=contract, bound=bound):
        raise OpeningRejected(f"not sent by {names[worker]}'s peer")
    committed = commitments.get(r, {}).get(worker) if isinstance(r, int) and not isinstance(r, bool) else None
    if committed is None:
        raise OpeningRejected("no score commitment of this worker in a round in evaluation")
    if score_commitment(contract, r, worker, salt, packed) != committed:
        raise OpeningRejected("scores and salt do not match the commitment")
    return r, worker, ScoreReveal(salt, packed)


def place_opening(
    op: Opening, rounds: Mapping[int, _Round], early: Mapping[int, Sequence[Opening]], last_round: int
) -> Literal["now", "early"]:
    """Where an opening goes: "now" when its round is collecting openings and has none
    from this worker; "early" when its round has not started here yet (a worker can be
    faster than the requester's event feed), one per worker, so memory stays bounded.
    Raises OpeningRejected otherwise (a late, repeated or out-of-range opening)."""
    rnd = rounds.get(op.round)
    if rnd is None and max(rounds, default=0) < op.round <= last_round:
        if any(o.worker == op.worker for o in early.get(op.round, ())):
            raise OpeningRejected("already have an early opening")
        return "early"
    if rnd is None or rnd.phase != "submission" or op.worker in rnd.openings:
        raise OpeningRejected("not accepting an opening for this round")
    return "now"


def select_openings(
    *,
    contract: str,
    round_: int,
    order: Sequence[str],
    commitments: Mapping[str, bytes],
    openings: Mapping[str, tuple[str, bytes]],
    passed: Collection[str],
    published_before: Mapping[str, str],
    names: Mapping[str, str],
) -> tuple[dict[str, tuple[str, bytes]], dict[str, str]]:
    """The submissions to publish, as (valid, excluded): valid maps a worker address to
    its (CID, salt); excluded maps a worker name to why it is left out.

    A submission is valid when its opening matches its on-chain commitment, its model
    passed the checks against w0 (`passed`), and it is neither a replay of a model in
    `published_before` (CID -> where it was first seen; w0's weights included) nor a
    copy of another one this round: the first committer in `order` keeps it."""
    ok: dict[str, tuple[str, bytes]] = {}
    excluded: dict[str, str] = {}
    this_round: dict[str, str] = {}
    for w in order:
        name = names[w]
        if w not in openings:
            excluded[name] = "no opening received"
            continue
        cid, salt = openings[w]
        digest = digest_of(cid)
        cid = cid_from_digest(digest)  # one spelling a model: duplicates compare CIDs
        if commitment(contract, round_, w, digest, salt) != commitments[w]:
            excluded[name] = "opening does not match the commitment"
        elif w not in passed:
            excluded[name] = "model failed the checks against w0"
        elif cid in published_before:
            excluded[name] = f"replays {published_before[cid]}"
        elif cid in this_round:
            excluded[name] = f"same model as {this_round[cid]}"
        else:
            ok[w] = (cid, salt)
            this_round[cid] = f"{name} (round {round_})"
    return ok, excluded


class RequesterAgent:
    def __init__(
        self,
        client: TaskClient,
        node: P2PNode,
        setup: TaskSetup,
        recorder: Recorder,
        cfg: RequesterConfig,
        names: dict[str, str],
        w0: bytes,
        store: RequesterStore | None = None,
    ) -> None:
        self.client, self.node, self.setup, self.recorder, self.cfg = client, node, setup, recorder, cfg
        # Its own state on disk (requester_store.py), for a restart; None: kept in memory only.
        self.store = store
        self.w0 = w0
        self.names = names  # worker address -> worker name
        # worker address -> its libp2p peer id: the first peer that proved, with an
        # opening signed for the address, that it speaks for the worker. Later openings
        # count only from that peer (parse_opening).
        self.bound: dict[str, str] = {}
        self.registered: list[str] = []
        self.rounds: dict[int, _Round] = {}
        self.streaks: dict[str, int] = {}
        self.final_accuracy: float | None = None
        self.refund_wei: int = 0
        # Bounded: when the state machine falls behind, its feeders wait, and direct
        # messages stay in the node's per-peer Inbox, which refuses a flooding peer.
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=cfg.queue_size)
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Openings can arrive before this agent has seen their RoundStarted event.
        self._early: dict[int, list[Opening]] = {}
        self._training_requested = False
        # The published order is a secret (it must not link workers to models), so it
        # comes from the OS's CSPRNG, never from the scenario's seed.
        self._rng = secrets.SystemRandom()
        self._last_states: dict[str, StateDict] = {}
        # Every model CID published so far, and w0's weights: a submission that repeats
        # one is a replay (a free rider copying), excluded by content address alone.
        self._published_cids: dict[str, str] = {}  # CID -> where it was first seen
        self._last_contrib: dict[str, Contribution] = {}
        self._scoring = make_scoring_rule(cfg.scoring, **cfg.scoring_params)
        self._needs_anchor = cfg.scoring in NEEDS_ANCHOR
        if self._needs_anchor and len(setup.partition.root) == 0:
            raise ValueError(f"scoring rule {cfg.scoring!r} needs a root set ([task] root_samples) in the task setup")
        # Each settled round's evaluator honesty, oldest first: the scoring rule's context.
        self._honesty_history: list[dict[str, float]] = []
        self._events_from = 0  # the first block whose events it has not seen (resume)
        self._resumed = False
        self._finish_pending = False  # replayed: training finished, the task not closed
        self._closed = False  # replayed: the task is closed

    # ---------------------------------------------------------------- setup

    @classmethod
    async def deploy(
        cls,
        client_factory,
        node: P2PNode,
        setup: TaskSetup,
        recorder: Recorder,
        cfg: RequesterConfig,
        names: dict[str, str],
        w0: bytes,
        store: RequesterStore | None = None,
    ) -> RequesterAgent:
        """Publishes w0 on the network (kept for the task's whole life: workers fetch
        it by the contract's `initialModel`) and deploys the task contract;
        `client_factory(params, on_address)` deploys (`TaskClient.deploy`). With a
        `store`, the task (its address, known before the deployment is sent, and w0)
        is recorded there before the deployment goes out, so that it can be resumed
        whenever the requester crashes."""
        w0_cid = await node.put(w0)
        rule = RewardRule.TOP_K if cfg.reward_policy == "top_k" else RewardRule.EXPLICIT
        params = TaskParams(
            rounds=cfg.rounds,
            top_k=cfg.top_k if rule == RewardRule.TOP_K else len(names),
            max_workers=len(names),
            deposit_wei=cfg.deposit_wei,
            initial_model=digest_of(w0_cid),
            submission_period_s=cfg.submission_timeout_s,
            evaluation_period_s=cfg.evaluation_timeout_s,
            reveal_period_s=cfg.reveal_timeout_s,
            rule=rule,
            # Only the task's own workers may register: no Sybil can take a seat and
            # make every round wait for its deadlines.
            allowlist_only=True,
            allowlist=tuple(names),
        )
        on_address = None if store is None else lambda address: store.create(address, w0)
        client, res = await client_factory(params, on_address)
        log.info("task_deployed", contract=client.address, gas=res.gas_used, w0=w0_cid)
        agent = cls(client, node, setup, recorder, cfg, names, w0, store)
        await agent._note_w0_weights()
        return agent

    async def _note_w0_weights(self) -> None:
        """w0's weights count as published: a submission of them is a replay."""
        w0_weights = await self.setup.run_cpu(lambda: cid_of(encode_state(initial_state(self.w0))))
        self._published_cids[w0_weights] = "w0"

    @classmethod
    async def resume(
        cls,
        client: TaskClient,
        node: P2PNode,
        setup: TaskSetup,
        recorder: Recorder,
        cfg: RequesterConfig,
        names: dict[str, str],
        store: RequesterStore,
    ) -> RequesterAgent:
        """The requester of the task in `store` after a crash: it publishes w0 again,
        replays the contract's events up to the latest block (`_replay`: state only, no
        transaction, no timer) and takes the rest of its state from the store; `run`
        then carries on from the next block. Raises StoreError when the store and the
        chain disagree (w0, a published order it did not keep)."""
        _, w0 = store.task()
        if not await client.w3.eth.get_code(client.address):
            raise StoreError(
                f"{store.root / 'task.json'}: no contract at {client.address}: the requester stopped before its "
                "deployment was mined, so there is no task to resume (start a new one with another --store)"
            )
        if digest_of(cid_of(w0)) != bytes(await client.view("initialModel")):
            raise StoreError(f"{store.root / 'w0.pt'}: w0 does not match the contract's initialModel")
        await node.put(w0)
        agent = cls(client, node, setup, recorder, cfg, names, w0, store)
        await agent._note_w0_weights()
        head = await client.w3.eth.block_number
        events = await client.past_events(0, head)
        for ev in events:
            await agent._replay(ev)
        agent._events_from, agent._resumed = head + 1, True
        current = max(agent.rounds, default=0)
        log.info(
            "requester_resumed",
            agent="requester",
            contract=client.address,
            events=len(events),
            block=head,
            round=current,
            phase=agent.rounds[current].phase if current else "registration",
            settled=sorted(n for n, r in agent.rounds.items() if r.phase == "settled"),
        )
        return agent

    # ---------------------------------------------------------------- main loop

    async def run(self) -> None:
        inbox = await self.node.serve_messages(OPENING_PROTOCOL)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._spawn(self._feed_events())
            self._spawn(self._feed_inbox(inbox))
            self._spawn(self._timer(("registration_timeout", 0), self.cfg.registration_timeout_s))
            running = not self._resumed or await self._carry_on()
            while running:
                kind, item = await self._queue.get()
                running = await self._handle(kind, item)
            # The task is closed: feeders, pending timers and checks end with it.
            for t in list(self._tasks):
                t.cancel()

    async def _feed_events(self) -> None:
        events = self.client.events(self._events_from)
        try:
            async for ev in events:
                await self._queue.put(("event", ev))
        finally:
            await events.aclose()

    async def _feed_inbox(self, inbox: Inbox) -> None:
        """Moves one message at a time, as the bounded queue has room: the node's
        per-peer bound on unread messages holds (the Inbox releases a place on read)."""
        while True:
            await self._queue.put(("opening", await inbox.get()))

    async def _timer(self, item: tuple[str, int], delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))
        await self._queue.put(("timer", item))

    def _spawn(self, coro) -> asyncio.Task[Any]:
        """Starts a task owned by this agent's TaskGroup (cancelled when the task closes)."""
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handle(self, kind: str, item: Any) -> bool:
        if kind == "event":
            return await self._on_event(item)
        if kind == "opening":
            self._on_opening(*item)
        elif kind == "checked":
            r, worker, state = item
            if r in self.rounds:
                self.rounds[r].checked[worker] = state
        elif kind == "timer":
            await self._on_timer(*item)
        if self.rounds:
            await self._advance(self.rounds[max(self.rounds)])
        return True

    def _log(self, event: str, round_: int, **kw: object) -> None:
        """An info event of the round's lifecycle: agent, round, seconds into the round."""
        r = self.rounds.get(round_)
        since = time.monotonic() - r.started if r else 0.0
        log.info(event, agent="requester", round=round_, elapsed_s=round(since, 3), **kw)

    # ---------------------------------------------------------------- events

    def _apply(self, ev: ChainEvent) -> None:
        """What a contract event changes in this agent's view of the task, and nothing
        else: shared by the live feed (`_on_event`) and the replay after a restart."""
        a = ev.args
        if ev.name == "WorkerRegistered":
            self.registered.append(a["worker"])
        elif ev.name == "TrainingStarted":
            self._training_requested = True
        elif ev.name == "RoundStarted":
            self.rounds[a["round"]] = _Round(a["round"], deadline=a["deadline"])
        elif ev.name == "ModelCommitted":
            r = self.rounds[a["round"]]
            r.commitments[a["worker"]] = bytes(a["commitment"])
            r.order.append(a["worker"])
        elif ev.name == "EvaluationOpened":
            r = self.rounds[a["round"]]
            r.phase = "evaluation"
            r.deadline = a["deadline"]
            r.opened_block = ev.block_number
        elif ev.name == "ScoresCommitted":
            self.rounds[a["round"]].score_commits.add(a["evaluator"])
            self.rounds[a["round"]].score_commitments[a["evaluator"]] = bytes(a["commitment"])
        elif ev.name == "ScoresRevealed":
            # The contract checked the row against its commitment; reveals open only once
            # commits closed, so every ScoresCommitted of the round came before this.
            r = self.rounds[a["round"]]
            r.commits_closed = True
            r.scores[a["evaluator"]] = decode_scores(bytes(a["scores"]))

    async def _on_event(self, ev: ChainEvent) -> bool:
        a = ev.args
        self._apply(ev)
        if ev.name == "WorkerRegistered":
            if len(self.registered) == len(self.names) and not self._training_requested:
                self._training_requested = True
                await self.client.start_training()
        elif ev.name == "RoundStarted":
            r = self.rounds[a["round"]]
            self._log("round_started", r.number, deadline=r.deadline)
            self.recorder.on_phase(r.number, "submission")
            # Patience in wall-clock seconds: anvil's clock runs ahead under load.
            self._spawn(self._timer(("submission_deadline", r.number), self.cfg.submission_timeout_s + 1))
            for op in self._early.pop(r.number, []):
                self._admit(op)
            if self._resumed:  # openings that came early, before the crash
                for w in self._take_stored_openings(r):
                    self._spawn(self._check_blob(r.number, w, r.openings[w][0], self.bound[w]))
        elif ev.name == "EvaluationOpened":
            r = self.rounds[a["round"]]
            self.recorder.on_phase(r.number, "evaluation")
            self._spawn(self._timer(("evaluation_deadline", r.number), self.cfg.evaluation_timeout_s + 1))
            r.accuracy = self._spawn(self._test_accuracy(r))
        elif ev.name == "ScoresCommitted":
            early = self.rounds[a["round"]].early_reveals.pop(a["evaluator"], None)
            if early is not None:
                self._on_score_reveal(*early)
        elif ev.name == "ScoresRevealed":
            r = self.rounds[a["round"]]
            self._log(
                "scores_received",
                r.number,
                evaluator=self.names.get(a["evaluator"], a["evaluator"]),
                scored=sum(v is not None for v in r.scores[a["evaluator"]]),
                received=len(r.scores),
            )
        elif ev.name == "RoundSettled":
            rec = self.recorder.record(a["round"])
            rec.wall_s = time.monotonic() - self.rounds[a["round"]].started
            self.recorder.on_phase(a["round"], "settled")
        elif ev.name == "TrainingFinished":
            await self._finish()
        elif ev.name in ("TaskClosed", "TaskAbandoned"):
            if ev.name == "TaskAbandoned":  # only after this agent stalled past the grace period
                log.warning("task_abandoned", agent="requester", **{k: v for k, v in a.items() if k != "phase"})
            return False
        if self.rounds:
            await self._advance(self.rounds[max(self.rounds)])
        return True

    # ---------------------------------------------------------------- resume

    async def _block_time(self, block: int) -> int:
        """`block`'s timestamp (whole seconds; anvil's runs a little ahead of the wall
        clock under load). After a restart a round's wall time comes from these: a
        settled round's is the time between its RoundStarted and RoundSettled blocks;
        the round in progress counts from its RoundStarted block on the wall clock, so
        the time the requester was down is included (anvil mines nothing while idle,
        so the latest block may be older than the crash)."""
        return int((await self.client.w3.eth.get_block(block))["timestamp"])

    async def _replay(self, ev: ChainEvent) -> None:
        """One past event, after a restart: the same state as `_apply`, completed from
        the store (openings, the published order, checked models), and a settled
        round's decisions worked out again (`_decide`) without sending anything."""
        assert self.store is not None
        self._apply(ev)
        a = ev.args
        if ev.name == "RoundStarted":
            r = self.rounds[a["round"]]
            r.started_at = await self._block_time(ev.block_number)
            r.started = time.monotonic() - max(0.0, time.time() - r.started_at)
            self._take_stored_openings(r)
        elif ev.name == "EvaluationOpened":
            r = self.rounds[a["round"]]
            sel = self.store.selection(r.number)
            if sel is None:
                why = f"round {r.number} was opened, but its published order is not stored"
                raise StoreError(f"{self.store.root}: {why}")
            r.owner_at, r.excluded = sel.owner_at, sel.excluded
            r.valid = {w: r.openings[w] for w in sel.owner_at}
            r.published = [digest_of(r.valid[w][0]) for w in sel.owner_at]
            if r.published != [bytes(d) for d in a["models"]]:
                raise StoreError(f"{self.store.root}: round {r.number}'s stored order is not the one published")
            rec = self.recorder.record(r.number)
            rec.models = {self.names[w]: r.valid[w][0] for w in r.owner_at}
            rec.excluded = dict(sorted(r.excluded.items()))
            for w in r.owner_at:
                self._published_cids[r.valid[w][0]] = f"{self.names[w]} (round {r.number})"
            stored = self.store.score_reveals(r.number)  # checked when they came
            r.reveals = {w: ScoreReveal(salt, packed) for w, (salt, packed) in stored.items()}
        elif ev.name == "RoundSettled":
            r = self.rounds[a["round"]]
            r.phase = "settled"
            matrix, contrib, ranked, rewards = self._decide(r, r.anchor_posted)
            if list(a["rankedOwners"]) != [self._address_of(n) for n in ranked]:
                log.warning("replayed_ranking_differs", agent="requester", round=r.number, ranking=ranked)
            self._record_settlement(r, matrix, contrib, ranked, rewards, r.anchor_posted)
            self.recorder.record(r.number).test_accuracy = self.store.test_accuracy(r.number)
            self.recorder.record(r.number).wall_s = float(await self._block_time(ev.block_number) - r.started_at)
        elif ev.name == "AnchorScores":
            r = self.rounds[a["round"]]
            r.anchor_posted = anchor_of([self.names[w] for w in r.owner_at], decode_scores(bytes(a["scores"])))
        elif ev.name == "TrainingFinished":
            self._finish_pending = True
        elif ev.name in ("TaskClosed", "TaskAbandoned"):
            self._finish_pending = False
            self._closed = True

    def _take_stored_openings(self, r: _Round) -> list[str]:
        """The openings of round `r` the store holds and `r` does not yet; returns
        their workers."""
        assert self.store is not None
        new = []
        for w, op in self.store.openings(r.number).items():
            if w not in r.openings:
                r.openings[w] = (op.cid, op.salt)
                self.bound.setdefault(w, op.peer)
                new.append(w)
        return new

    def _address_of(self, name: str) -> str:
        return next(a for a, n in self.names.items() if n == name)

    async def _restore_models(self, r: _Round, workers: Collection[str]) -> list[str]:
        """Takes back the checked models of `workers` in round `r` from the store: their
        states, and their blobs on the node, which re-serves them to the evaluators.
        Returns the workers whose model is not there."""
        assert self.store is not None
        missing = []
        for w in workers:
            blob = self.store.blob(r.number, r.openings[w][0])
            if blob is None:
                missing.append(w)
                continue
            r.checked[w] = await self.setup.run_cpu(decode_state, blob, self.setup.spec)
            await self.node.put(blob, task=self.setup.task_id, round_=r.number)
        return missing

    async def _carry_on(self) -> bool:
        """After the replay: acts where the crash left off. The current round's models
        go back on the node and its deadline timers restart from the chain's clock;
        a checked model the store lacks is fetched and checked again; what was due
        and not done (starting training, opening evaluation, settling, closing) is
        done once. False when the task is already closed."""
        assert self.store is not None
        if self._closed:
            return False
        if self._finish_pending:
            await self._finish()
            return False
        if not self.rounds:
            if len(self.registered) == len(self.names) and not self._training_requested:
                self._training_requested = True
                await self.client.start_training()
            return True
        settled = [r for r in self.rounds.values() if r.phase == "settled"]
        if settled:  # the last settled round's models make the final model
            last = max(settled, key=lambda r: r.number)
            await self._restore_models(last, last.owner_at)
            self._last_states = {self.names[w]: s for w in last.owner_at if (s := last.checked.get(w)) is not None}
            self._last_states = dict(sorted(self._last_states.items()))
        r = self.rounds[max(self.rounds)]
        now = (await self.client.w3.eth.get_block("latest"))["timestamp"]
        left = max(0.0, r.deadline - now) + 1
        if r.phase == "submission":
            # A model it had not checked yet (or not kept) is fetched from its author again.
            for w in await self._restore_models(r, list(r.openings)):
                self._spawn(self._check_blob(r.number, w, r.openings[w][0], self.bound[w]))
            self.recorder.on_phase(r.number, "submission")
            self._spawn(self._timer(("submission_deadline", r.number), left))
        elif r.phase == "evaluation":
            for w in await self._restore_models(r, r.owner_at):
                log.warning("model_lost", agent="requester", round=r.number, worker=self.names[w])
                r.checked[w] = None
            self.recorder.on_phase(r.number, "evaluation")
            self._spawn(self._timer(("evaluation_deadline", r.number), left))
            r.accuracy = self._spawn(self._test_accuracy(r))
            if self._needs_anchor and r.anchor_posted is None:
                r.anchor = self._spawn(self._post_anchor(r))
        await self._advance(r)
        return True

    def _on_opening(self, peer: str, msg: object) -> None:
        if isinstance(msg, dict) and msg.get("kind") == "scores":
            self._on_score_reveal(peer, msg)
            return
        try:
            op = parse_opening(
                peer, msg, task_id=self.setup.task_id, contract=self.client.address, names=self.names, bound=self.bound
            )
        except OpeningRejected as e:
            log.warning("opening_rejected", peer=peer, reason=str(e))
            return
        if op.worker not in self.bound:
            self.bound[op.worker] = op.peer
            log.info("peer_bound", worker=self.names[op.worker], peer=op.peer)
        self._admit(op)

    def _on_score_reveal(self, peer: str, msg: Mapping[str, Any]) -> None:
        """An evaluator's row and salt, for the round's batch, kept in the store too (a
        restarted requester posts it still; without a store, the evaluators whose rows
        it lost reveal their own at their set point). A row whose ScoresCommitted
        event this agent has not read yet (its feed lags the evaluator's) waits for it,
        one per worker and round."""
        rnd, worker = self.rounds.get(msg.get("round")), msg.get("worker")  # type: ignore[arg-type]
        own_peer = (
            isinstance(worker, str)
            and worker in self.names
            and sender_speaks_for(peer, msg, worker, contract=self.client.address, bound=self.bound)
        )
        if rnd is not None and rnd.phase == "evaluation" and own_peer and worker not in rnd.score_commitments:
            assert isinstance(worker, str)
            rnd.early_reveals[worker] = (peer, msg)  # only the worker's own peer: nobody can displace it
            return
        try:
            r, worker, rv = parse_score_reveal(
                peer,
                msg,
                task_id=self.setup.task_id,
                contract=self.client.address,
                names=self.names,
                bound=self.bound,
                commitments={n: rnd.score_commitments for n, rnd in self.rounds.items() if rnd.phase == "evaluation"},
            )
        except OpeningRejected as e:
            log.warning("score_reveal_rejected", peer=peer, reason=str(e))
            return
        rnd = self.rounds[r]
        if worker not in rnd.reveals and worker not in rnd.scores:
            rnd.reveals[worker] = rv
            if self.store is not None:
                self.store.add_score_reveal(r, worker, rv.salt, rv.packed)
            self._log("score_reveal_received", r, evaluator=self.names[worker], held=len(rnd.reveals))

    async def _post_reveals(self, r: _Round) -> None:
        """Posts every row it holds that the chain has not revealed, in one revealScores
        call (several where the calldata would be too big). An evaluator's own reveal
        in between makes the pending list stale (`BadScoreReveal`): it reads it again
        and retries."""
        for attempt in range(1, REVEAL_ATTEMPTS + 1):
            todo = {w: rv for w, rv in r.reveals.items() if w not in r.scores}
            try:
                results = await self.client.reveal_scores(r.number, todo, from_block=r.opened_block)
            except ValueError:  # none is pending any more: they revealed their own
                return
            except ContractRevert as e:
                if e.name != "BadScoreReveal" or attempt == REVEAL_ATTEMPTS:
                    log.warning("scores_batch_refused", agent="requester", round=r.number, error=e.name)
                    return
                continue
            gas = sum(res.gas_used for res in results)
            self._log("scores_batch_revealed", r.number, rows=len(todo), transactions=len(results), gas=gas)
            return

    def _admit(self, op: Opening) -> None:
        try:
            where = place_opening(op, self.rounds, self._early, self.cfg.rounds)
        except OpeningRejected as e:
            log.warning("opening_rejected", peer=op.peer, round=op.round, reason=str(e))
            return
        if self.store is not None:  # a worker sends its opening once: keep it for a restart
            self.store.add_opening(op.round, op.worker, op.peer, op.cid, op.salt)
        if where == "early":
            self._early.setdefault(op.round, []).append(op)
            return
        self.rounds[op.round].openings[op.worker] = (op.cid, op.salt)
        self._log("opening_accepted", op.round, worker=self.names[op.worker], cid=op.cid)
        self._spawn(self._check_blob(op.round, op.worker, op.cid, op.peer))

    async def _check_blob(self, r: int, worker: str, cid: str, peer: str) -> None:
        """Fetches the worker's model from it and checks it against w0; only a valid
        model is kept (re-served to the evaluators, tagged with its round). An unusable
        model is left out of the published list."""
        t0 = time.monotonic()
        state: StateDict | None
        try:
            blob = await self.node.get(cid, [peer], max_bytes=self.setup.max_model_bytes)
            state = await self.setup.run_cpu(decode_state, blob, self.setup.spec)
            await self.node.put(blob, task=self.setup.task_id, round_=r)
            if self.store is not None:
                self.store.save_blob(r, blob)
        except Exception as e:  # noqa: BLE001 - a bad model excludes its author this round
            log.warning("model_rejected", worker=self.names[worker], round=r, reason=str(e))
            state = None
        seconds = round(time.monotonic() - t0, 3)
        self._log("model_checked", r, worker=self.names[worker], ok=state is not None, seconds=seconds)
        await self._queue.put(("checked", (r, worker, state)))

    async def _on_timer(self, what: str, r: int) -> None:
        if what == "registration_timeout":
            if self._training_requested:
                return
            # The chain is the truth: registrations mined before now count even if
            # their events have not reached this agent yet (they precede RoundStarted).
            st = await self.client.state()
            if st.phase != Phase.REGISTRATION:
                return
            if st.worker_count == 0:
                raise RuntimeError(
                    f"no worker registered within the registration timeout ({self.cfg.registration_timeout_s:g} s)"
                )
            log.warning("registration_incomplete", registered=st.worker_count, expected=len(self.names))
            self._training_requested = True
            await self.client.start_training()
        elif what == "submission_deadline" and r in self.rounds and self.rounds[r].phase == "submission":
            await ensure_time_past(self.client.w3, self.rounds[r].deadline)
            await self._open(self.rounds[r], forced=True)
        elif what == "evaluation_deadline" and r in self.rounds and self.rounds[r].phase == "evaluation":
            # Commits are closed now; the rows committed so far may still be revealed.
            # Commits are closed: it settles (`_advance`) once it has seen as many reveals
            # as the chain counts commitments; the events may lag the chain, so it
            # never settles from the chain's counts alone (a row would be missing).
            await ensure_time_past(self.client.w3, self.rounds[r].deadline)
            self.rounds[r].commits_total = await self.client.view("scoredCount")
            self._spawn(self._timer(("reveal_deadline", r), self.cfg.reveal_timeout_s + 1))
        elif what == "reveal_batch" and r in self.rounds:
            self.rounds[r].batch_timer = "done"  # `_handle` advances the round next
        elif what == "reveal_deadline" and r in self.rounds and self.rounds[r].phase == "evaluation":
            await ensure_time_past(self.client.w3, await self.client.view("revealDeadline"))
            await self._settle(self.rounds[r], forced=True)

    # ---------------------------------------------------------------- rounds

    async def _advance(self, r: _Round, *, batch_waited: bool = False) -> None:
        everyone = set(self.registered)
        if r.phase == "submission":
            if set(r.commitments) >= everyone and all(w in r.checked for w in r.commitments):
                await self._open(r, forced=False)
        elif r.phase == "evaluation" and _reveals_complete(r, everyone):
            await self._settle(r, forced=False)
        elif r.phase == "evaluation" and batch_due(r, everyone, waited=batch_waited or r.batch_timer == "done"):
            r.batch = self._spawn(self._post_reveals(r))
        elif (
            r.phase == "evaluation"
            and not r.batch_timer
            and (r.score_commits >= everyone or r.commits_total is not None)
        ):
            r.batch_timer = "running"  # commits closed: the rows still missing get batch_wait_s
            self._spawn(self._timer(("reveal_batch", r.number), batch_wait_s(self.cfg.reveal_timeout_s)))

    async def _open(self, r: _Round, *, forced: bool) -> None:
        r.phase = "opening"
        ok, r.excluded = select_openings(
            contract=self.client.address,
            round_=r.number,
            order=r.order,
            commitments=r.commitments,
            openings=r.openings,
            passed={w for w, state in r.checked.items() if state is not None},
            published_before=self._published_cids,
            names=self.names,
        )
        r.valid = ok
        owners = list(ok)
        self._rng.shuffle(owners)
        r.owner_at = owners
        r.published = [digest_of(ok[w][0]) for w in owners]
        rec = self.recorder.record(r.number)
        rec.models = {self.names[w]: ok[w][0] for w in owners}
        rec.excluded = dict(sorted(r.excluded.items()))
        for name, why in r.excluded.items():
            log.warning("submission_excluded", worker=name, round=r.number, reason=why)
        for w in owners:
            self._published_cids[ok[w][0]] = f"{self.names[w]} (round {r.number})"
        if self.store is not None:  # the secret order, kept before the chain publishes it
            self.store.save_selection(r.number, owners, r.excluded)
        if forced:
            log.info(
                "submission_deadline_passed",
                round=r.number,
                published=len(owners),
                missing=sorted(self.names[w] for w in set(self.registered) - set(r.commitments)),
            )
        res = await self.client.open_evaluation(r.number, r.published)
        self._log("evaluation_opened", r.number, published=len(owners), excluded=len(r.excluded), gas=res.gas_used)
        r.phase = "evaluation"
        if self._needs_anchor:
            r.anchor = self._spawn(self._post_anchor(r))

    async def _post_anchor(self, r: _Round) -> dict[str, float]:
        """The trust anchor of an anchored scoring rule: its own score of every
        published model on its root set (`TaskSetup.root_set`, in the task's metric),
        posted on-chain in the evaluators' encoding while the workers evaluate. It
        settles with the values as posted (basis points), which the audit reads back.
        Its next transaction is the settlement, which waits for this one."""
        t0 = time.monotonic()
        x, y = self.setup.root_set

        async def score(state: StateDict | None) -> float | None:
            if state is None:
                return None
            return await self.setup.run_cpu(evaluate_job, self.w0, state, x, y, self.setup.metric)

        row = list(await asyncio.gather(*(score(r.checked.get(w)) for w in r.owner_at)))
        packed = encode_scores(row)
        res = await self.client.post_anchor_scores(r.number, packed)
        self._log("anchor_posted", r.number, models=len(row), seconds=round(time.monotonic() - t0, 3), gas=res.gas_used)
        return anchor_of([self.names[w] for w in r.owner_at], decode_scores(packed))

    async def _test_accuracy(self, r: _Round) -> None:
        """Each published model's test accuracy, measured while the workers evaluate:
        the jobs go to the pool all at once, so that they fill its threads while the
        evaluators are still fetching (one at a time, they left all but one idle)."""
        x, y = self.setup.test_set
        rec = self.recorder.record(r.number)
        workers = [w for w in r.owner_at if r.checked[w] is not None]
        accuracy = await asyncio.gather(
            *(self.setup.run_cpu(evaluate_job, self.w0, r.checked[w], x, y, "accuracy") for w in workers)
        )
        for w, a in zip(workers, accuracy, strict=True):
            rec.test_accuracy[self.names[w]] = a

    def _decide(
        self, r: _Round, anchor: dict[str, float] | None
    ) -> tuple[Any, dict[str, Contribution], list[str], dict[str, int]]:
        """The round's settlement, worked out from its revealed scores (and the posted
        anchor, under an anchored rule): (score matrix, contributions, ranking, rewards
        by name). It moves the cross-round state on
        (streaks, evaluator honesty), so it runs once per round, in round order: when
        settling, or when replaying a settled round after a restart."""
        name_at = [self.names[w] for w in r.owner_at]
        matrix = score_matrix(name_at, {self.names[e]: s for e, s in r.scores.items()})
        # Ties break in address order (`tie_order`): the same in every run, unlike the
        # registration events', and on the chain for the audit, unlike the roster.
        everyone = tie_order({self.names[a]: a for a in self.registered})
        contrib = self._scoring(matrix, everyone, ScoringContext(history=tuple(self._honesty_history), anchor=anchor))
        self._honesty_history.append(honesty_record(contrib, matrix))
        self.streaks = streaks_after(self.streaks, everyone, name_at)
        ranked, rewards = settle(
            contrib,
            name_at,
            self.streaks,
            policy=self.cfg.reward_policy,
            top_k=self.cfg.top_k,
            pot=round_pot(self.cfg.deposit_wei, self.cfg.rounds, r.number),
            floor=self.cfg.quality_floor,
            bonus=self.cfg.loyalty_bonus,
        )
        return matrix, contrib, ranked, rewards

    def _record_settlement(
        self,
        r: _Round,
        matrix: Any,
        contrib: dict[str, Contribution],
        ranked: list[str],
        rewards: dict[str, int],
        anchor: dict[str, float] | None,
    ) -> None:
        rec = self.recorder.record(r.number)
        rec.scores = matrix
        rec.contribution = {n: c.score for n, c in contrib.items()}
        rec.anchor = dict(anchor or {})
        rec.ranking = ranked
        rec.rewards_wei = rewards
        self._last_contrib = contrib

    async def _settle(self, r: _Round, *, forced: bool) -> None:
        r.phase = "settling"
        self.recorder.on_phase(r.number, "settling")
        if r.accuracy is not None:
            await r.accuracy  # measured while workers evaluated; recorded with the round
        name_at = [self.names[w] for w in r.owner_at]
        anchor = r.anchor_posted
        if anchor is None and r.anchor is not None:
            anchor = await r.anchor
        matrix, contrib, ranked, rewards = self._decide(r, anchor)
        amounts_by_rank = [rewards[n] for n in ranked]
        explicit = [] if self.cfg.reward_policy == "top_k" else amounts_by_rank
        positions = [name_at.index(n) for n in ranked]
        opened = r.valid
        submissions = [
            Submission(w, r.commitments[w], digest_of(opened[w][0]), opened[w][1])
            if w in opened
            else Submission(w, r.commitments[w])
            for w in r.order
        ]
        args = reveal(self.client.address, r.number, submissions, r.published)
        res = await self.client.settle_round(r.number, r.published, *args, positions, explicit)
        r.phase = "settled"
        self._log("round_settled", r.number, ranking=ranked, gas=res.gas_used)
        # Earlier rounds' models are fetched by nobody any more; this round's states are
        # kept for the final model.
        await self.node.forget_before(self.setup.task_id, r.number)
        self._record_settlement(r, matrix, contrib, ranked, rewards, anchor)
        if self.store is not None:
            self.store.save_settled(r.number, self.recorder.record(r.number).test_accuracy)
            self.store.forget_before(r.number)
        # By name, not in the secret published order: the final model replays exactly.
        self._last_states = dict(sorted((self.names[w], s) for w in r.owner_at if (s := r.checked.get(w)) is not None))
        if forced:
            log.info(
                "evaluation_deadline_passed",
                round=r.number,
                missing=sorted(self.names[w] for w in set(self.registered) - set(r.scores)),
                unrevealed=sorted(self.names[w] for w in r.score_commits - set(r.scores)),
            )

    # ---------------------------------------------------------------- the end

    async def _finish(self) -> None:
        """The final model: the configured rule over the last round's models, weighted
        by contribution, leaving out those below final_keep_ratio x the best p."""
        best = max((c.score for c in self._last_contrib.values()), default=0.0)
        cands = [
            Candidate(s, self._last_contrib[n].score)
            for n, s in self._last_states.items()
            if self._last_contrib[n].score >= self.cfg.final_keep_ratio * best
        ]
        if cands:
            final = await self.setup.run_cpu(self.setup.aggregate, cands)
            self.final_accuracy = await self.setup.run_cpu(
                evaluate_job, self.w0, final, *self.setup.test_set, "accuracy"
            )
        res = await self.client.close_task()
        self.refund_wei = res.events[-1].args["refund"]  # TaskClosed, after the CloseShareCredited
        last = max(self.rounds, default=0)
        self._log("task_closed", last, refund=self.refund_wei, gas=res.gas_used, final_accuracy=self.final_accuracy)
        self.recorder.on_phase(self.cfg.rounds, "closed")
