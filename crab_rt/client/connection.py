"""The connection of one stream to `crab-rt serve`: `AsyncClient`, its blocking twin `Client`, and `stream_file`.

Owns checking the URL and options, the handshake (bearer token, TLS, refusals turned into one-line
`ClientError`s), the `start` / `ready` exchange, splitting audio into messages of at most the server's
`max_message_bytes`, and a reader task that keeps draining the connection into a bounded queue while you send.
`AsyncClient` runs on the caller's asyncio loop. `Client` runs an `AsyncClient` on a private event-loop thread,
so both share one implementation of the protocol, and `send_audio` may be called from any number of threads
(each call's messages stay contiguous on the wire). `stream_file` / `iter_file` send a file decoded exactly as
`crab-rt listen` reads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from crab_rt.audio import PCM_FORMATS, SAMPLE_RATE
from crab_rt.client.messages import (
    ClientError,
    Done,
    Message,
    Ready,
    ServerError,
    encode_pcm,
    parse_message,
    split_payload,
)
from crab_rt.errors import missing_dependency
from crab_rt.serve.protocol import ProtocolError, StartRequest

if TYPE_CHECKING:
    import ssl

__all__ = ["AsyncClient", "Client", "iter_file", "stream_file"]

log = logging.getLogger(__name__)


# ---- the connection ----------------------------------------------------------------------------------------


_END = object()  # put in the inbox when the connection closed after `done`


class _AsyncInbox:
    """The reader's bounded queue, consumed on the event loop (AsyncClient)."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(maxsize)
        self._terminal: Any = None

    async def put(self, item: Any) -> None:
        await self._queue.put(item)

    def close(self, terminal: Any) -> None:
        self._terminal = terminal
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(terminal)

    async def get(self) -> Any:
        if self._terminal is not None and self._queue.empty():
            return self._terminal
        return await self._queue.get()


class _ThreadInbox:
    """The reader's bounded queue, consumed by a thread (Client); a full queue makes the reader wait."""

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._terminal: Any = None

    async def put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(0.01)

    def close(self, terminal: Any) -> None:
        self._terminal = terminal
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(terminal)

    def get(self) -> Any:
        while True:  # a timeout, so that Ctrl-C reaches a main thread waiting here on every platform
            if self._terminal is not None and self._queue.empty():
                return self._terminal
            with contextlib.suppress(queue.Empty):
                return self._queue.get(timeout=0.5)


def _parse_url(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ClientError(f"invalid server URL {url!r}: expected ws://HOST:PORT/ or wss://HOST:PORT/")
    host = parts.hostname
    return host, port or (443 if parts.scheme == "wss" else 80)


class AsyncClient:
    """One stream to a `crab-rt serve` server, on asyncio.

    `await AsyncClient.connect(url, ...)` or `async with AsyncClient(url, ...) as client:` connects, sends
    `start` and waits for `ready` (`client.ready`). Then `send_audio` any number of times, `stop`, and
    `async for msg in client.messages()` until `done`. A reader task drains the connection while you send,
    into a queue of at most `max_queued_messages` (when it is full, the reader waits and the server drops
    messages for this stream, telling you with a `messages_dropped` error).

    Args:
        url: ws://HOST:PORT/ or wss://HOST:PORT/.
        sample_rate, format, channels: the PCM you send (format "f32le" or "s16le").
        language: the ASR language to ask for, or None for the server's.
        stream_id: your name for the stream, or None (the server picks one).
        realtime: live audio (the server paces it) or False for files (as fast as the pipeline goes).
        token: sent as `Authorization: Bearer <token>`.
        ssl_context: TLS settings for wss:// (default: the system's CAs).
        open_timeout: seconds for the handshake, and again for `ready`.
        max_queued_messages: the reader's queue bound.
        provisional: also receive a provisional event per utterance (`stage == "provisional"`, the voice alone,
            before ASR), then the final one; asks for protocol 1.1 (a server without the voice-only classifier
            refuses it with `bad_start`).

    Raises:
        ClientError: an invalid URL or option (on construction); on open, see `open`.
    """

    def __init__(self, url: str, *, sample_rate: int = SAMPLE_RATE, format: str = "f32le", channels: int = 1,
                 language: str | None = None, stream_id: str | None = None, realtime: bool = True,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None, open_timeout: float = 10.0,
                 max_queued_messages: int = 1024, provisional: bool = False) -> None:
        self.url = url
        host, port = _parse_url(url)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            # protocol 1.1 only when it is needed, so that a server of version 1 takes every other stream
            start = StartRequest(sample_rate, format, channels, language, stream_id, realtime,
                                 1.1 if provisional else 1, provisional).to_message()
            self.request = StartRequest.parse(json.dumps(start))
        except ProtocolError as e:
            raise ClientError(f"invalid stream option: {e}") from None
        if token is not None and (not isinstance(token, str) or not token or token != token.strip()
                                  or any(c in token for c in "\r\n")):
            raise ClientError("token must be a non-empty string of one line without surrounding blanks")
        if ssl_context is not None and not url.lower().startswith("wss://"):
            raise ClientError(f"an ssl_context applies only to wss:// URLs, not {url}")
        if not open_timeout > 0 or not max_queued_messages >= 1:
            raise ClientError("open_timeout must be > 0 and max_queued_messages >= 1")
        self.token = token
        self.ssl_context = ssl_context
        self.open_timeout = float(open_timeout)
        self.frame_bytes = channels * np.dtype(PCM_FORMATS[format]).itemsize
        self.ready: Ready | None = None
        self._inbox: _AsyncInbox | _ThreadInbox = _AsyncInbox(max_queued_messages)
        self._ws: Any = None
        self._reader: asyncio.Task | None = None
        self._send_lock: asyncio.Lock | None = None
        self._stopped = False
        self._closed = False
        self._fatal: ServerError | None = None  # the first fatal error message (set by the reader)
        self._done: Done | None = None  # set by the reader
        self._ended = False  # the consumer has seen done or a terminal error
        self._end_error: BaseException | None = None

    @classmethod
    async def connect(cls, url: str, **options: Any) -> AsyncClient:
        """Construct, connect, send `start` and wait for `ready`."""
        client = cls(url, **options)
        await client.open()
        return client

    async def __aenter__(self) -> AsyncClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> Ready:
        """Connect, send `start`, wait for `ready` and start the reader.

        Raises:
            ClientError: connection refused, HTTP 401 (bad token) or 503 (server full, loading, draining) with
                the server's text, a TLS failure, a timeout, or the server refused the `start`.
            DependencyError: `websockets` is not installed.
        """
        if self._ws is not None or self._closed:
            raise ClientError("this client was already opened; make a new one per stream")
        self._send_lock = asyncio.Lock()
        self._ws = await self._handshake()
        try:
            await self._ws.send(json.dumps(self.request.to_message()))
            self.ready = await self._await_ready()
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"crab-rt-client {self.url}")
        return self.ready

    async def _handshake(self) -> Any:
        import ssl

        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidHandshake, InvalidStatus
        except ImportError as e:
            raise missing_dependency("websockets", "serve") from e
        headers = {"Authorization": f"Bearer {self.token}"} if self.token is not None else None
        tls = {"ssl": self.ssl_context} if self.ssl_context is not None else {}
        try:
            # No permessage-deflate: PCM hardly compresses, and it would cost CPU on both ends.
            return await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                                 compression=None, **tls)
        except InvalidStatus as e:
            raise self._refused(e.response.status_code, bytes(e.response.body or b"")) from None
        except (TimeoutError, asyncio.TimeoutError):
            raise ClientError(f"{self.address}: no WebSocket handshake within {self.open_timeout:g} s") from None
        except ssl.SSLError as e:
            raise ClientError(f"{self.address}: TLS handshake failed: {e.reason or e}") from None
        except OSError as e:
            refused = isinstance(e, ConnectionRefusedError) or "Connect call failed" in str(e)
            why = "connection refused (is `crab-rt serve` running there?)" if refused else (e.strerror or str(e))
            raise ClientError(f"cannot connect to {self.address}: {why}") from None
        except InvalidHandshake as e:
            raise ClientError(f"{self.address}: WebSocket handshake failed: {e}") from None

    def _refused(self, status: int, body: bytes) -> ClientError:
        text = " ".join(body.decode("utf-8", "replace").split())[:300] or "(no text)"
        if status == 401:
            what = f"unauthorized (HTTP 401): {text}; check the token"
        elif status == 503:
            what = f"server unavailable (HTTP 503): {text}; retry later"
        else:
            what = f"the server refused the WebSocket connection with HTTP {status}: {text}"
        return ClientError(f"{self.address}: {what}", status=status)

    async def _await_ready(self) -> Ready:
        from websockets.exceptions import ConnectionClosed

        try:
            data = await asyncio.wait_for(self._ws.recv(), self.open_timeout)
        except asyncio.TimeoutError:
            raise ClientError(f"{self.address}: no ready message within {self.open_timeout:g} s of start") from None
        except ConnectionClosed as e:
            raise self._closed_error(e, "before ready") from None
        msg = parse_message(data)
        if isinstance(msg, Ready):
            return msg
        if isinstance(msg, ServerError):
            raise ClientError(f"{self.address}: the server refused the stream: {msg.code}: {msg.message}",
                              error_code=msg.code)
        kind = json.loads(data).get("type")
        raise ClientError(f"{self.address}: expected a ready message first, got {kind!r}")

    def _closed_error(self, e: Any, when: str = "before done") -> ClientError:
        """The error for a connection that closed early (`e`: websockets' ConnectionClosed)."""
        code = e.rcvd.code if e.rcvd is not None else 1006
        reason = e.rcvd.reason if e.rcvd is not None else ""
        if self._fatal is not None:
            return ClientError(f"{self.address}: the server ended the stream with {self._fatal.code}: "
                               f"{self._fatal.message} (closed with code {code})", close_code=code,
                               error_code=self._fatal.code)
        if code == 1009:
            text = "code 1009, message too big: a message exceeded the server's max_message_bytes"
        elif e.rcvd is None:
            text = "the connection was lost (no close frame, code 1006)"
        else:
            text = f"code {code}" + (f": {reason}" if reason else "")
        return ClientError(f"{self.address}: the server closed the connection {when} ({text})", close_code=code)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        warned: set[str] = set()
        try:
            while True:
                data = await self._ws.recv()
                msg = parse_message(data)
                if msg is None:
                    kind = json.loads(data)["type"]
                    if kind not in warned:
                        warned.add(kind)
                        log.warning("%s: ignoring server messages of unknown type %r", self.address, kind)
                    continue
                if isinstance(msg, ServerError) and msg.fatal and self._fatal is None:
                    self._fatal = msg
                elif isinstance(msg, Done):
                    self._done = msg
                await self._inbox.put(msg)
        except ConnectionClosed as e:
            await self._inbox.put(_END if self._done is not None else self._closed_error(e))
        except ClientError as e:
            await self._inbox.put(e)
            await self._ws.close(1002, "protocol error")

    def _take(self, item: Any) -> Message | None:
        """Book-keeping for one queue item; None at the end. Raises the terminal error."""
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            self._ended, self._end_error = True, item
            raise item
        if isinstance(item, Done):
            self._ended = True
            if self._fatal is not None:
                self._end_error = ClientError(f"{self.address}: the server ended the stream with {self._fatal.code}: "
                                              f"{self._fatal.message}", error_code=self._fatal.code)
        return item

    def _require_open(self) -> Any:
        if self._ws is None or self.ready is None:
            raise ClientError("the client is not open: call open() or use it as a context manager")
        if self._closed:
            raise ClientError("the client is closed")
        return self._ws

    async def send_audio(self, audio: np.ndarray | bytes | bytearray | memoryview) -> None:
        """Send audio in the declared format (see `encode_pcm`), in messages of at most `max_message_bytes`.

        Concurrent calls are serialized: the messages of one call are never interleaved with another's.
        Waits while the server applies back-pressure.

        Raises:
            ClientError: bad audio, called after `stop`, or the connection ended (naming the cause).
        """
        await self._send_payload(encode_pcm(audio, self.request.format, self.request.channels))

    async def _send_payload(self, data: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self._require_open()
        if self._stopped:
            raise ClientError("send_audio after stop: the stream takes no more audio")
        parts = split_payload(data, self.ready.max_message_bytes, self.frame_bytes)
        async with self._send_lock:
            try:
                for part in parts:
                    await ws.send(part)
            except ConnectionClosed as e:
                raise self._send_error(e) from None

    def _send_error(self, e: Any) -> ClientError:
        if self._done is not None and self._fatal is None:
            return ClientError(f"{self.address}: the stream has ended (done: {self._done.reason}); "
                               "it takes no more audio")
        return self._closed_error(e, "while sending")

    async def stop(self) -> None:
        """Send `stop` (end of audio); the server then sends the last events and `done`. Idempotent."""
        from websockets.exceptions import ConnectionClosed

        ws = self._require_open()
        if self._stopped:
            return
        self._stopped = True
        async with self._send_lock:
            try:
                await ws.send(json.dumps({"type": "stop"}))
            except ConnectionClosed as e:
                if self._done is None:
                    raise self._send_error(e) from None

    async def messages(self) -> AsyncIterator[Message]:
        """The server's messages, in order, up to and including `done`.

        Raises:
            ClientError: the connection ended before `done` (close code and reason), or, after `done` was
                yielded, the stream ended with a fatal error (its code and message).
        """
        while True:
            if self._ended:
                if self._end_error is not None:
                    raise self._end_error
                return
            msg = self._take(await self._inbox.get())
            if msg is None:
                return
            yield msg

    async def close(self) -> None:
        """Stop the reader and close the connection; idempotent. `stop` first to get the last events."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        self._inbox.close(ClientError(f"{self.address}: the client was closed before the server sent done"))


class Client:
    """The blocking client: the same methods as `AsyncClient` (same arguments), without `await`.

    It runs an `AsyncClient` on a private event-loop thread, so that one implementation serves both.
    `send_audio` is thread-safe (call it from several threads or a capture callback; each call's messages
    stay together) and blocks while the server applies back-pressure; `messages()` may be iterated in
    another thread than the one that sends.
    """

    def __init__(self, url: str, *, max_queued_messages: int = 1024, **options: Any) -> None:
        self._client = AsyncClient(url, max_queued_messages=max_queued_messages, **options)
        self._client._inbox = _ThreadInbox(max_queued_messages)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, **options: Any) -> Client:
        """Construct, connect, send `start` and wait for `ready`."""
        client = cls(url, **options)
        client.open()
        return client

    @property
    def ready(self) -> Ready | None:
        return self._client.ready

    @property
    def request(self) -> StartRequest:
        return self._client.request

    def __enter__(self) -> Client:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Ready:
        """See `AsyncClient.open`."""
        with self._lock:
            if self._loop is not None:
                raise ClientError("this client was already opened; make a new one per stream")
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="crab-rt-client", daemon=True)
            self._thread.start()
        try:
            return self._call(self._client.open())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Any) -> Any:
        """Run a coroutine on the private loop and wait for it (thread-safe)."""
        loop, thread = self._loop, self._thread
        try:
            if loop is None or thread is None or not thread.is_alive():
                raise RuntimeError
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # never opened, or closed (a closed loop refuses new work)
            coro.close()
            raise ClientError("the client is not open: call open() or use it as a context manager") from None
        while True:  # waits with a timeout: Ctrl-C gets through, and a close() in another thread is noticed
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if future.done():
                    raise
                if not thread.is_alive():
                    future.cancel()
                    raise ClientError("the client was closed") from None

    def send_audio(self, audio: np.ndarray | bytes | bytearray | memoryview) -> None:
        """See `AsyncClient.send_audio`; thread-safe."""
        data = encode_pcm(audio, self._client.request.format, self._client.request.channels)  # in the caller's thread
        self._call(self._client._send_payload(data))

    def stop(self) -> None:
        """See `AsyncClient.stop`."""
        self._call(self._client.stop())

    def messages(self) -> Iterator[Message]:
        """See `AsyncClient.messages`."""
        client = self._client
        while True:
            if client._ended:
                if client._end_error is not None:
                    raise client._end_error
                return
            msg = client._take(client._inbox.get())
            if msg is None:
                return
            yield msg

    def close(self) -> None:
        """Close the connection and the private loop; idempotent and thread-safe."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or loop.is_closed():
                return
            try:
                asyncio.run_coroutine_threadsafe(self._client.close(), loop).result()
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()


def iter_file(url: str, path: str | Path, *, realtime: bool = False, chunk_ms: float = 100.0,
              **options: Any) -> Iterator[Message]:
    """Send an audio or video file and yield the server's messages as they arrive, up to `done`.

    The file is decoded by `crab_rt.runtime.sources.FileSource` (16 kHz mono float32) and sent as f32le, so
    the events equal `crab-rt listen --input FILE` on the same server settings.

    Args:
        url: the server.
        path: the file.
        realtime: pace the audio at 1x and declare a live stream; False sends as fast as the server takes it.
        chunk_ms: audio per `send_audio` call.
        **options: `Client` options: language, stream_id, token, ssl_context, open_timeout.

    Raises:
        AudioError: the file is missing or cannot be decoded.
        ClientError: see `Client`.
    """
    from crab_rt.runtime.sources import FileSource

    source = FileSource(path, chunk_ms=chunk_ms, realtime=realtime)
    client = Client(url, sample_rate=SAMPLE_RATE, format="f32le", channels=1, realtime=realtime, **options)
    failures: list[BaseException] = []

    def send() -> None:
        try:
            for chunk in source:
                client.send_audio(chunk)
            client.stop()
        except BaseException as e:  # noqa: BLE001 - reported by the consuming thread
            failures.append(e)
            if not isinstance(e, ClientError):
                client.close()  # wakes the consumer

    with source, client:
        sender = threading.Thread(target=send, name="crab-rt-file-sender", daemon=True)
        sender.start()
        try:
            yield from client.messages()
        except ClientError:
            if failures and not isinstance(failures[0], ClientError):
                raise failures[0] from None
            raise
        finally:
            source.close()
        sender.join()
    if failures and not isinstance(failures[0], ClientError):
        raise failures[0]


def stream_file(url: str, path: str | Path, *, realtime: bool = False, chunk_ms: float = 100.0,
                **options: Any) -> list[Message]:
    """`iter_file` collected: every message of the stream, `ready` excluded, `done` last."""
    return list(iter_file(url, path, realtime=realtime, chunk_ms=chunk_ms, **options))
