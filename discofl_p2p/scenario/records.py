"""An agent process's records as JSON, and the parent's merge of them.

In processes mode (`scenario/processes.py`) each agent writes what it recorded in
its own `Recorder` to a JSON file when it stops, and the parent reads them back into
one set of `RoundRecord`s, the same that the in-process runner's shared `Recorder`
holds. JSON only: a file another process wrote is data, never code (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from discofl_p2p.agents.context import Recorder, RoundRecord

_FIELDS = {f.name for f in dataclasses.fields(RoundRecord)}


class RecordsError(ValueError):
    """A records file that cannot be read; the message names the file and the field."""


def records_to_json(recorder: Recorder, **extra: Any) -> dict[str, Any]:
    """A recorder's rounds (and `extra` facts: the agent, its pid, peer id...) as a
    JSON-ready dict."""
    return extra | {"rounds": [dataclasses.asdict(rec) for _, rec in sorted(recorder.rounds.items())]}


def write_records(path: Path | None, recorder: Recorder, **extra: Any) -> None:
    """Writes this process's records (with its pid) to `path`, if any; atomically (a
    temporary file renamed), so a reader never sees half a file."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records_to_json(recorder, pid=os.getpid(), **extra), default=str))
    tmp.replace(path)


def read_records(path: Path) -> dict[str, Any]:
    """One agent's records file; its rounds come back as `RoundRecord`s under "rounds"."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordsError(f"{path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
        raise RecordsError(f"{path}: expected an object with a list of rounds")
    rounds = {}
    for i, rec in enumerate(data["rounds"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("round"), int) or set(rec) - _FIELDS:
            raise RecordsError(f"{path}: rounds[{i}] is not a round record")
        r = RoundRecord(**rec)
        r.rewards_wei = {k: int(v) for k, v in r.rewards_wei.items()}
        rounds[r.round] = r
    return data | {"rounds": rounds}


def merge_rounds(parts: Iterable[dict[int, RoundRecord]]) -> dict[int, RoundRecord]:
    """The agents' records as one: each field's entries from whichever agent wrote
    them (the requester writes models, scores, rewards and accuracy; each worker its
    own gas), and the longest wall time."""
    out: dict[int, RoundRecord] = {}
    for part in parts:
        for r, rec in part.items():
            into = out.setdefault(r, RoundRecord(r))
            for f in _FIELDS - {"round", "wall_s", "ranking"}:
                getattr(into, f).update(getattr(rec, f))
            into.ranking = into.ranking or list(rec.ranking)
            into.wall_s = max(into.wall_s, rec.wall_s)
    return dict(sorted(out.items()))
