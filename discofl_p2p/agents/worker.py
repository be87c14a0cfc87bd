"""The worker agent: reacts to contract events, never to a clock.

WorkerRegistered     note the worker: only registered workers' peers are believed when
                     they announce holding a round.
RoundStarted(r)      aggregate the last round's models with its own scores, train,
                     publish the blob (served to the requester only), hand the
                     opening (CID, salt) to the requester, commit on-chain.
EvaluationOpened(r)  fetch every published model (requester first, then peers that
                     hold the round), verify it against w0, score it on the validation
                     split, score its own model with a decoy (behaviors.self_score),
                     submit the scores; then serve the round's models itself.
TrainingFinished     withdraw its credit.
TaskClosed           stop.

It logs its round's lifecycle as info events (agent, round, seconds since it saw the
round start): round_started, model_trained, blob_stored, opening_sent,
model_committed, model_fetched (one per model), scores_submitted, withdrawn.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import structlog

from discofl_p2p.agents.behaviors import Behavior
from discofl_p2p.agents.context import OPENING_PROTOCOL, SimContext, derive_seed
from discofl_p2p.agents.jobs import decode_and_evaluate, evaluate_job, initial_state, train_job
from discofl_p2p.chain.client import ChainEvent, TaskClient, TxResult
from discofl_p2p.chain.encoding import commitment, encode_scores
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.ml.aggregation import Candidate
from discofl_p2p.ml.splits import WorkerSplit
from discofl_p2p.ml.weights import StateDict, encode_state
from discofl_p2p.p2p.cid import cid_from_digest, digest_of
from discofl_p2p.p2p.node import Announcement, BlobUnavailable, P2PNode

log = structlog.get_logger("discofl.worker")


@dataclass
class WorkerAgent:
    name: str
    behavior: Behavior
    client: TaskClient
    node: P2PNode
    ctx: SimContext
    split: WorkerSplit
    requester_peer: str
    ring: str | None = None
    withdrawn_wei: int = 0
    _own: dict[int, tuple[str, StateDict]] = field(default_factory=dict)
    _candidates: list[Candidate] = field(default_factory=list)
    _seen: list[tuple[float, StateDict]] = field(default_factory=list)
    _holders: dict[int, set[str]] = field(default_factory=dict)
    _registered: set[str] = field(default_factory=set)  # worker addresses, from the chain
    _started: dict[int, float] = field(default_factory=dict)  # round -> when it saw it start
    # The decoy self-scores are secrets (a replayable draw would tell the decoy apart).
    _secret_rng: random.Random = field(default_factory=secrets.SystemRandom)

    @property
    def address(self) -> str:
        return self.client.account.address

    def _seed(self, *parts: object) -> int:
        return derive_seed(self.ctx.seed, self.name, *parts)

    async def run(self) -> None:
        """Registers, then follows the task until it is closed (or the worker drops out)."""
        announcements = await self.node.subscribe(self.ctx.topic)
        events = self.client.events()
        try:
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(self._listen(announcements))
                await self._gas(0, self.client.register())
                try:
                    async for ev in events:
                        if not await self._on_event(ev):
                            break
                finally:
                    listener.cancel()
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
        """Takes a "holding" announcement only from the peer of a registered worker:
        registered on-chain (WorkerRegistered), bound to that peer (`ctx.peers`).
        Anyone else could name itself a provider of every round, and be asked first."""
        p = ann.payload
        if p.get("kind") != "holding" or not isinstance(p.get("round"), int):
            return
        if ann.sender not in {self.ctx.peers.get(w) for w in self._registered}:
            why = "not a registered worker's peer"
            log.warning("announcement_ignored", agent=self.name, peer=ann.sender, reason=why)
            return
        self._holders.setdefault(p["round"], set()).add(ann.sender)

    async def _on_event(self, ev: ChainEvent) -> bool:
        a = ev.args
        if ev.name == "WorkerRegistered":
            self._registered.add(a["worker"])
        elif ev.name == "RoundStarted":
            r = a["round"]
            self._started[r] = time.monotonic()
            self._log("round_started", r)
            if self.behavior.stopped(r):
                log.info("worker_dropped_out", worker=self.name, round=r)
                await self.node.close()  # offline: its earlier models live on as replicas
                return False
            await self._submit(r)
        elif ev.name == "EvaluationOpened":
            if not self.behavior.stopped(a["round"]):
                await self._evaluate(a["round"], list(a["models"]))
        elif ev.name == "TrainingFinished":
            credit = await self.client.credit_of(self.address)
            if credit:
                res = await self.client.withdraw()
                amount = res.events[0].args["amount"]
                self.withdrawn_wei += amount
                self._log("withdrawn", max(self._started, default=0), amount=amount, gas=res.gas_used)
        elif ev.name == "TaskClosed":
            return False
        return True

    async def _gas(self, round_: int, call: Awaitable[TxResult]) -> TxResult:
        res = await call
        if round_:
            self.ctx.add_gas(round_, self.name, res.gas_used)
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
        ctx = self.ctx
        if r == 1 or not self._candidates or not self.behavior.starts_from_aggregate():
            base = await ctx.run_cpu(initial_state, ctx.w0)
        else:
            base = await ctx.run_cpu(ctx.aggregate, self._candidates)
        trained = base
        if self.behavior.trains():
            x, y = ctx.data.x[self.split.train], ctx.data.y[self.split.train]
            x, y = self.behavior.training_data(x, y, self._seed("data", r))
            t0 = time.monotonic()
            trained = await ctx.run_cpu(train_job, ctx.w0, base, x, y, ctx.train_cfg_for(r), self._seed("train", r))
            self._log("model_trained", r, seconds=round(time.monotonic() - t0, 3), samples=len(y))
        state = self.behavior.submission(trained, base, self._seen, self._seed("submit", r))
        blob = encode_state(state)
        cid = await self.node.put(blob, only_for=[self.requester_peer])
        self._log("blob_stored", r, cid=cid, bytes=len(blob))
        self._own[r] = (cid, state)
        if self.ring and self.behavior.params.get("shares_cids"):
            ctx.ring_channel[self.ring][r].add(cid)
        salt = new_salt()
        c = commitment(self.client.address, r, self.address, digest_of(cid), salt)
        if self.behavior.late(r):
            await self._wait_for("EvaluationOpened", r)
        await self.node.send_message(
            self.requester_peer,
            OPENING_PROTOCOL,
            {"task": ctx.task_id, "round": r, "worker": self.address, "cid": cid, "salt": salt.hex()},
        )
        self._log("opening_sent", r, cid=cid)
        try:
            res = await self._gas(r, self.client.submit_model(r, c))
            self._log("model_committed", r, gas=res.gas_used)
        except ContractRevert as e:
            log.warning("submission_refused", worker=self.name, round=r, error=e.name)

    # ---------------------------------------------------------------- evaluation

    async def _evaluate(self, r: int, digests: list[bytes]) -> None:
        ctx = self.ctx
        cids = [cid_from_digest(bytes(d)) for d in digests]
        own_cid = self._own.get(r, (None, None))[0]
        x, y = ctx.data.x[self.split.val], ctx.data.y[self.split.val]

        async def judge(cid: str) -> tuple[StateDict, float] | None:
            if cid == own_cid:
                return None
            try:
                blob = await self._fetch(r, cid)
                return await ctx.run_cpu(
                    decode_and_evaluate, ctx.w0, blob, ctx.spec, ctx.max_model_bytes, x, y, ctx.metric
                )
            except Exception as e:  # noqa: BLE001 - an unusable model is abstained on
                log.warning("model_unusable", worker=self.name, round=r, cid=cid, reason=str(e))
                return None

        judged = await asyncio.gather(*(judge(c) for c in cids))

        # What it keeps for next round's aggregation: its own honest view. The published
        # order is a secret shuffle, so everything that feeds learning goes in CID order:
        # the same scenario seed then gives the same models.
        canon = sorted(range(len(cids)), key=lambda i: cids[i])
        kept: list[tuple[str, StateDict, float]] = [(cids[i], j[0], j[1]) for i in canon if (j := judged[i])]
        if own_cid is not None:
            own_state = self._own[r][1]
            own_score = await ctx.run_cpu(evaluate_job, ctx.w0, own_state, x, y, ctx.metric)
            kept.append((own_cid, own_state, own_score))
            await self.node.share(own_cid)  # everyone holds every model now: no more secret
        kept.sort(key=lambda k: k[0])
        self._candidates = [Candidate(state, s) for _, state, s in kept]
        self._seen = [(s, state) for c, state, s in kept if c != own_cid]
        for c in cids:
            if self.node.holds(c) or c == own_cid:
                await self.node.tag(c, ctx.task_id, r)
        if random.Random(self._seed("announce", r)).random() >= ctx.announce_loss:
            await self.node.announce(ctx.topic, {"kind": "holding", "round": r})

        # The behaviour scores the models in CID order too, so that its seeded choices
        # (a collusion ring's guesses) do not depend on the secret shuffle.
        true_scores = [j[1] if (j := judged[i]) else None for i in canon]
        ring_positions = None
        if self.ring and self.behavior.params.get("shares_cids"):
            known = ctx.ring_channel[self.ring][r]
            ring_positions = {k for k, i in enumerate(canon) if cids[i] in known}
        in_canon = self.behavior.scores(true_scores, ring_positions, self._seed("scores", r))
        # Its own model gets a score too, so that no abstention points at it; the rules
        # ignore self-scores. On accuracy, every honest score is a multiple of 1/|val|.
        own_k = next((k for k, i in enumerate(canon) if cids[i] == own_cid), None)
        if own_k is not None:
            grid = len(y) if ctx.metric == "accuracy" else None
            in_canon[own_k] = self.behavior.self_score(in_canon, own_k, self._secret_rng, grid)
        submitted: list[float | None] = [None] * len(cids)
        for k, i in enumerate(canon):
            submitted[i] = in_canon[k]
        if self.behavior.late(r):
            await self._wait_for("RoundSettled", r)
        try:
            res = await self._gas(r, self.client.submit_scores(r, encode_scores(submitted)))
            abstained = sum(s is None for s in submitted)
            self._log("scores_submitted", r, gas=res.gas_used, scored=len(submitted) - abstained, abstained=abstained)
        except ContractRevert as e:
            log.warning("scores_refused", worker=self.name, round=r, error=e.name)

    async def _fetch(self, r: int, cid: str) -> bytes:
        """One published model, from the first of `_providers` that delivers it (or
        from its own store); logs which provider served it, the size and the time."""
        if self.node.holds(cid):
            return await self.node.get(cid, [])
        reasons: dict[str, str] = {}
        for provider in self._providers(r):
            t0 = time.monotonic()
            try:
                blob = await self.node.get(cid, [provider], keep=True, max_bytes=self.ctx.max_model_bytes)
            except BlobUnavailable as e:
                reasons.update(e.reasons)
                continue
            self._log(
                "model_fetched", r, cid=cid, provider=provider, bytes=len(blob), seconds=round(time.monotonic() - t0, 3)
            )
            return blob
        raise BlobUnavailable(cid, reasons)

    def _providers(self, r: int) -> list[str]:
        """The requester first (it re-serves every published model), then peers that
        announced holding the round, in an order seeded from the scenario."""
        others = sorted(p for p in self._holders.get(r, ()) if p != self.node.peer_id)
        random.Random(self._seed("providers", r)).shuffle(others)
        return [self.requester_peer, *others]


def new_salt() -> bytes:
    """A commitment's salt: a secret, so from the OS's CSPRNG, never from the scenario
    seed (anyone holding the scenario file could recompute a seeded salt, then match
    each commitment to its model and so each worker to its model)."""
    return secrets.token_bytes(32)
