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

from discofl_p2p.bench.robustness.matrix import builtin, cells, load_matrix
from discofl_p2p.bench.robustness.report import heatmaps, rows, summary, write_csv
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
    matrix_path: Path, out: Path, *, jobs: int = 1, progress: bool = True, say: Callable[[str], None] = print
) -> RobustnessRun:
    m = load_matrix(matrix_path)
    todo = cells(m)
    for c in todo:
        c.scenario()  # every cell's scenario is valid before anything runs
    out.mkdir(parents=True, exist_ok=True)
    done = sweep(todo, out, jobs=jobs, progress=progress, say=say)
    table = rows(todo, done.results)
    write_csv(out / "results.csv", table)
    pngs = heatmaps(out, table)
    text = summary(m, table, computed=done.computed, wall_s=done.wall_s, machine=machine())
    (out / "summary.md").write_text(text)
    return RobustnessRun(out, done, pngs)
