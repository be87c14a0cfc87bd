"""Runs a matrix's cells, each once, with a cache: one JSON file per cell and seed
under DIR/cells/, written atomically when the cell ends, so that an interrupted sweep
resumes where it stopped. `jobs` > 1 runs cells in that many processes (spawned; torch
one thread each, as `run_plain` sets)."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from discofl_p2p.bench.robustness.cell import run_cell
from discofl_p2p.bench.robustness.matrix import Cell


@dataclass(frozen=True)
class SweepRun:
    results: dict[str, dict[str, Any]]  # cell key -> its metrics
    computed: int  # cells run now (the others came from the cache)
    wall_s: float  # time spent computing them

    @property
    def cells_per_minute(self) -> float:
        return 60 * self.computed / self.wall_s if self.wall_s > 0 else 0.0


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _cached(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None  # absent, or cut short: run it again


def _store(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, path)


def sweep(
    cells: list[Cell],
    out: Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    say: Callable[[str], None] = print,
    cached_only: bool = False,
) -> SweepRun:
    """Runs every cell not in the cache (none with `cached_only`: the results are then
    the cached cells alone)."""
    cache = out / "cells"
    cache.mkdir(parents=True, exist_ok=True)
    texts = {c.key: c.text for c in cells}  # the fraction-0 cell is shared by every attack
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for key, text in texts.items():
        hit = _cached(cache / f"{key}.json")
        if hit is not None and hit.get("scenario") == text:
            results[key] = hit
        else:
            todo.append(key)
    if cached_only:
        say(f"{len(texts)} cells, {len(texts) - len(todo)} cached; {len(todo)} not run (--cached-only)")
        return SweepRun(results, 0, 0.0)
    say(f"{len(texts)} cells, {len(texts) - len(todo)} cached, {len(todo)} to run with {jobs} job(s)")
    started = time.monotonic()
    columns = (TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("cells", total=len(todo))

        def done(key: str, result: dict[str, Any]) -> None:
            result["scenario"] = texts[key]
            _store(cache / f"{key}.json", result)
            results[key] = result
            bar.advance(task)

        if jobs <= 1:
            _one_thread()
            for key in todo:
                done(key, run_cell(texts[key]))
        else:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread) as pool:
                futures = {pool.submit(run_cell, texts[k]): k for k in todo}
                for f in concurrent.futures.as_completed(futures):
                    done(futures[f], f.result())
    return SweepRun(results, len(todo), time.monotonic() - started)
