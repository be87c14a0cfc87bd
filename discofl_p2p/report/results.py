"""results.json: the record of a run that other tools read, and the expectations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discofl_p2p.scenario.runner import RunOutcome


@dataclass(frozen=True)
class Expectation:
    name: str
    value: Any
    limit: Any
    ok: bool


def adversary_share(out: RunOutcome) -> float:
    total = sum(out.rewards_wei.values())
    adv = sum(out.rewards_wei[n] for n in out.adversaries)
    return adv / total if total else 0.0


def check_expectations(out: RunOutcome) -> list[Expectation]:
    e = out.scenario.expect
    checks = []
    if e.final_accuracy_min is not None:
        acc = out.final_accuracy if out.final_accuracy is not None else 0.0
        checks.append(Expectation("final_accuracy_min", acc, e.final_accuracy_min, acc >= e.final_accuracy_min))
    if e.adversary_reward_share_max is not None:
        share = adversary_share(out)
        checks.append(
            Expectation(
                "adversary_reward_share_max", share, e.adversary_reward_share_max, share <= e.adversary_reward_share_max
            )
        )
    if e.adversaries_below_honest is not None:
        honest = [out.rewards_wei[w.name] for w in out.workers if w.behavior == "honest"]
        adv = [out.rewards_wei[n] for n in out.adversaries]
        holds = bool(honest) and all(a < min(honest) for a in adv)
        checks.append(
            Expectation(
                "adversaries_below_honest", holds, e.adversaries_below_honest, holds == e.adversaries_below_honest
            )
        )
    return checks


def results_dict(out: RunOutcome, expectations: list[Expectation]) -> dict[str, Any]:
    sc = out.scenario
    rounds = []
    for r, rec in sorted(out.rounds.items()):
        rounds.append(
            {
                "round": r,
                "models": rec.models,
                "excluded": rec.excluded,
                "scores": rec.scores,
                "contribution": rec.contribution,
                "ranking": rec.ranking,
                "rewards_wei": {k: str(v) for k, v in rec.rewards_wei.items()},
                "test_accuracy": rec.test_accuracy,
                "gas": rec.gas,
                "wall_s": round(rec.wall_s, 3),
            }
            | ({"anchor": rec.anchor} if rec.anchor else {})  # the requester's own scores, under an anchored rule
        )
    return {
        "scenario": sc.to_dict(),
        "task": {
            "contract": out.contract,
            "chain_id": out.chain_id,
            "rounds": sc.task.rounds,
            "top_k": sc.task.top_k,
            "scoring": sc.task.scoring,
            "overlay": out.overlay,  # evaluators fetched from each other ([network] overlay)
            "deposit_wei": str(out.deposit_wei),
        },
        "workers": [
            {
                "name": w.name,
                "address": w.address,
                "behavior": w.behavior,
                "peer_id": w.peer_id,
                "group": w.group,
                "train_samples": w.train_samples,
            }
            | ({"pid": w.pid, "exit_code": w.exit_code} if w.pid is not None else {})
            for w in out.workers
        ],
        "rounds": rounds,
        "faults": out.faults,
        "final": {
            "test_accuracy": out.final_accuracy,
            "rewards_wei": {k: str(v) for k, v in out.rewards_wei.items()},
            "adversary_reward_share": adversary_share(out),
            "deposit_refunded_wei": str(out.refunded_wei),
            "held_wei": str(out.held_wei),
            "wall_s": round(out.wall_s, 3),
            "expectations": [e.__dict__ for e in expectations],
        },
    }


def write_results(out: RunOutcome, expectations: list[Expectation], path: Path) -> dict[str, Any]:
    data = results_dict(out, expectations)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data
