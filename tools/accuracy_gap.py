"""The final model against central training on the same digits (issue 9).

    python tools/accuracy_gap.py central SCENARIO EPOCHS[,EPOCHS...] [--honest-only] [--lr-decay D]
    python tools/accuracy_gap.py federated SCENARIO [section.key=value ...]

`central` trains the scenario's model from its w0 on the union of the workers'
training indices (or only the honest workers' with --honest-only), with the
scenario's optimiser settings, and prints the accuracy on the task's held-out test
set. `federated` runs the scenario through the plain loop (`run_plain`, equal to the
full stack), with [task]/[model] keys overridden (e.g. task.norm_bound=2.0), and
prints the final model's accuracy on the same test set. One torch thread, as the
agents' jobs use.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from discofl_p2p.ml.models import build_model
from discofl_p2p.ml.training import TrainConfig, evaluate, train
from discofl_p2p.scenario.config import Scenario, load_scenario
from discofl_p2p.scenario.plain import run_plain
from discofl_p2p.scenario.runner import build_setup


def override(sc: Scenario, assignments: list[str]) -> Scenario:
    """`section.key=value` (value as the field's type) for [task] and [model] keys."""
    for a in assignments:
        key, value = a.split("=", 1)
        section, name = key.split(".")
        part = getattr(sc, section)
        typ = type(getattr(part, name))
        sc = dataclasses.replace(sc, **{section: dataclasses.replace(part, **{name: typ(value)})})
    return sc


def central(sc: Scenario, epochs: list[int], honest_only: bool, lr_decay: float | None) -> None:
    ctx, _ = build_setup(sc)
    kinds = [g.behavior for g in sc.workers for _ in range(g.count)]
    idx = torch.cat([w.train for w, k in zip(ctx.partition.workers, kinds) if k == "honest" or not honest_only])
    for n in epochs:
        model = build_model(sc.model.name, seed=sc.task.seed)
        cfg = TrainConfig(
            epochs=n,
            batch_size=sc.model.batch_size,
            lr=sc.model.lr,
            lr_decay=sc.model.lr_decay if lr_decay is None else lr_decay,
            optimizer=sc.model.optimizer,
        )
        started = time.monotonic()
        train(model, ctx.data, idx, cfg, seed=0)
        acc = evaluate(model, ctx.data, ctx.partition.test)
        print(
            f"central: {len(idx)} digits, {n} epochs, lr_decay {cfg.lr_decay}: test accuracy {acc:.4f} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["central", "federated"])
    ap.add_argument("scenario")
    ap.add_argument("rest", nargs="*", help="central: EPOCHS[,EPOCHS]; federated: section.key=value overrides")
    ap.add_argument("--honest-only", action="store_true")
    ap.add_argument("--lr-decay", type=float)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sc = load_scenario(args.scenario)
    if args.mode == "central":
        central(sc, [int(e) for e in args.rest[0].split(",")], args.honest_only, args.lr_decay)
        return
    sc = override(sc, args.rest)
    started = time.monotonic()
    out = run_plain(sc)
    print(f"federated {args.scenario} {' '.join(args.rest)}: final test accuracy {out.final_accuracy:.4f} "
          f"({time.monotonic() - started:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
