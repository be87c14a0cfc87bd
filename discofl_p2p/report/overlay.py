"""Who served the models of a run, and how long evaluation took: the requester's share
of the model bytes moved, counted from the workers' `model_fetched` log events (one per
fetch: provider, `from_requester`, bytes), and each round's evaluation phase, from the
requester's `evaluation_opened` to the last `scores_committed`. In a star the requester
serves every byte; in the overlay (`agents/worker.py`) about one copy per model, the
evaluators the rest. Pure: events in, figures out (malformed events are skipped: a log
is data, not trusted)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FetchShares:
    fetches: int
    models: int  # distinct (round, CID) fetched
    total_bytes: int  # model bytes moved between nodes, all providers
    requester_bytes: int  # of which the requester served
    evaluation_s: dict[int, float] = field(default_factory=dict)  # round -> evaluation phase, seconds

    @property
    def requester_share(self) -> float:
        """The requester's share of the bytes moved (1.0 in a star)."""
        return self.requester_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def requester_copies_per_model(self) -> float:
        """Copies of each model the requester uploaded, on average (W - 1 in a star)."""
        if not self.fetches or not self.models:
            return 0.0
        return self.requester_bytes / (self.total_bytes / self.fetches) / self.models

    def describe(self) -> str:
        mib = 2**20
        phases = ", ".join(f"round {r} {s:.2f} s" for r, s in sorted(self.evaluation_s.items())) or "none"
        return (
            f"models moved: {self.fetches} fetches of {self.models} models, {self.total_bytes / mib:.2f} MiB; "
            f"the requester served {self.requester_bytes / mib:.2f} MiB ({self.requester_share:.1%}; "
            f"{self.requester_copies_per_model:.2f} copies a model; a star serves 100%); "
            f"evaluation phase: {phases}"
        )


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _when(e: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(e.get("timestamp")))
    except ValueError:
        return None


def fetch_shares(events: Iterable[Mapping[str, Any]]) -> FetchShares:
    fetches, total, by_requester = 0, 0, 0
    models: set[tuple[object, object]] = set()
    opened: dict[int, datetime] = {}
    committed: dict[int, datetime] = {}
    for e in events:
        kind, r = e.get("event"), _int(e.get("round"))
        if kind == "model_fetched" and (n := _int(e.get("bytes"))) is not None:
            fetches, total = fetches + 1, total + n
            by_requester += n if e.get("from_requester") is True else 0
            models.add((r, e.get("cid")))
        elif kind in ("evaluation_opened", "scores_committed") and r is not None and (t := _when(e)):
            if kind == "evaluation_opened" and e.get("agent") == "requester":
                opened[r] = min(opened.get(r, t), t)
            elif kind == "scores_committed":
                committed[r] = max(committed.get(r, t), t)
    phases = {r: (committed[r] - t).total_seconds() for r, t in opened.items() if r in committed}
    return FetchShares(fetches, len(models), total, by_requester, phases)


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
