"""Determinism at W workers (issue 8): N full-stack runs and the plain loop of one scenario.

    python tools/determinism.py [--workers W] [--runs N]

The scenario is `tests/test_replay.py`'s two adversarial mixes together (garbage, a
collusion ring sharing CIDs, an ALIE trainer scoring everyone low, a copying free
rider, two Sybil identities, a noisy copy that down-scores the best models, a stealthy
ring of backdoor trainers: 14 workers with their honest ones) plus honest workers up
to W, under proportional rewards. It runs N times on the full stack (fresh tasks on one
anvil chain, libp2p nodes, the agents) and once in the plain loop, then prints per round
whether the model CIDs, scores, contributions, ranking, rewards and exclusions of
every run equal the first's (`bench/robustness/fullstack.differences`), and every
difference. Exit code 1 when anything differs. Takes minutes: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.test_replay's scenario

BASE_WORKERS = 14


def scenario_text(workers: int) -> str:
    from tests.test_replay import ADVERSARIES, NEW_ATTACKS, SMALL

    text = SMALL.format(name=f"determinism-{workers}", top_k=8, policy="proportional") + ADVERSARIES + NEW_ATTACKS
    if workers > BASE_WORKERS:
        text += f'\n[[workers]]\nname = "more"\ncount = {workers - BASE_WORKERS}\n'
    return text


def compare(first: Any, other: Any, label: str) -> list[str]:
    from discofl_p2p.bench.robustness.fullstack import differences

    return [
        f"{label}: " + d.replace("plain ", "first ", 1).replace(" full ", f" {label} ", 1)
        for d in differences(first.rounds, other.rounds, first.final_accuracy, other.final_accuracy)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=18, help=f"at least {BASE_WORKERS} (default 18)")
    ap.add_argument("--runs", type=int, default=2, help="full-stack runs (default 2)")
    args = ap.parse_args()
    if args.workers < BASE_WORKERS or args.runs < 1:
        ap.error(f"--workers must be >= {BASE_WORKERS} and --runs >= 1")

    from discofl_p2p.chain.anvil import Anvil
    from discofl_p2p.scenario.config import parse_scenario
    from discofl_p2p.scenario.plain import run_plain
    from discofl_p2p.scenario.runner import run_scenario

    text = scenario_text(args.workers)
    runs: list[tuple[str, Any]] = []
    with Anvil() as anvil:
        for i in range(1, args.runs + 1):
            t0 = time.monotonic()
            out = asyncio.run(run_scenario(parse_scenario(text), anvil.ws_url))
            print(f"full stack {i}: final accuracy {out.final_accuracy} in {time.monotonic() - t0:.0f} s", flush=True)
            runs.append((f"full {i}", out))
    t0 = time.monotonic()
    plain = run_plain(parse_scenario(text))
    print(f"plain loop: final accuracy {plain.final_accuracy} in {time.monotonic() - t0:.0f} s")
    runs.append(("plain", plain))

    first = runs[0][1]
    diffs = [d for label, out in runs[1:] for d in compare(first, out, label)]
    for r in sorted(first.rounds):
        rec = first.rounds[r]
        same = not any(f"round {r} " in d or f"round {r}:" in d for d in diffs)
        verdict = "all runs equal" if same else "DIFFER"
        print(f"round {r}: {len(rec.models)} models, excluded {sorted(rec.excluded)}: {verdict}")
    for d in diffs:
        print(f"  {d}")
    verdict = "same" if not diffs else "DIFFERENT"
    print(f"{args.workers} workers, {args.runs} full-stack runs and the plain loop: {verdict}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
