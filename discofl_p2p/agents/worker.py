"""The worker agent: reacts to contract events, never to a clock.

Start                fetch w0 from the requester by the contract's `initialModel`
                     digest (the bytes must match it); refuse the task otherwise.
WorkerRegistered     note the worker: only registered workers' peers are believed when
                     they announce holding a round.
RoundStarted(r)      aggregate the last round's models with its own scores, train,
                     publish the blob (served to the requester only), hand the
                     opening (CID, salt) to the requester with its signed peer
                     binding (`identity.py`), commit on-chain.
EvaluationOpened(r)  fetch every published model at once from the requester (a star),
                     or in the overlay (below) its own too, several at a time, from
                     peers, the requester last; verify each against w0, keep it,
                     score it on the validation split; score its own model with a decoy
                     (behaviors.self_score), commit the scores blind (a salted hash),
                     and forget the earlier rounds' models (nobody fetches them any
                     more).
ScoresCommitted      once every worker committed its scores, or the evaluation
                     deadline passed (a task of its own watches the chain's clock),
                     reveal its scores.
                     If its own model is not in the list, it posts its opening on-chain
                     (disputeExclusion), so that the exclusion can be checked.
TaskAbandoned        (the requester stalled) withdraw its credit and share, stop. Its
                     own watchdog (`watchdog.py`) ends the task itself once the
                     requester stalled past the grace period (or closes a finished
                     task the requester leaves open).
TaskClosed           withdraw its credit and its share of what the rounds left unpaid
                     (credits are paid only once the task has ended), stop.

It logs its round's lifecycle as info events (agent, round, seconds since it saw the
round start): w0_fetched (round 0), round_started, model_trained, blob_stored, opening_sent,
model_committed, model_fetched (one per model: provider, from_requester, bytes, seconds), exclusion_disputed,
scores_committed, scores_revealed,
withdrawn; and as warnings what it retried: w0_fetch_retried and opening_send_failed
(the requester is asked up to REQUESTER_ATTEMPTS times, with a jittered doubling
back-off, since a busy requester or one lost stream must not end a worker), and
model_fetch_retried (until FETCH_PATIENCE of the evaluation window has passed: a
requester that crashed and restarts serves the round's models again).

The overlay (`[network] overlay`; unset, on with a process per agent and off in one
process: `config.overlay_for`; docs/p2p.md). Under anonymity each
model's first copy comes from the requester: nobody else may serve a model before it
has fetched it like everyone else. That includes its author, hence the cover fetch of
its own model, after which the author serves it like any other holder (a peer that
served every model but one, or never asked anyone for one, would name itself that
model's author). After that, evaluators fetch from each other:

- each walks the published list rotated to its place among the registered workers;
  the first model (its seed) comes from the requester, so each model's first copy is
  asked of the requester about once;
- once it has its seed (or after SEED_WAIT_S) it fetches the others `fetch_window`
  at a time, each from the peers whose rotation reached it first (its seeder first:
  PEERS_PER_FETCH of them), then peers that announced holding it, the requester
  last. A peer that has not got there yet answers "not found" at once; one that fails
  otherwise is not asked again that round;
- whom to ask it knows from the peer bindings the workers announce once they have
  submitted each round's model (one gossip message each: in one process gossip costs the shared trio thread
  about five model transfers a message, so there are no announcements per model).

With `overlay = false` (a star) it fetches every other model at once, the requester
first, and announces what it holds once it has scored the round.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import structlog

from discofl_p2p.agents.behaviors import WorkerBehaviour
from discofl_p2p.agents.context import OPENING_PROTOCOL, RING_PROTOCOL, Recorder, TaskSetup, derive_seed
from discofl_p2p.agents.identity import sign_binding, verify_binding
from discofl_p2p.agents.jobs import decode_job, evaluate_job, initial_state, train_job
from discofl_p2p.agents.watchdog import WATCHDOG_POLL_S, watch_for_abandonment
from discofl_p2p.chain.client import ChainEvent, TaskClient, TxResult
from discofl_p2p.chain.encoding import ScoreReveal, commitment, decode_scores, encode_scores
from discofl_p2p.chain.encoding import new_salt as encoding_salt
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.ml.splits import WorkerSplit
from discofl_p2p.ml.weights import Spec, StateDict, encode_state, spec_of
from discofl_p2p.p2p.bridge import BridgeClosed
from discofl_p2p.p2p.cid import cid_from_digest, cid_of, digest_of
from discofl_p2p.p2p.node import Announcement, BlobUnavailable, Inbox, P2PNode

log = structlog.get_logger("discofl.worker")


MAX_W0_BYTES = 64 * 2**20
"""The largest w0 (a TorchScript archive) a worker fetches."""

REVEAL_POLL_S = 1.0
"""How often a worker waiting to reveal its scores reads the chain's clock."""

REQUESTER_ATTEMPTS = 5
"""Tries at fetching w0, or sending an opening, to a requester that is there but busy or
behind a lossy link (a "not found" for w0 is final)."""

RETRY_BASE_S = 1.0
"""The first back-off before trying the requester again; it doubles with each try."""

HOLDING_BATCH = 32
"""CIDs per holding announcement: 32 CIDs, the address and the binding fit in 4 KiB."""

SEED_WAIT_S = 2.0
"""In the overlay, how long an evaluator waits for its first model (its seed, from the
requester) before it asks peers for the others (they hold their own seeds by then)."""

PEERS_PER_FETCH = 2
"""In the overlay, how many of the peers expected to hold a model it asks before the
requester (a peer that has not got there yet answers "not found" at once)."""

FETCH_PATIENCE = 0.5
"""The share of the evaluation window a worker keeps trying to fetch a model that no
provider delivered for a passing reason (the requester restarting after a crash, a
lost stream), before it abstains on it; the rest is left for scoring and committing."""


class W0Rejected(Exception):
    """w0 could not be fetched from the requester, or does not match the contract."""


def _w0_spec(w0: bytes) -> Spec:
    return spec_of(initial_state(w0))


@dataclass
class WorkerAgent:
    name: str
    behavior: WorkerBehaviour
    client: TaskClient
    node: P2PNode
    setup: TaskSetup
    recorder: Recorder
    split: WorkerSplit
    requester_peer: str
    ring: str | None = None
    # The peers of its ring's other members: what colluders agreed on out of band. They
    # tell each other their CIDs over their own direct messages (RING_PROTOCOL).
    ring_peers: tuple[str, ...] = ()
    withdrawn_wei: int = 0
    watchdog_s: float = WATCHDOG_POLL_S  # how often it checks whether the requester stalled
    retry_base_s: float = RETRY_BASE_S  # first back-off before asking the requester again
    # How long after commits close it waits for its row in the requester's batch
    # before it reveals the row itself; None: half the contract's revealPeriod.
    self_reveal_after_s: float | None = None
    w0: bytes | None = None  # fetched from the requester, checked against the contract
    _spec: Spec | None = None
    _binding: str = ""  # its signed peer binding (identity.py)
    _ring_known: dict[int, set[str]] = field(default_factory=dict)  # round -> ring CIDs
    _own: dict[int, tuple[str, StateDict]] = field(default_factory=dict)
    _candidates: list[Candidate] = field(default_factory=list)
    _seen: list[tuple[float, StateDict]] = field(default_factory=list)
    _previous_base: StateDict | None = None  # the base it started from last round
    # round -> CID -> peers that announced holding it (each peer at most as many CIDs a
    # round as there are registered workers)
    _holders: dict[int, dict[str, set[str]]] = field(default_factory=dict)
    _announced_by: dict[int, dict[str, int]] = field(default_factory=dict)  # round -> peer -> CIDs taken
    _bound: dict[str, str] = field(default_factory=dict)  # peer -> worker, its binding verified once
    _published: dict[int, list[str]] = field(default_factory=dict)  # round -> the published CIDs
    _failed_peers: dict[int, set[str]] = field(default_factory=dict)  # round -> peers that failed, not as "not found"
    _unannounced: list[tuple[int, str]] = field(default_factory=list)
    _announcing: bool = False
    _announcements: int = 0
    _registered: set[str] = field(default_factory=set)  # worker addresses, from the chain
    _started: dict[int, float] = field(default_factory=dict)  # round -> when it saw it start
    # The decoy self-scores are secrets (a replayable draw would tell the decoy apart).
    _secret_rng: random.Random = field(default_factory=secrets.SystemRandom)
    _worker_count: int = 0  # from TrainingStarted
    _score_commits: dict[int, int] = field(default_factory=dict)  # round -> ScoresCommitted seen
    _commit_seen: asyncio.Event = field(default_factory=asyncio.Event)
    _reveals: set[asyncio.Task[None]] = field(default_factory=set)
    _revealed: set[int] = field(default_factory=set)  # rounds whose ScoresRevealed of its row it saw
    _reveal_seen: asyncio.Event = field(default_factory=asyncio.Event)
    _tg: asyncio.TaskGroup | None = None
    _salts: dict[int, bytes] = field(default_factory=dict)  # round -> salt of its model committed on-chain
    _fetch_until: float = 0.0  # monotonic time until which it retries this round's fetches
    _late_openings: dict[int, asyncio.Task[bool]] = field(default_factory=dict)  # round -> still trying

    @property
    def address(self) -> str:
        return self.client.account.address

    def _seed(self, *parts: object) -> int:
        return derive_seed(self.setup.seed, self.name, *parts)

    async def fetch_w0(self) -> bytes:
        """w0 from the requester, named by the contract's `initialModel` digest: bytes
        that do not match it are refused (by the node, then checked again here)."""
        digest = bytes(await self.client.view("initialModel"))
        cid = cid_from_digest(digest)
        t0 = time.monotonic()
        jitter = random.Random(self._seed("w0"))
        for attempt in range(1, REQUESTER_ATTEMPTS + 1):
            try:
                w0 = await self.node.get(cid, [self.requester_peer], max_bytes=MAX_W0_BYTES)
                break
            except BlobUnavailable as e:
                if attempt == REQUESTER_ATTEMPTS or "not found" in str(e):
                    raise W0Rejected(f"could not fetch w0 {cid} from the requester: {e}") from e
                log.warning("w0_fetch_retried", agent=self.name, attempt=attempt, reason=str(e))
                await self._back_off(attempt, jitter)
        if digest_of(cid_of(w0)) != digest:
            raise W0Rejected(f"w0 does not match the contract's initialModel {digest.hex()}")
        try:
            self._spec = await self.setup.run_cpu(_w0_spec, w0)
        except Exception as e:  # the requester committed to an unusable w0
            raise W0Rejected(f"w0 is not a loadable model: {e}") from e
        self.w0 = w0
        log.info(
            "w0_fetched",
            agent=self.name,
            round=0,
            elapsed_s=0.0,
            cid=cid,
            bytes=len(w0),
            seconds=round(time.monotonic() - t0, 3),
        )
        return w0

    async def run(self) -> None:
        """Fetches and checks w0, registers, then follows the task until it is closed
        (or the worker drops out). A worker that cannot get the contract's w0 refuses
        the task: it logs w0_rejected and never registers."""
        try:
            await self.fetch_w0()
        except W0Rejected as e:
            log.warning("w0_rejected", agent=self.name, reason=str(e))
            return
        self._binding = sign_binding(self.client.account, self.client.address, self.node.peer_id)
        announcements = await self.node.subscribe(self.setup.topic)
        ring_inbox = await self.node.serve_messages(RING_PROTOCOL) if self.ring_peers else None
        events = self.client.events()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                listener = tg.create_task(self._listen(announcements))
                ring = tg.create_task(self._listen_ring(ring_inbox)) if ring_inbox else None
                watchdog = tg.create_task(watch_for_abandonment(self.client, poll_s=self.watchdog_s, agent=self.name))
                await self._gas(0, self.client.register())
                try:
                    async for ev in events:
                        if not await self._on_event(ev):
                            break
                finally:
                    listener.cancel()
                    watchdog.cancel()
                    if ring:
                        ring.cancel()
                    for t in [*self._reveals, *self._late_openings.values()]:  # nothing left to do
                        t.cancel()
        finally:
            await events.aclose()

    def _log(self, event: str, round_: int, **kw: object) -> None:
        """An info event of the round's lifecycle: agent, round, seconds into the round."""
        since = time.monotonic() - self._started.get(round_, time.monotonic())
        log.info(event, agent=self.name, round=round_, elapsed_s=round(since, 3), **kw)

    async def _listen(self, q: asyncio.Queue[Announcement]) -> None:
        """Announcements are hints: who holds which round (extra providers)."""
        while True:
            self._on_announcement(await q.get())

    def _on_announcement(self, ann: Announcement) -> None:
        """Takes a "holding" announcement (round, CIDs held) only from the peer of a
        registered worker: registered on-chain (WorkerRegistered), and bound to the
        sending peer by the worker's signature (`identity.verify_binding`, checked once
        per peer). Anyone else could name itself a provider of every model, and be
        asked first. Bounded: the rounds it may still fetch, and per peer and round at
        most as many CIDs as there are registered workers."""
        p = ann.payload
        r, cids = p.get("round"), p.get("cids")
        if p.get("kind") != "holding" or not isinstance(r, int) or not isinstance(cids, list):
            return
        worker = p.get("worker")
        if worker not in self._registered or not (
            self._bound.get(ann.sender) == worker
            or verify_binding(p.get("binding"), self.client.address, worker, ann.sender)
        ):
            why = "not a registered worker's peer"
            log.warning("announcement_ignored", agent=self.name, peer=ann.sender, reason=why)
            return
        self._bound[ann.sender] = worker
        current = max(self._started, default=0)
        if not current - 1 <= r <= current + 1:
            return
        taken = self._announced_by.setdefault(r, {})
        holders = self._holders.setdefault(r, {})
        for cid in cids:
            if not isinstance(cid, str) or len(cid) > 100 or taken.get(ann.sender, 0) >= len(self._registered):
                break
            taken[ann.sender] = taken.get(ann.sender, 0) + 1
            holders.setdefault(cid, set()).add(ann.sender)

    async def _listen_ring(self, inbox: Inbox) -> None:
        """Its ring mates' CIDs, from their own peers only; one per mate and round."""
        while True:
            peer, msg = await inbox.get()
            r, cid = msg.get("round"), msg.get("cid")
            if peer not in self.ring_peers or msg.get("ring") != self.ring:
                log.warning("ring_message_ignored", agent=self.name, peer=peer)
                continue
            current = max(self._started, default=0)
            if not isinstance(r, int) or not current - 1 <= r <= current + 1 or not isinstance(cid, str):
                continue  # bounded: the rounds it may still score, one CID per member
            known = self._ring_known.setdefault(r, set())
            if len(known) <= len(self.ring_peers):
                known.add(cid)

    async def _on_event(self, ev: ChainEvent) -> bool:
        a = ev.args
        if ev.name == "WorkerRegistered":
            self._registered.add(a["worker"])
        elif ev.name == "TrainingStarted":
            self._worker_count = a["workers"]
        elif ev.name == "ScoresCommitted":
            self._score_commits[a["round"]] = self._score_commits.get(a["round"], 0) + 1
            self._commit_seen.set()
        elif ev.name == "ScoresRevealed" and a["evaluator"] == self.address:
            self._revealed.add(a["round"])
            self._reveal_seen.set()
        elif ev.name == "RoundStarted":
            r = a["round"]
            self._started[r] = time.monotonic()
            self._log("round_started", r)
            if self.behavior.stopped(r):
                log.info("worker_dropped_out", worker=self.name, round=r)
                await self.node.close()  # offline: its earlier models live on as replicas
                return False
            await self._submit(r)
            if self.setup.overlay:  # its peer binding, so that evaluators know whom to ask
                await self._publish_holding(r, [])  # (once it has trained: in round 1 the mesh has formed)
        elif ev.name == "EvaluationOpened":
            if late := self._late_openings.pop(a["round"], None):
                late.cancel()  # the requester takes no more openings for the round
            if not self.behavior.stopped(a["round"]):
                await self._evaluate(a["round"], list(a["models"]), a["deadline"], ev.block_number)
        elif ev.name in ("TaskAbandoned", "TaskClosed"):  # the end: collect credit and share, stop
            await self._withdraw()
            return False
        return True

    async def _withdraw(self) -> None:
        """Withdraws everything the contract owes this worker (rewards, and its share of
        an abandoned task's deposit), if anything."""
        if await self.client.withdrawable_of(self.address):
            res = await self.client.withdraw()
            amount = res.events[0].args["amount"]
            self.withdrawn_wei += amount
            self._log("withdrawn", max(self._started, default=0), amount=amount, gas=res.gas_used)

    async def _gas(self, round_: int, call: Awaitable[TxResult]) -> TxResult:
        res = await call
        if round_:
            self.recorder.add_gas(round_, self.name, res.gas_used)
        return res

    async def _wait_for(self, event: str, r: int) -> None:
        """A late worker (dropout, mode 'late') acts only once the requester has moved
        past the phase: after the chain event `event` of round `r`. Its call is then
        late whatever the deadlines are, and it reverts."""
        events = self.client.events()
        try:
            async for ev in events:
                if ev.name == event and ev.args.get("round") == r:
                    return
        finally:
            await events.aclose()

    # ---------------------------------------------------------------- submission

    async def _submit(self, r: int) -> None:
        setup, w0 = self.setup, self._w0()
        if r == 1 or not self._candidates or not self.behavior.starts_from_aggregate():
            base = await setup.run_cpu(initial_state, w0)
        else:
            base = await setup.run_cpu(setup.aggregate, self._candidates)
        trained = base
        if self.behavior.trains():
            x, y = setup.data.x[self.split.train], setup.data.y[self.split.train]
            owner = self.behavior.data_owner(self.name)  # a Sybil identity trains as its operator
            x, y = self.behavior.training_data(x, y, derive_seed(setup.seed, owner, "data", r))
            t0 = time.monotonic()
            cfg = setup.train_cfg_for(r)
            trained = await setup.run_cpu(train_job, w0, base, x, y, cfg, derive_seed(setup.seed, owner, "train", r))
            self._log("model_trained", r, seconds=round(time.monotonic() - t0, 3), samples=len(y))
        state = self.behavior.submission(trained, base, self._seen, self._seed("submit", r), self._previous_base)
        self._previous_base = base
        blob = encode_state(state)
        # Tagged with its round, so that it is forgotten with it.
        cid = await self.node.put(blob, task=setup.task_id, round_=r, only_for=[self.requester_peer])
        self._log("blob_stored", r, cid=cid, bytes=len(blob))
        self._own[r] = (cid, state)
        if self.ring_peers and self.behavior.shares_cids:
            await self._tell_ring(r, cid)
        salt = new_salt()
        c = commitment(self.client.address, r, self.address, digest_of(cid), salt)
        if self.behavior.late(r):
            await self._wait_for("EvaluationOpened", r)
        opening = {"task": setup.task_id, "round": r, "worker": self.address, "cid": cid, "salt": salt.hex()}
        opening |= {"binding": self._binding}
        jitter = random.Random(self._seed("opening", r))
        delivered = await self._send_opening(r, opening, range(1, REQUESTER_ATTEMPTS + 1), jitter)
        try:
            res = await self._gas(r, self.client.submit_model(r, c))
            self._salts[r] = salt  # committed: it may dispute an exclusion with it
            self._log("model_committed", r, gas=res.gas_used)
        except ContractRevert as e:
            log.warning("submission_refused", worker=self.name, round=r, error=e.name)
            return
        if not delivered and self._tg is not None:
            # The requester may be restarting after a crash: it takes openings until
            # it opens the round's evaluation, so keep trying until then.
            attempts = itertools.count(REQUESTER_ATTEMPTS + 1)
            task = self._tg.create_task(self._send_opening(r, opening, attempts, jitter))
            self._late_openings[r] = task
            task.add_done_callback(lambda _: self._late_openings.pop(r, None))

    async def _send_opening(
        self, r: int, opening: dict[str, object], attempts: Iterable[int], jitter: random.Random
    ) -> bool:
        """Hands the opening to the requester, trying again (a jittered, doubling
        back-off, at most 8 x `retry_base_s`) while it does not acknowledge it: a busy
        or restarting requester, a lost stream. Returns whether it was delivered; if
        it is not, the worker still commits, and the requester leaves its model out
        as not opened unless a later try gets through before evaluation opens."""
        for attempt in attempts:
            if attempt > 1:
                await self._back_off(min(attempt - 1, 4), jitter)
            try:
                await self.node.send_message(self.requester_peer, OPENING_PROTOCOL, opening)
                self._log("opening_sent", r, cid=opening["cid"], attempt=attempt)
                return True
            except BridgeClosed:
                raise
            except Exception as e:  # noqa: BLE001 - libp2p raises several stream errors
                log.warning("opening_send_failed", agent=self.name, round=r, attempt=attempt, reason=str(e))
        return False

    async def _back_off(self, attempt: int, jitter: random.Random) -> None:
        """Waits before asking the requester again: doubling with each try, jittered so
        that workers that all failed at once (a busy requester) come back out of step.
        The next try dials the requester again even if the last dial failed."""
        await asyncio.sleep(self.retry_base_s * 2 ** (attempt - 1) * (0.5 + jitter.random()))
        await self.node.unblock(self.requester_peer)

    async def _tell_ring(self, r: int, cid: str) -> None:
        """Tells its ring mates its CID over their direct messages (a mate that is
        gone is skipped)."""
        self._ring_known.setdefault(r, set()).add(cid)
        for peer in self.ring_peers:
            try:
                await self.node.send_message(peer, RING_PROTOCOL, {"ring": self.ring, "round": r, "cid": cid})
            except Exception as e:  # noqa: BLE001 - a mate offline does not stop the worker
                log.warning("ring_message_failed", agent=self.name, peer=peer, reason=str(e))

    def _w0(self) -> bytes:
        if self.w0 is None:
            raise W0Rejected("w0 was not fetched")
        return self.w0

    # ---------------------------------------------------------------- evaluation

    async def _evaluate(self, r: int, digests: list[bytes], deadline: int, opened_at: int) -> None:
        setup, w0 = self.setup, self._w0()
        cids = [cid_from_digest(bytes(d)) for d in digests]
        own_cid = self._own.get(r, (None, None))[0]
        if own_cid is not None and own_cid not in cids:
            await self._dispute(r, own_cid)
        x, y = setup.data.x[self.split.val], setup.data.y[self.split.val]
        now = (await self.client.w3.eth.get_block("latest"))["timestamp"]
        self._fetch_until = time.monotonic() + max(0, deadline - now) * FETCH_PATIENCE

        judged_by_cid: dict[str, tuple[StateDict, float]] = {}

        async def judge(cid: str, blob: bytes) -> None:
            if cid == own_cid:  # its cover fetch: it held the model already
                await self.node.share(cid)  # fetched like any other: no longer a secret
                return
            try:
                state = await setup.run_cpu(decode_job, blob, self._spec or setup.spec, setup.max_model_bytes)
                # Validated: now it keeps the bytes and re-serves them (same CID).
                await self.node.put(blob, task=setup.task_id, round_=r)
                judged_by_cid[cid] = (state, await setup.run_cpu(evaluate_job, w0, state, x, y, setup.metric))
            except Exception as e:  # noqa: BLE001 - an unusable model is abstained on
                log.warning("model_unusable", worker=self.name, round=r, cid=cid, reason=str(e))

        async def own_score() -> float | None:
            """Its own model's score, computed while the others are being fetched."""
            if own_cid is None:
                return None
            return await setup.run_cpu(evaluate_job, w0, self._own[r][1], x, y, setup.metric)

        async with asyncio.TaskGroup() as tg:
            own = tg.create_task(own_score())
            await self._fetch_round(r, cids, own_cid, judge)
        judged = [None if c == own_cid else judged_by_cid.get(c) for c in cids]

        # What it keeps for next round's aggregation: its own honest view. The published
        # order is a secret shuffle, so everything that feeds learning goes in CID order:
        # the same scenario seed then gives the same models.
        canon = sorted(range(len(cids)), key=lambda i: cids[i])
        kept: list[tuple[str, StateDict, float]] = [(cids[i], j[0], j[1]) for i in canon if (j := judged[i])]
        if own_cid is not None and (own_score_ := own.result()) is not None:
            kept.append((own_cid, self._own[r][1], own_score_))
            await self.node.share(own_cid)  # everyone holds every model now (or its cover fetch failed)
        kept.sort(key=lambda k: k[0])
        self._candidates = [Candidate(state, s) for _, state, s in kept]
        self._seen = [(s, state) for c, state, s in kept if c != own_cid]
        # Earlier rounds' models are fetched by nobody any more; this round's models
        # (decoded above) are all it needs to aggregate next round.
        await self.node.forget_before(setup.task_id, r)
        self._own = {k: v for k, v in self._own.items() if k >= r}
        self._salts = {k: v for k, v in self._salts.items() if k > r}
        self._holders = {k: v for k, v in self._holders.items() if k >= r}
        self._announced_by = {k: v for k, v in self._announced_by.items() if k >= r}
        self._published = {k: v for k, v in self._published.items() if k >= r}
        self._failed_peers = {k: v for k, v in self._failed_peers.items() if k >= r}
        if not setup.overlay:  # a star: what it holds, once it has scored the round
            await self._announce_holding(r, [c for c, _, _ in kept])

        # The behaviour scores the models in CID order too, so that its seeded choices
        # (a collusion ring's guesses) do not depend on the secret shuffle.
        true_scores = [j[1] if (j := judged[i]) else None for i in canon]
        ring_positions = None
        if self.ring_peers and self.behavior.shares_cids:
            known = self._ring_known.get(r, set())
            ring_positions = {k for k, i in enumerate(canon) if cids[i] in known}
        self._ring_known = {k: v for k, v in self._ring_known.items() if k > r}
        in_canon = self.behavior.scores(true_scores, ring_positions, self._seed("scores", r))
        # Its own model gets a score too, so that no abstention points at it; the rules
        # ignore self-scores. On accuracy, every honest score is a multiple of 1/|val|.
        own_k = next((k for k, i in enumerate(canon) if cids[i] == own_cid), None)
        if own_k is not None:
            grid = len(y) if setup.metric == "accuracy" else None
            in_canon[own_k] = self.behavior.self_score(in_canon, own_k, self._secret_rng, grid)
        submitted: list[float | None] = [None] * len(cids)
        for k, i in enumerate(canon):
            submitted[i] = in_canon[k]
        if self.behavior.copies_median:
            submitted = await self._copy_median(r, submitted, deadline, opened_at)
        if self.behavior.late(r):
            await self._wait_for("RoundSettled", r)
        packed, salt = encode_scores(submitted), new_salt()
        try:
            res = await self._gas(r, self.client.commit_scores(r, packed, salt))
        except ContractRevert as e:
            log.warning("scores_refused", worker=self.name, round=r, error=e.name)
            return
        abstained = sum(s is None for s in submitted)
        self._log("scores_committed", r, gas=res.gas_used, scored=len(submitted) - abstained, abstained=abstained)
        assert self._tg is not None
        task = self._tg.create_task(self._reveal(r, packed, salt, deadline, opened_at))
        self._reveals.add(task)
        task.add_done_callback(self._reveals.discard)

    async def _dispute(self, r: int, cid: str) -> None:
        """Its model was left out of the published list: it posts its opening on-chain,
        which proves the exclusion of a valid opening to anyone (`audit`)."""
        salt = self._salts.get(r)
        if salt is None:
            return
        try:
            res = await self._gas(r, self.client.dispute_exclusion(r, digest_of(cid), salt))
            self._log("exclusion_disputed", r, cid=cid, gas=res.gas_used)
        except ContractRevert as e:
            log.warning("dispute_refused", worker=self.name, round=r, error=e.name)

    async def _reveal(self, r: int, packed: bytes, salt: bytes, deadline: int, opened_at: int) -> None:
        """Once commits are closed, hands its row and salt to the requester, which posts
        every evaluator's in one transaction; reveals the row itself if it is not
        on-chain `self_reveal_after_s` later (a requester that left it out, lost it in
        a restart, or stalled). Commits are closed when every worker committed (the
        ScoresCommitted events say so) or the chain's clock passed the evaluation
        deadline (read every REVEAL_POLL_S: no event marks it). The wake-up is cleared
        before the count is read, so a commitment seen while it reads the clock wakes
        it at once (cleared after, it waited out REVEAL_POLL_S with every commitment in)."""
        while True:
            self._commit_seen.clear()
            if self._score_commits.get(r, 0) >= self._worker_count:
                break
            if (await self.client.w3.eth.get_block("latest"))["timestamp"] > deadline:
                break
            try:
                await asyncio.wait_for(self._commit_seen.wait(), REVEAL_POLL_S)
            except TimeoutError:
                pass
        wait = self.self_reveal_after_s
        if wait is None:
            wait = int(await self.client.view("revealPeriod")) / 2
        until = time.monotonic() + wait
        msg = {"kind": "scores", "task": self.setup.task_id, "round": r, "worker": self.address}
        msg |= {"salt": salt.hex(), "scores": packed.hex(), "binding": self._binding}
        jitter = random.Random(self._seed("reveal", r))
        for attempt in range(1, REQUESTER_ATTEMPTS + 1):
            if r in self._revealed:
                break
            if attempt > 1:
                await self._back_off(min(attempt - 1, 4), jitter)
            try:
                await self.node.send_message(self.requester_peer, OPENING_PROTOCOL, msg)
                self._log("scores_sent", r, attempt=attempt)
                break
            except BridgeClosed:
                raise
            except Exception as e:  # noqa: BLE001 - libp2p raises several stream errors
                log.warning("scores_send_failed", agent=self.name, round=r, attempt=attempt, reason=str(e))
        while r not in self._revealed and (left := until - time.monotonic()) > 0:
            self._reveal_seen.clear()
            if r in self._revealed:
                break
            try:
                await asyncio.wait_for(self._reveal_seen.wait(), left)
            except TimeoutError:
                pass
        if r in self._revealed:
            self._log("scores_revealed", r, by="requester")
            return
        await self._reveal_own(r, ScoreReveal(salt, packed), opened_at)

    async def _reveal_own(self, r: int, row: ScoreReveal, opened_at: int) -> None:
        """The fallback: reveals its own row (against the pending list read from the
        events; a reveal landing in between makes it stale, so it tries again)."""
        for attempt in range(1, REQUESTER_ATTEMPTS + 1):
            try:
                results = await self.client.reveal_scores(r, {self.address: row}, from_block=opened_at)
            except ValueError:  # not pending any more: a batch revealed it meanwhile
                self._log("scores_revealed", r, by="requester")
                return
            except ContractRevert as e:
                if e.name == "BadScoreReveal" and attempt < REQUESTER_ATTEMPTS:
                    continue
                log.warning("reveal_refused", worker=self.name, round=r, error=e.name)
                return
            for res in results:
                self.recorder.add_gas(r, self.name, res.gas_used)
            self._log("scores_revealed", r, by="itself", gas=sum(res.gas_used for res in results))
            return

    async def _copy_median(
        self, r: int, honest: list[float | None], deadline: int, opened_at: int
    ) -> list[float | None]:
        """The copy-the-median late scorer (behaviors/copy_median.py): waits while it
        may still commit for the others' scores to appear on the chain, then submits
        their per-model median; with nothing to copy it submits `honest`."""
        waited, step = 0.0, REVEAL_POLL_S / 4
        rows: list[list[float | None]] = []
        while waited < self.behavior.copy_wait_s():
            events = await self.client.past_events(opened_at)
            rows = [
                decode_scores(bytes(e.args["scores"]))
                for e in events
                if e.name == "ScoresRevealed" and e.args["round"] == r and e.args["evaluator"] != self.address
            ]
            if rows or (await self.client.w3.eth.get_block("latest"))["timestamp"] >= deadline:
                break
            await asyncio.sleep(step)
            waited += step
        copied = self.behavior.copy_scores(rows, honest)
        self._log("copy_median", r, rows_seen=len(rows), copied=copied is not honest)
        return copied

    async def _fetch_round(
        self, r: int, cids: list[str], own_cid: str | None, judge: Callable[[str, bytes], Awaitable[None]]
    ) -> None:
        """Fetches the round's models and hands each to `judge` as it arrives (judging
        holds no fetch slot). The overlay (module docstring): its seed first, from the
        requester; once it has it (or after SEED_WAIT_S) the others, `fetch_window` at
        once, from the peers expected to hold them. A star: every other model at once."""
        setup = self.setup
        self._published[r] = cids
        await self._forgive_failed_peers(r)
        if setup.overlay:
            todo, window = self._fetch_order(cids), setup.fetch_window
        else:
            todo = [c for c in cids if c != own_cid]
            window = max(1, len(todo))
        slots = asyncio.Semaphore(window)

        async def one(cid: str) -> None:
            async with slots:
                try:
                    blob = await self._fetch(r, cid, local=cid != own_cid)
                except BridgeClosed:
                    raise
                except Exception as e:  # noqa: BLE001 - its own model it holds anyway: only the cover fetch failed
                    event = "cover_fetch_failed" if cid == own_cid else "model_unusable"
                    log.warning(event, worker=self.name, round=r, cid=cid, reason=str(e))
                    return
            await judge(cid, blob)

        async with asyncio.TaskGroup() as tg:
            if setup.overlay and todo:
                seed = tg.create_task(one(todo.pop(0)))
                await asyncio.wait({seed}, timeout=SEED_WAIT_S)
            for cid in todo:
                tg.create_task(one(cid))

    def _fetch_order(self, cids: list[str]) -> list[str]:
        """The published list rotated to start at its place among the registered
        workers (sorted addresses, the same view for everyone): in lockstep each
        evaluator starts with a different model, so the requester serves each model's
        first copy about once and the next asks find peers that hold it."""
        workers = sorted(self._registered)
        start = workers.index(self.address) if self.address in workers else 0
        k = start % len(cids) if cids else 0
        return cids[k:] + cids[:k]

    async def _fetch(self, r: int, cid: str, *, local: bool = True) -> bytes:
        """One published model, from the first of `_providers` that delivers it (or
        from its own store if `local`); logs which provider served it, whether that
        was the requester, the size and the time. Fetched without keeping: the caller
        keeps it once it has validated it. A peer that failed is not asked for it
        again; a peer gets at most half the time left until `_fetch_until`, so that the
        requester, asked last, still has time. When every provider failed for a
        passing reason (`BlobUnavailable.transient`: the requester down for a restart,
        a lost stream) it tries them all again, with a jittered back-off, until
        `_fetch_until` (FETCH_PATIENCE of the window)."""
        if local and self.node.holds(cid):
            return await self.node.get(cid, [])
        jitter = random.Random(self._seed("fetch", r, cid))
        for attempt in itertools.count(1):
            reasons: dict[str, str] = {}
            for provider in self._providers(r, cid):
                t0 = time.monotonic()
                peer = provider != self.requester_peer
                deadline = max(1.0, (self._fetch_until - t0) / 2) if peer else None
                try:
                    blob = await self.node.get(
                        cid, [provider], max_bytes=self.setup.max_model_bytes, deadline_s=deadline, local=local
                    )
                except BlobUnavailable as e:
                    reasons.update(e.reasons)
                    if peer:  # not asked for it again; nor for anything else this round, unless it lacked it
                        self._holders.get(r, {}).get(cid, set()).discard(provider)
                        if not all("not found" in why for why in e.reasons.values()):
                            self._failed_peers.setdefault(r, set()).add(provider)
                    continue
                seconds = round(time.monotonic() - t0, 3)
                self._log(
                    "model_fetched",
                    r,
                    cid=cid,
                    provider=provider,
                    from_requester=not peer,
                    bytes=len(blob),
                    seconds=seconds,
                )
                return blob
            failed = BlobUnavailable(cid, reasons)
            if not failed.transient or time.monotonic() >= self._fetch_until:
                raise failed
            log.warning("model_fetch_retried", agent=self.name, round=r, cid=cid, attempt=attempt, reason=str(failed))
            await self._back_off(min(attempt, 3), jitter)
        raise AssertionError("unreachable")

    async def _forgive_failed_peers(self, r: int) -> None:
        """A peer that failed in an earlier round (gone for a while, partitioned) is
        asked again in round `r`, so the swarm must dial it again: after a failed dial
        libp2p refuses the peer for 60 s without dialling (`P2PNode.unblock`), longer
        than a round may last."""
        for peer in sorted(set().union(*(v for k, v in self._failed_peers.items() if k < r))):
            await self.node.unblock(peer)

    def _peer_holders(self, r: int, cid: str) -> list[str]:
        """The peers other than itself and the requester that announced holding `cid`."""
        holders = self._holders.get(r, {}).get(cid, ())
        return sorted(p for p in holders if p not in (self.node.peer_id, self.requester_peer))

    def _earlier_fetchers(self, r: int, cid: str) -> list[str]:
        """The peers of the workers whose rotation (`_fetch_order`) reaches `cid` before
        this worker's does, the one that starts with it (its seeder) first: in lockstep
        they hold it by the time this worker asks. Only peers bound to registered
        workers (their announced bindings), none that failed this round."""
        cids, workers = self._published.get(r, []), sorted(self._registered)
        if cid not in cids or self.address not in workers:
            return []
        n, p = len(cids), cids.index(cid)
        mine = (p - workers.index(self.address)) % n
        peer_of = {w: peer for peer, w in self._bound.items()}
        failed = self._failed_peers.get(r, set())
        steps = sorted(((p - k) % n, w) for k, w in enumerate(workers) if w != self.address)
        return [peer_of[w] for step, w in steps if step < mine and w in peer_of and peer_of[w] not in failed]

    def _providers(self, r: int, cid: str) -> list[str]:
        """Whom to ask for `cid`, in order. The overlay: the first PEERS_PER_FETCH peers
        expected to hold it (`_earlier_fetchers`), the peers that announced holding it
        (in random order), then the requester, which re-serves every published model.
        A star: the requester, then the announced holders."""
        others = self._peer_holders(r, cid)
        random.Random(self._seed("providers", r, cid)).shuffle(others)
        if not self.setup.overlay:
            return [self.requester_peer, *others]
        expected = self._earlier_fetchers(r, cid)[:PEERS_PER_FETCH]
        return [*expected, *(p for p in others if p not in expected), self.requester_peer]

    async def _announce_holding(self, r: int, cids: list[str]) -> None:
        """Announces that it holds `cids` (verified) of round `r`. One announcement in
        flight at a time: CIDs given meanwhile go out together in the next (fewer
        gossip messages), at most HOLDING_BATCH a message."""
        self._unannounced += [(r, c) for c in cids]
        if self._announcing:
            return
        self._announcing = True
        try:
            while self._unannounced:
                batch, self._unannounced = self._unannounced[:HOLDING_BATCH], self._unannounced[HOLDING_BATCH:]
                for rb in sorted({rb for rb, _ in batch}):
                    await self._publish_holding(rb, [c for q, c in batch if q == rb])
        finally:
            self._announcing = False

    async def _publish_holding(self, r: int, held: list[str]) -> None:
        """One "holding" announcement, with its signed peer binding (an empty `held`
        tells peers only whom to ask: the overlay's, at each round's start).
        `faults.announce_loss` drops that fraction of announcements (seeded draws)."""
        self._announcements += 1
        if random.Random(self._seed("announce", r, self._announcements)).random() < self.setup.announce_loss:
            return
        msg = {"kind": "holding", "round": r, "cids": held, "worker": self.address, "binding": self._binding}
        try:
            await self.node.announce(self.setup.topic, msg)
        except BridgeClosed:
            raise
        except Exception as e:  # noqa: BLE001 - a hint lost: peers then ask the requester
            log.warning("holding_announce_failed", agent=self.name, round=r, reason=str(e))


def new_salt() -> bytes:
    """A commitment's salt: a secret, so from the OS's CSPRNG, never from the scenario
    seed (anyone holding the scenario file could recompute a seeded salt, then match
    each commitment to its model and so each worker to its model). 128 random bits,
    zero-padded (`encoding.new_salt`)."""
    return encoding_salt()
