"""The chain adapter: the anvil launcher, the DiscoFLTask artifact, an asyncio client,
the contract's wire encodings and limits, and development-chain helpers."""

from discofl_p2p.chain.anvil import Anvil, AnvilNotFound, find_anvil
from discofl_p2p.chain.client import ChainEvent, RewardRule, TaskClient, TaskParams, TxResult, connect
from discofl_p2p.chain.errors import ContractRevert
from discofl_p2p.chain.limits import ETH, MAX_TOP_K, MAX_WORKERS

__all__ = [
    "ETH",
    "MAX_TOP_K",
    "MAX_WORKERS",
    "Anvil",
    "AnvilNotFound",
    "ChainEvent",
    "ContractRevert",
    "RewardRule",
    "TaskClient",
    "TaskParams",
    "TxResult",
    "connect",
    "find_anvil",
]
