"""The scenario's `[faults]` in processes mode: when each fault is injected, and what
became of the worker it hit (for results.json).

The runner injects each fault at the start of its round (the requester's "submission"
phase line), from outside the worker, as a network operator or `kill -9` would:

- kill: SIGKILL to the worker's process;
- partition, lossy: a signal (`agent_process.PARTITION_SIGNAL`, `LOSSY_SIGNAL`) on
  which the worker's node applies the fault to its own p2p traffic
  (`p2p/linkfault.py`); the agent is not told;
- restart_requester: at its round's phase (any phase line, not only "submission"),
  SIGKILL to the requester's process, then `restart` (given by the runner) starts it
  again from its store (`requester --resume`).

A worker it hit either recovers (its model is published in every round from the
fault's on, and its process ends normally) or is excluded: `report` says which, and
why, from the round records and the process's exit. A restarted requester recovers
when every round of the task is settled and its second process exits normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from discofl_p2p.agents.context import RoundRecord
from discofl_p2p.scenario.agent_process import LOSSY_SIGNAL, PARTITION_SIGNAL
from discofl_p2p.scenario.config import FaultsSection

log = structlog.get_logger("discofl.processes")


class _Child(Protocol):
    """An agent process (`processes.AgentProcess`): its name and asyncio process."""

    name: str
    proc: Any

    @property
    def pid(self) -> int: ...


class FaultPlan:
    """Injects the scenario's faults into the run's `children` as their rounds start;
    `done` lists what was injected (what, to whom, when)."""

    def __init__(
        self,
        faults: FaultsSection,
        children: Sequence[_Child],
        started: float,
        *,
        rounds: int = 0,
        restart: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.faults, self.children, self.started = faults, children, started
        self.rounds, self.restart = rounds, restart
        self.done: list[dict[str, Any]] = []
        self.restarting: asyncio.Task[None] | None = None  # the requester's restart, once due

    @property
    def killed(self) -> set[str]:
        return {f["worker"] for f in self.done if f["kind"] == "kill"}

    @property
    def cut_off(self) -> set[str]:
        """The workers a network fault (partition, lossy link) was injected into."""
        return {f["worker"] for f in self.done if f["kind"] in ("partition", "lossy")}

    def excuses(self, name: str, code: int | None) -> bool:
        """Whether a process's failed exit is the fault's doing, not the run's failure:
        the SIGKILL the plan sent (to a worker, or to the requester it restarts), or a
        worker cut off that gave up (excluded)."""
        killed = self.killed | ({"requester"} if self.restarting else set())
        return (name in killed and code == -signal.SIGKILL) or name in self.cut_off

    def on_phase(self, r: int, phase: str) -> None:
        self._restart_requester(r, phase)
        if phase != "submission":
            return
        f = self.faults
        plan: list[tuple[str, str, int, dict[str, Any]]] = [
            *(("kill", n, at, {"signal": "SIGKILL"}) for n, at in f.kill.items()),
            *(("partition", n, p["round"], {"seconds": p["seconds"]}) for n, p in f.partition.items()),
            *(("lossy", n, p["round"], {"delay_ms": p["delay_ms"], "loss": p["loss"]}) for n, p in f.lossy.items()),
        ]
        injected = {(d["kind"], d.get("worker")) for d in self.done}
        for kind, name, at, params in plan:
            child = next((c for c in self.children if c.name == name), None)
            if at != r or child is None or child.proc.returncode is not None or (kind, name) in injected:
                continue
            sig = {"kill": signal.SIGKILL, "partition": PARTITION_SIGNAL, "lossy": LOSSY_SIGNAL}[kind]
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)
            fault = {"kind": kind, "worker": name, "pid": child.pid, "round": r} | params
            fault |= {"phase": phase, "at_s": round(time.monotonic() - self.started, 3)}
            self.done.append(fault)
            log.warning("fault_injected", **fault)

    def _restart_requester(self, r: int, phase: str) -> None:
        spec = self.faults.restart_requester
        if not spec or self.restarting or (spec["round"], spec["phase"]) != (r, phase) or self.restart is None:
            return
        child = next(c for c in self.children if c.name == "requester")
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGKILL)
        fault = {"kind": "restart_requester", "pid": child.pid, "round": r, "phase": phase, "signal": "SIGKILL"}
        fault["at_s"] = round(time.monotonic() - self.started, 3)
        self.done.append(fault)
        log.warning("fault_injected", **fault)
        self.restarting = asyncio.ensure_future(self.restart(fault))

    def report(
        self,
        rounds: dict[int, RoundRecord],
        exits: dict[str, tuple[int | None, str]],
        links: dict[str, dict[str, int]],
        rejected: dict[tuple[str, int], str] | None = None,
    ) -> list[dict[str, Any]]:
        """`done`, each network fault with its outcome (`fault_outcome`; `rejected`:
        why the requester rejected a worker's model in a round, from its log) and what
        it did to the worker's traffic (`links`: counts from its node)."""
        rejected = rejected or {}
        out = []
        for f in self.done:
            if f["kind"] == "kill":
                out.append(f)
            elif f["kind"] == "restart_requester":
                out.append(f | restart_outcome(self.rounds, rounds, *exits["requester"]))
            else:
                w = f["worker"]
                why = {r: reason for (name, r), reason in rejected.items() if name == w}
                out.append(f | fault_outcome(w, f["round"], rounds, *exits[w], why) | {"link": links.get(w, {})})
        return out


def fault_outcome(
    worker: str,
    round_: int,
    rounds: dict[int, RoundRecord],
    code: int | None,
    stderr: str,
    rejected: dict[int, str] | None = None,
) -> dict[str, Any]:
    """ "recovered" when the worker's model is published in every round from `round_`
    on and its process exited normally; otherwise "excluded", with the reasons: per
    round, why its model is missing (the requester's record, or no opening at all;
    with `rejected`, the requester's own words for a model it rejected, e.g. "could
    not fetch ..."), and how its process ended."""
    reasons: dict[str, str] = {}
    for r, rec in rounds.items():
        if r >= round_ and worker not in rec.models:
            why = rec.excluded.get(worker, "no commitment before the submission deadline")
            reasons[f"round {r}"] = f"{why}: {rejected[r]}" if rejected and r in rejected else why
    if code != 0:
        reasons["process"] = f"exited with code {code}" + (f": {stderr}" if stderr else "")
    if not reasons:
        return {"outcome": "recovered"}
    return {"outcome": "excluded", "reasons": reasons}


def restart_outcome(task_rounds: int, rounds: dict[int, RoundRecord], code: int | None, stderr: str) -> dict[str, Any]:
    """ "recovered" when every round of the task was settled (it has a ranking) and the
    restarted requester's process exited normally; otherwise "failed", with reasons."""
    reasons: dict[str, str] = {}
    for r in range(1, task_rounds + 1):
        if r not in rounds or not rounds[r].ranking:
            reasons[f"round {r}"] = "not settled"
    if code != 0:
        reasons["process"] = f"the restarted requester exited with code {code}" + (f": {stderr}" if stderr else "")
    return {"outcome": "failed", "reasons": reasons} if reasons else {"outcome": "recovered"}
