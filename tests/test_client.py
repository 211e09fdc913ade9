"""`crab_rt.client` and `crab-rt client` against a small fake protocol server (no models).

The fake server speaks protocol 1 as docs/protocol.md describes it: `ready` after `start`, the scripted
messages after `stop`, then `done` and a close. It records what the client sent (every text message is
validated against the client schema) and the handshake's Authorization header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
import struct
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
jsonschema = pytest.importorskip("jsonschema")

from crab_rt.audio import write_wav  # noqa: E402
from crab_rt.cli import main  # noqa: E402
from crab_rt.client import (  # noqa: E402
    AsyncClient,
    Client,
    ClientError,
    Done,
    Ready,
    ServerError,
    SpeechEnd,
    SpeechStart,
    encode_pcm,
    parse_message,
    split_payload,
    stream_file,
)
from crab_rt.runtime.events import EmotionEvent  # noqa: E402
from crab_rt.serve.protocol import (  # noqa: E402
    StartRequest,
    done_message,
    error_message,
    event_message,
    ready_message,
    schema_path,
    speech_message,
)

CLIENT_SCHEMA = json.loads(schema_path("client").read_text())
SERVER_SCHEMA = json.loads(schema_path("server").read_text())
LABELS = ["angry", "happy", "neutral", "sad"]


def make_event(utterance_id: int, stream_id: str = "s-1") -> EmotionEvent:
    return EmotionEvent(
        stream_id=stream_id, utterance_id=utterance_id, start_s=0.5 + utterance_id, end_s=1.25 + utterance_id,
        text="and so my fellow americans" if utterance_id == 0 else "", text_flagged=utterance_id == 1,
        label="neutral", confidence=0.41,
        probabilities={"angry": 0.12, "happy": 0.27, "neutral": 0.41, "sad": 0.2},
        latency_ms={"end_to_event": 212.4, "asr": 150.2, "speech_encoder": 60.1, "text_encoder": 8.2, "head": 1.1,
                    "queue_wait": 0.4},
        forced_split=False,
    )


class FakeServer:
    """A protocol-1 server on 127.0.0.1 (port 0) in a background thread.

    Args:
        script: messages sent after `stop` (dicts; `done` is appended unless `send_done` is False).
        max_message_bytes: announced in `ready`.
        token: when set, a handshake without `Bearer <token>` gets 401 with a text body.
        refuse: (status, body) answered to every handshake.
        handler: replaces the standard behaviour: `async handler(ws, server)`.
    """

    def __init__(self, script: list[dict] | None = None, *, max_message_bytes: int = 1 << 20,
                 token: str | None = None, refuse: tuple[int, str] | None = None,
                 handler: Callable | None = None, stream_id: str = "s-1", tls=None) -> None:
        self.script = script or []
        self.max_message_bytes = max_message_bytes
        self.token = token
        self.refuse = refuse
        self.handler = handler
        self.stream_id = stream_id
        self.tls = tls
        self.texts: list[dict] = []
        self.binary: list[bytes] = []
        self.start: StartRequest | None = None
        self.authorization: list[str | None] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self.port}/"

    async def _serve(self):
        from websockets.asyncio.server import serve

        return await serve(self._handle, "127.0.0.1", 0, process_request=self._process_request, ssl=self.tls)

    def _process_request(self, connection, request):
        self.authorization.append(request.headers.get("Authorization"))
        if self.refuse is not None:
            return connection.respond(HTTPStatus(self.refuse[0]), self.refuse[1])
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid or missing token\n")
        return None

    async def receive(self, ws):
        """The next client message: dict for text (schema-checked), bytes for binary."""
        data = await ws.recv()
        if isinstance(data, bytes):
            self.binary.append(data)
            return data
        msg = json.loads(data)
        jsonschema.validate(msg, CLIENT_SCHEMA)
        self.texts.append(msg)
        return msg

    async def send(self, ws, msg: dict) -> None:
        jsonschema.validate(msg, SERVER_SCHEMA)
        await ws.send(json.dumps(msg))

    async def send_ready(self, ws) -> None:
        first = await self.receive(ws)
        self.start = StartRequest.parse(json.dumps(first))
        await self.send(ws, ready_message(self.stream_id, "crab-rt fake", LABELS, self.start, "en",
                                          self.max_message_bytes, 30.0))

    async def until_stop(self, ws) -> None:
        while not (isinstance(msg := await self.receive(ws), dict) and msg["type"] == "stop"):
            pass

    async def _handle(self, ws) -> None:
        if self.handler is not None:
            await self.handler(ws, self)
            return
        await self.send_ready(ws)
        await self.until_stop(ws)
        for msg in self.script:
            await self.send(ws, msg)
        events = sum(m["type"] == "event" for m in self.script)
        audio_s = sum(len(b) for b in self.binary) / self.start.channels / (4 if self.start.format == "f32le" else 2)
        await self.send(ws, done_message(self.stream_id, "stop", audio_s / self.start.sample_rate, events, events,
                                         0, 0))
        await ws.close()

    def close(self) -> None:
        async def stop():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()  # its self-pipe sockets too: left to the garbage collector, they warn in a later test


@pytest.fixture
def fake_server():
    servers: list[FakeServer] = []

    def start(*args, **kwargs) -> FakeServer:
        servers.append(FakeServer(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def speech_script(n_events: int = 2) -> list[dict]:
    script = []
    for i in range(n_events):
        script += [speech_message("speech_start", "s-1", 0.5 + i), speech_message("speech_end", "s-1", 1.2 + i, i),
                   event_message(make_event(i).to_dict())]
    return script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the start message, PCM encoding, splitting -----------------------------------------------------------


def test_start_message_content_and_schema(fake_server):
    server = fake_server()
    with Client(server.url, sample_rate=8000, format="s16le", channels=2, language="en", stream_id="robot-7:mic-0",
                realtime=False) as client:
        assert client.ready.max_message_bytes == 1 << 20 and client.ready.labels == tuple(LABELS)
        client.stop()
        assert [type(m) for m in client.messages()] == [Done]
    assert server.texts == [
        {"type": "start", "protocol": 1, "sample_rate": 8000, "format": "s16le", "channels": 2, "realtime": False,
         "language": "en", "stream_id": "robot-7:mic-0"},
        {"type": "stop"},
    ]
    with Client(server.url) as client:  # the defaults; language and stream_id left to the server
        client.stop()
        list(client.messages())
    assert server.texts[2] == {"type": "start", "protocol": 1, "sample_rate": 16000, "format": "f32le",
                               "channels": 1, "realtime": True}


def test_f32le_is_sent_as_is():
    x = np.array([0.0, 0.5, -1.0, 0.25, 1.5], dtype=np.float64)
    assert encode_pcm(x, "f32le") == struct.pack("<5f", 0.0, 0.5, -1.0, 0.25, 1.5)
    assert encode_pcm(x.astype(np.float32), "f32le") == struct.pack("<5f", 0.0, 0.5, -1.0, 0.25, 1.5)


def test_s16le_is_scaled_by_32768_rounded_and_clipped():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -2.0, 0.00002, 0.1], dtype=np.float32)
    # the server's scale (1/32768) inverted: 1.0 -> 32768 clipped to 32767; 0.00002 * 32768 = 0.655 -> 1;
    # 0.1 * 32768 = 3276.8 -> 3277
    expected = [0, 16384, -16384, 32767, -32768, 32767, -32768, 1, 3277]
    assert encode_pcm(x, "s16le") == struct.pack("<9h", *expected)
    from crab_rt.audio import PcmDecoder  # the round trip through the server's decoder is exact

    pcm = np.array([-32768, -3, 0, 7, 32767], dtype="<i2")
    assert encode_pcm(PcmDecoder(16000, "s16le").decode(pcm.tobytes()), "s16le") == pcm.tobytes()
    assert encode_pcm(np.array([1, -2, 300], dtype=np.int16), "s16le") == struct.pack("<3h", 1, -2, 300)
    stereo = np.array([[0.5, -0.5], [1.0, 0.0]], dtype=np.float32)  # [time, channels] is interleaved
    assert encode_pcm(stereo, "s16le", channels=2) == struct.pack("<4h", 16384, -16384, 32767, 0)


def test_raw_bytes_are_sent_as_is_and_bad_audio_is_refused():
    assert encode_pcm(b"\x01\x02\x03\x04", "s16le", channels=2) == b"\x01\x02\x03\x04"
    with pytest.raises(ClientError, match="3 bytes of audio is not a whole number of s16le x 1-channel"):
        encode_pcm(b"\x01\x02\x03", "s16le")
    with pytest.raises(ClientError, match="NaN or infinite"):
        encode_pcm(np.array([0.0, np.nan]), "f32le")
    with pytest.raises(ClientError, match="dtype int32"):
        encode_pcm(np.array([1, 2], dtype=np.int32), "s16le")


def test_split_by_max_message_bytes_keeps_whole_frames():
    data = bytes(range(240))
    parts = split_payload(data, 100, 4)  # f32le mono: 25 samples a message
    assert [len(p) for p in parts] == [100, 100, 40]
    assert b"".join(parts) == data
    parts = split_payload(bytes(48), 10, 4)  # s16le stereo: 2 frames (8 bytes) a message
    assert [len(p) for p in parts] == [8] * 6
    with pytest.raises(ClientError, match="less than one sample frame"):
        split_payload(bytes(8), 3, 4)


def test_send_audio_splits_by_the_servers_max_message_bytes(fake_server):
    server = fake_server(max_message_bytes=100)
    x = (np.arange(60, dtype=np.float32) - 30) / 64
    with Client(server.url) as client:
        client.send_audio(x)
        client.send_audio(b"\x00" * 8)
        client.stop()
        done = list(client.messages())[-1]
    assert [len(b) for b in server.binary] == [100, 100, 40, 8]
    assert b"".join(server.binary[:3]) == x.astype("<f4").tobytes()
    assert done.audio_s == round(62 / 16000, 3)


# ---- typed messages ------------------------------------------------------------------------------------------


def test_messages_are_typed_in_order(fake_server):
    server = fake_server(speech_script(2) + [error_message("utterance_dropped", "server full: utterance 2 dropped")])
    with Client(server.url, stream_id="s-1") as client:
        assert isinstance(client.ready, Ready) and client.ready.stream_id == "s-1" and client.ready.language == "en"
        client.send_audio(np.zeros(1600, dtype=np.float32))
        client.stop()
        messages = list(client.messages())
    assert [type(m) for m in messages] == [SpeechStart, SpeechEnd, EmotionEvent] * 2 + [ServerError, Done]
    assert messages[0] == SpeechStart("s-1", 0.5)
    assert messages[1] == SpeechEnd("s-1", 1.2, 0)
    assert messages[2] == make_event(0) and messages[5] == make_event(1)
    assert messages[6] == ServerError("utterance_dropped", "server full: utterance 2 dropped", False)
    assert messages[7] == Done("s-1", "stop", 0.1, 2, 2, 0, 0)


def test_a_provisional_stream_asks_for_protocol_1_1_and_parses_both_stages(fake_server):
    server = fake_server()
    with Client(server.url, provisional=True) as client:
        client.stop()
        list(client.messages())
    assert server.texts[0] == {"type": "start", "protocol": 1.1, "sample_rate": 16000, "format": "f32le",
                               "channels": 1, "realtime": True, "provisional": True}
    provisional = dataclasses.replace(make_event(0), stage="provisional", text="")
    assert parse_message(json.dumps(event_message(provisional.to_dict()))) == provisional
    # An event of a version-1 server (no stage, no abstained) is a final one.
    old = {k: v for k, v in event_message(make_event(0).to_dict()).items() if k not in ("stage", "abstained")}
    assert parse_message(json.dumps(old)) == make_event(0)
    with pytest.raises(ClientError, match="stage = 'early': expected one of provisional, final"):
        parse_message(json.dumps({**event_message(make_event(0).to_dict()), "stage": "early"}))


def test_parse_ignores_extra_fields_and_unknown_types():
    msg = parse_message(json.dumps({"type": "speech_start", "stream_id": "a", "time_s": 1, "future": [1, 2]}))
    assert msg == SpeechStart("a", 1.0)
    event = parse_message(json.dumps({**event_message(make_event(0).to_dict()), "speaker": "x"}))
    assert event == make_event(0)
    assert event.to_json() == make_event(0).to_json()  # listen's line, field order included
    assert parse_message(json.dumps({"type": "speech_end", "stream_id": "a", "time_s": 2.0,
                                     "utterance_id": None})) == SpeechEnd("a", 2.0, None)
    assert parse_message(json.dumps({"type": "heartbeat", "stream_id": "a"})) is None


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"type": "speech_start", "stream_id": "a"}, "speech_start message without its 'time_s' field"),
        ({"type": "done", "stream_id": "a", "reason": "stop", "audio_s": 1.0, "utterances": 0, "events": 0,
          "dropped_utterances": 0}, "done message without its 'dropped_messages' field"),
        ({k: v for k, v in event_message(make_event(0).to_dict()).items() if k != "label"},
         "event message without its 'label' field"),
        ({"type": "error", "code": "internal", "message": "x", "fatal": "yes"}, "fatal = 'yes': expected true or false"),
        ({"type": "speech_end", "stream_id": "a", "time_s": "1.0", "utterance_id": 0}, "time_s = '1.0': expected a number"),
        ({"stream_id": "a"}, "without a type"),
    ],
)
def test_parse_refuses_missing_or_wrong_required_fields(message, match):
    with pytest.raises(ClientError, match=match):
        parse_message(json.dumps(message))


def test_parse_refuses_binary_and_non_json():
    with pytest.raises(ClientError, match="binary message"):
        parse_message(b"\x00\x01")
    with pytest.raises(ClientError, match="not JSON"):
        parse_message("{nope")


def test_a_message_missing_a_field_ends_the_stream_with_a_clear_error(fake_server):
    server = fake_server([{"type": "speech_start", "stream_id": "s-1"}])
    server.send = lambda ws, msg: ws.send(json.dumps(msg))  # the broken message would fail the server's schema check
    with Client(server.url) as client:
        client.stop()
        with pytest.raises(ClientError, match="speech_start message without its 'time_s' field"):
            list(client.messages())


# ---- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/", "127.0.0.1:8765", "ws://", "ws://host:port/", ""])
def test_invalid_url(url):
    with pytest.raises(ClientError, match="invalid server URL .*expected ws://HOST:PORT/ or wss://HOST:PORT/"):
        Client(url)


def test_invalid_options_are_refused_before_connecting():
    with pytest.raises(ClientError, match="start.stream_id = 'bad id'"):
        Client("ws://127.0.0.1:1/", stream_id="bad id")
    with pytest.raises(ClientError, match="start.format = 'u8'"):
        Client("ws://127.0.0.1:1/", format="u8")
    with pytest.raises(ClientError, match="ssl_context applies only to wss://"):
        import ssl

        Client("ws://127.0.0.1:1/", ssl_context=ssl.create_default_context())


def test_connection_refused_names_host_and_port():
    port = free_port()
    with pytest.raises(ClientError, match=rf"cannot connect to 127\.0\.0\.1:{port}: connection refused"):
        Client.connect(f"ws://127.0.0.1:{port}/")


def test_401_carries_the_servers_text_and_the_token_header_reaches_it(fake_server):
    server = fake_server(token="s3cret")
    with pytest.raises(ClientError, match=r"unauthorized \(HTTP 401\): invalid or missing token") as e:
        Client.connect(server.url, token="wrong")
    assert e.value.status == 401
    with pytest.raises(ClientError, match="HTTP 401"):
        Client.connect(server.url)
    with Client(server.url, token="s3cret") as client:
        client.stop()
        list(client.messages())
    assert server.authorization == ["Bearer wrong", None, "Bearer s3cret"]


def test_503_carries_the_servers_text(fake_server):
    server = fake_server(refuse=(503, "server full: 16 of 16 streams active"))
    with pytest.raises(ClientError, match=r"server unavailable \(HTTP 503\): server full: 16 of 16 streams active"):
        Client.connect(server.url)


def test_server_closing_mid_stream_names_code_and_reason(fake_server):
    async def crash(ws, server):
        await server.send_ready(ws)
        await server.receive(ws)  # one audio message
        await server.send(ws, speech_message("speech_start", "s-1", 0.1))
        await ws.close(1011, "worker crashed")

    server = fake_server(handler=crash)
    with Client(server.url) as client:
        client.send_audio(np.zeros(160, dtype=np.float32))
        got = []
        with pytest.raises(ClientError, match=r"closed the connection before done \(code 1011: worker crashed\)") as e:
            got.extend(client.messages())
        assert got == [SpeechStart("s-1", 0.1)] and e.value.close_code == 1011
        with pytest.raises(ClientError, match="1011|closed"):
            client.send_audio(np.zeros(160, dtype=np.float32))


def test_fatal_error_yields_the_rest_then_raises(fake_server):
    async def bad_audio(ws, server):
        await server.send_ready(ws)
        await server.receive(ws)
        await server.send(ws, event_message(make_event(0).to_dict()))
        await server.send(ws, error_message("bad_audio", "stream s-1: f32le audio holds NaN or infinite samples"))
        await server.send(ws, done_message("s-1", "error", 0.01, 1, 1, 0, 0))
        await ws.close(1007, "bad audio")

    server = fake_server(handler=bad_audio)
    with Client(server.url) as client:
        client.send_audio(b"\x00" * 64)
        got = []
        with pytest.raises(ClientError, match="ended the stream with bad_audio: stream s-1: f32le audio holds NaN") as e:
            got.extend(client.messages())
        assert [type(m) for m in got] == [EmotionEvent, ServerError, Done] and got[1].fatal
        assert e.value.error_code == "bad_audio"


def test_refused_start_raises_on_open(fake_server):
    async def refuse(ws, server):
        await server.receive(ws)
        await server.send(ws, error_message("unsupported_language", "this server transcribes en, not de"))
        await ws.close(1008, "unsupported language")

    server = fake_server(handler=refuse)
    with pytest.raises(ClientError, match="refused the stream: unsupported_language: this server transcribes en"):
        Client.connect(server.url, language="de")


def test_timeout_waiting_for_ready(fake_server):
    async def silent(ws, server):
        await server.receive(ws)
        await ws.wait_closed()

    server = fake_server(handler=silent)
    with pytest.raises(ClientError, match=r"no ready message within 0\.3 s"):
        Client.connect(server.url, open_timeout=0.3)


def test_websockets_missing_names_the_extra(fake_server, monkeypatch):
    from crab_rt.errors import DependencyError

    server = fake_server()
    monkeypatch.setitem(__import__("sys").modules, "websockets.asyncio.client", None)
    with pytest.raises(DependencyError, match=r"pip install 'crab-rt\[serve\]'"):
        Client.connect(server.url)


def test_tls_with_cafile_and_an_untrusted_certificate(fake_server, wav, self_signed_cert, capsys):
    import ssl

    cert, key = self_signed_cert
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = fake_server(speech_script(1), tls=tls)
    assert main(["client", "--url", server.url, "--input", str(wav), "--cafile", str(cert), "-q"]) == 0
    assert capsys.readouterr().out.splitlines() == [make_event(0).to_json()]
    assert main(["client", "--url", server.url, "--input", str(wav), "-q"]) == 2  # the system CAs do not trust it
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"crab-rt: error: 127.0.0.1:{server.port}: TLS handshake failed: "), err
    assert "CERTIFICATE_VERIFY_FAILED" in err[0]


def test_async_client(fake_server):
    server = fake_server(speech_script(1))

    async def run():
        async with AsyncClient(server.url, format="s16le", token="t") as client:
            await asyncio.gather(client.send_audio(np.full(800, 0.5)), client.send_audio(np.full(800, -0.5)))
            await client.stop()
            return [msg async for msg in client.messages()]

    messages = asyncio.run(run())
    assert [type(m) for m in messages] == [SpeechStart, SpeechEnd, EmotionEvent, Done]
    assert sorted(server.binary) == sorted([struct.pack("<800h", *[16384] * 800),
                                            struct.pack("<800h", *[-16384] * 800)])
    assert server.authorization == ["Bearer t"]


def test_blocking_client_from_four_threads_keeps_each_chunk_whole(fake_server):
    server = fake_server(max_message_bytes=4 * 30)  # a 100-sample chunk is 4 messages: 30 + 30 + 30 + 10
    chunk, per_thread = 100, 20

    with Client(server.url) as client:
        def feed(t: int) -> None:
            for i in range(per_thread):
                client.send_audio(np.full(chunk, (t * 64 + i) / 4096, dtype=np.float32))

        threads = [threading.Thread(target=feed, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client.stop()
        list(client.messages())
    assert len(server.binary) == 4 * per_thread * 4
    samples = np.frombuffer(b"".join(server.binary), dtype="<f4").reshape(-1, chunk)
    assert np.all(samples == samples[:, :1])  # every chunk arrived as one run of its own value
    ids = np.rint(samples[:, 0] * 4096).astype(int)
    for t in range(4):
        assert [i - t * 64 for i in ids if i // 64 == t] == list(range(per_thread))  # each thread's order kept


def test_the_reader_drains_while_the_client_sends_and_its_queue_is_bounded(fake_server):
    async def chatty(ws, server):
        await server.send_ready(ws)
        for i in range(50):  # before reading any audio
            await server.send(ws, speech_message("speech_start", "s-1", i))
        await server.until_stop(ws)
        await server.send(ws, done_message("s-1", "stop", 1.0, 0, 0, 0, 0))
        await ws.close()

    server = fake_server(handler=chatty)
    with Client(server.url, max_queued_messages=4) as client:
        for _ in range(20):
            client.send_audio(np.zeros(1600, dtype=np.float32))
        client.stop()
        assert client._client._inbox._queue.qsize() <= 4
        messages = list(client.messages())
    assert [m.time_s for m in messages[:-1]] == list(range(50)) and isinstance(messages[-1], Done)
    assert len(server.binary) == 20


def test_stream_file_of_a_missing_file_fails_before_connecting(tmp_path):
    from crab_rt.errors import AudioError

    with pytest.raises(AudioError, match="audio file not found"):
        stream_file(f"ws://127.0.0.1:{free_port()}/", tmp_path / "missing.wav")


def test_stream_file_sends_what_listen_reads(fake_server, tmp_path, tone):
    from crab_rt.audio import load_audio

    path = tmp_path / "tone.wav"
    write_wav(path, tone[:12345])
    server = fake_server(speech_script(1))
    messages = stream_file(server.url, path, stream_id="file-1")
    assert [type(m) for m in messages] == [SpeechStart, SpeechEnd, EmotionEvent, Done]
    assert server.start == StartRequest(16000, "f32le", 1, None, "file-1", False)
    assert b"".join(server.binary) == load_audio(path).astype("<f4").tobytes()
    assert max(len(b) for b in server.binary) == 1600 * 4  # 100 ms messages


# ---- the CLI -------------------------------------------------------------------------------------------------


@pytest.fixture
def wav(tmp_path, tone):
    path = tmp_path / "tone.wav"
    write_wav(path, tone[:8000])
    return path


def test_cli_prints_listens_json_lines(fake_server, wav, capsys):
    server = fake_server(speech_script(2))
    assert main(["client", "--url", server.url, "--input", str(wav)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines == [make_event(0).to_json(), make_event(1).to_json()]
    assert list(json.loads(lines[0])) == [f.name for f in dataclasses.fields(EmotionEvent)]
    assert "audio 0.5 s" in err and "utterances 2" in err
    assert server.start == StartRequest(16000, "f32le", 1, None, "file", False)  # listen's stream name


def test_cli_pretty_show_speech_and_output_file(fake_server, wav, tmp_path, capsys):
    server = fake_server(speech_script(2))
    out_file = tmp_path / "events.txt"
    assert main(["client", "--url", server.url, "--input", str(wav), "--format", "pretty", "--show-speech",
                 "--output", str(out_file), "--realtime", "--stream-id", "cam-1", "--language", "en"]) == 0
    lines = out_file.read_text().splitlines()
    assert lines[0] == '{"type": "speech_start", "stream_id": "s-1", "time_s": 0.5}'
    assert lines[1] == '{"type": "speech_end", "stream_id": "s-1", "time_s": 1.2, "utterance_id": 0}'
    assert lines[2] == '[   0.50-   1.25s] neutral     0.41     212 ms "and so my fellow americans"'
    assert lines[5] == "[   1.50-   2.25s] neutral     0.41     212 ms (text flagged)"
    assert capsys.readouterr().out == ""
    assert server.start == StartRequest(16000, "f32le", 1, "en", "cam-1", True)


def test_cli_stdin_sends_s16le_as_is(fake_server, monkeypatch, capsys):
    server = fake_server(speech_script(1))
    pcm = np.arange(-400, 400, dtype="<i2").tobytes() + b"\x07"  # a trailing partial frame is dropped
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(pcm)))
    assert main(["client", "--url", server.url, "--input", "-", "--rate", "8000", "--channels", "2"]) == 0
    assert server.start == StartRequest(8000, "s16le", 2, None, "live", True)
    assert b"".join(server.binary) == pcm[:-1]
    out, err = capsys.readouterr()
    assert out.splitlines() == [make_event(0).to_json()]
    assert "1 trailing byte(s) ignored" in err


def test_cli_token_file_and_non_fatal_error_warning(fake_server, wav, tmp_path, capsys):
    server = fake_server([error_message("messages_dropped", "3 messages dropped: the client read too slowly")],
                         token="s3cret")
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    assert main(["client", "--url", server.url, "--input", str(wav), "--token-file", str(token)]) == 0
    assert server.authorization == ["Bearer s3cret"]
    err = capsys.readouterr().err
    assert "crab-rt: warning: server: messages_dropped: 3 messages dropped: the client read too slowly" in err


def test_cli_interrupt_sends_stop_and_prints_what_arrives(fake_server, monkeypatch, capsys):
    class Interrupted:
        def __init__(self, *args, **kwargs):
            pass

        def __iter__(self):
            yield np.zeros(1600, dtype=np.float32)
            raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr("crab_rt.runtime.sources.FileSource", Interrupted)
    server = fake_server(speech_script(1))
    assert main(["client", "--url", server.url, "--input", "any.wav"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [make_event(0).to_json()]
    assert "interrupted; utterances 1  audio 0.1 s" in err
    assert server.texts[-1] == {"type": "stop"}


def test_cli_drain_before_the_input_ended_is_an_error(fake_server, wav, capsys):
    async def drain(ws, server):
        await server.send_ready(ws)
        await server.receive(ws)
        await server.send(ws, event_message(make_event(0).to_dict()))
        await server.send(ws, done_message("s-1", "drain", 0.1, 1, 1, 0, 0))
        await ws.close(1001, "server shutting down")

    server = fake_server(handler=drain)
    assert main(["client", "--url", server.url, "--input", str(wav), "--realtime", "-q"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [make_event(0).to_json()]
    assert "utterances 1  audio 0.1 s" in err
    assert err.splitlines()[-1].startswith("crab-rt: error: ") and "shut down (drain) after 0.1 s" in err


def _crash_1011(ws, server):
    async def handler():
        await server.send_ready(ws)
        await server.receive(ws)
        await ws.close(1011, "worker crashed")
    return handler()


def _fatal_internal(ws, server):
    async def handler():
        await server.send_ready(ws)
        await server.until_stop(ws)
        await server.send(ws, error_message("internal", "the ASR failed on this stream's audio"))
        await server.send(ws, done_message("s-1", "error", 0.5, 1, 0, 0, 0))
        await ws.close(1011)
    return handler()


@pytest.mark.parametrize(
    ("setup", "args", "match"),
    [
        ("refused", [], r"cannot connect to 127\.0\.0\.1:\d+: connection refused"),
        ({"token": "s3cret"}, ["--token-file", "TOKEN"], r"unauthorized \(HTTP 401\): invalid or missing token"),
        ({"refuse": (503, "server is draining")}, [], r"server unavailable \(HTTP 503\): server is draining"),
        ({"handler": _crash_1011}, [], r"closed the connection (before done|while sending) \(code 1011: worker crashed\)"),
        ({"handler": _fatal_internal}, [], r"ended the stream with internal: the ASR failed on this stream's audio"),
        ({}, ["--token-file", "EMPTY"], r"--token-file .*empty: the file is empty"),
        ({}, ["--token-file", "MISSING"], r"--token-file .*missing: file not found"),
        ({}, ["--cafile", "TOKEN"], r"--cafile applies only to a wss:// --url"),
        ({}, ["--rate", "8000"], r"--rate apply only to --input -"),
        ({}, ["--stream-id", "no spaces"], r"start.stream_id = 'no spaces'"),
    ],
)
def test_cli_errors_are_one_line_exit_2(setup, args, match, fake_server, wav, tmp_path, capsys):
    import re

    url = f"ws://127.0.0.1:{free_port()}/" if setup == "refused" else fake_server(**setup).url
    (tmp_path / "token").write_text("wrong\n")
    (tmp_path / "empty").write_text(" \n")
    paths = {"TOKEN": str(tmp_path / "token"), "EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing")}
    argv = ["client", "--url", url, "--input", str(wav), *(paths.get(a, a) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("crab-rt: connected to crab-rt fake")]
    assert len(lines) == 1, err
    assert lines[0].startswith("crab-rt: error: ") and re.search(match, lines[0]), lines[0]



def test_cli_prints_what_listen_prints_against_the_real_server(tiny_bundle, capsys, tmp_path):
    """End to end: `crab-rt serve` (in process) and `crab-rt client` print `crab-rt listen`'s lines for one file."""
    pytest.importorskip("prometheus_client")
    from crab_rt.runtime.pipeline import PipelineConfig
    from crab_rt.serve.server import ServerConfig, serve_in_background

    jfk = Path(__file__).resolve().parents[1] / "samples" / "jfk.flac"
    assert main(["listen", "--bundle", str(tiny_bundle), "--no-asr", "--backend", "onnxruntime", "--input",
                 str(jfk)]) == 0
    listen = capsys.readouterr().out.splitlines()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"),
                             ServerConfig(port=0, max_message_bytes=64 * 1024, token="s3cret")) as server:
        assert main(["client", "--url", server.url, "--input", str(jfk), "--token-file", str(token)]) == 0
    client = capsys.readouterr().out.splitlines()

    def without_latency(lines: list[str]) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "latency_ms"} for line in lines]

    assert len(listen) >= 2 and without_latency(client) == without_latency(listen)
    assert [list(json.loads(line)) for line in client] == [list(json.loads(line)) for line in listen]
