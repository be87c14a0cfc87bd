"""What the agents of one simulated task are given, and what they record.

`TaskSetup` is the task's public setup, frozen: the data set and its split, the
model's spec, training and scoring settings, the CPU executor. It holds nothing that
agents exchange: w0 is the requester's (workers fetch it over the network and check it
against the contract), peer ids are bound by signed statements (`agents/identity.py`),
and colluders talk over their own direct messages.

`Recorder` is the measurement side: the per-round records the agents write (models,
scores, rewards, gas, timings) and the phase callback of the progress display. It is
an instrument, never read back by an agent to decide anything.

CPU-bound torch work runs in a bounded thread pool sized to the cores (`cpu`), so the
event loop keeps serving the chain and the network while models train; torch's own
intra-op threads are set to 1 per job so that jobs do not oversubscribe the cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from discofl_p2p.ml.aggregation import AggregationRule
from discofl_p2p.ml.datasets import Dataset
from discofl_p2p.ml.splits import Partition
from discofl_p2p.ml.training import TrainConfig
from discofl_p2p.ml.weights import Spec

T = TypeVar("T")

OPENING_PROTOCOL = "/discofl/opening/1.0.0"
"""Direct message worker -> requester: the (CID, salt) that opens its commitment,
with the worker's signed peer binding."""

RING_PROTOCOL = "/discofl/ring/1.0.0"
"""Direct message colluder -> colluder: the CID of its model this round."""


def derive_seed(seed: int, name: str, *parts: object) -> int:
    """The seed of one random choice of one participant, derived from the scenario's
    seed: what it trains on, how it trains, what it submits, how it scores, whom it
    asks first. The agents and the plain loop use the same seeds, so a scenario's
    learning replays exactly. Secrets (salts, the published order) never come from
    here: anyone holding the scenario file could recompute them."""
    text = "/".join(map(str, (seed, name, *parts)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


@dataclass
class RoundRecord:
    round: int
    models: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    contribution: dict[str, float] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)
    rewards_wei: dict[str, int] = field(default_factory=dict)
    test_accuracy: dict[str, float] = field(default_factory=dict)
    gas: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # worker -> why it was left out
    anchor: dict[str, float] = field(default_factory=dict)  # the requester's posted anchor scores, if its rule has one
    wall_s: float = 0.0


@dataclass
class Recorder:
    """The per-round records of one run, written by the agents."""

    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    on_phase: Callable[[int, str], None] = lambda r, phase: None

    def record(self, round_: int) -> RoundRecord:
        if round_ not in self.rounds:
            self.rounds[round_] = RoundRecord(round_)
        return self.rounds[round_]

    def add_gas(self, round_: int, worker: str, gas: int) -> None:
        rec = self.record(round_)
        rec.gas[worker] = rec.gas.get(worker, 0) + gas


@dataclass(frozen=True)
class TaskSetup:
    task_id: str
    data: Dataset
    partition: Partition
    spec: Spec
    train_cfg: TrainConfig
    metric: str
    aggregate: AggregationRule
    max_model_bytes: int
    seed: int
    announce_loss: float = 0.0
    overlay: bool = False  # evaluators fetch from each other (agents/worker.py); False: a star
    fetch_window: int = 4  # models an evaluator fetches at once in the overlay
    round_lr_decay: float = 1.0
    cpu: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    )

    @property
    def topic(self) -> str:
        return f"discofl/{self.task_id}/announce"

    @functools.cached_property
    def test_set(self) -> tuple[Any, Any]:
        """The held-out (x, y) that no worker sees, sliced once for every evaluation."""
        return self.data.x[self.partition.test], self.data.y[self.partition.test]

    @functools.cached_property
    def root_set(self) -> tuple[Any, Any]:
        """The requester's root validation set (x, y) for the trust anchor: held out
        from every worker and from the test set; empty unless the scoring rule needs it."""
        return self.data.x[self.partition.root], self.data.y[self.partition.root]

    def train_cfg_for(self, round_: int) -> TrainConfig:
        """Local training decays the learning rate across rounds as well as epochs."""
        return dataclasses.replace(self.train_cfg, lr=self.train_cfg.lr * self.round_lr_decay ** (round_ - 1))

    async def run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.cpu, fn, *args)
