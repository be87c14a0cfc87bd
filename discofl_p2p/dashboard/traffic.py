"""p2p figures of a run, from its agents' log events: per node, the models and bytes
it served and fetched, and how many distinct peers it exchanged models with.

The agents log every transfer they receive (`w0_fetched`, from the requester;
`model_fetched`, with the provider's peer id) and each node's identity
(`node_started`: agent, peer id, address), so the figures need nothing but the logs:
they work for an in-process run (log.jsonl) and one process per agent (logs/*.jsonl,
or log.jsonl once merged). Pure: events in, rows out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Node:
    agent: str | None = None
    peer_id: str | None = None
    address: str | None = None
    models_served: int = 0
    bytes_served: int = 0
    models_fetched: int = 0
    bytes_fetched: int = 0
    peers: set[str] = field(default_factory=set)


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def p2p_figures(
    events: Iterable[Mapping[str, Any]], peer_names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per node seen in `events` (agent log events, any order): `agent`,
    `peer_id`, `address`, `models_served`, `bytes_served`, `models_fetched`,
    `bytes_fetched`, `peers` (distinct peers it served or fetched from). A provider
    known only by its peer id is named from `peer_names` (peer id -> agent) or left
    unnamed. Malformed events are skipped (a log is data, not trusted)."""
    nodes: dict[str, _Node] = {}  # agent name, or "peer:<id>" for an unnamed provider
    by_peer = dict(peer_names or {})
    transfers: list[tuple[str, str, int]] = []  # (fetcher agent, provider key, bytes)
    for ev in events:
        kind, agent = ev.get("event"), ev.get("agent")
        if not isinstance(agent, str):
            continue
        if kind == "node_started" and isinstance(ev.get("peer_id"), str):
            node = nodes.setdefault(agent, _Node(agent))
            node.peer_id = ev["peer_id"]
            node.address = ev.get("address") if isinstance(ev.get("address"), str) else None
            by_peer[ev["peer_id"]] = agent
        elif kind in ("w0_fetched", "model_fetched") and (n := _int(ev.get("bytes"))) is not None:
            provider = "requester" if kind == "w0_fetched" else ev.get("provider")
            if isinstance(provider, str):
                transfers.append((agent, provider, n))
    for fetcher, provider, n in transfers:
        key = provider if provider == "requester" else by_peer.get(provider, f"peer:{provider}")
        src = nodes.setdefault(key, _Node(None if key.startswith("peer:") else key))
        if key.startswith("peer:"):
            src.peer_id = provider
        dst = nodes.setdefault(fetcher, _Node(fetcher))
        src.models_served += 1
        src.bytes_served += n
        dst.models_fetched += 1
        dst.bytes_fetched += n
        src.peers.add(fetcher)
        dst.peers.add(key)
    return [
        {
            "agent": x.agent,
            "peer_id": x.peer_id,
            "address": x.address,
            "models_served": x.models_served,
            "bytes_served": x.bytes_served,
            "models_fetched": x.models_fetched,
            "bytes_fetched": x.bytes_fetched,
            "peers": len(x.peers),
        }
        for _, x in sorted(nodes.items(), key=lambda kv: (kv[0] != "requester", kv[0]))
    ]
