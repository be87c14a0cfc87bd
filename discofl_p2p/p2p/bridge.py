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

import structlog
import trio

T = TypeVar("T")

log = structlog.get_logger("discofl.p2p")

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
    """The trio thread, or the node a call was made on, is no longer running.

    `cause` is the exception that ended it (also `__cause__`), or None after an orderly
    stop. Every asyncio caller waiting on the thread or node receives this error, never
    a bare CancelledError (an asyncio TaskGroup would take a cancelled child for a
    finished one, and the agent would silently vanish)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        self.cause = cause
        super().__init__(f"{message}: {cause!r}" if cause is not None else message)
        self.__cause__ = cause


def root_cause(error: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (trio wraps
    what escapes a nursery in a group)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _is_cancellation(error: BaseException) -> bool:
    """trio's Cancelled, alone or as the only kind of exception in a group."""
    if isinstance(error, BaseExceptionGroup):
        return error.split(trio.Cancelled)[1] is None
    return isinstance(error, trio.Cancelled)


class Boundary:
    """An error boundary inside the trio thread: one service (a node) and the calls
    made on its behalf. An exception that escapes the service ends this boundary only:
    the calls in flight on it raise BridgeClosed(cause), as does every later call, and
    the thread with its other services runs on. Used from the trio thread only,
    except `error`, which the asyncio side reads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._scopes: set[trio.CancelScope] = set()

    def closed_error(self) -> BridgeClosed:
        return BridgeClosed(f"{self.name} failed", self.error)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        for scope in list(self._scopes):
            scope.cancel()


class _Call:
    """One asyncio caller waiting on the trio thread."""

    __slots__ = ("fut", "loop", "scope")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> None:
        self.loop, self.fut = loop, fut
        self.scope: trio.CancelScope | None = None


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class TrioThread:
    """One trio event loop in a daemon thread, owning a nursery for services.

    Lifetime: `start()` returns once the loop runs; `stop()` cancels every service,
    waits for the thread, and is idempotent. Services started with `start_service`
    are owned by the thread's nursery and end with it. If the thread ends for any
    reason, every caller still waiting on it receives BridgeClosed with the cause.
    """

    def __init__(self, name: str = "libp2p-trio") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pending: dict[int, _Call] = {}
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._token is not None

    @property
    def error(self) -> BaseException | None:
        """What ended the thread, if it did not stop in order."""
        return self._error

    def start(self) -> TrioThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise BridgeClosed("trio thread failed to start", self._error)
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
            self._error = root_cause(e)
            log.error("bridge_failed", error=repr(self._error))
        finally:
            self._token = None
            self._ready.set()
            # Whoever still waits learns why, instead of hanging or being cancelled.
            with self._lock:
                stranded = list(self._pending.values())
                self._pending.clear()
            for call in stranded:
                self._deliver(call, False, self._closed_error())

    def _closed_error(self) -> BridgeClosed:
        if self._error is not None:
            return BridgeClosed("the libp2p trio thread died", self._error)
        return BridgeClosed("the libp2p trio thread has stopped")

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

    def _deliver(self, call: _Call, ok: bool, value: Any) -> None:
        with self._lock:
            self._pending.pop(id(call), None)
        try:
            call.loop.call_soon_threadsafe(_settle, call.fut, ok, value)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, boundary: Boundary | None = None) -> T:
        """Runs `await fn(*args)` in the trio thread and returns its result here.

        Raises what `fn` raises; BridgeClosed (with the cause) if the thread, or the
        `boundary` the call runs under, ends before `fn` does. Cancelling the caller
        cancels `fn`."""
        if boundary is not None and boundary.error is not None:
            raise boundary.closed_error()
        loop = asyncio.get_running_loop()
        call = _Call(loop, loop.create_future())

        async def runner() -> None:
            if boundary is not None and boundary.error is not None:
                self._deliver(call, False, boundary.closed_error())
                return
            with trio.CancelScope() as scope:
                call.scope = scope
                if boundary is not None:
                    boundary._scopes.add(scope)
                try:
                    result = await fn(*args)
                except BaseException as e:
                    if _is_cancellation(e):
                        raise  # the thread is going down (its end settles the call), or ours below
                    self._deliver(call, False, e)
                    return
                else:
                    self._deliver(call, True, result)
                    return
                finally:
                    if boundary is not None:
                        boundary._scopes.discard(scope)
            # Our own scope was cancelled: by the boundary failing, or by the caller.
            if boundary is not None and boundary.error is not None:
                self._deliver(call, False, boundary.closed_error())
            else:
                self._deliver(call, False, asyncio.CancelledError())

        def spawn() -> None:
            try:
                self._nursery.start_soon(runner)  # type: ignore[union-attr]
            except RuntimeError:  # the nursery closed between submit and now
                self._deliver(call, False, self._closed_error())

        with self._lock:
            self._pending[id(call)] = call
        try:
            self._submit(spawn)
            return await call.fut
        except asyncio.CancelledError:
            if call.scope is not None:
                self._try_submit(call.scope.cancel)
            raise
        finally:
            with self._lock:
                self._pending.pop(id(call), None)

    async def start_service(
        self, fn: Callable[..., Awaitable[None]], *args: Any, boundary: Boundary | None = None
    ) -> Any:
        """Starts a long-lived trio task `fn(*args, task_status=...)` in the thread's
        nursery and returns the value it passes to `task_status.started()`.

        With a `boundary`, an exception the service raises once started is logged
        (`service_failed`) and ends that boundary only; without one it ends the thread."""

        async def guarded(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            started = False

            class Status:
                def started(self, value: Any = None) -> None:
                    nonlocal started
                    started = True
                    task_status.started(value)

            try:
                await fn(*args, task_status=Status())
            except Exception as e:
                if boundary is None or not started:
                    raise
                cause = root_cause(e)
                log.error("service_failed", service=boundary.name, error=repr(cause))
                boundary.fail(cause)

        async def starter() -> Any:
            return await self._nursery.start(guarded)  # type: ignore[union-attr]

        return await self.call(starter)

    def run_sync_soon(self, fn: Callable[[], None]) -> None:
        """Runs `fn()` soon in the trio thread. An exception it raises is logged
        (`bridge_callback_failed`): raised there, it would end the thread."""

        def guarded() -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - must not reach trio's run loop
                log.error("bridge_callback_failed", error=repr(e))

        self._submit(guarded)

    def _submit(self, fn: Callable[[], None]) -> None:
        token = self._token
        if token is None:
            raise self._closed_error()
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            raise self._closed_error() from None

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
