"""The `discofl-p2p` command line. Configuration is parsed here and nowhere else."""

from __future__ import annotations

import argparse
import sys
import tomllib
from typing import Any

from discofl_p2p import __version__
from discofl_p2p.trust.scoring import DEFAULT_SCORING


def scoring_param(text: str) -> tuple[str, Any]:
    """One `--scoring-param KEY=VALUE`: VALUE is read as a TOML value, as the scenario's
    `[task] scoring_params` would hold it (`trim=0.25` is a float, `prior=1` an int)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(f"{key.strip()}: not a TOML value: {value!r}") from None


def _add_scoring(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--scoring", default=DEFAULT_SCORING, help=f"{help_} (default: {DEFAULT_SCORING})")
    parser.add_argument(
        "--scoring-param",
        dest="scoring_params",
        type=scoring_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the rule ([task] scoring_params), e.g. trim=0.25; repeat for more",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="discofl-p2p",
        description="Decentralised federated learning with a blockchain incentive layer.",
    )
    p.add_argument("--version", action="version", version=f"discofl-p2p {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    scen = sub.add_parser("scenario", help="run a scenario file: chain, agents, adversaries, report")
    scen.add_argument("file", help="a scenario TOML file, e.g. scenarios/collusion.toml")
    scen.add_argument("--out", help="output directory (default: runs/NAME-seedN)")
    scen.add_argument("--seed", type=int, help="override the scenario's task.seed")
    scen.add_argument("--rpc-url", help="use this running anvil instead of starting one")
    scen.add_argument(
        "--dashboard",
        nargs="?",
        type=int,
        const=0,
        metavar="PORT",
        help="serve a live dashboard of the run on 127.0.0.1 (PORT, or a free one) and print its URL",
    )

    scen.add_argument(
        "--processes",
        action="store_true",
        help="one OS process per agent (requester, each worker), logs under DIR/logs/",
    )

    def agent_options(a: argparse.ArgumentParser) -> None:
        a.add_argument("--rpc-url", required=True, help="the chain the task lives on")
        a.add_argument("--key", required=True, help="the agent's chain account: a private key in hex")
        a.add_argument("--scenario", required=True, metavar="FILE", help="the task's settings (a scenario TOML)")
        a.add_argument("--seed", type=int, help="override the scenario's task.seed")
        a.add_argument("--node-key", help="libp2p key file (32-byte seed; created 0600 if absent; default: fresh)")
        a.add_argument("--host", default="127.0.0.1", help="address the libp2p node listens on")
        a.add_argument("--port", type=int, default=0, help="port the libp2p node listens on (0: a free one)")
        a.add_argument("--log", help="append the agent's JSON log here (default: stderr)")
        a.add_argument("--records", help="write the agent's records (JSON) here when it stops")
        a.add_argument("--stop-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)

    req = sub.add_parser("requester", help="the requester agent alone: deploys a task and runs it")
    agent_options(req)
    req.add_argument("--workers", required=True, metavar="FILE", help="JSON {worker name: address}: the allowlist")
    req.add_argument(
        "--registration-timeout", type=float, default=60.0, metavar="S", help="start with whoever registered by then"
    )
    req.add_argument(
        "--store", metavar="DIR", help="keep the requester's own state here (openings, published order, models)"
    )
    req.add_argument(
        "--resume",
        action="store_true",
        help="resume the task in --store after a crash (same --key and --node-key): replay the chain, carry on",
    )

    wk = sub.add_parser("worker", help="one worker agent alone: joins a task by its contract address")
    agent_options(wk)
    wk.add_argument("--contract", required=True, help="the task's contract address")
    wk.add_argument("--bootstrap", required=True, metavar="MULTIADDR", help="the requester's /ip4/H/tcp/P/p2p/ID")
    wk.add_argument("--name", required=True, help="this worker's name in the scenario (its split and behaviour)")
    wk.add_argument("--peer", action="append", default=[], metavar="MULTIADDR", help="another worker to dial")
    wk.add_argument(
        "--ring-peer", action="append", default=[], metavar="MULTIADDR", help="a collusion ring mate (out of band)"
    )

    up = sub.add_parser("up", help="local multi-node demo: anvil, requester, worker processes and the dashboard")
    up.add_argument("file", help="a scenario TOML file")
    up.add_argument("--out", help="output directory (default: runs/NAME-seedN)")
    up.add_argument("--seed", type=int, help="override the scenario's task.seed")
    up.add_argument("--port", type=int, default=0, help="the dashboard's port (default: a free one)")

    node = sub.add_parser("node", help="one libp2p node in this process: serve files, fetch a CID")
    node.add_argument("--key", default="discofl-node.key", help="key file (32-byte seed; created 0600 if absent)")
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--port", type=int, default=0)
    node.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer to dial, /ip4/HOST/tcp/PORT/p2p/PEER_ID (repeatable)",
    )
    node.add_argument("--serve", action="append", default=[], metavar="FILE", help="serve this file's bytes")
    node.add_argument("--fetch", metavar="CID", help="fetch this CID from the --connect peers")
    node.add_argument("--out", help="where --fetch writes the blob")
    node.add_argument("--for", dest="duration", type=float, help="serve for this many seconds, then stop")

    audit = sub.add_parser("audit", help="recompute every settled round of a task from the chain alone")
    audit.add_argument("--rpc-url", required=True, help="the chain the task lives on")
    audit.add_argument("--contract", required=True, help="the task's contract address")
    _add_scoring(audit, "the scoring rule the task used ([task] scoring)")
    audit.add_argument(
        "--policy",
        default="top_k",
        choices=["top_k", "proportional", "loyalty"],
        help="the reward policy of an Explicit-rule task ([task] reward_policy)",
    )
    audit.add_argument("--floor", type=float, default=0.0, help="the policy's quality floor ([task] quality_floor)")
    audit.add_argument("--bonus", type=float, default=0.0, help="the loyalty bonus ([task] loyalty_bonus)")

    dash = sub.add_parser("dashboard", help="a live web page for one task, read from the chain (read-only)")
    dash.add_argument("--rpc-url", required=True, help="the chain the task lives on")
    dash.add_argument("--contract", help="the task's contract address (default: the one --run deployed)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=9545, help="port to bind (default 9545; 0 picks a free one)")
    dash.add_argument("--run", metavar="DIR", help="a scenario's output directory: worker names, accuracy")
    _add_scoring(dash, "the task's scoring rule ([task] scoring), for its contributions")

    demo = sub.add_parser("demo", help="the contract lifecycle alone (random models), with balances")
    demo.add_argument("--rpc-url", help="use this running chain instead of starting anvil")

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    gas = bench_sub.add_parser("gas", help="gas of every contract call for W = 6 and W = 50")
    gas.add_argument("--rpc-url", help="use this running chain instead of starting anvil")
    gas.add_argument("--rounds", type=int, default=3)
    gas.add_argument("--json", action="store_true", help='one JSON object: {"fork": ..., "calls": {"6": {...}, ...}}')
    ml = bench_sub.add_parser("ml", help="training/evaluation throughput and aggregation time per rule")
    p2p = bench_sub.add_parser("p2p", help="libp2p blob throughput vs a plain socket, all-to-all W = 20, memory")
    sb = bench_sub.add_parser("scenarios", help="accuracy, adversary reward shares and overhead of whole tasks")
    sb.add_argument("--dir", default="scenarios", help="where baseline/garbage/collusion/biased.toml are")
    sb.add_argument("--floor", type=float, default=0.5, help="quality floor of the proportional policy")
    rb = bench_sub.add_parser("robustness", help="attack x adversary fraction x split x defence sweep, plain loops")
    rb.add_argument("--matrix", help="a matrix TOML file (default: the shipped default, or quick with --quick)")
    rb.add_argument("--out", default="runs/robustness", help="output directory; cells cached under DIR/cells/")
    rb.add_argument("--jobs", type=int, default=1, help="cells run in this many processes (default 1)")
    rb.add_argument("--quick", action="store_true", help="the small matrix: every attack once, one seed")
    rb.add_argument(
        "--cached-only",
        action="store_true",
        help="run nothing: report the defences whose every cell is in DIR/cells (read a long sweep while it runs)",
    )
    rb.add_argument(
        "--full-stack-sample",
        type=int,
        default=0,
        metavar="N",
        help="re-run N random cells on the full stack (anvil, libp2p) and report any difference from the plain loop",
    )
    rb.add_argument(
        "--paper",
        action="store_true",
        help="the paper's experiment (6 workers, 2 garbage, 5 rounds) over 3 seeds: its Figs 6 and 7 beside its claims",
    )
    for b in (gas, ml, p2p, sb):
        b.add_argument("--quick", action="store_true", help="tiny inputs: checks that it runs; figures mean nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from web3.exceptions import ProviderConnectionError

    from discofl_p2p.chain.anvil import AnvilNotFound, AnvilStartError

    try:
        return _dispatch(args)
    except ProviderConnectionError as e:
        print(f"discofl-p2p: cannot reach the chain: {e} (check --rpc-url)", file=sys.stderr)
    except (AnvilNotFound, AnvilStartError) as e:
        print(f"discofl-p2p: {e}", file=sys.stderr)
    return 3


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "scenario":
        from discofl_p2p.commands.scenario import scenario_main

        return scenario_main(
            args.file, args.out, args.seed, args.rpc_url, dashboard=args.dashboard, processes=args.processes
        )
    if args.command == "up":
        from discofl_p2p.commands.up import up_main

        return up_main(args.file, args.out, args.seed, args.port)
    if args.command in ("requester", "worker"):
        common = {
            "seed": args.seed,
            "node_key": args.node_key,
            "host": args.host,
            "port": args.port,
            "log": args.log,
            "records": args.records,
            "parent_pid": args.stop_with_parent,
        }
        if args.command == "requester":
            from discofl_p2p.commands.requester import requester_main

            return requester_main(
                args.rpc_url,
                args.key,
                args.scenario,
                args.workers,
                registration_timeout_s=args.registration_timeout,
                store=args.store,
                resume=args.resume,
                **common,
            )
        from discofl_p2p.commands.worker import worker_main

        return worker_main(
            args.rpc_url,
            args.contract,
            args.key,
            args.bootstrap,
            args.scenario,
            args.name,
            peers=args.peer,
            ring=args.ring_peer,
            **common,
        )
    if args.command == "node":
        import asyncio
        from pathlib import Path

        import structlog

        from discofl_p2p.commands.node import NodeArgsError, run_node
        from discofl_p2p.p2p.node import BlobUnavailable

        # stdout carries the node's JSON lines; its log goes to stderr.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        try:
            return asyncio.run(
                run_node(
                    Path(args.key),
                    args.host,
                    args.port,
                    args.connect,
                    [Path(f) for f in args.serve],
                    args.fetch,
                    Path(args.out) if args.out else None,
                    args.duration,
                )
            )
        except (NodeArgsError, BlobUnavailable, ValueError) as e:
            print(f"discofl-p2p node: {e}", file=sys.stderr)
            return 2 if isinstance(e, NodeArgsError) else 3
    if args.command == "audit":
        from discofl_p2p.chain.anvil import to_ws_url
        from discofl_p2p.commands.audit import audit_main

        return audit_main(
            to_ws_url(args.rpc_url),
            args.contract,
            args.scoring,
            dict(args.scoring_params),
            policy=args.policy,
            floor=args.floor,
            bonus=args.bonus,
        )
    if args.command == "dashboard":
        from discofl_p2p.chain.anvil import to_ws_url
        from discofl_p2p.commands.dashboard import dashboard_main

        return dashboard_main(
            to_ws_url(args.rpc_url),
            args.contract,
            args.host,
            args.port,
            args.run,
            args.scoring,
            dict(args.scoring_params),
        )
    if args.command == "demo":
        from discofl_p2p.commands.demo import demo_main

        return demo_main(args.rpc_url)
    if args.command == "bench":
        from discofl_p2p.commands import bench

        if args.bench == "gas":
            return bench.bench_gas(args.rpc_url, args.rounds, quick=args.quick, as_json=args.json)
        if args.bench == "ml":
            return bench.bench_ml(quick=args.quick)
        if args.bench == "p2p":
            return bench.bench_p2p(quick=args.quick)
        if args.bench == "robustness":
            return bench.bench_robustness(
                args.matrix,
                args.out,
                quick=args.quick,
                jobs=args.jobs,
                full_stack_sample=args.full_stack_sample,
                paper=args.paper,
                cached_only=args.cached_only,
            )
        return bench.bench_scenarios(args.dir, args.floor, quick=args.quick)
    build_parser().print_help()
    return 2
