"""Runs one scenario with one OS process per agent (`scenario FILE --processes`, `up`).

The parent plays what stands outside the task on a real deployment, and nothing else:
the dev chain's faucet (it funds each account, as `assemble` does) and the operator
who hands each participant its key files, the scenario, and the addresses it needs.
Each agent is `discofl-p2p requester` or `discofl-p2p worker` in its own process:

1. the requester deploys the task for the roster's addresses and prints its contract
   and multiaddr (its first stdout line);
2. each worker starts with that contract and that multiaddr (`--bootstrap`), the
   multiaddrs of the workers before it (`--peer`, so the overlay is a full mesh; in
   process it is a hub and ring, `P2PNetwork.connect_hub`) and its ring mates'
   (`--ring-peer`), on a port chosen beforehand;
3. the parent follows the requester's phase lines (the progress display), waits until
   every process has exited, reads their records (JSON) and the chain, and returns the
   same `RunOutcome` as `run_scenario`, with each worker's pid.

Keys are the ones the in-process runner derives from the seed (`derive_account`,
`key_seed`), written under DIR/keys/ (0600), so a seed replays the same accounts and
peer ids in both modes.

Logs: each process writes its own JSON log, DIR/logs/NAME.jsonl (and its stderr to
NAME.err). When the run ends the parent merges them into DIR/log.jsonl by timestamp
(`merge_logs`), after its own lines, and ends the file with a `logs_merged` line; so
the timeline is rebuilt from log.jsonl alone, as in process.

The requester keeps its own state under DIR/store/requester (`--store`) and listens
on a port chosen beforehand, so that `[faults] restart_requester` can kill it and start
it again with `--resume`, the same keys and the same port: workers find it where it
was, and it carries on from the chain's events and its store. Its log goes on in the
same file.

Stopping (`stop` set: SIGINT, the scenario's timeout, a failed process): the workers
get SIGTERM first, then the requester; each writes its records and exits; one that has
not exited after `grace_s` gets SIGKILL. Every child runs in its own session (a
terminal's Ctrl-C reaches the parent only, which stops them in this order) and stops
by itself if the parent dies (`--stop-with-parent`). No child outlives `run_processes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog
from libp2p.peer.id import ID

from discofl_p2p.agents.context import RoundRecord
from discofl_p2p.chain.anvil import free_port
from discofl_p2p.chain.client import TaskClient, connect
from discofl_p2p.chain.devchain import derive_account, fund
from discofl_p2p.chain.limits import FUNDING_WEI
from discofl_p2p.p2p.node import key_from_seed, key_seed
from discofl_p2p.scenario.agent_process import unless_stopped
from discofl_p2p.scenario.config import Scenario
from discofl_p2p.scenario.faultplan import FaultPlan
from discofl_p2p.scenario.records import RecordsError, merge_rounds, read_records
from discofl_p2p.scenario.runner import (
    RunOutcome,
    RunTimedOut,
    WorkerInfo,
    build_behaviours,
    data_partition,
    rewards_from_chain,
    worker_names,
)

log = structlog.get_logger("discofl.processes")

START_TIMEOUT_S = 120.0
"""How long the requester may take to deploy the task (imports, data, w0) before the
run is declared failed, and how long it waits for every worker process to register
(each imports torch and loads its data first: slow on a loaded machine)."""


class ProcessFailed(RuntimeError):
    """An agent process exited with an error; the message names it and quotes its stderr."""


class RunInterrupted(RuntimeError):
    """The run was stopped (SIGINT) before the task closed; every process is gone."""


@dataclass
class AgentProcess:
    """One child: its process and where its files are."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    err: Path
    records: Path
    _err_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            text = self.err.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


@dataclass
class ProcessRun:
    """The children of one run, in start order (the requester first)."""

    out: Path
    children: list[AgentProcess] = field(default_factory=list)
    _reported: set[int] = field(default_factory=set)  # pids

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.children}

    async def spawn(
        self, name: str, args: list[str], *, stdout_pipe: bool = False, replacing: AgentProcess | None = None
    ) -> AgentProcess:
        """Starts a child; `replacing` one that was killed, in its place (its log and
        stderr files go on)."""
        logs = self.out / "logs"
        child_log, err, records = logs / f"{name}.jsonl", logs / f"{name}.err", self.out / "records" / f"{name}.json"
        err_file = open(err, "ab" if replacing else "wb")  # noqa: SIM115 - closed in stop()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "discofl_p2p",
            *args,
            "--log",
            str(child_log),
            "--records",
            str(records),
            "--stop-with-parent",
            str(os.getpid()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else asyncio.subprocess.DEVNULL,
            stderr=err_file,
            start_new_session=True,  # Ctrl-C reaches the parent only; it stops them in order
        )
        child = AgentProcess(name, proc, child_log, err, records, err_file)
        if replacing is None:
            self.children.append(child)
        else:
            self.children[self.children.index(replacing)] = child
            if replacing._err_file:
                replacing._err_file.close()
        log.info("process_started", agent=name, pid=proc.pid, log=str(child_log))
        return child

    async def stop(self, grace_s: float = 10.0) -> None:
        """Workers first, then the requester: SIGTERM, then SIGKILL after `grace_s`."""
        for group in (self.children[1:], self.children[:1]):
            for c in group:
                if c.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        c.proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*(self._reap(c, grace_s) for c in group))
        for c in self.children:
            if c._err_file:
                c._err_file.close()

    def report(self, c: AgentProcess) -> None:
        """Logs a child's exit once (its code; negative: the signal that ended it)."""
        if c.pid not in self._reported and c.proc.returncode is not None:
            self._reported.add(c.pid)
            log.info("process_exited", agent=c.name, pid=c.pid, code=c.proc.returncode)

    async def _reap(self, c: AgentProcess, grace_s: float) -> None:
        try:
            await asyncio.wait_for(c.proc.wait(), grace_s)
        except TimeoutError:
            log.warning("process_killed", agent=c.name, pid=c.pid, reason=f"no exit {grace_s:g} s after SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
            await c.proc.wait()
        self.report(c)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _peer_id(seed: int, label: str) -> str:
    return ID.from_pubkey(key_from_seed(seed, label).public_key).to_base58()


async def _first_line(child: AgentProcess, key: str, timeout_s: float) -> dict[str, Any]:
    """The child's first stdout line holding `key`; ProcessFailed if it exits first."""
    assert child.proc.stdout is not None
    try:
        async with asyncio.timeout(timeout_s):
            while line := await child.proc.stdout.readline():
                with contextlib.suppress(ValueError):
                    fact = json.loads(line)
                    if isinstance(fact, dict) and key in fact:
                        return fact
    except TimeoutError:
        raise ProcessFailed(f"{child.name} did not start within {timeout_s:g} s: {child.stderr_tail()}") from None
    await child.proc.wait()
    raise ProcessFailed(f"{child.name} exited with code {child.proc.returncode}: {child.stderr_tail()}")


async def _follow_phases(child: AgentProcess, on_phase: Callable[[int, str], None]) -> None:
    assert child.proc.stdout is not None
    while line := await child.proc.stdout.readline():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            fact = json.loads(line)
            on_phase(int(fact["round"]), str(fact["phase"]))


async def run_processes(
    sc: Scenario,
    scenario_file: Path,
    ws_url: str,
    out: Path,
    *,
    on_phase: Callable[[int, str], None] | None = None,
    stop: asyncio.Event | None = None,
    grace_s: float = 10.0,
) -> RunOutcome:
    """Runs `sc` (read from `scenario_file`) with one process per agent on the chain
    at `ws_url`, writing keys, logs and records under `out`. Raises RunTimedOut past
    the scenario's timeout, RunInterrupted when `stop` is set first, ProcessFailed
    when an agent process fails; in every case after every child has exited."""
    started = time.monotonic()
    stop = stop or asyncio.Event()
    seed, task_id = sc.task.seed, f"{sc.task.name}-{sc.task.seed}"
    roster = worker_names(sc)
    for sub in ("keys", "logs", "records"):
        (out / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    req_acct = derive_account(seed, f"{task_id}/requester")
    accts = {name: derive_account(seed, f"{task_id}/{name}") for name, _, _ in roster}
    for label, acct in [("requester", req_acct), *accts.items()]:
        _write_secret(out / "keys" / f"{label}.key", acct.key.hex().encode())
        _write_secret(out / "keys" / f"{label}.node", key_seed(seed, f"{task_id}/{label}"))
    workers_file = out / "keys" / "workers.json"
    workers_file.write_text(json.dumps({n: a.address for n, a in accts.items()}))

    w3 = await connect(ws_url)
    run = ProcessRun(out)
    phases: asyncio.Task[None] | None = None
    try:
        await fund(w3, req_acct.address, sc.task.deposit_wei + FUNDING_WEI)
        await asyncio.gather(*(fund(w3, a.address, FUNDING_WEI) for a in accts.values()))
        common = ["--rpc-url", ws_url, "--scenario", str(scenario_file), "--seed", str(seed)]

        def keys(label: str) -> list[str]:
            return ["--key", str(out / "keys" / f"{label}.key"), "--node-key", str(out / "keys" / f"{label}.node")]

        requester_args = ["requester", *common, *keys("requester"), "--workers", str(workers_file)]
        requester_args += ["--registration-timeout", f"{START_TIMEOUT_S:g}", "--port", str(free_port())]
        requester_args += ["--store", str(out / "store" / "requester")]
        requester = await run.spawn("requester", requester_args, stdout_pipe=True)
        up, deployed = await unless_stopped(_first_line(requester, "contract", START_TIMEOUT_S), stop)
        if not up or deployed is None:
            raise RunInterrupted("stopped before the task was deployed")
        contract, bootstrap = deployed["contract"], deployed["multiaddr"]
        log.info("task_joined", contract=contract, requester=bootstrap)
        followers: list[asyncio.Task[None]] = []

        async def restart(fault: dict[str, Any]) -> None:
            """The requester was killed: start it again from its store, in its place."""
            old = next(c for c in run.children if c.name == "requester")
            await old.proc.wait()
            run.report(old)
            new = await run.spawn("requester", [*requester_args, "--resume"], stdout_pipe=True, replacing=old)
            back = await _first_line(new, "contract", START_TIMEOUT_S)
            if back["contract"] != contract:
                raise ProcessFailed(f"the restarted requester runs {back['contract']}, not {contract}")
            fault |= {"new_pid": new.pid, "back_s": round(time.monotonic() - started - fault["at_s"], 3)}
            log.warning("requester_restarted", **fault)
            followers.append(asyncio.create_task(_follow_phases(new, phase)))

        faults = FaultPlan(sc.faults, run.children, started, rounds=sc.task.rounds, restart=restart)

        def phase(r: int, name: str) -> None:
            faults.on_phase(r, name)
            if on_phase:
                on_phase(r, name)

        phases = asyncio.create_task(_follow_phases(requester, phase))
        followers.append(phases)

        ports = {name: free_port() for name, _, _ in roster}
        addr = {n: f"/ip4/127.0.0.1/tcp/{ports[n]}/p2p/{_peer_id(seed, f'{task_id}/{n}')}" for n, _, _ in roster}
        behaviours = build_behaviours(sc)
        for i, (name, _, _) in enumerate(roster):
            ring = behaviours[name].ring
            mates = [addr[n] for n, _, _ in roster if n != name and ring is not None and behaviours[n].ring == ring]
            args = ["worker", *common, *keys(name), "--contract", contract, "--bootstrap", bootstrap]
            args += ["--name", name, "--port", str(ports[name])]
            for n, _, _ in roster[:i]:
                if addr[n] not in mates:
                    args += ["--peer", addr[n]]
            for m in mates:
                args += ["--ring-peer", m]
            await run.spawn(name, args)

        await _supervise(run, sc, stop, faults)
        outcome = await _outcome(sc, run, w3, ws_url, contract, req_acct, accts, started, faults.killed)
        codes = {c.name: (c.proc.returncode, c.stderr_tail()) for c in run.children}
        links = {c.name: _link_counts(c) for c in run.children if c.name in faults.cut_off}
        outcome.faults = faults.report(outcome.rounds, codes, links, _rejections(requester.log))
        for f in outcome.faults:
            if f["kind"] == "restart_requester":
                f["resumed"] = _resumed(requester.log)
        return outcome
    finally:
        if phases is not None:
            for t in followers:
                t.cancel()
        await run.stop(grace_s)
        await w3.provider.disconnect()
        merge_logs(out, [c.log for c in run.children])


async def _supervise(run: ProcessRun, sc: Scenario, stop: asyncio.Event, faults: FaultPlan) -> None:
    """Waits until every child has exited by itself; raises (and leaves the stopping
    to the caller) on the scenario's timeout, on `stop`, or when a child fails (a
    child the fault plan killed, or cut off and that gave up, has not failed)."""
    waits: dict[asyncio.Future[int], AgentProcess] = {}
    watched: set[int] = set()  # pids
    stopper = asyncio.ensure_future(stop.wait())
    deadline = time.monotonic() + sc.timeout_s
    try:
        while True:
            for c in run.children:  # a restarted requester replaces the killed one
                if c.pid not in watched:
                    watched.add(c.pid)
                    waits[asyncio.ensure_future(c.proc.wait())] = c
            restarting = faults.restarting if faults.restarting and not faults.restarting.done() else None
            if not waits and restarting is None:
                break
            if faults.restarting and faults.restarting.done():
                faults.restarting.result()  # a failed restart fails the run
            pending: set[asyncio.Future[Any]] = {*waits, stopper}
            if restarting:
                pending.add(restarting)
            done, _ = await asyncio.wait(
                pending, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
            if stopper in done:
                raise RunInterrupted("stopped before the task closed")
            if not done:
                raise RunTimedOut(f"the task did not finish within timeout_s = {sc.timeout_s} s")
            for w in [w for w in waits if w in done]:
                c = waits.pop(w)
                run.report(c)
                if c.proc.returncode != 0 and not faults.excuses(c.name, c.proc.returncode):
                    raise ProcessFailed(
                        f"{c.name} (pid {c.pid}) exited with code {c.proc.returncode}: {c.stderr_tail()}"
                    )
    finally:
        stopper.cancel()
        for w in waits:
            w.cancel()


async def _outcome(
    sc: Scenario,
    run: ProcessRun,
    w3: Any,
    ws_url: str,
    contract: str,
    req_acct: Any,
    accts: dict[str, Any],
    started: float,
    killed: set[str],
) -> RunOutcome:
    """The run's outcome from the children's records and the chain, as in process. A
    killed worker left no records: its rows (its gas) are missing, nothing else."""
    parts: list[dict[int, RoundRecord]] = []
    facts: dict[str, dict[str, Any]] = {}
    for c in run.children:
        if c.name in killed:
            continue
        try:
            data = read_records(c.records)
        except RecordsError as e:
            if c.proc.returncode != 0 and c.name in sc.faults.partition.keys() | sc.faults.lossy.keys():
                continue  # a worker cut off that gave up: excluded, as a killed one
            raise ProcessFailed(f"{c.name} left no records: {e}") from None
        parts.append(data["rounds"])
        facts[c.name] = data
    client = TaskClient(w3, contract, req_acct, ws_url=ws_url)
    names = {a.address: n for n, a in accts.items()}
    st = await client.state()
    task_id = f"{sc.task.name}-{sc.task.seed}"
    code = {c.name: c.proc.returncode for c in run.children}
    _, part = data_partition(sc)
    infos = [
        WorkerInfo(
            n,
            accts[n].address,
            b,
            _peer_id(sc.task.seed, f"{task_id}/{n}"),
            n.rsplit("-", 1)[0],
            len(part.workers[i].train),
            run.pids[n],
            code[n],
        )
        for i, (n, b, _) in enumerate(worker_names(sc))
    ]
    return RunOutcome(
        scenario=sc,
        contract=client.address,
        chain_id=await w3.eth.chain_id,
        deposit_wei=sc.task.deposit_wei,
        workers=infos,
        rounds=merge_rounds(parts),
        final_accuracy=facts["requester"].get("final_accuracy"),
        rewards_wei=await rewards_from_chain(client, names),
        refunded_wei=st.refunded,
        held_wei=st.held,
        wall_s=time.monotonic() - started,
        one_process_per_agent=True,
    )


def _link_counts(c: AgentProcess) -> dict[str, int]:
    """What the injected link faults did to the worker's traffic, from its records."""
    with contextlib.suppress(RecordsError):
        counts = read_records(c.records).get("link_faults")
        if isinstance(counts, dict):
            return {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}
    return {}


def _resumed(path: Path) -> dict[str, Any]:
    """What the restarted requester found when it resumed (its `requester_resumed`
    log line): the round and phase it took up, the rounds already settled, how many
    past events it replayed."""
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and ev.get("event") == "requester_resumed":
                    return {k: ev.get(k) for k in ("round", "phase", "settled", "events", "block")}
    return {}


def _rejections(path: Path) -> dict[tuple[str, int], str]:
    """(worker, round) -> why the requester rejected its model, from the requester's
    log (`model_rejected`): the detail behind "model failed the checks against w0"."""
    out: dict[tuple[str, int], str] = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError, TypeError):
                ev = json.loads(line)
                if isinstance(ev, dict) and ev.get("event") == "model_rejected":
                    out[(str(ev.get("worker")), int(ev.get("round", 0)))] = str(ev.get("reason"))
    return out


def merge_logs(out: Path, logs: list[Path]) -> int:
    """Appends the processes' JSON log lines to out/log.jsonl in timestamp order (each
    tagged with its `process`), then a `logs_merged` line naming the files; returns
    the number of lines merged. Lines that are not JSON objects are skipped."""
    lines: list[tuple[str, int, dict[str, Any]]] = []
    for i, path in enumerate(logs):
        with contextlib.suppress(OSError), open(path) as f:
            for text in f:
                with contextlib.suppress(ValueError):
                    ev = json.loads(text)
                    if isinstance(ev, dict):
                        lines.append((str(ev.get("timestamp", "")), i, ev | {"process": path.stem}))
    lines.sort(key=lambda t: (t[0], t[1]))
    with open(out / "log.jsonl", "a") as f:
        for _, _, ev in lines:
            f.write(json.dumps(ev) + "\n")
        f.write(json.dumps({"event": "logs_merged", "files": [str(p.relative_to(out)) for p in logs]}) + "\n")
    return len(lines)
