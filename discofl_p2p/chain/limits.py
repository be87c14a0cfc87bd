"""Units and the contract's limits, each in one place.

The limits mirror `contracts/DiscoFLTask.sol` (a test reads them back from a deployed
contract); scenario validation checks against them so that a file the contract would
refuse fails before anything starts.
"""

ETH = 10**18
"""Wei per ether."""

FUNDING_WEI = 1000 * ETH
"""What a simulation gives each of its accounts on a development chain (gas money)."""

MAX_TOP_K = 64
"""`MAX_TOP_K`: the longest ranking a round can pay (also the most workers an
explicit-amounts task can have, since it ranks every worker)."""

MAX_WORKERS = 4096
"""`MAX_WORKERS`: the most workers a task can register."""

MAX_ROUNDS = 2**32 - 1
"""`rounds` is a uint32."""

MAX_DEPOSIT_WEI = 2**96 - 1
"""Credits are uint96: a larger deposit reverts with `DepositTooLarge`."""

MAX_PERIOD_S = 2**32 - 1
"""`MAX_PERIOD`: the longest submission or evaluation period, in seconds (about 136
years), so that block time + period always fits the uint64 deadline."""
