"""The chain adapter: the anvil launcher, the DiscoFLTask artifact and an asyncio client."""

from discofl_p2p.chain.anvil import Anvil, AnvilNotFound, find_anvil
from discofl_p2p.chain.client import ChainEvent, TaskClient, TaskParams, TxResult, connect
from discofl_p2p.chain.errors import ContractRevert

__all__ = [
    "Anvil",
    "AnvilNotFound",
    "ChainEvent",
    "ContractRevert",
    "TaskClient",
    "TaskParams",
    "TxResult",
    "connect",
    "find_anvil",
]
