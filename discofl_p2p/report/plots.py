"""PNG plots of a run: rewards per round as stacked bars per worker (the paper's
Figures 6 and 7) and test accuracy per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from discofl_p2p.chain.limits import ETH


def plot_rewards(results: dict[str, Any], path: Path) -> None:
    rounds = [r["round"] for r in results["rounds"]]
    workers = [w["name"] for w in results["workers"]]
    adversarial = {w["name"] for w in results["workers"] if w["behavior"] != "honest"}
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(rounds)
    cmap = plt.get_cmap("tab20")
    for i, w in enumerate(workers):
        vals = [int(r["rewards_wei"].get(w, "0")) / ETH for r in results["rounds"]]
        ax.bar(
            rounds,
            vals,
            bottom=bottom,
            label=w + (" (adv.)" if w in adversarial else ""),
            color=cmap(i % 20),
            hatch="//" if w in adversarial else None,
            edgecolor="black",
            linewidth=0.3,
        )
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("round")
    ax.set_ylabel("reward (ETH)")
    ax.set_xticks(rounds)
    ax.set_title(
        f"Rewards per round: {results['scenario']['task']['name']} ({results['scenario']['task']['reward_policy']})"
    )
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(results: dict[str, Any], path: Path) -> None:
    rounds = [r["round"] for r in results["rounds"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    adversarial = {w["name"] for w in results["workers"] if w["behavior"] != "honest"}
    for w in [w["name"] for w in results["workers"]]:
        pts = [(r["round"], r["test_accuracy"][w]) for r in results["rounds"] if w in r["test_accuracy"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", linestyle="--" if w in adversarial else "-", label=w)
    final = results["final"]["test_accuracy"]
    if final is not None:
        ax.axhline(final, color="black", linewidth=1, label=f"final model {final:.3f}")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (held-out split)")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1)
    ax.set_title(f"Test accuracy per round: {results['scenario']['task']['name']}")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
