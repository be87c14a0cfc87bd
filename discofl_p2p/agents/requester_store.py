"""The requester's own state on disk, so that a requester that crashed resumes
(`RequesterAgent.resume`, `discofl-p2p requester --resume`) without losing a round
or paying one twice.

The chain holds most of a task's state: who registered, each round's commitments,
which models were published (as digests), the revealed scores, and what was settled
and paid; a resumed requester replays its events. What only the requester knew, and
nobody could give it back, is kept here, in its store directory:

- `task.json`: the contract's address; `w0.pt`: w0's bytes (the contract holds only
  their digest);
- `round-R.json`: the openings (CID, salt, the peer that sent it) received for round R,
  each written as it is accepted (a worker sends its opening once); the secret
  published order (owner addresses by position) and the exclusions, written before
  `openEvaluation` is sent; the score rows and salts evaluators handed it for its
  batch reveal, each written as it is accepted (so a requester restarted in the reveal
  phase still posts them, rather than leaving every evaluator to reveal its own); and,
  once the round is settled, its test accuracies;
- `blobs/R/CID`: each model of round R that passed the checks, to re-serve to the
  evaluators and to build the final model from; rounds before the last settled one
  are deleted, as the node forgets them.

Every write is atomic (a temporary file, fsync, rename), so a `kill -9` leaves the old
file or the new one, never half of one. The files are the requester's own: JSON and
raw blob bytes, checked against their CIDs when read back (no pickle).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discofl_p2p.p2p.cid import cid_of


class StoreError(RuntimeError):
    """The store directory cannot be read as a requester's store; the message names the
    file and what is wrong with it."""


def write_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that a crash at any moment leaves either the old
    content or the new one: a temporary file in the same directory, flushed to disk,
    renamed over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class StoredOpening:
    peer: str
    cid: str
    salt: bytes


@dataclass(frozen=True)
class Selection:
    """Which submissions a round published, in the secret published order."""

    owner_at: list[str]  # worker address per published position
    excluded: dict[str, str]  # worker name -> why it was left out


class RequesterStore:
    """One requester's state directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._rounds: dict[int, dict[str, Any]] = {}

    # ---------------------------------------------------------------- the task

    def create(self, contract: str, w0: bytes) -> None:
        """A new task: its contract and w0. Refuses a directory that holds another task."""
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        if (self.root / "task.json").exists():
            raise StoreError(f"{self.root / 'task.json'}: the store already holds a task; resume it or use another")
        write_atomically(self.root / "w0.pt", w0)
        write_atomically(self.root / "task.json", json.dumps({"contract": contract}).encode())

    def task(self) -> tuple[str, bytes]:
        """(contract address, w0) of the task this store belongs to."""
        path = self.root / "task.json"
        try:
            contract = json.loads(path.read_text())["contract"]
            w0 = (self.root / "w0.pt").read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path}: not a requester's store ({e})") from None
        if not isinstance(contract, str):
            raise StoreError(f"{path}: contract is not an address")
        return contract, w0

    # ---------------------------------------------------------------- rounds

    def _round(self, r: int) -> dict[str, Any]:
        if r not in self._rounds:
            path = self.root / f"round-{r}.json"
            try:
                data = json.loads(path.read_text()) if path.exists() else {}
            except (OSError, ValueError) as e:
                raise StoreError(f"{path}: {e}") from None
            if not isinstance(data, dict):
                raise StoreError(f"{path}: expected a JSON object")
            self._rounds[r] = {"openings": {}} | data
        return self._rounds[r]

    def _save_round(self, r: int) -> None:
        write_atomically(self.root / f"round-{r}.json", json.dumps(self._rounds[r], sort_keys=True).encode())

    def add_opening(self, r: int, worker: str, peer: str, cid: str, salt: bytes) -> None:
        self._round(r)["openings"][worker] = {"peer": peer, "cid": cid, "salt": salt.hex()}
        self._save_round(r)

    def openings(self, r: int) -> dict[str, StoredOpening]:
        """Worker address -> the opening it sent for round `r`."""
        try:
            return {
                w: StoredOpening(str(o["peer"]), str(o["cid"]), bytes.fromhex(o["salt"]))
                for w, o in self._round(r)["openings"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"{self.root / f'round-{r}.json'}: bad opening ({e})") from None

    def add_score_reveal(self, r: int, evaluator: str, salt: bytes, packed: bytes) -> None:
        self._round(r).setdefault("score_reveals", {})[evaluator] = {"salt": salt.hex(), "scores": packed.hex()}
        self._save_round(r)

    def score_reveals(self, r: int) -> dict[str, tuple[bytes, bytes]]:
        """Evaluator address -> (salt, packed scores) it handed the requester in round `r`."""
        try:
            return {
                w: (bytes.fromhex(v["salt"]), bytes.fromhex(v["scores"]))
                for w, v in self._round(r).get("score_reveals", {}).items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"{self.root / f'round-{r}.json'}: bad score reveal ({e})") from None

    def save_selection(self, r: int, owner_at: list[str], excluded: dict[str, str]) -> None:
        self._round(r)["selection"] = {"owner_at": owner_at, "excluded": excluded}
        self._save_round(r)

    def selection(self, r: int) -> Selection | None:
        sel = self._round(r).get("selection")
        if sel is None:
            return None
        try:
            return Selection([str(w) for w in sel["owner_at"]], {str(k): str(v) for k, v in sel["excluded"].items()})
        except (KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{self.root / f'round-{r}.json'}: bad selection ({e})") from None

    def save_settled(self, r: int, test_accuracy: dict[str, float]) -> None:
        self._round(r)["test_accuracy"] = test_accuracy
        self._save_round(r)

    def test_accuracy(self, r: int) -> dict[str, float]:
        acc = self._round(r).get("test_accuracy", {})
        return {str(k): float(v) for k, v in acc.items()} if isinstance(acc, dict) else {}

    # ---------------------------------------------------------------- blobs

    def save_blob(self, r: int, blob: bytes) -> str:
        """Keeps a checked model of round `r` under its CID; returns the CID."""
        cid = cid_of(blob)
        folder = self.root / "blobs" / str(r)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / cid, blob)
        return cid

    def blob(self, r: int, cid: str) -> bytes | None:
        """The stored model `cid` of round `r`, or None if it is not there (or its bytes
        no longer match the CID)."""
        try:
            blob = (self.root / "blobs" / str(r) / cid).read_bytes()
        except OSError:
            return None
        return blob if cid_of(blob) == cid else None

    def forget_before(self, r: int) -> None:
        """Deletes the models of rounds before `r` (nobody fetches them any more)."""
        for folder in (self.root / "blobs").iterdir():
            if folder.name.isdigit() and int(folder.name) < r:
                shutil.rmtree(folder, ignore_errors=True)
