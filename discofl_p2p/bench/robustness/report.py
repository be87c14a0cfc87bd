"""What a sweep writes: results.csv (one row per cell and seed), one heatmap per
defence (fraction x attack, for each split), and summary.md (each defence's breakdown
point, and the means ± std over seeds)."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from discofl_p2p.bench.robustness.matrix import HONEST, Cell, Matrix
from discofl_p2p.bench.robustness.metrics import breakdown_point

COLUMNS = ["attack", "fraction", "adversaries", "split", "scoring", "aggregation", "policy", "seed",
           "final_accuracy", "accuracy_loss", "adversary_share", "attack_success", "fairness_spearman", "gini",
           "ring_guess_rate", "wall_s"]  # fmt: skip


def rows(cells: list[Cell], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell and seed. Accuracy loss is against the all-honest cell of the
    same split, defence and seed; the all-honest cell is written once per attack (its
    fraction-0 point), with attack "none" when the matrix has one attack or none."""
    honest = {(c.split, c.defence, c.seed): results[c.key] for c in cells if c.attack == HONEST}
    attacks = sorted({c.attack for c in cells if c.attack != HONEST}) or [HONEST]
    out = []
    for c in cells:
        r = results[c.key]
        ref = honest[(c.split, c.defence, c.seed)]["final_accuracy"]
        acc = r["final_accuracy"]
        row = {
            "fraction": float(c.fraction),
            "adversaries": c.adversaries,
            "split": c.split,
            "scoring": c.scoring,
            "aggregation": c.aggregation,
            "policy": c.policy,
            "seed": c.seed,
            "final_accuracy": _num(acc),
            "accuracy_loss": _num(ref - acc if acc is not None and ref is not None else None),
            "adversary_share": _num(r["adversary_share"]),
            "attack_success": _num(r["attack_success"]),
            "fairness_spearman": _num(r["fairness_spearman"]),
            "gini": _num(r["gini"]),
            "ring_guess_rate": _num(r.get("ring_guess_rate")),
            "wall_s": round(r["wall_s"], 2),
        }
        for attack in attacks if c.attack == HONEST else [c.attack]:
            out.append({"attack": attack, **row})
    return out


def _num(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def write_csv(path: Path, table: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for r in table:
            w.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})


def _label(f: float) -> str:
    return str(Fraction(f).limit_denominator(100))


def _mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    vs = [v for v in values if v is not None]
    if not vs:
        return math.nan, math.nan
    return statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else 0.0


Group = dict[tuple[Any, ...], list[dict[str, Any]]]


def _group(table: list[dict[str, Any]], *keys: str) -> Group:
    g: Group = defaultdict(list)
    for r in table:
        g[tuple(r[k] for k in keys)].append(r)
    return g


def defence_name(aggregation: str, policy: str, scoring: str) -> str:
    return " + ".join(x for x in (aggregation, policy, scoring) if x)


def heatmaps(out: Path, table: list[dict[str, Any]]) -> list[Path]:
    """One PNG per defence: rows accuracy loss and adversary share, one column per
    split; each panel fraction (x) by attack (y), the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for (agg, policy, scoring), part in sorted(_group(table, "aggregation", "policy", "scoring").items()):
        splits = sorted({r["split"] for r in part})
        attacks = sorted({r["attack"] for r in part})
        fractions = sorted({r["fraction"] for r in part})
        cells = _group(part, "split", "attack", "fraction")
        fig, axes = plt.subplots(2, len(splits), figsize=(1.2 + 1.1 * len(fractions) * len(splits) + 2,
                                 1.5 + 0.45 * len(attacks) * 2), squeeze=False)  # fmt: skip
        for col, split in enumerate(splits):
            for row, (metric, title, vmax) in enumerate(
                (("accuracy_loss", "accuracy loss (points)", None), ("adversary_share", "adversaries' share", 1.0))
            ):
                scale = 100 if metric == "accuracy_loss" else 1
                grid = [
                    [scale * _mean_std(r[metric] for r in cells.get((split, a, f), []))[0] for f in fractions]
                    for a in attacks
                ]
                ax = axes[row][col]
                im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
                ax.set_xticks(range(len(fractions)), [_label(f) for f in fractions])
                ax.set_yticks(range(len(attacks)), attacks)
                ax.set_xlabel("adversary fraction")
                ax.set_title(f"{split}: {title}", fontsize=9)
                for i, line in enumerate(grid):
                    for j, v in enumerate(line):
                        ax.text(j, i, "-" if math.isnan(v) else f"{v:.1f}" if scale == 100 else f"{v:.2f}",
                                ha="center", va="center", fontsize=7)  # fmt: skip
                fig.colorbar(im, ax=ax)
        fig.suptitle(defence_name(agg, policy, scoring))
        fig.tight_layout()
        name = "-".join(x for x in (agg, policy, scoring) if x)
        path = out / f"heatmap-{''.join(c if c.isalnum() or c in '-_' else '_' for c in name)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def summary(
    m: Matrix,
    table: list[dict[str, Any]],
    *,
    computed: int,
    wall_s: float,
    machine: str,
    left_out: Sequence[str] = (),
) -> str:
    """summary.md: the matrix, each defence's breakdown point per split, and the means;
    `left_out` names the defences not reported (cells not yet run)."""
    t = m.threshold
    lines = [
        "# Robustness sweep",
        "",
        f"Matrix `{m.path}`: {m.workers} workers, seeds {m.seeds}, base {m.base}.",
        f"Computed {computed} cells in {wall_s:.0f} s on {machine}.",
        "",
    ]
    if left_out:
        lines += [
            f"Not reported: {len(left_out)} defence(s) and split(s) with cells not yet run:",
            "",
            *[f"- {name}" for name in left_out],
            "",
        ]
    lines += [
        "## Breakdown points",
        "",
        f"The smallest adversary fraction at which, for some attack, the mean over seeds of the accuracy "
        f"loss exceeds {100 * t:g} points or the adversaries' reward share exceeds their fraction.",
        "",
    ]
    by_defence = _group(table, "aggregation", "policy", "scoring", "split")
    for (agg, policy, scoring, split), part in sorted(by_defence.items()):
        broken: list[tuple[Fraction, str]] = []
        for (attack,), rs in sorted(_group(part, "attack").items()):
            means = {
                Fraction(f).limit_denominator(100): (
                    _mean_std(r["accuracy_loss"] for r in fr)[0],
                    _mean_std(r["adversary_share"] for r in fr)[0],
                )
                for (f,), fr in _group(rs, "fraction").items()
            }
            bp = breakdown_point(means, t)
            if bp is not None:
                broken.append((bp[0], f"{attack}: {bp[1]}"))
        verdict = "holds at every fraction"
        if broken:
            at = min(f for f, _ in broken)
            why = [w for f, w in broken if f == at]
            more = f"; {len(why) - 1} more attack(s) there" if len(why) > 1 else ""
            verdict = f"breaks at {at} ({why[0]}{more})"
        lines.append(f"- breakdown {defence_name(agg, policy, scoring)}, {split}: {verdict}")
    lines += ["", "## Per attack (mean ± std over seeds)", ""]
    head = ["split", "defence", "attack", "fraction", "final accuracy", "accuracy loss (points)",
            "adversary share", "attack success", "fairness (Spearman)", "Gini (honest)"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    keys = ("split", "aggregation", "policy", "scoring", "attack", "fraction")
    for (split, agg, policy, scoring, attack, f), rs in sorted(_group(table, *keys).items()):

        def ms(metric: str, scale: float = 1.0, rs: list[dict[str, Any]] = rs) -> str:
            mean, std = _mean_std(r[metric] for r in rs)
            return "-" if math.isnan(mean) else f"{scale * mean:.3f} ± {scale * std:.3f}"

        lines.append(
            f"| {split} | {defence_name(agg, policy, scoring)} | {attack} | {_label(f)} | {ms('final_accuracy')} | "
            f"{ms('accuracy_loss', 100)} | {ms('adversary_share')} | {ms('attack_success')} | "
            f"{ms('fairness_spearman')} | {ms('gini')} |"
        )
    return "\n".join(lines) + "\n"
