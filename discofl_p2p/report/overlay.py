"""Who served the models of a run: the requester's share of the model bytes moved,
counted from the workers' `model_fetched` log events (one per fetch: provider,
`from_requester`, bytes). In a star the requester serves every byte; in the overlay
(`agents/worker.py`) it serves about one copy per model and the evaluators the rest.
Pure: events in, figures out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FetchShares:
    fetches: int
    models: int  # distinct (round, CID) fetched
    total_bytes: int  # model bytes moved between nodes, all providers
    requester_bytes: int  # of which the requester served

    @property
    def requester_share(self) -> float:
        """The requester's share of the bytes moved (1.0 in a star)."""
        return self.requester_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def requester_copies_per_model(self) -> float:
        """Copies of each model the requester uploaded, on average (W or W - 1 in a star)."""
        return self.requester_bytes / (self.total_bytes / self.fetches) / self.models if self.fetches else 0.0

    def describe(self) -> str:
        mib = 2**20
        return (
            f"models moved: {self.fetches} fetches of {self.models} models, {self.total_bytes / mib:.1f} MiB; "
            f"the requester served {self.requester_bytes / mib:.1f} MiB ({self.requester_share:.1%}; "
            f"{self.requester_copies_per_model:.2f} copies a model; a star serves 100%)"
        )


def fetch_shares(events: Iterable[Mapping[str, Any]]) -> FetchShares:
    fetched = [e for e in events if e.get("event") == "model_fetched"]
    total = sum(int(e["bytes"]) for e in fetched)
    by_requester = sum(int(e["bytes"]) for e in fetched if e.get("from_requester"))
    models = len({(e.get("round"), e.get("cid")) for e in fetched})
    return FetchShares(len(fetched), models, total, by_requester)


def fetch_shares_of_log(path: Path) -> FetchShares:
    """`fetch_shares` of a run's `log.jsonl` (lines that are not JSON objects are skipped)."""
    events: list[dict[str, Any]] = []
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict):
                events.append(e)
    return fetch_shares(events)
