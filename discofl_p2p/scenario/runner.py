"""Runs one scenario: chain, network, agents, then the results.

Lifetimes, outermost first: anvil (unless an RPC URL is given) > the p2p network >
one TaskGroup that owns the requester and every worker, under the scenario's
timeout. Leaving any of them shuts down what it owns.

`assemble` builds one task's agents (accounts funded, nodes meshed, contract
deployed) without running them; `Simulation.run` runs them; `run_scenario` does both.

What the runner hands each agent is its own: its account, its node, its data split
and the task's public setup (`TaskSetup`, frozen). w0 goes to the requester only
(workers fetch it over the network and check it against the contract); peer ids are
bound to addresses by the workers' signatures, not by the runner; a collusion ring's
members are given each other's peer ids (their out-of-band agreement) and talk over
their own direct messages. The agents write their records into one `Recorder`, which
`RunOutcome.rounds` carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from web3 import AsyncWeb3

from discofl_p2p.agents.behaviors import WorkerBehaviour, is_ring, make_behaviour
from discofl_p2p.agents.context import Recorder, RoundRecord, TaskSetup
from discofl_p2p.agents.requester import RequesterAgent, RequesterConfig
from discofl_p2p.agents.worker import WorkerAgent
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.chain.devchain import derive_account, fund
from discofl_p2p.chain.limits import FUNDING_WEI
from discofl_p2p.ml.aggregation import make_aggregator
from discofl_p2p.ml.datasets import Dataset, load_dataset
from discofl_p2p.ml.models import build_model, export_initial_model
from discofl_p2p.ml.splits import Partition, partition
from discofl_p2p.ml.training import TrainConfig
from discofl_p2p.ml.weights import encode_state, spec_of
from discofl_p2p.p2p.node import NodeConfig, P2PNetwork, P2PNode, key_from_seed
from discofl_p2p.scenario.config import Scenario, overlay_for
from discofl_p2p.trust.scoring import NEEDS_ANCHOR

log = structlog.get_logger("discofl.runner")


class RunTimedOut(RuntimeError):
    """The task did not close within the scenario's `timeout_s`."""


@dataclass
class WorkerInfo:
    name: str
    address: str
    behavior: str
    peer_id: str
    group: str
    train_samples: int = 0  # the digits it holds for training (its validation split aside)
    pid: int | None = None  # its OS process, in processes mode
    exit_code: int | None = None  # how that process ended (negative: the signal that ended it)


@dataclass
class RunOutcome:
    scenario: Scenario
    contract: str
    chain_id: int
    deposit_wei: int
    workers: list[WorkerInfo]
    rounds: dict[int, RoundRecord]
    final_accuracy: float | None
    rewards_wei: dict[str, int]
    refunded_wei: int
    held_wei: int
    wall_s: float
    # Faults injected from the scenario's [faults] (processes mode): what, to whom, when.
    faults: list[dict[str, Any]] = field(default_factory=list)
    one_process_per_agent: bool = False  # processes mode (`scenario/processes.py`)

    @property
    def overlay(self) -> bool:
        """Whether the evaluators fetched from each other (`config.overlay_for`)."""
        return overlay_for(self.scenario.network, one_process_per_agent=self.one_process_per_agent)

    @property
    def adversaries(self) -> list[str]:
        return [w.name for w in self.workers if w.behavior != "honest"]


def worker_names(sc: Scenario) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, behaviour, params) per worker, in group order: "honest-1", "garbage-2"..."""
    out = []
    for g in sc.workers:
        for i in range(1, g.count + 1):
            out.append((f"{g.name}-{i}", g.behavior, g.params))
    return out


def build_behaviours(sc: Scenario) -> dict[str, WorkerBehaviour]:
    """Each worker's behaviour, by name, from its group's parts; a collusion ring's
    members also learn the ring's size (they agreed on their members beforehand), and a
    Sybil group's identities their operator (the group's first worker)."""
    groups = [(f"{g.name}-{i}", g) for g in sc.workers for i in range(1, g.count + 1)]
    rings: dict[str, int] = {}
    for g in sc.workers:
        if is_ring(g.score):
            rings[g.score_params["ring"]] = rings.get(g.score_params["ring"], 0) + g.count
    out = {}
    for name, g in groups:
        parts = g.parts()
        if is_ring(g.score):
            parts["score_params"] = parts["score_params"] | {"_ring_size": rings[g.score_params["ring"]]}
        if g.train == "sybil":  # one operator: its identities use the group's first worker's data and seeds
            parts["train_params"] = parts["train_params"] | {"_operator": f"{g.name}-1"}
        out[name] = make_behaviour(**parts)
    return out


def requester_config(sc: Scenario, registration_timeout_s: float = 60.0) -> RequesterConfig:
    """The requester's settings, from the scenario's [task]."""
    return RequesterConfig(
        rounds=sc.task.rounds,
        top_k=sc.task.top_k,
        deposit_wei=sc.task.deposit_wei,
        reward_policy=sc.task.reward_policy,
        quality_floor=sc.task.quality_floor,
        loyalty_bonus=sc.task.loyalty_bonus,
        submission_timeout_s=sc.task.submission_timeout_s,
        evaluation_timeout_s=sc.task.evaluation_timeout_s,
        reveal_timeout_s=sc.task.reveal_timeout_s,
        registration_timeout_s=registration_timeout_s,
        scoring=sc.task.scoring,
        scoring_params=dict(sc.task.scoring_params),
    )


def build_worker(
    sc: Scenario,
    name: str,
    behaviour: WorkerBehaviour,
    client: TaskClient,
    node: P2PNode,
    setup: TaskSetup,
    recorder: Recorder,
    requester_peer: str,
    ring_peers: tuple[str, ...],
) -> WorkerAgent:
    """One worker agent of the scenario's roster: its data split is its place in it
    (a Sybil identity's, its operator's place)."""
    index = [n for n, _, _ in worker_names(sc)].index(behaviour.data_owner(name))
    return WorkerAgent(
        name=name,
        behavior=behaviour,
        client=client,
        node=node,
        setup=setup,
        recorder=recorder,
        split=setup.partition.workers[index],
        requester_peer=requester_peer,
        ring=behaviour.ring,
        ring_peers=ring_peers,
    )


def data_partition(sc: Scenario) -> tuple[Dataset, Partition]:
    """The scenario's data set and its split among the workers (seeded: every process
    that computes it gets the same), with the requester's root set when the scoring
    rule needs an anchor."""
    data = load_dataset(sc.data.dataset, sc.data.directory or None)
    part = partition(
        data.y,
        sc.n_workers,
        scheme=sc.data.split,
        alpha=sc.data.alpha,
        test_fraction=sc.data.test_fraction,
        per_worker=sc.data.samples_per_worker or None,
        seed=sc.task.seed,
        root=sc.task.root_samples if sc.task.scoring in NEEDS_ANCHOR else 0,
    )
    return data, part


def build_setup(sc: Scenario, *, one_process_per_agent: bool = False) -> tuple[TaskSetup, bytes]:
    """The task's public setup, and w0 (the requester's: its TorchScript archive).
    `one_process_per_agent` turns the overlay on unless the file says otherwise
    (`config.overlay_for`)."""
    data, part = data_partition(sc)
    model = build_model(sc.model.name, seed=sc.task.seed)
    state = model.state_dict()
    setup = TaskSetup(
        task_id=f"{sc.task.name}-{sc.task.seed}",
        data=data,
        partition=part,
        spec=spec_of(state),
        train_cfg=TrainConfig(
            epochs=sc.model.epochs,
            batch_size=sc.model.batch_size,
            lr=sc.model.lr,
            lr_decay=sc.model.lr_decay,
            optimizer=sc.model.optimizer,
        ),
        metric=sc.task.metric,
        aggregate=make_aggregator(sc.task.aggregation, norm_bound=sc.task.norm_bound, **sc.task.aggregation_params),
        max_model_bytes=2 * len(encode_state(state)) + 4096,
        seed=sc.task.seed,
        announce_loss=sc.faults.announce_loss,
        overlay=overlay_for(sc.network, one_process_per_agent=one_process_per_agent),
        fetch_window=sc.network.fetch_window,
        round_lr_decay=sc.model.round_lr_decay,
    )
    return setup, export_initial_model(model)


@dataclass
class Simulation:
    """One task's agents, deployed and wired, ready to run."""

    scenario: Scenario
    setup: TaskSetup
    recorder: Recorder
    requester: RequesterAgent
    workers: list[WorkerAgent]
    infos: list[WorkerInfo]
    chain_id: int
    deposit_wei: int
    started: float = field(default_factory=time.monotonic)

    @property
    def names(self) -> dict[str, str]:
        """Worker address -> worker name."""
        return self.requester.names

    async def run(self) -> None:
        """Runs the requester and every worker until the task is closed."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.requester.run())
            for w in self.workers:
                tg.create_task(w.run())

    async def outcome(self) -> RunOutcome:
        """What the run did, rewards and balances read back from the chain."""
        client = self.requester.client
        rewards = await rewards_from_chain(client, self.names)
        st = await client.state()
        return RunOutcome(
            scenario=self.scenario,
            contract=client.address,
            chain_id=self.chain_id,
            deposit_wei=self.deposit_wei,
            workers=self.infos,
            rounds=self.recorder.rounds,
            final_accuracy=self.requester.final_accuracy,
            rewards_wei=rewards,
            refunded_wei=st.refunded,
            held_wei=st.held,
            wall_s=time.monotonic() - self.started,
        )


async def assemble(
    sc: Scenario,
    setup: TaskSetup,
    w0: bytes,
    w3: AsyncWeb3,
    ws_url: str,
    net: P2PNetwork,
    *,
    recorder: Recorder | None = None,
    registration_timeout_s: float = 60.0,
) -> Simulation:
    """Funds every account, starts and meshes one node per agent on `net`, deploys the
    task and builds the agents; nothing runs yet."""
    recorder = recorder or Recorder()
    started = time.monotonic()
    roster = worker_names(sc)
    behaviours = build_behaviours(sc)
    seed = sc.task.seed
    deposit = sc.task.deposit_wei

    chain_id = await w3.eth.chain_id
    req_acct = derive_account(seed, f"{setup.task_id}/requester")
    accts = {name: derive_account(seed, f"{setup.task_id}/{name}") for name, _, _ in roster}
    await fund(w3, req_acct.address, deposit + FUNDING_WEI)
    await asyncio.gather(*(fund(w3, a.address, FUNDING_WEI) for a in accts.values()))
    names: dict[str, str] = {a.address: n for n, a in accts.items()}

    req_node = await net.add_node(key_from_seed(seed, f"{setup.task_id}/requester"))
    nodes = {n: await net.add_node(key_from_seed(seed, f"{setup.task_id}/{n}")) for n, _, _ in roster}
    await net.connect_hub(req_node, list(nodes.values()))  # the requester and a few peers each, not a clique
    for topic_node in [req_node, *nodes.values()]:
        await topic_node.subscribe(setup.topic)

    cfg = requester_config(sc, registration_timeout_s)
    requester = await RequesterAgent.deploy(
        lambda params, on_address: TaskClient.deploy(w3, req_acct, params, ws_url=ws_url, on_address=on_address),
        req_node,
        setup,
        recorder,
        cfg,
        names,
        w0,
    )
    rings: dict[str, list[str]] = {}  # ring -> its members' peer ids
    for name, _, _ in roster:
        if (ring := behaviours[name].ring) is not None:
            rings.setdefault(ring, []).append(nodes[name].peer_id)
    workers = [
        build_worker(
            sc,
            name,
            behaviours[name],
            requester.client.as_account(accts[name]),
            nodes[name],
            setup,
            recorder,
            req_node.peer_id,
            tuple(q for q in rings.get(behaviours[name].ring or "", []) if q != nodes[name].peer_id),
        )
        for name, _, _ in roster
    ]
    for name, a in accts.items():
        log.info("node_started", agent=name, peer_id=nodes[name].peer_id, address=a.address)
    log.info("node_started", agent="requester", peer_id=req_node.peer_id, address=req_acct.address)
    infos = [
        WorkerInfo(n, accts[n].address, b, nodes[n].peer_id, n.rsplit("-", 1)[0], len(setup.partition.workers[i].train))
        for i, (n, b, _) in enumerate(roster)
    ]
    return Simulation(sc, setup, recorder, requester, workers, infos, chain_id, deposit, started)


async def run_scenario(sc: Scenario, ws_url: str, *, on_phase: Callable[[int, str], None] | None = None) -> RunOutcome:
    torch.set_num_threads(1)  # one thread per job; the pool runs as many jobs as cores
    started = time.monotonic()
    setup, w0 = build_setup(sc)
    recorder = Recorder(on_phase=on_phase) if on_phase else Recorder()
    w3 = await connect(ws_url)
    try:
        async with P2PNetwork(NodeConfig(max_blob_bytes=setup.max_model_bytes)) as net:
            sim = await assemble(sc, setup, w0, w3, ws_url, net, recorder=recorder)
            sim.started = started
            limit = asyncio.timeout(sc.timeout_s)
            try:
                async with limit:
                    await sim.run()
            except TimeoutError:
                if not limit.expired():
                    raise
                reached = max(recorder.rounds, default=0)
                raise RunTimedOut(
                    f"the task did not finish within timeout_s = {sc.timeout_s} s "
                    f"(it reached round {reached} of {sc.task.rounds})"
                ) from None
            return await sim.outcome()
    finally:
        await w3.provider.disconnect()
        setup.cpu.shutdown(wait=False, cancel_futures=True)


async def rewards_from_chain(client: TaskClient, names: dict[str, str]) -> dict[str, int]:
    """Each worker's total reward, read back from the chain: withdrawn + still owed."""
    totals = dict.fromkeys(names.values(), 0)
    for ev in await client.past_events():
        if ev.name == "Withdrawn":
            totals[names[ev.args["worker"]]] += ev.args["amount"]
    for address, n in names.items():
        totals[n] += await client.withdrawable_of(address)
    return totals
