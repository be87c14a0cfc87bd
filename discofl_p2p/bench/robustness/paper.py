"""`bench robustness --paper`: the paper's experiment (Gaillard & Lombardo, DISCOFL;
docs/design.md, "The paper's experiment"): MNIST, 6 workers of which 2 train on random
data (`garbage`), 5 rounds, Top-K rewards over all 6, a 10 ETH deposit; the settings of
`scenarios/garbage.toml`, run as plain loops (equal to the full stack,
tests/test_replay.py) over several seeds.

Its Figures 6 and 7: each published model's test accuracy per round, and the rewards
per round and cumulated per worker. Written to DIR: `paper.md` (our figures beside the
paper's claims), `paper.json`, and for the first seed `paper-accuracy.png`,
`paper-rewards.png` (per round, stacked) and `paper-cumulative.png`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from discofl_p2p.chain.limits import ETH
from discofl_p2p.scenario.config import parse_scenario
from discofl_p2p.scenario.plain import PlainOutcome, run_plain

PAPER = """\
[task]
name = "paper"
rounds = 5
top_k = 6
deposit_eth = 10
reward_policy = "top_k"
aggregation = "score_weighted"
seed = {seed}

[data]
dataset = "mnist-embedded"
test_fraction = 0.1
split = "iid"

[model]
name = "compact_cnn"
epochs = 4
lr = 0.002
lr_decay = 0.7

[[workers]]
name = "honest"
count = 4

[[workers]]
name = "garbage"
count = 2
behavior = "garbage"
"""
"""scenarios/garbage.toml with the seed left open."""

PAPER_CLAIMS = {
    "final accuracy": "about 92 %",
    "malicious users' rewards": "the least of all workers every round (Top-K by contribution)",
}
"""What the paper states (docs/design.md, "The paper's experiment")."""


def results_dict(out: PlainOutcome, workers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """A plain loop's outcome in the shape of a run's results.json (what
    `report.plots` draws): rounds with rewards and each model's test accuracy."""
    return {
        "scenario": {"task": {"name": "paper", "reward_policy": "top_k"}},
        "workers": [{"name": n, "behavior": b} for n, b in workers],
        "rounds": [
            {
                "round": r,
                "rewards_wei": {n: str(v) for n, v in rec.rewards_wei.items()},
                "test_accuracy": dict(rec.test_accuracy),
            }
            for r, rec in sorted(out.rounds.items())
        ],
        "final": {"test_accuracy": out.final_accuracy},
    }


def _ms(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def run_paper(
    out_dir: Path, seeds: Sequence[int] = (1, 2, 3), *, text: str = PAPER, say: Callable[[str], None] = print
) -> str:
    """Runs the experiment (`text`, its seed left open) once per seed; writes the
    figures and paper.md, and returns paper.md's text."""
    from discofl_p2p.report.plots import plot_accuracy, plot_rewards

    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        sc = parse_scenario(text.format(seed=seed), "<paper>")
        workers = [(f"{g.name}-{i}", g.behavior) for g in sc.workers for i in range(1, g.count + 1)]
        o = run_plain(sc)
        runs.append(results_dict(o, workers))
        say(f"paper seed {seed}: final accuracy {o.final_accuracy:.4f} in {o.wall_s:.0f} s")
    (out_dir / "paper.json").write_text(json.dumps(runs, indent=1) + "\n")
    first = runs[0]
    plot_accuracy(first, out_dir / "paper-accuracy.png")
    plot_rewards(first, out_dir / "paper-rewards.png")
    _plot_cumulative(first, out_dir / "paper-cumulative.png")

    def per_round(run: dict[str, Any], group: str) -> list[tuple[float, float]]:
        """(mean test accuracy, cumulative reward share) of a group's workers, per round."""
        names = [w["name"] for w in run["workers"] if (w["behavior"] == "honest") == (group == "honest")]
        rows, paid, paid_all = [], 0, 0
        for r in run["rounds"]:
            paid += sum(int(r["rewards_wei"].get(n, 0)) for n in names)
            paid_all += sum(int(v) for v in r["rewards_wei"].values())
            acc = [r["test_accuracy"][n] for n in names if n in r["test_accuracy"]]
            rows.append((statistics.fmean(acc) if acc else float("nan"), paid / paid_all if paid_all else 0.0))
        return rows

    lines = [
        "| round | honest models' test accuracy | garbage models' test accuracy | honest share (cumulative) "
        "| garbage share (cumulative) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(first["rounds"]):
        h = [per_round(run, "honest")[i] for run in runs]
        g = [per_round(run, "garbage")[i] for run in runs]
        lines.append(
            f"| {r['round']} | {_ms([x[0] for x in h])} | {_ms([x[0] for x in g])} | "
            f"{_ms([x[1] for x in h])} | {_ms([x[1] for x in g])} |"
        )
    finals = [run["final"]["test_accuracy"] for run in runs]
    text = "\n".join(
        [
            f"Seeds {list(seeds)}, mean ± std. Final accuracy: **{_ms(finals)}** "
            f"(paper: {PAPER_CLAIMS['final accuracy']}).",
            "",
            *lines,
            "",
        ]
    )
    (out_dir / "paper.md").write_text(text)
    return text


def _plot_cumulative(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = [r["round"] for r in results["rounds"]]
    for w in results["workers"]:
        total, pts = 0, []
        for r in results["rounds"]:
            total += int(r["rewards_wei"].get(w["name"], 0))
            pts.append(total / ETH)
        ax.plot(rounds, pts, marker="o", linestyle="--" if w["behavior"] != "honest" else "-", label=w["name"])
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative reward (ETH)")
    ax.set_xticks(rounds)
    ax.set_title("Cumulative rewards: the paper's experiment (Top-K)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
