"""A worker's watchdog: ends a task whose requester stalled, so that its deposit is
shared by the workers instead of staying locked.

The contract lets anyone call `endAbandonedTask()` once `graceEnd()` (a deadline plus
the grace period) has passed in the submission or evaluation phase, and `closeTask()`
once it has passed after the last round (docs/contract.md, *Liveness*): credits are paid
only once the task has ended, so a requester that never closes must not lock them.
Nobody is paid to call either, so each worker watches for itself:
`watch_for_abandonment` reads the chain's clock and `graceEnd()` every `poll_s`
seconds and calls the one that applies once the grace period is over. The first caller wins;
the others' calls revert and are ignored. The worker learns the outcome from the
TaskAbandoned event like everyone else.
"""

from __future__ import annotations

import asyncio

import structlog

from discofl_p2p.chain.client import Phase, TaskClient
from discofl_p2p.chain.errors import ContractRevert

log = structlog.get_logger("discofl.watchdog")

WATCHDOG_POLL_S = 30.0
"""How often a worker checks whether the requester stalled past the grace period."""

_RUNNING = (Phase.SUBMISSION, Phase.EVALUATION)


def abandonable(phase: Phase, grace_end: int, chain_time: int) -> bool:
    """Whether `endAbandonedTask()` would go through: a round is running and the chain's
    clock is past the end of its grace period."""
    return phase in _RUNNING and grace_end != 0 and chain_time > grace_end


async def watch_for_abandonment(client: TaskClient, *, poll_s: float = WATCHDOG_POLL_S, agent: str = "") -> bool:
    """Until the task ends: every `poll_s` seconds, ends it if its requester stalled
    past the grace period (closes it, if finished). Returns True if this call ended it,
    False once the task was closed or ended by someone else."""
    while True:
        phase = Phase(await client.view("phase"))
        if phase not in (Phase.REGISTRATION, Phase.FINISHED, *_RUNNING):
            return False
        grace_end = int(await client.view("graceEnd"))
        now = int((await client.w3.eth.get_block("latest"))["timestamp"])
        if grace_end != 0 and now > grace_end and phase == Phase.FINISHED:
            try:
                res = await client.close_task()
            except ContractRevert as e:  # the requester (or another worker) closed it first
                log.info("close_refused", agent=agent, error=e.name)
            else:
                log.warning("task_closed_for_requester", agent=agent, grace_end=grace_end, gas=res.gas_used)
                return True
        elif abandonable(phase, grace_end, now):
            try:
                res = await client.end_abandoned_task()
            except ContractRevert as e:  # someone else was first, or the requester acted
                log.info("abandon_refused", agent=agent, error=e.name)
            else:
                log.warning("task_ended_as_abandoned", agent=agent, grace_end=grace_end, gas=res.gas_used)
                return True
        await asyncio.sleep(poll_s)
