"""The overhead of decentralisation at equal parallelism (issue 11 part 6), broken down.

    python tools/overhead.py [SCENARIO] [--out DIR] [--jobs N] [--skip-sequential]

Runs SCENARIO (default scenarios/garbage.toml) three ways in one process, one after
the other: the plain loop one job at a time, the plain loop N jobs at a time (default:
the agents' pool size, one per core), then the full stack (anvil, libp2p, agents) with
its JSON log in DIR/log.jsonl. It prints full / plain (N jobs), the figure whose goal
is <= 1.2, and where the full stack's time beyond the plain loop's goes:

- CPU by cause: the torch jobs (pool threads), the event loop's thread (agents,
  web3, asyncio), the rest of the process (the libp2p trio thread), anvil; against the
  plain loop's jobs. On as many cores as jobs, every CPU second that is not a job's
  is taken from the jobs;
- the jobs by kind: count, wall and CPU seconds, and the time they waited in the pool's
  queue; wall over CPU above 1 is a job waiting for the GIL or a core;
- the pool's occupancy: the seconds with 0, 1, ... N jobs running, and the unused
  parallelism, sum (N - running) dt / N: the wall seconds the pool was not full;
- per round, from log.jsonl's timestamps and the jobs' times: the submission phase
  (round_started -> evaluation_opened), the evaluation phase (-> round_settled), each
  with its jobs and unused parallelism, and the transitions where the pool waits on
  the chain or the network: the last training job's end -> evaluation opened (the
  last model committed, its opening checked, the openEvaluation transaction), evaluation
  opened -> the first evaluation job (the event reaching the workers, the first
  fetch), the last evaluation job -> round settled (score commitments, reveals,
  settleRound), round settled -> the next round's first job.

Each phase also shows the CPU the event loop's thread and the libp2p thread used in it
(sampled from /proc every 0.25 s). Writes DIR/overhead.json with every figure and a
trace (each job's kind, queueing, start, end and CPU; each transaction's function,
account, start and end), from which one round's timeline can be printed. Takes about
3 minutes for garbage.toml on two cores: run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVAL_KINDS = ("decode_and_evaluate", "evaluate_job")


@dataclasses.dataclass(frozen=True)
class Job:
    kind: str
    submitted: float  # epoch seconds
    start: float
    end: float
    cpu: float  # the job's thread CPU seconds


class Jobs:
    """Records every job a function wrapper or pool runs (thread-safe append)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._lock = threading.Lock()

    def timed(self, kind: str, fn: Callable[..., Any], submitted: float | None = None) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start, c0 = time.time(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                job = Job(kind, submitted or start, start, time.time(), time.thread_time() - c0)
                with self._lock:
                    self.jobs.append(job)

        return run


class RecordingPool(concurrent.futures.ThreadPoolExecutor):
    """The agents' CPU pool, recording each job's kind, queueing, wall and CPU time."""

    def __init__(self, max_workers: int, jobs: Jobs) -> None:
        super().__init__(max_workers=max_workers)
        self.record = jobs

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        kind = getattr(fn, "__name__", type(fn).__name__)
        return super().submit(self.record.timed(kind, fn, time.time()), *args, **kwargs)


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (its live and exited threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Cpu:
    """CPU seconds spent during one measured run."""

    process: float = 0.0
    main_thread: float = 0.0
    anvil: float = 0.0

    @classmethod
    @contextlib.contextmanager
    def measure(cls, anvil_pid: int | None) -> Iterator[Cpu]:
        out = cls()
        p0, m0 = _proc_cpu(os.getpid()), time.thread_time()
        a0 = _proc_cpu(anvil_pid) if anvil_pid else 0.0
        try:
            yield out
        finally:
            out.process = _proc_cpu(os.getpid()) - p0
            out.main_thread = time.thread_time() - m0
            out.anvil = (_proc_cpu(anvil_pid) - a0) if anvil_pid else 0.0


class ThreadSampler:
    """Every `every` seconds, each live thread's CPU seconds so far (from /proc), by
    thread name: what the event loop, the libp2p trio thread and the pool threads used
    over time, so that it can be split by phase."""

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self.every):
            names = {t.native_id: t.name for t in threading.enumerate()}
            cpu: dict[str, float] = {}
            for tid, name in names.items():
                try:
                    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                key = "pool" if name.startswith("ThreadPoolExecutor") else name
                cpu[key] = cpu.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
            self.samples.append((time.time(), cpu))

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def used(self, name: str, lo: float, hi: float) -> float:
        """CPU seconds thread `name` used between the samples nearest `lo` and `hi`."""
        inside = [c.get(name, 0.0) for t, c in self.samples if lo - self.every / 2 <= t <= hi + self.every / 2]
        return max(inside) - min(inside) if inside else 0.0


def occupancy(jobs: list[Job], lo: float, hi: float, width: int) -> dict[int, float]:
    """Seconds within [lo, hi] with k jobs running, for each k."""
    marks = sorted([(max(lo, j.start), 1) for j in jobs if j.end > lo and j.start < hi])
    marks += [(min(hi, j.end), -1) for j in jobs if j.end > lo and j.start < hi]
    marks.sort()
    out: dict[int, float] = {}
    running, at = 0, lo
    for t, d in marks:
        out[running] = out.get(running, 0.0) + max(0.0, t - at)
        running, at = running + d, max(at, t)
    out[running] = out.get(running, 0.0) + max(0.0, hi - at)
    return out


def unused(occ: dict[int, float], width: int) -> float:
    """The wall seconds of parallelism left unused: sum (width - running) dt / width."""
    return sum(max(0, width - k) * s for k, s in occ.items()) / width


def by_kind(jobs: list[Job]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for j in jobs:
        k = out.setdefault(j.kind, {"count": 0, "wall_s": 0.0, "cpu_s": 0.0, "queued_s": 0.0})
        k["count"] += 1
        k["wall_s"] += j.end - j.start
        k["cpu_s"] += j.cpu
        k["queued_s"] += j.start - j.submitted
    return out


def _epoch(ts: str) -> float:
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def read_log(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and "timestamp" in ev:
            ev["t"] = _epoch(ev["timestamp"])
            out.append(ev)
    return out


def rounds_breakdown(
    log: list[dict[str, Any]], jobs: list[Job], width: int, started: float, ended: float, threads: ThreadSampler
) -> dict[str, Any]:
    """The full stack's wall time by phase (see the module's docstring)."""

    def at(event: str, r: int, agent: str | None = "requester", last: bool = False) -> float | None:
        ts = [
            e["t"]
            for e in log
            if e["event"] == event and e.get("round") == r and (agent is None or e.get("agent") == agent)
        ]
        return (max(ts) if last else min(ts)) if ts else None

    def window(lo: float, hi: float) -> dict[str, float]:
        occ = occupancy(jobs, lo, hi, width)
        inside = [j for j in jobs if lo <= j.start < hi]
        return {
            "wall_s": hi - lo,
            "job_cpu_s": sum(j.cpu for j in inside),
            "job_wall_s": sum(j.end - j.start for j in inside),
            "unused_s": unused(occ, width),
            "idle_s": occ.get(0, 0.0),
            "event_loop_cpu_s": threads.used("MainThread", lo, hi),
            "libp2p_cpu_s": threads.used("libp2p-trio", lo, hi),
        }

    rounds = sorted({e["round"] for e in log if e["event"] == "round_settled" and e.get("agent") == "requester"})
    out: dict[str, Any] = {"rounds": {}}
    first = at("round_started", rounds[0]) if rounds else None
    if first is not None:
        out["setup"] = window(started, first)
    for r in rounds:
        t0, t1, t2 = at("round_started", r), at("evaluation_opened", r), at("round_settled", r)
        if t0 is None or t1 is None or t2 is None:
            continue
        nxt = at("round_started", r + 1)
        sub = [j for j in jobs if t0 <= j.start < t1]
        evs = [j for j in jobs if t1 <= j.start < t2 and j.kind in EVAL_KINDS]
        trains = [j for j in sub if j.kind == "train_job"]
        rec: dict[str, Any] = {
            "submission": window(t0, t1),
            "evaluation": window(t1, t2),
            "last_train_end_to_opened_s": t1 - max(j.end for j in trains) if trains else None,
            "last_model_committed_to_opened_s": t1 - (at("model_committed", r, None, last=True) or t1),
            "opened_to_first_eval_s": min(j.start for j in evs) - t1 if evs else None,
            "last_eval_to_settled_s": t2 - max(j.end for j in evs) if evs else None,
            "last_eval_to_last_scores_committed_s": (at("scores_committed", r, None, last=True) or t2)
            - (max(j.end for j in evs) if evs else t2),
            "last_scores_committed_to_last_revealed_s": (at("scores_revealed", r, None, last=True) or t2)
            - (at("scores_committed", r, None, last=True) or t2),
            "last_revealed_to_settled_s": t2 - (at("scores_revealed", r, None, last=True) or t2),
        }
        if nxt is not None:
            after = [j for j in jobs if j.start >= t2]
            rec["settled_to_next_first_job_s"] = min(j.start for j in after) - t2 if after else None
        out["rounds"][r] = rec
    if rounds and (t2 := at("round_settled", rounds[-1])) is not None:
        out["end"] = window(t2, ended)
        closed = at("task_closed", rounds[-1])
        out["end"]["settled_to_closed_s"] = (closed - t2) if closed else None
        withdrawn = at("withdrawn", rounds[-1], None, last=True)
        out["end"]["settled_to_last_withdrawn_s"] = (withdrawn - t2) if withdrawn else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", default="scenarios/garbage.toml")
    ap.add_argument("--out", default="out/overhead", help="where log.jsonl and overhead.json go")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="the pool's size (default: one per core)")
    ap.add_argument("--skip-sequential", action="store_true", help="leave out the plain loop one job at a time")
    ap.add_argument("--full-only", action="store_true", help="only the full stack (to look at its breakdown)")
    args = ap.parse_args()

    import structlog

    from discofl_p2p.chain.anvil import Anvil
    from discofl_p2p.chain.client import TaskClient
    from discofl_p2p.commands.scenario import configure_logging
    from discofl_p2p.scenario import plain, runner
    from discofl_p2p.scenario.config import load_scenario

    sc = load_scenario(args.scenario)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width = args.jobs
    figures: dict[str, Any] = {"scenario": args.scenario, "jobs": width}

    with Anvil() as anvil:
        anvil_pid = anvil._proc.pid if anvil._proc else None
        plains = [] if args.full_only else [(f"plain_{width}", width)]
        for label, jobs_n in ([] if args.skip_sequential or args.full_only else [("plain_1", 1)]) + plains:
            rec = Jobs()
            orig = plain.train_job, plain.evaluate_job
            plain.train_job = rec.timed("train_job", orig[0])  # type: ignore[assignment]
            plain.evaluate_job = rec.timed("evaluate_job", orig[1])  # type: ignore[assignment]
            try:
                print(f"plain loop, {jobs_n} job(s) at a time ...", flush=True)
                with Cpu.measure(None) as cpu:
                    t0 = time.time()
                    res = plain.run_plain(sc, jobs=jobs_n)
                    t1 = time.time()
            finally:
                plain.train_job, plain.evaluate_job = orig  # type: ignore[assignment]
            figures[label] = {
                "wall_s": res.wall_s,
                "final_accuracy": res.final_accuracy,
                "cpu": dataclasses.asdict(cpu),
                "jobs": by_kind(rec.jobs),
                "occupancy_s": occupancy(rec.jobs, t0, t1, jobs_n),
                "unused_s": unused(occupancy(rec.jobs, t0, t1, jobs_n), jobs_n),
            }
            print(f"  {res.wall_s:.1f} s, final accuracy {res.final_accuracy}", flush=True)

        rec = Jobs()
        build = runner.build_setup
        txs: list[tuple[str, str, float, float]] = []  # (function, account, start, end)
        transact = TaskClient._transact

        async def timed_transact(self: TaskClient, fn: Any, name: str, **kw: Any) -> Any:
            start = time.time()
            try:
                return await transact(self, fn, name, **kw)
            finally:
                txs.append((name, self.account.address, start, time.time()))

        def recording_setup(s: Any) -> Any:
            setup, w0 = build(s)
            return dataclasses.replace(setup, cpu=RecordingPool(width, rec)), w0

        log_path = out / "log.jsonl"
        print("full stack ...", flush=True)
        with open(log_path, "w") as log_file:
            configure_logging(log_file)
            runner.build_setup = recording_setup  # type: ignore[assignment]
            TaskClient._transact = timed_transact  # type: ignore[method-assign]
            try:
                with Cpu.measure(anvil_pid) as cpu, ThreadSampler() as threads:
                    t0 = time.time()
                    outcome = asyncio.run(runner.run_scenario(sc, anvil.ws_url))
                    t1 = time.time()
            finally:
                runner.build_setup = build  # type: ignore[assignment]
                TaskClient._transact = transact  # type: ignore[method-assign]
                structlog.reset_defaults()
        occ = occupancy(rec.jobs, t0, t1, width)
        figures["full"] = {
            "wall_s": outcome.wall_s,
            "final_accuracy": outcome.final_accuracy,
            "cpu": dataclasses.asdict(cpu),
            "jobs": by_kind(rec.jobs),
            "occupancy_s": occ,
            "unused_s": unused(occ, width),
            "phases": rounds_breakdown(read_log(log_path), rec.jobs, width, t0, t0 + outcome.wall_s, threads),
            "teardown_s": t1 - t0 - outcome.wall_s,
            "transactions": {"count": len(txs), "seconds": sum(b - a for _, _, a, b in txs)},
            "trace": {"jobs": [dataclasses.astuple(j) for j in rec.jobs], "txs": txs},
        }
        print(f"  {outcome.wall_s:.1f} s, final accuracy {outcome.final_accuracy}", flush=True)

    (out / "overhead.json").write_text(json.dumps(figures, indent=1, default=str))
    report(figures, width)
    return 0


def report(f: dict[str, Any], width: int) -> None:
    full, par = f["full"], f.get(f"plain_{width}")
    print()
    if "plain_1" in f:
        print(f"plain loop, 1 job:       {f['plain_1']['wall_s']:6.1f} s")
    if par:
        print(f"plain loop, {width} jobs:      {par['wall_s']:6.1f} s")
    print(f"full stack ({width} jobs):     {full['wall_s']:6.1f} s (then {full['teardown_s']:.1f} s of teardown)")
    if par:
        print(f"full / plain at equal parallelism: {full['wall_s'] / par['wall_s']:.2f} (goal <= 1.2)")
    print()
    for label in ("plain_1", f"plain_{width}", "full"):
        if label not in f:
            continue
        x = f[label]
        cpu = x["cpu"]
        jobs_cpu = sum(k["cpu_s"] for k in x["jobs"].values())
        on_main = label == "plain_1"  # one job at a time runs on the main thread
        loop_cpu = cpu["main_thread"] - (jobs_cpu if on_main else 0)
        rest = cpu["process"] - cpu["main_thread"] - (0 if on_main else jobs_cpu)
        print(
            f"{label:8s} CPU s: jobs {jobs_cpu:6.1f}  event loop {loop_cpu:6.1f}  other threads {rest:6.1f}"
            f"  anvil {cpu['anvil']:5.1f}   pool unused {x['unused_s']:5.1f} s"
        )
        for kind, k in sorted(x["jobs"].items(), key=lambda kv: -kv[1]["wall_s"]):
            print(
                f"    {kind:22s} {int(k['count']):4d} jobs  wall {k['wall_s']:6.1f}  cpu {k['cpu_s']:6.1f}"
                f"  queued {k['queued_s']:6.1f}"
            )
    ph = full["phases"]
    print()
    if "setup" in ph:
        s = ph["setup"]
        print(f"setup (start -> round 1): {_phase(s)}")
    for r, x in ph["rounds"].items():
        sub, ev = x["submission"], x["evaluation"]
        gaps = {key: "-" if v is None else f"{v:.2f}" for key, v in x.items() if not isinstance(v, dict)}
        print(f"round {r}: submission {_phase(sub)}")
        print(f"         evaluation {_phase(ev)}")
        for key, v in gaps.items():
            print(f"    {key:40s} {v:>6s}")
    if "end" in ph:
        e = ph["end"]
        print(f"end: {_phase(e)}")
        closed, withdrawn = e.get("settled_to_closed_s"), e.get("settled_to_last_withdrawn_s")
        print(f"    settled -> task closed {closed}, -> last withdrawn {withdrawn}")


def _phase(w: dict[str, float]) -> str:
    return (
        f"{w['wall_s']:5.1f} s: jobs cpu {w['job_cpu_s']:5.1f}, wall {w['job_wall_s']:5.1f}; pool unused"
        f" {w['unused_s']:4.1f} s; event loop cpu {w['event_loop_cpu_s']:4.1f}, libp2p cpu {w['libp2p_cpu_s']:4.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
