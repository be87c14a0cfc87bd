"""`--full-stack-sample N`: N cells of the sweep, drawn at random (seeded), run again on
the full stack (a real anvil chain, libp2p nodes, the agents: `scenario/runner.py`)
and compared round by round with the plain loop, which the sweep trusts for them.

What must agree is what `tests/test_replay.py` proves on three scenarios: per round the
published models' CIDs, scores, contributions, ranking, rewards and exclusions, and
the final accuracy (the published order and salts are secrets that decide nothing,
and are not compared). The CIDs make it bit for bit: a model that differs in its last
bits (an aggregate summed in another order) often keeps every score. Every difference
is reported, field by field; none is expected.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discofl_p2p.bench.robustness.matrix import Cell

FIELDS = ("models", "scores", "contribution", "ranking", "rewards_wei", "excluded")


@dataclass(frozen=True)
class Comparison:
    cell: str  # the cell's cache key
    differences: list[str] = field(default_factory=list)
    full_s: float = 0.0
    plain_s: float = 0.0


def pick(cells: list[Cell], n: int, seed: int = 0) -> list[Cell]:
    """N distinct cells (each scenario once), drawn with a fixed seed so that a rerun
    samples the same ones."""
    unique = list({c.key: c for c in cells}.values())
    return random.Random(seed).sample(unique, min(n, len(unique)))


def differences(plain_rounds: dict[int, Any], full_rounds: dict[int, Any], plain_acc: Any, full_acc: Any) -> list[str]:
    """Each field that differs, as "round R FIELD: plain ... full ..."."""
    out = []
    for r in sorted(set(plain_rounds) | set(full_rounds)):
        p, f = plain_rounds.get(r), full_rounds.get(r)
        if p is None or f is None:
            out.append(f"round {r}: only in {'full stack' if p is None else 'plain loop'}")
            continue
        for name in FIELDS:
            a, b = getattr(p, name), getattr(f, name)
            if name == "excluded":
                a, b = dict(sorted(a.items())), dict(sorted(b.items()))
            if a != b and name == "models":
                who = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
                out.append(f"round {r} models: the CIDs of {', '.join(who)} differ")
            elif a != b:
                out.append(f"round {r} {name}: plain {a} full {b}")
    if plain_acc != full_acc:
        out.append(f"final accuracy: plain {plain_acc} full {full_acc}")
    return out


def compare_on_full_stack(sample: list[Cell], out: Path, *, say: Callable[[str], None] = print) -> list[Comparison]:
    """Runs each sampled cell on a fresh task of one anvil chain and in the plain loop;
    writes DIR/full-stack-sample.json and returns the comparisons."""
    from discofl_p2p.chain.anvil import Anvil
    from discofl_p2p.scenario.plain import run_plain
    from discofl_p2p.scenario.runner import run_scenario

    results = []
    with Anvil() as anvil:
        for i, c in enumerate(sample, 1):
            sc = c.scenario()
            t0 = time.monotonic()
            full = asyncio.run(run_scenario(sc, anvil.ws_url))
            t1 = time.monotonic()
            plain = run_plain(sc)
            t2 = time.monotonic()
            diff = differences(plain.rounds, full.rounds, plain.final_accuracy, full.final_accuracy)
            results.append(Comparison(c.key, diff, t1 - t0, t2 - t1))
            verdict = "same" if not diff else f"{len(diff)} difference(s)"
            say(f"full stack {i}/{len(sample)} {c.key}: {verdict} (full {t1 - t0:.0f} s, plain {t2 - t1:.1f} s)")
            for d in diff:
                say(f"  {d}")
    (out / "full-stack-sample.json").write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str) + "\n")
    return results
