"""The dashboard's web server (aiohttp): the page, its static assets, a JSON API and a
server-sent event stream that pushes every new snapshot.

Routes (docs/dashboard.md):
    GET /                 the page
    GET /static/NAME      app.js, style.css
    GET /api/task         the task: parameters, phase, round, deadline, chain time, money
    GET /api/workers      registered workers, with what a run directory says of them
    GET /api/rounds       per round: models, scores, contributions, ranking, rewards
    GET /api/run          what the run directory gave: accuracy per round, final accuracy
    GET /api/snapshot     all of the above in one object (what the stream sends)
    GET /api/stream       text/event-stream: one `snapshot` event now and after each change

It only reads: no route changes anything, and it binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from discofl_p2p.dashboard.reader import TaskReader
from discofl_p2p.trust.scoring import DEFAULT_SCORING

_log = logging.getLogger("discofl.dashboard")

KEEPALIVE_S = 15.0
"""A comment line on an idle event stream this often, so proxies keep it open."""

READER_KEY = web.AppKey("reader", TaskReader)
_STATIC = ("index.html", "app.js", "style.css")
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_SECURITY_HEADERS = {
    # Nothing but our own script and styles; no inline script, nothing from elsewhere.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> bytes:
    return resources.files("discofl_p2p.dashboard").joinpath("static", name).read_bytes()


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="application/json", headers=_SECURITY_HEADERS)


async def _index(request: web.Request) -> web.Response:
    return web.Response(body=_asset("index.html"), content_type="text/html", headers=_SECURITY_HEADERS)


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=_TYPES[Path(name).suffix], headers=_SECURITY_HEADERS)


def _part(key: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        snap = request.app[READER_KEY].snapshot()
        return _json(snap[key] if key else snap)

    return handler


async def _stream(request: web.Request) -> web.StreamResponse:
    reader = request.app[READER_KEY]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **_SECURITY_HEADERS}
    )
    await resp.prepare(request)
    version = -1
    try:
        while True:
            snap = reader.snapshot()
            if snap["version"] != version:
                version = snap["version"]
                await resp.write(f"event: snapshot\nid: {version}\ndata: {json.dumps(snap)}\n\n".encode())
            try:
                await asyncio.wait_for(reader.wait_newer(version), KEEPALIVE_S)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the browser went away, or the server is shutting down
    return resp


def make_app(reader: TaskReader, *, follow: bool = True) -> web.Application:
    """The web application over `reader`; with `follow`, the app runs the reader
    (`run_forever`) from startup to cleanup."""
    app = web.Application()
    app[READER_KEY] = reader
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    for key in ("task", "workers", "rounds", "run"):
        app.router.add_get(f"/api/{key}", _part(key))
    app.router.add_get("/api/snapshot", _part(""))
    app.router.add_get("/api/stream", _stream)
    if follow:
        app.cleanup_ctx.append(_follow)
    return app


async def _follow(app: web.Application) -> Any:
    reader = app[READER_KEY]

    async def run() -> None:
        try:
            await reader.run_forever()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the page shows why it stopped following
            _log.warning("dashboard stopped following the chain: %r", e)
            reader.error = f"stopped following the chain: {e!r}"
            reader._publish({**reader.snapshot(), "error": reader.error})

    task = asyncio.create_task(run(), name="dashboard reader")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serves `app` on host:port (0 picks a free port); returns the runner and the URL."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}/"


@contextlib.contextmanager
def dashboard_thread(
    ws_url: str,
    *,
    contract: str | None = None,
    run_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    scoring: str = DEFAULT_SCORING,
    scoring_params: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """Serves a dashboard from a thread of its own (its own event loop) while the block
    runs; yields its URL. `scenario --dashboard` uses it beside the run."""
    ready = threading.Event()
    url: list[str] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            reader = TaskReader(ws_url, contract, run_dir, scoring, scoring_params)
            runner, u = await start_site(make_app(reader), host, port)
        except BaseException as e:
            failure.append(e)
            ready.set()
            raise
        url.append(u)
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="dashboard", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        loop.close()
        raise failure[0]
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


@contextlib.contextmanager
def run_dashboard(
    port: int | None,
    ws_url: str,
    run_dir: Path | None,
    say: Callable[[str], object] = print,
    scoring: str = DEFAULT_SCORING,
    scoring_params: Mapping[str, Any] | None = None,
) -> Iterator[str | None]:
    """`scenario --dashboard [PORT]`: a dashboard on 127.0.0.1 beside the run while the
    block runs (nothing when `port` is None). It finds the contract in the run's
    log.jsonl once the requester deploys it; `scoring` and `scoring_params` are the
    scenario's rule."""
    if port is None:
        yield None
        return
    with dashboard_thread(ws_url, run_dir=run_dir, port=port, scoring=scoring, scoring_params=scoring_params) as url:
        say(f"dashboard: {url}")
        yield url
