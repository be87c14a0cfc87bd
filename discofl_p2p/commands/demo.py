"""`discofl-p2p demo`: one whole task lifecycle on the contract, with balances.

Deploy with a deposit, register workers, play every round (commit, shuffled
evaluation list, scores, reveal and settle), close the task, withdraw, and print
each party's on-chain credit and the funds check. Models are random digests here;
`discofl-p2p scenario` runs the real thing with training.
"""

from __future__ import annotations

import asyncio
import random

from rich.console import Console
from rich.table import Table

from discofl_p2p.chain.anvil import Anvil, to_ws_url
from discofl_p2p.chain.client import TaskParams, connect
from discofl_p2p.chain.limits import ETH
from discofl_p2p.chain.scripted import deploy_and_register, play_round


async def run_demo(ws_url: str, *, workers: int = 4, rounds: int = 2, top_k: int = 4, seed: int = 7) -> int:
    console = Console()
    rng = random.Random(seed)
    params = TaskParams(rounds=rounds, top_k=top_k, max_workers=workers, deposit_wei=10 * ETH)
    w3 = await connect(ws_url)
    try:
        task = await deploy_and_register(w3, ws_url, params, workers, seed=seed)
        req = task.requester
        console.print(f"deployed DiscoFLTask at {req.address}: {rounds} rounds, top-{top_k}, deposit 10 ETH")
        console.print(f"{workers} workers registered; training started")
        for r in range(1, rounds + 1):
            gas = await play_round(task, r, rng, lambda n: rng.sample(range(n), min(top_k, n)))
            console.print(f"round {r} settled; gas: {gas}")
        close = await req.close_task()
        refund = close.events[-1].args["refund"]  # TaskClosed comes last
        table = Table(title="Balances after the task (wei, read from the chain)")
        table.add_column("party")
        table.add_column("address")
        table.add_column("credited", justify="right")
        table.add_column("withdrawn", justify="right")
        for i, w in enumerate(task.workers, 1):
            credit = await req.credit_of(w.account.address)
            withdrawn = 0
            if credit:
                withdrawn = (await w.withdraw()).events[0].args["amount"]
            table.add_row(f"worker w{i}", w.account.address, str(credit), str(withdrawn))
        table.add_row("requester (refund)", req.account.address, "", str(refund))
        console.print(table)
        st = await req.state()
        total = st.total_withdrawn + st.refunded + st.held
        console.print(
            f"withdrawn {st.total_withdrawn} + refunded {st.refunded} + held {st.held} "
            f"= {total} wei; deposit {st.deposit} wei: {'OK' if total == st.deposit else 'MISMATCH'}"
        )
        return 0 if total == st.deposit else 1
    finally:
        await w3.provider.disconnect()


def demo_main(rpc_url: str | None) -> int:
    if rpc_url:
        return asyncio.run(run_demo(to_ws_url(rpc_url)))
    with Anvil() as anvil:
        return asyncio.run(run_demo(anvil.ws_url))
