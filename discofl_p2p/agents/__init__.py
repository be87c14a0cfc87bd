"""The agents: a requester and workers, each an asyncio state machine that reacts to
contract events and talks to the others over libp2p only.

`requester.py` and `worker.py` orchestrate; the decisions they make are pure
functions beside them (`parse_opening`, `place_opening`, `select_openings`), in
`behaviors/` (what honest and adversarial workers do) and in `discofl_p2p.trust`.
`context.py` holds the immutable task setup and the recorder; `jobs.py` the torch work
they run in the CPU pool; `identity.py` the signed address-to-peer binding.
"""

from discofl_p2p.agents.context import Recorder, RoundRecord, TaskSetup, derive_seed
from discofl_p2p.agents.identity import sign_binding, verify_binding
from discofl_p2p.agents.requester import (
    Opening,
    OpeningRejected,
    RequesterAgent,
    RequesterConfig,
    parse_opening,
    place_opening,
    select_openings,
)
from discofl_p2p.agents.worker import W0Rejected, WorkerAgent, new_salt

__all__ = [
    "Opening",
    "OpeningRejected",
    "Recorder",
    "RequesterAgent",
    "RequesterConfig",
    "RoundRecord",
    "TaskSetup",
    "W0Rejected",
    "WorkerAgent",
    "derive_seed",
    "new_salt",
    "parse_opening",
    "place_opening",
    "select_openings",
    "sign_binding",
    "verify_binding",
]
