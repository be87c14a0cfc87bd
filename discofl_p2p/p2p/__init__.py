"""The peer-to-peer model store: libp2p hosts with an asyncio face.

py-libp2p runs on trio; the rest of the project is asyncio. `bridge.py` is the one
module that imports trio: it runs every libp2p host of the process in one dedicated
trio thread and carries calls across. `node.py` is the asyncio API.
"""

from discofl_p2p.p2p.bridge import BridgeClosed
from discofl_p2p.p2p.cid import CIDError, cid_from_digest, cid_of, digest_of
from discofl_p2p.p2p.node import (
    Announcement,
    BlobUnavailable,
    Inbox,
    NodeConfig,
    P2PNetwork,
    P2PNode,
    PeerUnreachable,
    key_from_seed,
    load_or_create_key,
)
from discofl_p2p.p2p.protocol import ProtocolError

__all__ = [
    "Announcement",
    "BlobUnavailable",
    "BridgeClosed",
    "CIDError",
    "Inbox",
    "NodeConfig",
    "P2PNetwork",
    "P2PNode",
    "PeerUnreachable",
    "ProtocolError",
    "cid_from_digest",
    "cid_of",
    "digest_of",
    "key_from_seed",
    "load_or_create_key",
]
