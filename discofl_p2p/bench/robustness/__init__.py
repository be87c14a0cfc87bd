"""`discofl-p2p bench robustness`: attack x adversary fraction x data split x defence
(aggregation rule, reward policy, and the contribution scoring rule where the
scenario schema has one), every cell over seeds, each run as a plain loop
(`scenario/plain.py`). docs/robustness.md describes the matrix and every metric.

- `matrix`: the matrix file and the cells it expands to;
- `cell`: one cell's run and metrics; `metrics`: the pure metric functions;
- `sweep`: the cells run once each, cached under DIR/cells/, in N processes;
- `report`: results.csv, the heatmaps and summary.md.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discofl_p2p.bench.robustness.matrix import Cell, MatrixError, builtin, cells, load_matrix
from discofl_p2p.bench.robustness.report import defence_name, heatmaps, rows, summary, write_csv
from discofl_p2p.bench.robustness.sweep import SweepRun, sweep


@dataclass(frozen=True)
class RobustnessRun:
    out: Path
    sweep: SweepRun
    heatmaps: list[Path]


def default_matrix(*, quick: bool = False) -> Path:
    return builtin("quick" if quick else "default")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run_robustness(
    matrix_path: Path,
    out: Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    say: Callable[[str], None] = print,
    cached_only: bool = False,
) -> RobustnessRun:
    """Sweeps the matrix and writes the report. With `cached_only` nothing runs: the
    report covers the defences (per split) whose every cell is in the cache, so that a
    sweep of days can be read while it runs; the others are named as left out."""
    m = load_matrix(matrix_path)
    todo = cells(m)
    for c in todo:
        c.scenario()  # every cell's scenario is valid before anything runs
    out.mkdir(parents=True, exist_ok=True)
    done = sweep(todo, out, jobs=jobs, progress=progress, say=say, cached_only=cached_only)
    reported, left_out = complete_defences(todo, done.results)
    if not reported:
        raise MatrixError(f"{matrix_path}: no defence has all its cells in {out / 'cells'} yet; nothing to report")
    table = rows(reported, done.results)
    write_csv(out / "results.csv", table)
    pngs = heatmaps(out, table)
    text = summary(m, table, computed=done.computed, wall_s=done.wall_s, machine=machine(), left_out=left_out)
    (out / "summary.md").write_text(text)
    return RobustnessRun(out, done, pngs)


def complete_defences(todo: list[Cell], results: dict[str, Any]) -> tuple[list[Cell], list[str]]:
    """The cells of every (split, defence) whose cells all have results, and the names
    of the others ("split: defence (k of n cells)")."""
    groups: dict[tuple[str, tuple[str, str, str]], set[str]] = {}
    for c in todo:
        groups.setdefault((c.split, c.defence), set()).add(c.key)  # a cell shared by attacks counts once
    complete = {group for group, keys in groups.items() if keys <= results.keys()}
    left_out = [
        f"{split}: {defence_name(*defence)} ({len(keys & results.keys())} of {len(keys)} cells)"
        for (split, defence), keys in groups.items()
        if (split, defence) not in complete
    ]
    return [c for c in todo if (c.split, c.defence) in complete], left_out  # in the matrix's order
