"""Each attack's breakdown fraction per defence and split, from a `bench robustness` run.

    python tools/breakdown_table.py OUT_DIR [--threshold 0.05]

Reads OUT_DIR/results.csv and prints one markdown table per split: a row per attack,
and per defence (aggregation + policy + scoring) the smallest adversary fraction at
which the attack breaks it, by the benchmark's own rule (`metrics.breakdown_point`:
the mean over seeds of the accuracy loss above `threshold`, or the adversaries' mean
reward share above their fraction), with its cause ("acc" or "share"); "-" when the
defence holds at every fraction run. Then, per defence and split, how many attacks
break it at each fraction, and the mean accuracy loss (points) and adversaries' share
over the attacked cells at 1/3, and the mean final accuracy of the all-honest cells
and of the attacked cells at 1/3 (a defence that loses little may start low), and
from the cached cells (OUT_DIR/cells) the mean number of honest workers paid nothing
over the task, in the all-honest cells and in the attacked cells at every fraction.
`summary.md` gives each defence's breakdown point (the worst attack); this shows every
attack's. A "*" marks a breakdown within noise:
the mean over seeds exceeds the bar by less than two standard errors of that mean
(on Dirichlet data a cell's accuracy moves by several points from seed to seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discofl_p2p.bench.robustness.matrix import HONEST, key_prefix
from discofl_p2p.bench.robustness.metrics import breakdown_point


def _fraction(text: str) -> Fraction:
    return Fraction(float(text)).limit_denominator(100)


def _cell_file(cells_dir: Path, r: dict[str, str]) -> Path | None:
    """The cached cell JSON of a results.csv row (its name as `matrix.Cell.key` builds
    it; an all-honest row's cell is the attack "none"), or None if not there."""
    attack = HONEST if float(r["fraction"]) == 0 else r["attack"]
    prefix = key_prefix(attack, r["adversaries"], r["split"], r["aggregation"], r["policy"], r["scoring"], r["seed"])
    found = sorted(cells_dir.glob(f"{prefix}-*.json"))
    return found[0] if len(found) == 1 else None


def _unpaid(path: Path) -> int:
    """How many honest workers of a cell earned nothing over the task."""
    d = json.loads(path.read_text())
    adversaries = set(d["adversaries"])
    return sum(1 for n, v in d["rewards"].items() if n not in adversaries and v == 0)


def _standard_error(xs: list[float]) -> float:
    return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("inf")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--threshold", type=float, default=0.05)
    args = ap.parse_args(argv)
    rows = list(csv.DictReader((args.out_dir / "results.csv").open()))
    # (split, defence, attack, fraction) -> [(loss, share)] over seeds
    cells: dict[tuple[str, str, str, Fraction], list[tuple[float, float]]] = defaultdict(list)
    accuracy: dict[tuple[str, str, Fraction], list[float]] = defaultdict(list)  # over attacks and seeds
    first_attack = min((r["attack"] for r in rows), default="")  # the all-honest cells, written once per attack
    unpaid: dict[tuple[str, str, bool], list[int]] = defaultdict(list)  # (split, defence, attacked)
    for r in rows:
        defence = f"{r['aggregation']}+{r['policy']}+{r['scoring']}"
        loss = float(r["accuracy_loss"]) if r["accuracy_loss"] else 0.0
        share = float(r["adversary_share"]) if r["adversary_share"] else 0.0
        cells[(r["split"], defence, r["attack"], _fraction(r["fraction"]))].append((loss, share))
        if r["final_accuracy"] and (float(r["fraction"]) > 0 or r["attack"] == first_attack):
            accuracy[(r["split"], defence, _fraction(r["fraction"]))].append(float(r["final_accuracy"]))
            if (cell := _cell_file(args.out_dir / "cells", r)) is not None:
                unpaid[(r["split"], defence, float(r["fraction"]) > 0)].append(_unpaid(cell))
    splits = sorted({k[0] for k in cells})
    attacks = sorted({k[2] for k in cells})
    fractions = sorted({k[3] for k in cells})
    mean = {k: (statistics.fmean(v[0] for v in vs), statistics.fmean(v[1] for v in vs)) for k, vs in cells.items()}
    seeds = sorted({len(vs) for vs in cells.values()})
    print(f"{len(rows)} rows; seeds per cell: {seeds}; threshold {args.threshold:g}")
    for split in splits:
        # the defences run on this split (a report of a sweep in progress may hold a
        # defence for one split only)
        defences = sorted({k[1] for k in cells if k[0] == split})
        print(f"\n### {split}: the fraction at which each attack breaks each defence\n")
        print("| attack | " + " | ".join(defences) + " |")
        print("| --- |" + " --- |" * len(defences))
        broken: dict[str, dict[Fraction, int]] = {d: defaultdict(int) for d in defences}
        for attack in attacks:
            out = []
            for d in defences:
                by_fraction = {f: mean[(split, d, attack, f)] for f in fractions if (split, d, attack, f) in mean}
                point = breakdown_point(by_fraction, args.threshold)
                if point is None:
                    out.append("-")
                    continue
                f, why = point
                broken[d][f] += 1
                acc = why.startswith("accuracy")
                seeds_at = [v[0] if acc else v[1] for v in cells[(split, d, attack, f)]]
                bar = args.threshold if acc else float(f)
                noisy = _standard_error(seeds_at) * 2 >= statistics.fmean(seeds_at) - bar
                out.append(f"{f} ({'acc' if acc else 'share'}{'*' if noisy else ''})")
            print(f"| {attack} | " + " | ".join(out) + " |")
        print(f"\n{split}: attacks that first break each defence at each fraction; means over the attacks at 1/3\n")
        print(
            "| defence | "
            + " | ".join(str(f) for f in fractions if f)
            + " | holds | loss at 1/3 | share at 1/3 | accuracy all-honest | accuracy at 1/3"
            + " | honest unpaid, all-honest | honest unpaid, attacked |"
        )
        print("| --- |" + " --- |" * (len(fractions) + 6))
        third = Fraction(1, 3)
        for d in defences:
            at = [mean[(split, d, a, third)] for a in attacks if (split, d, a, third) in mean]
            holds = len(attacks) - sum(broken[d].values())
            loss = f"{100 * statistics.fmean(x[0] for x in at):.2f}" if at else "-"
            share = f"{statistics.fmean(x[1] for x in at):.3f}" if at else "-"
            counts = " | ".join(str(broken[d].get(f, 0)) for f in fractions if f)
            honest, attacked = accuracy[(split, d, Fraction(0))], accuracy[(split, d, third)]
            acc = " | ".join(f"{statistics.fmean(a):.3f}" if a else "-" for a in (honest, attacked))
            idle = " | ".join(
                f"{statistics.fmean(u):.2f}" if (u := unpaid[(split, d, hit)]) else "-" for hit in (False, True)
            )
            print(f"| {d} | {counts} | {holds} | {loss} | {share} | {acc} | {idle} |")


if __name__ == "__main__":
    main()
