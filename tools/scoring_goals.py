"""Issue 9's goals per scoring rule, from the cells of one or more `bench robustness` runs.

    python tools/scoring_goals.py OUT_DIR [OUT_DIR ...]

Reads every cell's JSON (`OUT_DIR/cells/*.json`: its scenario text, rewards, marginal
contributions, final accuracy) and prints, per split and scoring rule, each attacked
cell against the goals: final accuracy within 1 point of the all-honest cell of the
same split, rule and seed; adversaries' reward share <= 1 %; honest rewards' Spearman
with marginal contribution >= 0.6; no honest worker paid nothing (every worker holds
the same number of samples in these matrices, so that is the issue's "no honest worker
with at least the median number of samples earns nothing"). Then the breakdown
fraction per attack and rule: the smallest adversary fraction at which the accuracy or
the share goal fails ("-": it holds at every fraction run; "not run": no such cell), the number of cells in
which each rule meets all four goals, and per rule the means over its attacked cells
(accuracy loss, adversary share, honest workers unpaid), the figures that compare
rules run on the same cells (every rule of `SCORING_RULES` found, `anchored` included).
"""

from __future__ import annotations

import json
import statistics
import sys
import tomllib
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

from discofl_p2p.trust.scoring import DEFAULT_SCORING

ACC_POINTS, SHARE, RHO = 1.0, 0.01, 0.6


def describe(cell: dict[str, Any]) -> tuple[str, str, str, Fraction, int]:
    """(split, rule, attack, adversary fraction, seed) of one cell, from its scenario."""
    sc = tomllib.loads(cell["scenario"])
    split = sc["data"].get("split", "iid")
    if split == "dirichlet":
        split = f"dirichlet({sc['data'].get('alpha', 0.5)})"
    groups = sc["workers"]
    total = sum(g["count"] for g in groups)
    adv = [g for g in groups if g["name"] != "honest"]
    attack = "none"
    if adv:
        g = adv[0]
        attack = next((g[k] for k in ("train", "score", "participation") if k in g), g.get("behavior", "?"))
    count = sum(g["count"] for g in adv)
    return split, sc["task"].get("scoring", DEFAULT_SCORING), attack, Fraction(count, total), sc["task"]["seed"]


def main(dirs: list[str]) -> None:
    cells: dict[tuple[str, str, str, Fraction, int], dict[str, Any]] = {}
    for d in dirs:
        for f in sorted(Path(d, "cells").glob("*.json")):
            cell = json.loads(f.read_text())
            cells[describe(cell)] = cell
    rows: dict[tuple[str, str, str, Fraction], list[dict[str, Any]]] = defaultdict(list)
    for (split, rule, attack, frac, seed), cell in cells.items():
        if attack == "none":
            continue
        ref = cells.get((split, rule, "none", Fraction(0), seed))
        if ref is None or cell["final_accuracy"] is None or ref["final_accuracy"] is None:
            continue
        honest = [n for n in cell["rewards"] if n not in set(cell["adversaries"])]
        rho = cell["fairness_spearman"]
        rows[(split, rule, attack, frac)].append(
            {
                "loss": 100 * (ref["final_accuracy"] - cell["final_accuracy"]),
                "share": cell["adversary_share"],
                "rho": rho,
                "unpaid": sum(1 for n in honest if cell["rewards"][n] == 0),
            }
        )
    rules = sorted({k[1] for k in rows})
    met: dict[str, list[int]] = {r: [0, 0] for r in rules}
    broken: dict[tuple[str, str, str], Fraction] = {}  # the accuracy goal or the share goal fails
    paid: dict[tuple[str, str, str], Fraction] = {}  # the share goal alone fails
    print("| split | rule | attack | fraction | accuracy loss (points) | adversary share | Spearman | honest unpaid |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(rows, key=lambda k: (k[0], k[2], k[3], k[1])):
        split, rule, attack, frac = key
        rs = rows[key]
        loss = statistics.mean(r["loss"] for r in rs)
        share = statistics.mean(r["share"] for r in rs)
        rhos = [r["rho"] for r in rs if r["rho"] is not None]
        rho = statistics.mean(rhos) if rhos else None
        unpaid = max(r["unpaid"] for r in rs)
        ok = loss <= ACC_POINTS and share <= SHARE and rho is not None and rho >= RHO and unpaid == 0
        met[rule][0] += ok
        met[rule][1] += 1
        if (loss > ACC_POINTS or share > SHARE) and (split, rule, attack) not in broken:
            broken[(split, rule, attack)] = frac
        if share > SHARE and (split, rule, attack) not in paid:
            paid[(split, rule, attack)] = frac
        rho_s = "" if rho is None else f"{rho:.2f}"
        print(f"| {split} | {rule} | {attack} | {frac} | {loss:.1f} | {share:.3f} | {rho_s} | {unpaid} |")
    print()
    attacks = sorted({k[2] for k in rows})
    splits = sorted({k[0] for k in rows})
    run_ = {(k[0], k[1], k[2]) for k in rows}
    for title, table in (
        ("Breakdown fraction per attack (accuracy loss > 1 point or adversary share > 1 %)", broken),
        ("Reward breakdown fraction per attack (adversary share > 1 %)", paid),
    ):
        print(f"{title}; '-': holds at every fraction run, 'not run': no such cell:")
        print()
        print("| split | attack | " + " | ".join(rules) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in rules) + " |")
        for split in splits:
            for attack in attacks:
                cols = [
                    str(table.get((split, r, attack), "-")) if (split, r, attack) in run_ else "not run" for r in rules
                ]
                print(f"| {split} | {attack} | " + " | ".join(cols) + " |")
        print()
    for r in rules:
        print(f"{r}: all four goals met in {met[r][0]} of {met[r][1]} attacked cells")
    print()
    for r in rules:
        cells_r = [x for k, rs in rows.items() if k[1] == r for x in rs]
        print(
            f"{r}: over {len(cells_r)} attacked cells, mean accuracy loss "
            f"{statistics.mean(x['loss'] for x in cells_r):.2f} points, mean adversary share "
            f"{statistics.mean(x['share'] for x in cells_r):.3f}, honest unpaid per cell "
            f"{statistics.mean(x['unpaid'] for x in cells_r):.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
