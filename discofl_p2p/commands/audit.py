"""`discofl-p2p audit --contract ADDR`: recompute every settled round from the chain.

Reads the registered workers, each round's published models, every evaluator's
revealed scores (a committed row never revealed counts as no evaluation, as the
requester counts it) and the settlement (its calldata reveals who submitted which model), then
recomputes the contribution scores (under the rule `--scoring` names, `consensus` by
default: it must be the one the task was settled with, with its `--scoring-param`s, checked as the scenario's
`[task] scoring_params` are; an anchored rule takes the requester's AnchorScores
event of the round as its anchor, and a round without one fails) and the ranking and rewards the contract should have
paid, through `trust.settlement.settle` under the task's reward policy (`--policy`,
`--floor`, `--bonus` for an Explicit-rule task; Top-K is on the chain). It reports the
submitters each round excluded, the excluded ones that posted a valid opening of a
model nobody published (withheld: the audit fails), each round's unpaid pot, the
rounds never settled and what the close shared out, checked against the contract's
rule (`trust.settlement.close_shares`: the unpaid rest in proportion to what the rounds
paid). Exit 0 when every round and the close match, 1 when one does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from eth_typing import HexStr
from rich.console import Console
from rich.table import Table

from discofl_p2p.chain.client import ChainEvent, RewardRule, TaskClient, awarded, connect
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import NOT_OPENED, commitment, decode_scores
from discofl_p2p.scenario.config import ScenarioError, check_scoring_params
from discofl_p2p.trust.anchor import anchor_of
from discofl_p2p.trust.blockflow import score_matrix
from discofl_p2p.trust.rewards import round_pot
from discofl_p2p.trust.scoring import (
    DEFAULT_SCORING,
    NEEDS_ANCHOR,
    ScoringContext,
    honesty_record,
    make_scoring_rule,
)
from discofl_p2p.trust.settlement import CloseSplit, RoundAudit, audit_round, close_shares, streaks_after, tie_order


@dataclass
class TaskAudit:
    """Every settled round recomputed (`rounds`), the contract's reward rule, and what
    the settlements alone do not show: rounds started and never settled, and what the
    close shared out (`participant_share` each, `refund` to the requester)."""

    rounds: list[RoundAudit]
    rule: str
    unsettled: list[int] = field(default_factory=list)
    closed: bool = False
    refund: int = 0
    participant_share: int = 0
    close_paid: dict[str, int] = field(default_factory=dict)  # each worker's close share, as credited
    close_expected: CloseSplit | None = None  # the close recomputed with `close_shares`

    @property
    def close_ok(self) -> bool:
        """The close shared the unpaid rest by the contract's rule (or it is not closed)."""
        e = self.close_expected
        return e is None or (e.shares == self.close_paid and e.refund == self.refund)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.rounds) and self.close_ok


def _withheld(
    contract: str,
    r: int,
    events: list[ChainEvent],
    excluded: set[str],
    commitments: dict[str, bytes],
    listed: set[bytes],
) -> list[str]:
    """The excluded submitters of round `r` whose posted opening matches their
    commitment and names a model listed in no round so far (not a copy or replay)."""
    out = []
    for e in events:
        if e.name != "ExclusionDisputed" or e.args["round"] != r or e.args["worker"] not in excluded:
            continue
        who, digest = e.args["worker"], bytes(e.args["digest"])
        valid = commitment(contract, r, who, digest, bytes(e.args["salt"])) == commitments.get(who)
        if valid and digest not in listed and who not in out:
            out.append(who)
    return out


async def audit_task(
    ws_url: str,
    contract: str,
    scoring: str = DEFAULT_SCORING,
    scoring_params: Mapping[str, Any] | None = None,
    *,
    policy: str = "top_k",
    floor: float = 0.0,
    bonus: float = 0.0,
) -> TaskAudit:
    """Recomputes every settled round; `scoring` and `scoring_params` are the task's
    rule, `policy`, `floor` and `bonus` its reward policy and its parameters (`[task]`
    in its scenario), none of which the chain holds."""
    rule_fn = make_scoring_rule(scoring, **(scoring_params or {}))
    history: list[dict[str, float]] = []  # as the requester kept it: earlier rounds' honesty
    w3 = await connect(ws_url)
    try:
        c = TaskClient(w3, contract, derive_account(0, "auditor"))
        rule = RewardRule(await c.view("rule"))
        top_k, rounds, deposit = await c.view("topK"), await c.view("rounds"), await c.view("deposit")
        events = await c.past_events()
        # Ties break in address order, as the requester breaks them (trust.settlement).
        registered = tie_order({e.args["worker"]: e.args["worker"] for e in events if e.name == "WorkerRegistered"})
        out = TaskAudit([], rule.name)
        streaks: dict[str, int] = {}
        listed: set[bytes] = set()  # every digest published so far
        settled_rounds = {e.args["round"] for e in events if e.name == "RoundSettled"}
        out.unsettled = sorted({e.args["round"] for e in events if e.name == "RoundStarted"} - settled_rounds)
        took_part = [e.args["worker"] for e in events if e.name == "ModelCommitted"]
        for e in events:
            if e.name == "CloseShareCredited":
                out.close_paid[e.args["worker"]] = e.args["amount"]
            elif e.name == "TaskClosed":
                out.closed, out.refund, out.participant_share = True, e.args["refund"], e.args["share"]
                if e.args["share"]:
                    out.close_paid = dict.fromkeys(dict.fromkeys(took_part), e.args["share"])
        if out.closed and any(e.name == "TrainingFinished" for e in events):
            earned = awarded(events)
            out.close_expected = close_shares(deposit - sum(earned.values()), earned, list(dict.fromkeys(took_part)))
        for settled in (e for e in events if e.name == "RoundSettled"):
            r = settled.args["round"]
            tx = await w3.eth.get_transaction(HexStr(settled.tx_hash))
            args = c.settlement_args(tx["input"])
            owner_at = [""] * len(args["models"])
            excluded = set()
            for who, pos in zip(args["submitters"], args["positions"]):
                if pos != NOT_OPENED:
                    owner_at[pos] = who
                else:
                    excluded.add(who)
            listed |= {bytes(m) for m in args["models"]}
            commitments = {
                e.args["worker"]: bytes(e.args["commitment"])
                for e in events
                if e.name == "ModelCommitted" and e.args["round"] == r
            }
            scores = {
                e.args["evaluator"]: decode_scores(bytes(e.args["scores"]))
                for e in events
                if e.name == "ScoresRevealed" and e.args["round"] == r
            }
            streaks = streaks_after(streaks, registered, owner_at)
            anchor, anchor_missing = None, False
            if scoring in NEEDS_ANCHOR:
                rows = [bytes(e.args["scores"]) for e in events if e.name == "AnchorScores" and e.args["round"] == r]
                # Without the event the rule runs on an empty anchor, and the round fails.
                anchor, anchor_missing = (anchor_of(owner_at, decode_scores(rows[0])), False) if rows else ({}, True)
            audited = audit_round(
                r,
                registered,
                owner_at,
                scores,
                round_pot(deposit, rounds, r),
                settled.args["rankedOwners"],
                settled.args["rewards"],
                policy=policy if rule == RewardRule.EXPLICIT else "top_k",
                top_k=top_k,
                streaks=streaks,
                floor=floor,
                bonus=bonus,
                scoring=rule_fn,
                context=ScoringContext(history=tuple(history), anchor=anchor),
                excluded=[w for w in args["submitters"] if w in excluded],
                withheld=_withheld(c.address, r, events, excluded, commitments, listed),
            )
            out.rounds.append(replace(audited, anchor_missing=anchor_missing))
            history.append(honesty_record(out.rounds[-1].contribution, score_matrix(owner_at, scores)))
        return out
    finally:
        await w3.provider.disconnect()


def audit_main(
    ws_url: str,
    contract: str,
    scoring: str = DEFAULT_SCORING,
    scoring_params: dict[str, Any] | None = None,
    *,
    policy: str = "top_k",
    floor: float = 0.0,
    bonus: float = 0.0,
) -> int:
    params = dict(scoring_params or {})
    try:
        check_scoring_params(scoring, params, "--scoring-param", rule_where="--scoring")
    except ScenarioError as e:
        Console(stderr=True).print(f"discofl-p2p audit: {e}", markup=False)
        return 2
    task = asyncio.run(audit_task(ws_url, contract, scoring, params, policy=policy, floor=floor, bonus=bonus))
    console = Console(width=140)
    for r in task.unsettled:
        console.print(f"round {r}: [yellow]not settled[/] (the task is running, or was abandoned)")
    if task.closed:
        verdict = "[green]matches the rule[/]" if task.close_ok else "[bold red]DOES NOT MATCH the rule[/]"
        console.print(f"closed ({verdict}): refund to the requester {task.refund} wei; shares of the unpaid pots:")
        expected = task.close_expected.shares if task.close_expected else {}
        for w in sorted(set(task.close_paid) | set(expected)):
            console.print(f"  {w}: {task.close_paid.get(w, 0)} wei (expected {expected.get(w, 0)})")
    if not task.rounds:
        console.print("no settled round to audit")
        return 0
    for a in task.rounds:
        t = Table(
            title=f"round {a.round}: "
            + ("[green]matches the chain[/]" if a.ok else "[bold red]DOES NOT MATCH the chain[/]")
            + f"; unpaid pot {a.unpaid} wei"
            + (
                "; [bold red]no AnchorScores event[/]: the anchored rule cannot be recomputed"
                if a.anchor_missing
                else ""
            )
        )
        for col in ("worker", "m_k", "d_k", "p_k", "expected reward", "paid reward", "note"):
            t.add_column(col, justify="left" if col in ("worker", "note") else "right")
        expected = dict(zip(a.expected_ranking, a.expected_rewards))
        paid = dict(zip(a.paid_ranking, a.paid_rewards))
        for w, c in a.contribution.items():
            note = "WITHHELD: valid opening disputed" if w in a.withheld else "excluded" if w in a.excluded else ""
            t.add_row(
                w,
                f"{c.median:.4f}",
                f"{c.honesty_raw:.4f}",
                f"{c.score:.4f}",
                str(expected.get(w, 0)),
                str(paid.get(w, 0)),
                note,
            )
        console.print(t)
    console.print(f"reward rule {task.rule}, policy {policy if task.rule == 'EXPLICIT' else 'top_k'}")
    console.print("audit: every settled round matches, and so does the close" if task.ok else "audit: MISMATCH")
    return 0 if task.ok else 1
