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

MAX_WORKERS = 768
"""`MAX_WORKERS`: the most workers a task can register. Chosen so that one settleRound
transaction carries every submitter's opening: its calldata at this W (with the longest
ranking) stays within 80 % of MAX_TX_CALLDATA_BYTES and its gas well below MAX_TX_GAS
(docs/contract.md, *How many workers one settlement carries*). At 86 calldata bytes per
submitter (its model's digest and its packed opening) it has room to spare."""

MAX_TX_CALLDATA_BYTES = 128 * 1024
"""The largest transaction that geth's and reth's transaction pools accept by default
(txMaxSize / --txpool.max-tx-input-bytes). Anvil does not enforce it."""

MAX_TX_GAS = 2**24
"""EIP-7825 (Osaka): the most gas one transaction may use, 16,777,216. Anvil 1.7.1
enforces it only with `--enable-tx-gas-limit`."""

MAX_ROUNDS = 2**32 - 1
"""`rounds` is a uint32."""

MAX_DEPOSIT_WEI = 2**96 - 1
"""Credits are uint96: a larger deposit reverts with `DepositTooLarge`."""

MAX_PERIOD_S = 2**32 - 1
"""`MAX_PERIOD`: the longest submission or evaluation period, in seconds (about 136
years), so that block time + period always fits the uint64 deadline."""

MIN_GRACE_PERIOD_S = 3600
"""`MIN_GRACE_PERIOD`: the shortest grace period. After a deadline plus the grace period,
anyone may end a task whose requester stalls; an hour keeps a requester that is merely
slow (BlockFlow for many workers, a congested chain) from losing the task. The longest is
MAX_PERIOD_S."""

DEFAULT_GRACE_PERIOD_S = 86_400
"""The grace period `TaskParams` deploys with unless told otherwise: one day."""

REVEAL_CALLDATA_BYTES = 96_000
"""What one revealScores transaction of the requester's batch carries at most (the
pending list, 53 bytes an evaluator, plus the rows, 2 bytes a model each): under
MAX_TX_CALLDATA_BYTES with room for the envelope. At W = 768 that is 36 rows a
transaction; up to W = 180 or so, every row fits in one."""
