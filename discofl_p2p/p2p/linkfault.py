"""Injected network faults at a node's p2p edge: a partition and a slow, lossy link.

The scenario's `[faults] partition` and `lossy` (processes mode) are applied here,
inside the faulty worker's own node, to the traffic itself; the agent above is not
told and sees only what the network does to it (`docs/scenarios.md`, "Faults"):

- partitioned: the node closes every p2p connection, and every connection a peer
  opens to it, as they appear; a stream it opens waits until the partition is over,
  as a TCP connection does while its packets are lost, so the caller's own timeout
  decides whether it outlasts the partition; a stream a peer opens is refused (reset);
- lossy: each stream it opens or accepts on our protocols (blobs, direct messages)
  first waits `delay_s`, then is dropped (reset, or `LinkDropped` for its own) with
  probability `loss`, drawn from a generator seeded from the scenario, so that a seed
  replays the same drops in the same order of streams. Gossipsub's own streams are
  long-lived and left alone.

This module holds the state and the draws (no I/O); `p2p/node.py` acts on them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


class LinkDropped(ConnectionError):
    """A stream this node opened was dropped by the injected lossy-link fault."""


@dataclass
class Lossy:
    delay_s: float
    loss: float
    rng: random.Random

    def dropped(self) -> bool:
        """One draw: whether the next stream is dropped."""
        return self.rng.random() < self.loss


@dataclass
class LinkFaults:
    """What is being done to this node's link now, and what has been done so far."""

    partitioned: bool = False
    lossy: Lossy | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("connections_closed", "streams_held", "streams_refused", "streams_dropped", "streams_delayed"), 0
        )
    )

    def degrade(self, delay_s: float, loss: float, seed: str) -> None:
        """From now on, every stream waits `delay_s` and is dropped with probability
        `loss` (a generator seeded with `seed`)."""
        self.lossy = Lossy(delay_s, loss, random.Random(seed))

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def summary(self) -> dict[str, Any]:
        return dict(self.counts)
