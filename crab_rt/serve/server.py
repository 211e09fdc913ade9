"""The asyncio WebSocket server: one connection is one stream of a shared `Pipeline`.

Contract
--------
- `Server(bundle, pipeline_config, server_config)`; `await server.serve()` listens
  at once (so `/healthz` can say "loading"), loads the pipeline in a thread, serves
  until `request_drain()` (SIGTERM / Ctrl-C in the CLI), drains and returns.
  `serve_in_background(...)` runs one on its own thread and loop (tests, benchmarks,
  embedding).
- Admission happens in the HTTP handshake (`_process_request`): `/healthz`,
  `/metrics`, the browser page's files (`crab_rt.serve.page`, a plain GET of `/`)
  and its `/admit` check are answered there; a bad token gets 401, a full, loading or
  draining server 503, each with a one-line body. A stream slot is taken only
  by a valid `start` (`_take_slot`), so connections that never send one hold
  none; a `start` that finds every slot taken (another connection's `start`
  came first) is answered `server_full`. `max_streams` is exact.
- Floods: at most `max_connections` connections are open (streams and those
  before `start`); one more is closed at TCP accept, before anything is read
  (`_BoundedConnection`), so the server's own file descriptors stay bounded.
  The WebSocket handshake must finish within `handshake_timeout_s` and `start`
  arrive within `start_timeout_s`; the listen backlog is `ACCEPT_BACKLOG`.
- Each connection runs a `_Session` on the event loop: it parses `start`, feeds
  decoded audio to its `Stream` in a thread of the server's executor (VAD and
  segmentation, and the wait of `overflow="block"`, never block the loop), and
  forwards events and speech marks, which the pipeline's threads hand over with
  `call_soon_threadsafe`, through a bounded outgoing queue to one sender task.
- Back-pressure: the session does not read the next message while `accept`
  runs, or while a `realtime` client is more than `realtime_slack_s` ahead of
  the wall clock. TCP then pushes back on the client.
- A session's failure never reaches another session: every error is answered on
  its own connection (`error`, then `done`, then a close code) and logged as one
  line on the `crab_rt` logger.
- The engine behind the sessions is `server.pipeline`; a session uses only its
  `create_stream`, `model.labels`, `model.choice.describe()`, `config` and
  `queue_depths()`. `crab_rt.serve.ray` runs these sessions, `_admit` and
  `_health_body` in a Ray Serve ingress over another engine (`RayEngine`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import importlib
import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crab_rt import __version__
from crab_rt.audio import SAMPLE_RATE, PcmDecoder
from crab_rt.bundle import Bundle
from crab_rt.checks import is_int
from crab_rt.errors import AudioError, ConfigError, CrabError, missing_dependency
from crab_rt.runtime.events import EmotionEvent
from crab_rt.runtime.pipeline import Pipeline, PipelineConfig, Stream
from crab_rt.runtime.segmenter import SpeechMark
from crab_rt.serve import page, protocol
from crab_rt.serve.metrics import ServerMetrics
from crab_rt.serve.protocol import CLOSE, ProtocolError, StartRequest

__all__ = ["ServerConfig", "Server", "BackgroundServer", "serve_in_background"]

log = logging.getLogger(__name__)

_END = object()  # the sender task's stop marker
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
ACCEPT_BACKLOG = 128  # TCP connections the kernel queues before the server accepts them (listen(2) backlog)


@dataclass(frozen=True)
class ServerConfig:
    """Network settings and limits of `crab-rt serve` (docs/protocol.md explains each).

    Attributes:
        host: address to bind; loopback by default.
        port: TCP port; 0 picks a free one (`Server.port` tells which).
        max_streams: open streams; one more is refused with HTTP 503.
        max_connections: open connections, streams and those not yet started; one more is closed at TCP accept.
        max_message_bytes: largest WebSocket message; larger closes the connection (1009).
        handshake_timeout_s: a connection that has not finished its WebSocket handshake (and TLS) by then is
            closed (slowloris).
        start_timeout_s: a connection that has not sent `start` by then ends (`idle_timeout`); until its
            `start` it holds no stream slot.
        idle_timeout_s: a started stream without a message for this long ends.
        realtime_slack_s: how far a `realtime` client may run ahead of the wall clock.
        max_buffered_audio_s: `serve --ray` only: audio a client may have sent beyond what its stream has read.
            Serve's proxy reads every message at once, so the client cannot be paced through TCP; beyond this,
            the audio is dropped and the stream ends with a `protocol` error. The single-process server stops
            reading instead (TCP back-pressure) and never needs it.
        max_pending_messages: per-connection outgoing queue; overflow is dropped and reported.
        drain_timeout_s: how long a drain waits for the streams to finish.
        token: bearer token the clients must send (None: no authentication). Not shown in repr.
        tls_cert, tls_key: PEM files; both given: wss:// (TLS).
        ui: serve the browser page at `/` (crab_rt.serve.page); False: `--no-ui`.
    """

    host: str = "127.0.0.1"
    port: int = protocol.DEFAULT_PORT
    max_streams: int = 16
    max_connections: int = 256
    max_message_bytes: int = 1 << 20
    handshake_timeout_s: float = 5.0
    start_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    realtime_slack_s: float = 2.0
    max_buffered_audio_s: float = 30.0
    max_pending_messages: int = 256
    drain_timeout_s: float = 30.0
    token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    ui: bool = True

    def validate(self) -> ServerConfig:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"server.{name} = {getattr(self, name)!r} is out of range: {allowed}")

        if not isinstance(self.host, str) or not self.host.strip():
            raise bad("host", "must be a host name or address")
        if not is_int(self.port) or not 0 <= self.port <= 65535:
            raise bad("port", "must be in [0, 65535] (0: any free port)")
        if not is_int(self.max_streams) or not 1 <= self.max_streams <= 1024:
            raise bad("max_streams", "must be in [1, 1024]")
        if not is_int(self.max_connections) or not self.max_streams <= self.max_connections <= 65536:
            raise bad("max_connections", f"must be in [max_streams ({self.max_streams}), 65536]")
        for name in ("handshake_timeout_s", "start_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise bad(name, "must be in (0, 3600]")
        if not is_int(self.max_message_bytes) or not 1024 <= self.max_message_bytes <= 64 << 20:
            raise bad("max_message_bytes", "must be in [1024, 67108864]")
        if not 0 < self.idle_timeout_s <= 3600:
            raise bad("idle_timeout_s", "must be in (0, 3600]")
        if not 0.1 <= self.realtime_slack_s <= 60:
            raise bad("realtime_slack_s", "must be in [0.1, 60]")
        if not self.realtime_slack_s < self.max_buffered_audio_s <= 3600:
            raise bad("max_buffered_audio_s", f"must be in (realtime_slack_s ({self.realtime_slack_s:g}), 3600]")
        if not is_int(self.max_pending_messages) or not 8 <= self.max_pending_messages <= 65536:
            raise bad("max_pending_messages", "must be in [8, 65536]")
        if not 0 < self.drain_timeout_s <= 3600:
            raise bad("drain_timeout_s", "must be in (0, 3600]")
        if self.token is not None and not self.token:
            raise ConfigError("server.token is empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        return self

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS: cannot load certificate {config.tls_cert} with key {config.tls_key}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    return context


class Server:
    """Many streams of one pipeline behind a WebSocket; see the module docstring.

    Args:
        bundle: model bundle folder (or a loaded `Bundle`).
        pipeline_config: runtime settings shared by every stream.
        config: network settings and limits.
    """

    def __init__(self, bundle: str | Path | Bundle, pipeline_config: PipelineConfig | None = None,
                 config: ServerConfig | None = None) -> None:
        for module in ("websockets", "prometheus_client"):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise missing_dependency(module, "serve") from e
        self.bundle = bundle
        self.pipeline_config = (pipeline_config or PipelineConfig()).validate()
        self.config = (config or ServerConfig()).validate()
        self._tls = _tls_context(self.config)
        self.pipeline: Pipeline | None = None
        self.metrics = ServerMetrics(self._queue_depths)
        self.state = "loading"  # then "ready", "draining", "stopped"
        self.port: int | None = None
        self._slots = 0  # taken by a valid start, released when its session ends
        self._connections = 0  # open TCP connections of the listener (_BoundedConnection)
        self._sessions: set[_Session] = set()
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested: asyncio.Event | None = None
        self._force_close: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.language: str | None = None

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{self.config.scheme}://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The browser page's address (http, or https with TLS; 127.0.0.1 when listening on every interface)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.config.host, self.config.host)
        host = host if ":" not in host or host.startswith("[") else f"[{host}]"
        return f"{'https' if self.config.tls_cert else 'http'}://{host}:{self.port}/"

    def _queue_depths(self) -> dict[str, int]:
        return self.pipeline.queue_depths() if self.pipeline is not None else {}

    # ---- lifecycle ------------------------------------------------------------------
    async def serve(self, started: concurrent.futures.Future | None = None) -> None:
        """Listen, load the models, serve until `request_drain()`, then drain and return.

        Args:
            started: resolved with the server once the models are loaded (or with the load error).

        Raises:
            CrabError: the port cannot be bound, or the bundle or a backend cannot be loaded.
        """
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._drain_requested = asyncio.Event()
        self._force_close = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.config.max_streams + 1,
                                                               thread_name_prefix="crab-serve")
        cfg = self.config
        try:
            try:
                ws_server = await serve(
                    self._handle, cfg.host, cfg.port, ssl=self._tls, max_size=cfg.max_message_bytes,
                    process_request=self._process_request, create_connection=_bounded_connection(self),
                    open_timeout=cfg.handshake_timeout_s, backlog=ACCEPT_BACKLOG,
                    # No keepalive pings: while back-pressure holds a stream's reads, its client's pong waits
                    # behind unread audio and a ping timeout would cut a healthy client (seen with 16 clients on
                    # 2 cores). The idle timeout ends connections that really went quiet.
                    server_header=f"crab-rt/{__version__}", ping_interval=None, close_timeout=5, max_queue=16,
                )
            except OSError as e:
                raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
            async with ws_server:
                self.port = ws_server.sockets[0].getsockname()[1]
                if cfg.host not in _LOOPBACK and cfg.token is None:
                    log.warning("listening on %s without a token: anyone who can reach it can stream "
                                "(--token-file)", cfg.host)
                log.debug("crab-rt serve: %s: loading %s", self.url,
                         self.bundle.root if isinstance(self.bundle, Bundle) else self.bundle)
                self.pipeline = await self._loop.run_in_executor(self._executor, self._load_pipeline)
                asr = self.pipeline.config.asr
                self.language = None if asr is None else asr.language
                self.state = "ready"
                log.debug("crab-rt serve: %s", self.pipeline.model.choice.describe())
                page_line = f"; the browser page: {self.page_url}" if self.config.ui else ""
                log.info("crab-rt serve: ready on %s (%s); /healthz and /metrics on the same port%s",
                         self.url, self.pipeline.describe(), page_line)
                if started is not None:
                    started.set_result(self)
                await self._drain_requested.wait()
                await self._drain()
        except BaseException as e:
            if started is not None and not started.done():
                started.set_exception(e)
            raise
        finally:
            self.state = "stopped"
            if self.pipeline is not None:
                await self._loop.run_in_executor(self._executor, self.pipeline.close)
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _load_pipeline(self) -> Pipeline:
        return Pipeline(self.bundle, self.pipeline_config)

    def request_drain(self) -> None:
        """Start the drain (thread-safe; a second call closes the remaining connections at once)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped in between
            loop.call_soon_threadsafe(self._on_drain_request)

    def _on_drain_request(self) -> None:
        if self._drain_requested.is_set():
            log.warning("second interrupt: closing %d stream(s) without waiting", len(self._sessions))
            self._force_close.set()
        self._drain_requested.set()

    async def _drain(self) -> None:
        self.state = "draining"
        sessions = list(self._sessions)
        log.info("draining: %d stream(s) open; new connections are refused", len(sessions))
        for session in sessions:
            session.drain()
        tasks = [asyncio.ensure_future(s.finished.wait()) for s in sessions]
        force = asyncio.ensure_future(self._force_close.wait())
        try:
            if tasks:
                await asyncio.wait([asyncio.gather(*tasks), force], timeout=self.config.drain_timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
            for t in tasks:
                t.cancel()
        left = [s for s in self._sessions if not s.finished.is_set()]
        if left:
            log.warning("drain: %d stream(s) did not finish in time; closing them", len(left))
            for s in left:
                s.abort()
        log.info("drained")

    # ---- handshake ------------------------------------------------------------------
    def _process_request(self, connection, request):
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return self._health(connection)
        if path == "/metrics":
            body, content_type = self.metrics.render()
            return _respond(connection, 200, body.decode("utf-8"), content_type)
        authorization = page.bearer_header(request.headers.get("Authorization"), query)
        if path == "/admit":
            return _respond(connection, *self._admit_answer(authorization, _peer(connection)))
        if path in page.ASSETS and page.is_page_request(request.headers):
            status, body, headers = page.answer(path, self.config.ui)
            response = connection.respond(status, body.decode("utf-8"))
            for name, value in headers.items():
                _set_header(response, name, value)
            return response
        refusal = self._admit(authorization, _peer(connection))
        if refusal is not None:
            return self._refuse(connection, *refusal)
        return None

    def _admit_answer(self, authorization: str | None, peer: str) -> tuple[int, str, str]:
        """GET /admit, (status, body, Content-Type): would a stream be admitted now? The handshake's refusal (one
        line), else 200 with what the page needs (JSON). Shared with the Ray Serve ingress."""
        refusal = self._admit(authorization, peer)
        if refusal is not None:
            status, _, message = refusal
            return status, message + "\n", "text/plain"
        model = self.pipeline.model
        body = {"status": "ok", "server": f"crab-rt {__version__}", "protocol": protocol.PROTOCOL_VERSION,
                "labels": list(model.labels), "provisional": bool(model.has_voice),
                "asr": self.pipeline.config.asr is not None, "backend": model.choice.summary()}
        return 200, json.dumps(body) + "\n", "application/json"

    def _admit(self, authorization: str | None, peer: str) -> tuple[int, str, str] | None:
        """Admission of one connection: None when admitted, else (HTTP status, reason, message), counted and
        logged. No slot is taken here (`_take_slot` at `start`). Shared with the Ray Serve ingress."""
        if self.config.token is not None and not _token_ok(authorization, self.config.token):
            refusal = (401, "unauthorized", "missing or wrong bearer token "
                       "(send the header Authorization: Bearer <token>)")
        elif self.state != "ready":
            reason = "loading" if self.state == "loading" else "draining"
            message = "server is loading its models" if reason == "loading" else "server is draining"
            refusal = (503, reason, f"{message}; retry later")
        elif self._slots >= self.config.max_streams:
            refusal = (503, "full", f"server full: {self._slots} of {self.config.max_streams} streams active; "
                       "retry later")
        else:
            return None
        status, reason, message = refusal
        self.metrics.refused.labels(reason).inc()
        log.log(logging.WARNING if status == 401 else logging.INFO, "refused %s: %s", peer, message)
        return refusal

    def _take_slot(self) -> bool:
        """A stream slot for a valid `start` (loop thread); False when all `max_streams` are taken."""
        if self._slots >= self.config.max_streams:
            return False
        self._slots += 1
        self.metrics.streams_active.inc()
        self.metrics.streams_total.inc()
        return True

    def _release_slot(self) -> None:
        self._slots -= 1
        self.metrics.streams_active.dec()

    def _refuse(self, connection, status: int, reason: str, message: str):
        """The handshake's answer to a refusal of `_admit` (already counted and logged there)."""
        response = connection.respond(status, message + "\n")
        for name, value in refusal_headers(status).items():
            _set_header(response, name, value)
        return response

    def _health_body(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of GET /healthz."""
        body = {"status": self.state if self.state != "stopped" else "draining", "version": __version__,
                "streams": self._slots, "max_streams": self.config.max_streams, "connections": len(self._sessions)}
        if self.pipeline is not None:
            body["backend"] = self.pipeline.model.choice.describe()
        return (200 if self.state == "ready" else 503), body

    def _health(self, connection):
        status, body = self._health_body()
        return _respond(connection, status, json.dumps(body) + "\n", "application/json")

    async def _handle(self, connection) -> None:
        session = _Session(self, connection, next(self._ids))
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            if session.holds_slot:
                session.holds_slot = False
                self._release_slot()
            session.finished.set()


def _bounded_connection(server: Server) -> type:
    """The listener's connection class: closes a TCP connection at accept when `max_connections` are open."""
    from websockets.asyncio.server import ServerConnection

    class _BoundedConnection(ServerConnection):
        counted = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if server._connections >= server.config.max_connections:
                server.metrics.refused.labels("connections").inc()  # no log line: a flood would flood the log
                transport.abort()
                return
            server._connections += 1
            self.counted = True

        def connection_lost(self, exc) -> None:
            if self.counted:
                self.counted = False
                server._connections -= 1
            super().connection_lost(exc)

    return _BoundedConnection


def refusal_headers(status: int) -> dict[str, str]:
    """The headers of a refused handshake: Retry-After on 503, WWW-Authenticate on 401."""
    if status == 503:
        return {"Retry-After": "1"}
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="crab-rt"'}
    return {}


def _respond(connection, status: int, body: str, content_type: str):
    response = connection.respond(status, body)
    _set_header(response, "Content-Type", content_type)
    return response


def _set_header(response, name: str, value: str) -> None:
    if name in response.headers:
        del response.headers[name]
    response.headers[name] = value


def _token_ok(header: str | None, token: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    scheme, _, given = (header or "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))
    return ok and scheme.lower() == "bearer"


def _peer(connection) -> str:
    try:
        host, port = connection.remote_address[:2]
        return f"{host}:{port}"
    except Exception:  # noqa: BLE001 - a closed transport has no address; only used in log lines
        return "?"


class _Session:
    """One connection's stream: protocol state, its `Stream`, the outgoing queue and the sender task."""

    def __init__(self, server: Server, connection, number: int) -> None:
        self.server = server
        self.ws = connection
        self.number = number
        self.loop = asyncio.get_running_loop()
        self.metrics = server.metrics
        self.limit = server.config.max_pending_messages
        self.stream: Stream | None = None
        self.holds_slot = False  # a stream slot taken by this connection's start (released by Server._handle)
        self.stream_id = f"stream-{number}"
        self.out: asyncio.Queue = asyncio.Queue()
        self.sender: asyncio.Task | None = None
        self.finished = asyncio.Event()
        self.draining = asyncio.Event()
        self.alive = True  # the client is still there: events are worth queueing
        self.audio_s = 0.0
        self.utterances = 0
        self.events = 0
        self.dropped_messages = 0
        self.unreported_drops = 0
        self.reported_utterance_drops = 0

    # ---- outgoing ------------------------------------------------------------------
    def post(self, message: dict[str, Any], must_send: bool = False) -> bool:
        """Queue a message (loop thread); False when it was dropped.

        The bound drops and counts; `must_send` (ready, fatal error, done) bypasses it.
        """
        if not self.alive:
            return False
        if not must_send and self.out.qsize() >= self.limit:
            self.dropped_messages += 1
            self.unreported_drops += 1
            self.metrics.messages_dropped.inc()
            return False
        if message.get("type") == "error":
            self.metrics.errors.labels(message["code"]).inc()
        self.out.put_nowait(message)
        return True

    def post_threadsafe(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped
            self.loop.call_soon_threadsafe(self.post, message)

    def on_event(self, event: EmotionEvent) -> None:  # the pipeline's fusion thread
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._post_event, event)

    def _post_event(self, event: EmotionEvent) -> None:
        if event.stage == "provisional":
            self.metrics.provisional_latency.observe(event.latency_ms["end_to_event"] / 1000.0)
            if self.post(protocol.event_message(event.to_dict())):
                self.metrics.provisional_events.inc()
            return
        self.metrics.observe_latency(event.latency_ms)
        if self.post(protocol.event_message(event.to_dict())):
            self.events += 1
            self.metrics.events.inc()

    def on_speech(self, mark: SpeechMark) -> None:  # the thread running accept/flush
        self.post_threadsafe(protocol.speech_message(mark.kind, self.stream_id, mark.time_s, mark.utterance_id))

    async def _send_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            message = await self.out.get()
            if message is _END:
                return
            try:
                await self.ws.send(json.dumps(message, ensure_ascii=False))
            except ConnectionClosed:
                self.alive = False
                return
            if self.unreported_drops and self.out.qsize() < self.limit:
                n, self.unreported_drops = self.unreported_drops, 0
                self.post(protocol.error_message("messages_dropped", f"stream {self.stream_id}: {n} message(s) "
                                                 f"dropped: the client read too slowly (queue of {self.limit})"))

    # ---- incoming ------------------------------------------------------------------
    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        self.sender = asyncio.ensure_future(self._send_loop())
        try:
            await self._run()
        except ConnectionClosed as e:
            self._disconnected(e)
        finally:
            if self.sender is not None and not self.sender.done():
                self.out.put_nowait(_END)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.sender, self.server.config.drain_timeout_s)

    def drain(self) -> None:
        self.draining.set()

    def abort(self) -> None:
        self.alive = False
        self.out.put_nowait(_END)
        asyncio.ensure_future(self.ws.close(CLOSE["going_away"], "server shut down"))

    async def _next_message(self, timeout_s: float | None = None) -> tuple[str, Any]:
        """("message", data), ("idle", None) after `timeout_s` (default: the idle timeout) or ("drain", None)."""
        if self.draining.is_set():
            return "drain", None
        recv = asyncio.ensure_future(self.ws.recv())
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            done, _ = await asyncio.wait({recv, drain}, timeout=timeout_s or self.server.config.idle_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        if recv in done:
            return "message", recv.result()  # raises ConnectionClosed when the client left
        recv.cancel()  # recv() is cancellation-safe: no message is lost
        return ("drain", None) if self.draining.is_set() else ("idle", None)

    async def _run(self) -> None:
        start_timeout_s = self.server.config.start_timeout_s
        kind, first = await self._next_message(start_timeout_s)
        if kind != "message":
            if kind == "idle":
                await self._refuse_start(ProtocolError("idle_timeout", f"no start message within "
                                                       f"{start_timeout_s:g} s"), CLOSE["normal"])
            else:
                await self._close(CLOSE["going_away"], "server is draining")
            return
        try:
            request = StartRequest.parse(first)
            self._check_language(request)
            if request.provisional and not self.server.pipeline.model.has_voice:
                raise ProtocolError("bad_start", "start.provisional: this server's bundle has no voice-only "
                                    "classifier, so it sends final events only; omit start.provisional")
        except ProtocolError as e:
            await self._refuse_start(e, CLOSE["policy"])
            return
        if not self.server._take_slot():  # every slot went to other connections' start since the handshake
            max_streams = self.server.config.max_streams
            await self._refuse_start(ProtocolError("server_full", f"server full: {max_streams} of {max_streams} "
                                                   "streams active; retry later"), CLOSE["try_again_later"])
            return
        self.holds_slot = True
        await self._stream(request)

    def _check_language(self, request: StartRequest) -> None:
        asked, own = request.language, self.server.language
        if asked is None or asked == own:
            return
        if own is None:
            has_asr = self.server.pipeline is not None and self.server.pipeline.config.asr is not None
            why = "it detects the language itself" if has_asr else "it runs without ASR"
            raise ProtocolError("unsupported_language", f"start.language = {asked!r}: this server takes no "
                                f"language ({why}); omit start.language")
        raise ProtocolError("unsupported_language", f"start.language = {asked!r}: this server transcribes "
                            f"{own!r} only; omit start.language or send {own!r}")

    async def _refuse_start(self, error: ProtocolError, code: int) -> None:
        log.warning("%s: %s", _peer(self.ws), error)
        self.post(protocol.error_message(error.code, str(error)), must_send=True)
        await self._close(code, error.code)

    async def _stream(self, request: StartRequest) -> None:
        server = self.server
        self.stream_id = request.stream_id or self.stream_id
        decoder = PcmDecoder(request.sample_rate, request.format, request.channels, f"stream {self.stream_id}")
        self.stream = server.pipeline.create_stream(self.stream_id, on_event=self.on_event,
                                                    on_speech=self.on_speech, provisional=request.provisional)
        self.post(protocol.ready_message(self.stream_id, f"crab-rt {__version__}", list(server.pipeline.model.labels),
                                         request, server.language, server.config.max_message_bytes,
                                         server.config.idle_timeout_s), must_send=True)
        log.debug("%s: stream %s started (%s)", _peer(self.ws), self.stream_id, request)
        # serve --ray: Serve's proxy reads whatever a client sends, so its connection (ray/ingress.py) holds the
        # messages this loop has not read yet itself, up to max_buffered_audio_s of this stream's audio.
        limit_buffer = getattr(self.ws, "limit_buffer", None)
        if limit_buffer is not None:
            width = 2 if request.format == "s16le" else 4
            limit_buffer(int(server.config.max_buffered_audio_s * request.sample_rate * request.channels * width))
        started: float | None = None
        while True:
            kind, message = await self._next_message()
            if getattr(self.ws, "overflowed", False):
                limit_s = server.config.max_buffered_audio_s
                await self._finish("error", flush=True, error=ProtocolError(
                    "protocol", f"stream {self.stream_id}: more than {limit_s:g} s of audio waited to be read: the "
                    "client sends faster than the server takes it, and serve --ray cannot pace it through TCP "
                    "(send at real time, or use crab-rt serve); the audio beyond was dropped"))
                return
            if kind == "drain":
                await self._finish("drain", flush=True)
                return
            if kind == "idle":
                await self._finish("idle_timeout", flush=True, error=ProtocolError(
                    "idle_timeout", f"stream {self.stream_id}: no message for {server.config.idle_timeout_s:g} s"))
                return
            if isinstance(message, str):
                stop = self._control(message)
                if isinstance(stop, ProtocolError):
                    await self._finish("error", flush=False, error=stop)
                    return
                await self._finish("stop", flush=True)
                return
            try:
                samples = decoder.decode(message)
            except AudioError as e:
                await self._finish("error", flush=False, error=ProtocolError("bad_audio", str(e)))
                return
            if request.realtime:
                now = time.perf_counter()
                started = now if started is None else started
                ahead = self.audio_s + samples.size / SAMPLE_RATE - (now - started) - server.config.realtime_slack_s
                if ahead > 0:  # the client is paced: nothing is read meanwhile (a drain cuts the wait short)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.draining.wait(), ahead)
            if not await self._accept(samples):
                return

    def _control(self, text: str) -> ProtocolError | None:
        """A text message after `start`: None for `stop`, else the protocol error it is."""
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return ProtocolError("protocol", f"stream {self.stream_id}: a text message that is not JSON "
                                 "(audio goes in binary messages)")
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "stop":
            return None
        if kind == "start":
            return ProtocolError("protocol", f"stream {self.stream_id}: a second start message")
        return ProtocolError("protocol", f"stream {self.stream_id}: unknown message type {kind!r} "
                             "(expected stop or binary audio)")

    async def _in_thread(self, fn, *args):
        return await self.loop.run_in_executor(self.server._executor, fn, *args)

    async def _accept(self, samples) -> bool:
        """Feed audio to the stream; False when the stream ended with an error."""
        stream = self.stream
        dropped = stream.dropped_utterances
        try:
            submitted = await self._in_thread(stream.accept, samples)
        except CrabError as e:  # a worker failed on an earlier utterance of this stream
            await self._finish("error", flush=False, error=ProtocolError("internal", _internal(self, e)))
            return False
        self.audio_s += samples.size / SAMPLE_RATE
        self.metrics.audio_seconds.inc(samples.size / SAMPLE_RATE)
        self._count(submitted, dropped)
        return True

    def _count(self, submitted: int, dropped_before: int) -> None:
        """Count the utterances an accept/flush produced, and report the ones the overflow policy dropped."""
        n = self.stream.dropped_utterances - dropped_before
        self.utterances += submitted
        self.metrics.utterances.inc(submitted - n)
        if n > 0:
            self.metrics.utterances_dropped.inc(n)
            self.post(protocol.error_message("utterance_dropped", f"stream {self.stream_id}: {n} utterance(s) "
                                             "dropped: the server is at its in-flight limit (overflow=drop)"))

    async def _finish(self, reason: str, flush: bool, error: ProtocolError | None = None) -> None:
        """End the stream: report the error, flush if asked, deliver the submitted utterances, `done`, close."""
        stream = self.stream
        close_code = CLOSE["going_away"] if reason == "drain" else CLOSE["normal"]
        if error is not None:
            log.warning("%s: %s", _peer(self.ws), error)
            self.post(protocol.error_message(error.code, str(error)), must_send=True)
            close_code = {"bad_audio": CLOSE["invalid_data"], "internal": CLOSE["internal"],
                          "idle_timeout": CLOSE["normal"]}.get(error.code, CLOSE["policy"])
        try:
            if flush:
                dropped = stream.dropped_utterances
                self._count(await self._in_thread(stream.flush), dropped)
            await self._wait_delivered()
        except CrabError as e:
            if error is None:
                log.warning("%s: %s", _peer(self.ws), _internal(self, e))
                self.post(protocol.error_message("internal", _internal(self, e)), must_send=True)
                reason, close_code = "error", CLOSE["internal"]
        except RuntimeError as e:  # the pipeline closed under a forced shutdown
            log.warning("%s: stream %s: %s", _peer(self.ws), self.stream_id, e)
        self.post(protocol.done_message(self.stream_id, reason, self.audio_s, self.utterances, self.events,
                                        stream.dropped_utterances, self.dropped_messages), must_send=True)
        await self._close(close_code, reason)

    async def _wait_delivered(self) -> None:
        """Until every submitted utterance of the stream is delivered (its events are then queued here)."""
        stream = self.stream
        while not await self._in_thread(stream.wait, 0.5):
            if self.server._force_close.is_set():
                raise RuntimeError("forced shutdown: utterances in flight abandoned")
        await asyncio.sleep(0)  # the events' call_soon_threadsafe callbacks run before `done` is queued

    async def _close(self, code: int, reason: str) -> None:
        self.out.put_nowait(_END)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sender, self.server.config.drain_timeout_s)
        await self.ws.close(code, reason)

    def _disconnected(self, e) -> None:
        """The connection ended without `done`: drop the audio in flight; submitted utterances finish unseen."""
        self.alive = False
        sent = getattr(e, "sent", None)
        if sent is not None and sent.code == CLOSE["too_big"]:
            self.metrics.errors.labels("message_too_big").inc()
            log.warning("%s: stream %s: %s (close code 1009)", _peer(self.ws), self.stream_id, sent.reason)
            return
        if sent is not None and getattr(e, "rcvd", None) is None:  # the WebSocket layer closed it, not the client
            log.warning("%s: stream %s: closed by the server's WebSocket layer with %d (%s) after %.1f s of audio",
                        _peer(self.ws), self.stream_id, sent.code, sent.reason, self.audio_s)
            return
        rcvd = e.rcvd.code if getattr(e, "rcvd", None) is not None else 1006
        if rcvd in (1000, 1001) and self.stream is None:
            log.debug("%s: closed before start", _peer(self.ws))
            return
        log.warning("%s: stream %s: client disconnected without stop (close code %d) after %.1f s of audio; "
                    "its audio in flight is dropped", _peer(self.ws), self.stream_id, rcvd, self.audio_s)


def _internal(session: _Session, error: BaseException) -> str:
    return f"stream {session.stream_id}: processing failed: {error}"


# ---- running in a background thread ------------------------------------------------------
@dataclass
class BackgroundServer:
    """A server running on its own thread and event loop; see `serve_in_background`."""

    server: Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def drain(self, timeout: float = 60.0) -> None:
        """Drain as SIGTERM would and wait for the server to stop."""
        self.server.request_drain()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the server did not stop within {timeout:g} s")


@contextlib.contextmanager
def serve_in_background(bundle: str | Path | Bundle, pipeline_config: PipelineConfig | None = None,
                        config: ServerConfig | None = None, start_timeout: float = 300.0,
                        ) -> Iterator[BackgroundServer]:
    """Run a `Server` on a daemon thread until the block ends (then drain it).

    Raises:
        CrabError: as `Server.serve` does, when it cannot start.
    """
    server = Server(bundle, pipeline_config, config)
    started: concurrent.futures.Future = concurrent.futures.Future()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(server.serve(started))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through `started`
            failure.append(e)
            if not started.done():
                started.set_exception(e)

    thread = threading.Thread(target=main, name="crab-serve-loop", daemon=True)
    thread.start()
    started.result(start_timeout)
    handle = BackgroundServer(server, thread)
    try:
        yield handle
    finally:
        if thread.is_alive():
            handle.drain()
        if failure and not isinstance(failure[0], asyncio.CancelledError):
            log.debug("background server ended with %r", failure[0])
