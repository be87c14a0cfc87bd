"""`discofl-p2p audit --contract ADDR`: recompute every settled round from the chain.

Reads the registered workers, each round's published models, every evaluator's
revealed scores (a committed row never revealed counts as no evaluation, as the
requester counts it) and the settlement (its calldata reveals who submitted which model), then
recomputes the contribution scores (BlockFlow, or the rule `--scoring` names: the
one the task was settled with) and, under the Top-K rule, the ranking and rewards the contract
should have paid. Exit 0 when every round matches, 1 when one does not.
"""

from __future__ import annotations

import asyncio

from eth_typing import HexStr
from rich.console import Console
from rich.table import Table

from discofl_p2p.chain.client import RewardRule, TaskClient, connect
from discofl_p2p.chain.devchain import derive_account
from discofl_p2p.chain.encoding import NOT_OPENED, decode_scores
from discofl_p2p.trust.blockflow import score_matrix
from discofl_p2p.trust.rewards import round_pot
from discofl_p2p.trust.scoring import DEFAULT_SCORING, ScoringContext, honesty_record, make_scoring_rule
from discofl_p2p.trust.settlement import RoundAudit, audit_top_k_round, tie_order


async def audit_task(ws_url: str, contract: str, scoring: str = DEFAULT_SCORING) -> tuple[list[RoundAudit], str]:
    rule_fn = make_scoring_rule(scoring)
    history: list[dict[str, float]] = []  # as the requester kept it: earlier rounds' honesty
    w3 = await connect(ws_url)
    try:
        c = TaskClient(w3, contract, derive_account(0, "auditor"))
        rule = RewardRule(await c.view("rule"))
        top_k, rounds, deposit = await c.view("topK"), await c.view("rounds"), await c.view("deposit")
        events = await c.past_events()
        # Ties break in address order, as the requester breaks them (trust.settlement).
        registered = tie_order({e.args["worker"]: e.args["worker"] for e in events if e.name == "WorkerRegistered"})
        audits = []
        for settled in (e for e in events if e.name == "RoundSettled"):
            r = settled.args["round"]
            tx = await w3.eth.get_transaction(HexStr(settled.tx_hash))
            _, args = c.contract.decode_function_input(tx["input"])
            owner_at = [""] * len(args["models"])
            for who, pos in zip(args["submitters"], args["positions"]):
                if pos != NOT_OPENED:
                    owner_at[pos] = who
            scores = {
                e.args["evaluator"]: decode_scores(bytes(e.args["scores"]))
                for e in events
                if e.name == "ScoresRevealed" and e.args["round"] == r
            }
            audits.append(
                audit_top_k_round(
                    r,
                    registered,
                    owner_at,
                    scores,
                    top_k if rule == RewardRule.TOP_K else len(registered),
                    round_pot(deposit, rounds, r),
                    settled.args["rankedOwners"],
                    settled.args["rewards"],
                    scoring=rule_fn,
                    context=ScoringContext(history=tuple(history)),
                )
            )
            history.append(honesty_record(audits[-1].contribution, score_matrix(owner_at, scores)))
        return audits, rule.name
    finally:
        await w3.provider.disconnect()


def audit_main(ws_url: str, contract: str, scoring: str = DEFAULT_SCORING) -> int:
    try:
        make_scoring_rule(scoring)
    except ValueError as e:
        Console(stderr=True).print(f"discofl-p2p audit: {e}")
        return 2
    audits, rule = asyncio.run(audit_task(ws_url, contract, scoring))
    console = Console(width=140)
    if not audits:
        console.print("no settled round to audit")
        return 0
    all_ok = True
    for a in audits:
        t = Table(
            title=f"round {a.round}: "
            + ("[green]matches the chain[/]" if a.ok or rule != "TOP_K" else "[bold red]DOES NOT MATCH the chain[/]")
        )
        for col in ("worker", "m_k", "d_k", "p_k", "expected reward", "paid reward"):
            t.add_column(col, justify="left" if col == "worker" else "right")
        expected = dict(zip(a.expected_ranking, a.expected_rewards))
        paid = dict(zip(a.paid_ranking, a.paid_rewards))
        for w, c in a.contribution.items():
            t.add_row(
                w,
                f"{c.median:.4f}",
                f"{c.honesty_raw:.4f}",
                f"{c.score:.4f}",
                str(expected.get(w, 0)) if rule == "TOP_K" else "-",
                str(paid.get(w, 0)),
            )
        console.print(t)
        all_ok &= a.ok or rule != "TOP_K"
    if rule != "TOP_K":
        console.print(
            f"reward rule {rule}: contributions recomputed; the amounts follow an off-chain policy "
            "and are shown, not checked"
        )
    console.print("audit: every settled round matches" if all_ok else "audit: MISMATCH")
    return 0 if all_ok else 1
