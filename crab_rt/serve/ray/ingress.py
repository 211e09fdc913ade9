"""The `CrabIngress` deployment: the WebSocket streams (the `crab-rt serve` session code over Starlette's
WebSocket), their front ends, /healthz, /metrics and the browser page (crab_rt.serve.page)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from crab_rt.errors import ConfigError
from crab_rt.runtime.pipeline import PipelineConfig, _fit_to_bundle
from crab_rt.serve import page
from crab_rt.serve.ray.engine import RayEngine
from crab_rt.serve.ray.serve_config import pipeline_from_dict, server_from_args
from crab_rt.serve.server import Server, ServerConfig, refusal_headers

log = logging.getLogger(__name__)


class _AsgiConnection:
    """A Starlette WebSocket with the part of the `websockets` connection API that `_Session` uses.

    A message over `max_size` closes the connection with 1009 (as the `websockets` server's limit does); the
    client's close arrives as `ConnectionClosed` with the code it sent.

    Bounded buffering: Serve's proxy and this replica's ASGI layer read every message a client sends into
    unbounded queues, whether the session reads or not, so a client cannot be paced through TCP. A pump task
    therefore empties them as messages arrive and holds what the session has not read yet here, counted: at
    most `limit_buffer(n)` bytes of audio (the session sets it from `max_buffered_audio_s` at `start`). Beyond
    that the connection is `overflowed`: further audio is dropped (counted in `dropped_bytes`), and the session
    ends the stream with a `protocol` error at its next read.
    """

    def __init__(self, websocket, max_size: int) -> None:
        self.ws = websocket
        self.max_size = max_size
        self._closed: BaseException | None = None
        self._inbox: collections.deque = collections.deque()
        self._arrived = asyncio.Event()
        self._pump: asyncio.Task | None = None
        self.limit_bytes: int | None = None  # None until the session has read `start` (a few ms): no dropping
        self.buffered_bytes = 0
        self.dropped_bytes = 0
        self.overflowed = False

    def limit_buffer(self, limit_bytes: int) -> None:
        self.limit_bytes = max(limit_bytes, self.max_size)
        self.overflowed = self.overflowed or self.buffered_bytes > self.limit_bytes

    async def _pump_messages(self) -> None:
        """Move the client's messages from the ASGI layer into the inbox as they arrive (see the class doc)."""
        try:
            while True:
                message = await self.ws.receive()
                data = message.get("bytes")
                if data is not None:
                    limit = self.limit_bytes
                    if self.overflowed or (limit is not None and self.buffered_bytes + len(data) > limit):
                        self.overflowed = True
                        self.dropped_bytes += len(data)
                        continue
                    self.buffered_bytes += len(data)
                self._inbox.append(message)
                self._arrived.set()
                if message["type"] == "websocket.disconnect":
                    return
        except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it
            self._inbox.append(e)
            self._arrived.set()

    def stop_reading(self) -> None:
        if self._pump is not None:
            self._pump.cancel()

    async def _next(self) -> dict:
        """The next message of the inbox; cancellation-safe (nothing is taken before the wait ends)."""
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._pump_messages())
        while not self._inbox:
            self._arrived.clear()
            await self._arrived.wait()
        message = self._inbox.popleft()
        if isinstance(message, Exception):
            raise message
        data = message.get("bytes")
        if data is not None:
            self.buffered_bytes -= len(data)
        return message

    @property
    def remote_address(self):
        client = self.ws.client
        return (client.host, client.port) if client is not None else None

    def _closed_error(self, rcvd=None, sent=None) -> BaseException:
        from websockets.exceptions import ConnectionClosed

        if self._closed is None:
            self._closed = ConnectionClosed(rcvd, sent)
        return self._closed

    async def recv(self):
        from websockets.frames import Close

        if self._closed is not None:
            raise self._closed
        message = await self._next()
        if message["type"] == "websocket.disconnect":
            raise self._closed_error(rcvd=Close(int(message.get("code") or 1005), message.get("reason") or ""))
        data = message.get("bytes")
        if data is None:
            data = message.get("text") or ""
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8"))
        if size > self.max_size:
            reason = f"frame exceeds limit of {self.max_size} bytes"  # the websockets server's words
            with contextlib.suppress(Exception):
                await self.ws.close(1009, reason)
            raise self._closed_error(sent=Close(1009, reason))
        return data

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self.ws.send_text(text)
        except Exception as e:  # noqa: BLE001 - the client is gone: as websockets reports it
            raise self._closed_error() from e

    async def close(self, code: int = 1000, reason: str = "") -> None:
        from websockets.frames import Close

        if self._closed is not None:
            return
        self._closed_error(sent=Close(code, reason))
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


class _IngressHost(Server):
    """The part of `Server` a `_Session` relies on (config, metrics, admission, drain), without its listener."""

    def __init__(self, pipeline_config: PipelineConfig, config: ServerConfig, engine: RayEngine) -> None:
        super().__init__("(ray)", pipeline_config, config)
        self._executor = concurrent.futures.ThreadPoolExecutor(config.max_streams + 1,
                                                               thread_name_prefix="crab-ingress")
        self._drain_requested = asyncio.Event()
        self._force_close = asyncio.Event()
        self.pipeline = engine
        self.language = None if pipeline_config.asr is None else pipeline_config.asr.language
        self.state = "ready"


class IngressReplica:
    """The `CrabIngress` deployment: WebSocket streams, their front ends, /healthz and /metrics.

    Args:
        model: handle of the `CrabModel` deployment.
        asr: handle of the `CrabAsr` deployment, or None (no ASR).
        args: `app_args(...)`.
    """

    async def __init__(self, model, asr, args: dict[str, Any]) -> None:
        pipeline = pipeline_from_dict(args["pipeline"])
        server = server_from_args(_with_token(args))
        info = await model.info.remote()
        asr_info = await asr.info.remote() if asr is not None else None
        pipeline = _fit_to_bundle(pipeline, SimpleNamespace(max_audio_s=info["max_audio_s"], root=info["bundle"]))
        host = _IngressHost(pipeline, server, None)
        self.engine = RayEngine(model, asr, pipeline, info, asr_info, int(args.get("retries", 2)),
                                float(args.get("request_timeout_s", 60.0)), host.metrics.registry)
        host.pipeline = self.engine
        self.host = host
        self.replica = _replica_id()
        self._drain_task: asyncio.Task | None = None
        log.info("crab-rt ingress %s ready: %s", self.replica, self.engine.model.choice.describe())

    def __serve_build_asgi_app__(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route, WebSocketRoute

        host, engine = self.host, self.engine

        async def healthz(request):
            status, body = host._health_body()
            body["ingress_replica"] = self.replica
            return JSONResponse(body, status_code=status)

        async def metrics(request):
            body, content_type = host.metrics.render()
            return Response(body, headers={"Content-Type": content_type})

        async def admit(request):
            status, body, content_type = host._admit_answer(
                page.bearer_header(request.headers.get("authorization"), request.url.query), _peer_of(request))
            return Response(body, status_code=status, media_type=content_type)

        async def page_file(request):
            status, body, headers = page.answer(request.url.path, host.config.ui)
            return Response(body, status_code=status, headers=headers)

        async def stream(websocket):
            loop = asyncio.get_running_loop()
            host._loop = engine.loop = loop
            authorization = page.bearer_header(websocket.headers.get("authorization"), websocket.url.query)
            refusal = host._admit(authorization, _peer_of(websocket))
            if refusal is not None:
                await _deny(websocket, *refusal)
                return
            connection = _AsgiConnection(websocket, host.config.max_message_bytes)
            await websocket.accept()  # the stream slot is taken by its start (Server._take_slot)
            try:
                await host._handle(connection)
            finally:
                connection.stop_reading()

        return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics), Route("/admit", admit),
                                 *(Route(path, page_file) for path in page.ASSETS),
                                 WebSocketRoute("/{path:path}", stream)])

    async def drain(self) -> dict[str, Any]:
        """Drain this replica as SIGTERM drains `crab-rt serve` (done with reason drain, close 1001); returns
        {"replica", "streams_left"} when it is done. Idempotent: a second call waits for the first."""
        if self._drain_task is None:
            self.host._loop = self.engine.loop = self.engine.loop or asyncio.get_running_loop()
            self._drain_task = asyncio.ensure_future(self.host._drain())
        await asyncio.shield(self._drain_task)
        return {"replica": self.replica, "streams_left": len(self.host._sessions)}

    async def __del__(self) -> None:
        """Serve stops the replica once its streams ended (or kills it after its grace period): drain any left."""
        host = getattr(self, "host", None)
        if host is None:  # the constructor failed
            return
        with contextlib.suppress(Exception):
            if host.state == "ready" and host._sessions:
                await self.drain()
        self.engine.close()
        host._executor.shutdown(wait=False, cancel_futures=True)


def _with_token(args: dict[str, Any]) -> dict[str, Any]:
    """args with the token read from `token_file` (on the ingress's node)."""
    if args.get("token") is not None or not args.get("token_file"):
        return args
    path = Path(args["token_file"])
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"token_file {path}: {e.strerror or e}") from None
    if not token:
        raise ConfigError(f"token_file {path} is empty")
    return {**args, "token": token}


def _peer_of(websocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client is not None else "?"


async def _deny(websocket, status: int, reason: str, message: str) -> None:
    """Refuse a handshake with an HTTP status and a one-line body, as `crab-rt serve` does, where the ASGI server
    supports it (the "websocket.http.response" extension); else close it before accepting (HTTP 403)."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        from starlette.responses import PlainTextResponse

        await websocket.send_denial_response(PlainTextResponse(message + "\n", status, headers=refusal_headers(status)))
    else:
        await websocket.close(code=1013 if status == 503 else 1008, reason=message[:120])


def _replica_id() -> str:
    try:
        from ray import serve

        context = serve.get_replica_context()
        return str(getattr(context.replica_id, "unique_id", None) or context.replica_tag)
    except Exception:  # noqa: BLE001 - outside a replica (tests)
        return "local"


