"""The asyncio <-> trio bridge: the only module of discofl-p2p that imports trio.

py-libp2p is built on trio; web3 and the agents on asyncio. Running libp2p on
asyncio fails and trio-asyncio breaks web3, so every libp2p host of a process lives
in one dedicated trio thread (`TrioThread`). asyncio code calls into it with
`await thread.call(fn, *args)` (trio's `run_sync_soon` one way,
`loop.call_soon_threadsafe` the other); cancelling the asyncio side cancels the trio
task. The trio helpers the node code needs (timeouts, events, nurseries) are re-exported
here so that no other module imports trio.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

# What trio-side node code may use, without importing trio itself.
fail_after = trio.fail_after
move_on_after = trio.move_on_after
TooSlowError = trio.TooSlowError
Event = trio.Event
Semaphore = trio.Semaphore
open_nursery = trio.open_nursery
sleep = trio.sleep
TASK_STATUS_IGNORED = trio.TASK_STATUS_IGNORED


class BridgeClosed(RuntimeError):
    """The trio thread is not running."""


class TrioThread:
    """One trio event loop in a daemon thread, owning a nursery for services.

    Lifetime: `start()` returns once the loop runs; `stop()` cancels every service,
    waits for the thread, and is idempotent. Services started with `start_service`
    are owned by the thread's nursery and end with it.
    """

    def __init__(self, name: str = "libp2p-trio") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._token is not None

    def start(self) -> TrioThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise BridgeClosed(f"trio thread failed to start: {self._error}")
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except BaseException as e:  # noqa: BLE001 - reported to whoever waits
            self._error = e
        finally:
            self._token = None
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        token, thread = self._token, self._thread
        if token is not None and self._stop is not None:
            try:
                token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs `await fn(*args)` in the trio thread and returns its result here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        scope_box: list[trio.CancelScope] = []

        def deliver(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        async def runner() -> None:
            with trio.CancelScope() as scope:
                scope_box.append(scope)
                try:
                    result = await fn(*args)
                except BaseException as e:
                    if isinstance(e, trio.Cancelled):
                        loop.call_soon_threadsafe(deliver, False, asyncio.CancelledError())
                        raise
                    loop.call_soon_threadsafe(deliver, False, e)
                    return
                loop.call_soon_threadsafe(deliver, True, result)
                return
            loop.call_soon_threadsafe(deliver, False, asyncio.CancelledError())

        self._submit(lambda: self._nursery.start_soon(runner))  # type: ignore[union-attr]
        try:
            return await fut
        except asyncio.CancelledError:
            if scope_box:
                self._try_submit(scope_box[0].cancel)
            raise

    async def start_service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> Any:
        """Starts a long-lived trio task `fn(*args, task_status=...)` in the thread's
        nursery and returns the value it passes to `task_status.started()`."""

        async def starter() -> Any:
            return await self._nursery.start(fn, *args)  # type: ignore[union-attr]

        return await self.call(starter)

    def run_sync_soon(self, fn: Callable[[], None]) -> None:
        self._submit(fn)

    def _submit(self, fn: Callable[[], None]) -> None:
        if self._token is None:
            raise BridgeClosed("the libp2p trio thread is not running")
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            raise BridgeClosed("the libp2p trio thread has stopped") from None

    def _try_submit(self, fn: Callable[[], None]) -> None:
        try:
            self._submit(fn)
        except BridgeClosed:
            pass


def to_asyncio(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Schedules `fn(*args)` on an asyncio loop from the trio thread (never blocks)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the asyncio loop is closed: its consumer is gone
