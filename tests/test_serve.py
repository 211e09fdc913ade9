"""`crab-rt serve` on loopback: real speech round trips, isolation, limits, bad input, access, metrics, drain.

Every message a test receives is validated against the server's JSON Schema (`received`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
pytest.importorskip("prometheus_client")
jsonschema = pytest.importorskip("jsonschema")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from ws_helpers import (  # noqa: E402
    JFK,
    STOP,
    http_get,
    jfk_chunks,
    metric,
    of_type,
    received,
    start,
    talk,
)

from crab_rt.runtime.asr import AsrConfig  # noqa: E402
from crab_rt.runtime.pipeline import PipelineConfig  # noqa: E402
from crab_rt.serve.protocol import schema_path  # noqa: E402
from crab_rt.serve.server import ServerConfig, serve_in_background  # noqa: E402

JFK_WORDS = ["fellow americans", "ask not", "what your country can do for you", "ask what you can do for your country"]
ASR = AsrConfig(model="tiny.en", device="cpu")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def asr_server(tiny_bundle):
    """The tiny bundle with Whisper tiny.en, as `crab-rt listen --asr tiny.en --backend onnxruntime` runs it."""
    with serve_in_background(tiny_bundle, PipelineConfig(asr=ASR, backend="onnxruntime"),
                             ServerConfig(port=0)) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server(tiny_bundle):
    """No ASR: fast, for the protocol and isolation tests."""
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"),
                             ServerConfig(port=0, max_message_bytes=64 * 1024)) as server:
        yield server


# ---- real speech ------------------------------------------------------------------------------------------------
def test_jfk_round_trip_words_labels_and_listen_parity(asr_server, capsys):
    from crab_rt.cli import main

    messages, code, _ = run(talk(asr_server.url, start(stream_id="jfk"), jfk_chunks()))
    assert code == 1000
    assert messages[0]["type"] == "ready" and messages[0]["labels"] == ["a", "b", "c", "d"]
    assert messages[-1] == {"type": "done", "stream_id": "jfk", "reason": "stop", "audio_s": 11.0,
                            "utterances": 4, "events": 4, "dropped_utterances": 0, "dropped_messages": 0}
    events = of_type(messages, "event")
    text = " ".join(e["text"] for e in events).lower()
    for words in JFK_WORDS:
        assert words in text
    assert [e["utterance_id"] for e in events] == [0, 1, 2, 3]

    # Barge-in marks: start, end (naming its utterance), and every end before its event.
    marks = [m for m in messages if m["type"] in ("speech_start", "speech_end")]
    assert [m["type"] for m in marks] == ["speech_start", "speech_end"] * 4
    assert [m["utterance_id"] for m in of_type(messages, "speech_end")] == [0, 1, 2, 3]
    for e in events:
        end = next(i for i, m in enumerate(messages) if m["type"] == "speech_end" and m["utterance_id"] == e["utterance_id"])
        assert end < messages.index(e)
        assert e["start_s"] <= marks[2 * e["utterance_id"]]["time_s"] < e["end_s"]

    # The same file through `crab-rt listen`: the same labels and probabilities.
    assert main(["listen", "--bundle", str(asr_server.server.bundle), "--input", str(JFK), "--asr", "tiny.en",
                 "--backend", "onnxruntime", "-q"]) == 0
    listened = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(listened) == 4
    for served, local in zip(events, listened):
        assert served["label"] == local["label"] and served["text"] == local["text"]
        assert served["probabilities"] == local["probabilities"]
        assert (served["start_s"], served["end_s"]) == (local["start_s"], local["end_s"])


def test_provisional_events_for_a_1_1_client_and_none_for_a_v1_client(asr_server):
    """Two clients at once on the Whisper server: a version-1.1 client that asks for provisional events gets one
    per utterance, without text, before that utterance's final event; a raw version-1 client (its start has
    only version-1 fields) gets its final events as before, each with the 1.1 fields it ignores."""

    async def both():
        return await asyncio.gather(
            talk(asr_server.url, start(stream_id="new", protocol=1.1, provisional=True), jfk_chunks()),
            talk(asr_server.url, json.dumps({"type": "start", "sample_rate": 16000, "format": "f32le",
                                             "stream_id": "old", "realtime": False}), jfk_chunks()))

    (new, new_code, _), (old, old_code, _) = run(both())
    assert new_code == old_code == 1000
    assert (new[0]["protocol"], new[0]["provisional"]) == (1.1, True)
    assert old[0]["protocol"] == 1 and "provisional" not in old[0]
    events = of_type(new, "event")
    provisional = [e for e in events if e["stage"] == "provisional"]
    final = [e for e in events if e["stage"] == "final"]
    assert [e["utterance_id"] for e in provisional] == [e["utterance_id"] for e in final] == [0, 1, 2, 3]
    for p in provisional:
        f = final[p["utterance_id"]]
        assert new.index(p) < new.index(f) and p["text"] == "" and f["text"]
        assert p["latency_ms"]["end_to_event"] < f["latency_ms"]["end_to_event"]  # ASR is not waited for
    assert new[-1]["events"] == 4  # done counts final events
    old_events = of_type(old, "event")
    assert [e["stage"] for e in old_events] == ["final"] * 4 and old[-1]["events"] == 4
    assert [e["label"] for e in old_events] == [e["label"] for e in final]


@pytest.mark.parametrize(("fields", "why"), [
    ({"provisional": True}, "start.provisional needs protocol 1.1"),
    ({"protocol": 1, "provisional": True}, "start.provisional needs protocol 1.1"),
    ({"protocol": 2}, "this server speaks versions 1 and 1.1"),
    ({"protocol": 1.1, "provisional": "yes"}, "start.provisional = 'yes': must be true or false"),
])
def test_provisional_start_errors(plain_server, fields, why):
    first = json.dumps({"type": "start", "sample_rate": 16000, "format": "f32le", **fields})
    messages, code, _ = run(talk(plain_server.url, first, stop=False))
    assert code == 1008 and messages[0]["code"] == "bad_start" and why in messages[0]["message"]


def test_eight_concurrent_clients_each_get_only_their_own_events(plain_server, jfk):
    # Client k sends jfk after k * 12 VAD frames (0.384 s) of silence: its own marks are shifted by that much.
    chunks = jfk_chunks()

    async def client(k: int):
        lead = [np.zeros(512, dtype="<f4").tobytes()] * (k * 12)
        return await talk(plain_server.url, start(stream_id=f"client-{k}"), [*lead, *chunks])

    async def everyone():
        return await asyncio.gather(*(client(k) for k in range(8)))

    results = run(everyone())
    reference = None
    for k, (messages, code, _) in enumerate(results):
        assert code == 1000
        assert {m["stream_id"] for m in messages} == {f"client-{k}"}
        events = of_type(messages, "event")
        assert messages[-1]["type"] == "done" and messages[-1]["events"] == len(events) == 4
        marks = [m["time_s"] for m in messages if m["type"] in ("speech_start", "speech_end")]
        if reference is None:
            reference = marks
        assert len(marks) == 8 and marks == pytest.approx([t + k * 0.384 for t in reference], abs=0.033)


# ---- limits -----------------------------------------------------------------------------------------------------
def test_max_streams_refuses_the_next_connection_at_once_and_frees_the_slot(tiny_bundle):
    config = ServerConfig(port=0, max_streams=2)
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        async def scenario():
            a = await connect(server.url)
            b = await connect(server.url)
            await a.send(start())
            await b.send(start())
            assert received(await a.recv())["type"] == "ready"
            assert received(await b.recv())["type"] == "ready"  # both slots are taken (by their start)
            t0 = time.perf_counter()
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.url)
            waited = time.perf_counter() - t0
            response = refused.value.response
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            assert response.body.decode().strip() == "server full: 2 of 2 streams active; retry later"
            assert waited < 2.0  # refused, not queued
            await a.send(STOP)
            async for _ in a:
                pass
            c = await connect(server.url)  # a's slot is free again
            await c.send(start())
            assert received(await c.recv())["type"] == "ready"
            await c.close()
            await b.close()

        run(scenario())
        assert metric(server.port, 'crab_rt_connections_refused_total{reason="full"}') == 1


def test_silent_connections_hold_no_slot_and_end_after_the_start_timeout(tiny_bundle):
    """Ten connections that never send start cannot lock out a real stream on a 2-stream server."""
    config = ServerConfig(port=0, max_streams=2, start_timeout_s=1.5)
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        async def scenario():
            silent = [await connect(server.url) for _ in range(10)]
            t0 = time.perf_counter()
            messages, code, _ = await talk(server.url, start(stream_id="real"), jfk_chunks())
            served_in = time.perf_counter() - t0
            ends = []
            for ws in silent:
                got = [received(m) async for m in ws]
                ends.append((got, ws.close_code, time.perf_counter() - t0))
            return messages, code, served_in, ends

        messages, code, served_in, ends = run(scenario())
        assert code == 1000 and messages[-1]["events"] == 4 and served_in < 1.5  # served while the 10 waited
        for got, close, _ in ends:
            assert [m["type"] for m in got] == ["error"] and close == 1000
            assert got[0]["code"] == "idle_timeout" and got[0]["message"] == "no start message within 1.5 s"
        assert max(t for _, _, t in ends) < 10
        body = json.loads(http_get(server.port, "/healthz")[1])
        assert body["streams"] == 0 and body["connections"] == 0


def test_a_start_that_finds_every_slot_taken_is_server_full(tiny_bundle):
    config = ServerConfig(port=0, max_streams=1)
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        async def scenario():
            a, b = await connect(server.url), await connect(server.url)  # both admitted: no slot is taken yet
            await a.send(start())
            assert received(await a.recv())["type"] == "ready"
            await b.send(start())
            refused = []
            try:
                async for m in b:
                    refused.append(received(m))
            except ConnectionClosed:  # 1013 is not a normal close
                pass
            await a.send(STOP)
            done = [received(m) async for m in a]
            return refused, b.close_code, b.close_reason, done

        refused, code, reason, done = run(scenario())
        assert [m["type"] for m in refused] == ["error"] and refused[0]["code"] == "server_full"
        assert refused[0]["message"] == "server full: 1 of 1 streams active; retry later"
        assert code == 1013 and reason == "server_full"
        assert done[-1]["type"] == "done" and done[-1]["reason"] == "stop"
        assert metric(server.port, "crab_rt_streams_total") == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts file descriptors in /proc/self/fd")
def test_connection_floods_are_closed_at_accept_and_after_the_handshake_timeout(tiny_bundle):
    """200 TCP connections that never finish the handshake (slowloris) against max_connections 16: the server
    closes the 184 beyond at accept, the 16 after the handshake timeout, and keeps at most 16 sockets."""
    import socket

    config = ServerConfig(port=0, max_streams=2, max_connections=16, handshake_timeout_s=3.0)
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        baseline = _open_fds()
        flood = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a handshake that never ends
            flood.append(s)
        time.sleep(0.3)
        server_side = _open_fds() - baseline - len(flood)  # this process holds both ends
        assert server_side <= 16, server_side
        closed_at_once = 0
        for s in flood:
            s.settimeout(0.05)
            try:
                closed_at_once += s.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed_at_once += 1
        # at most 16 held (fewer when the server's own start-up connections had not yet been counted out)
        assert 200 - 16 <= closed_at_once < 200, closed_at_once
        time.sleep(3.0)  # past the handshake timeout: the 16 are closed too
        for s in flood:
            s.settimeout(2)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
            s.close()
        assert metric(server.port, 'crab_rt_connections_refused_total{reason="connections"}') == closed_at_once
        messages, code, _ = run(talk(server.url, start(), jfk_chunks()))  # and a real client is served
        assert code == 1000 and messages[-1]["events"] == 4
        assert _open_fds() <= baseline + 2


def test_realtime_client_is_paced_to_the_clock(plain_server, jfk):
    audio = jfk[: 4 * 16000].astype("<f4")
    frames = [audio[i:i + 1600].tobytes() for i in range(0, audio.size, 1600)]  # 4 s in 100 ms messages
    t0 = time.perf_counter()
    messages, code, _ = run(talk(plain_server.url, start(realtime=True), frames))
    elapsed = time.perf_counter() - t0
    assert code == 1000 and messages[-1]["audio_s"] == 4.0
    # Sent at once, but read no more than realtime_slack_s (2 s) ahead of the clock: >= 4 - 2 s.
    assert elapsed >= 1.9
    t0 = time.perf_counter()
    run(talk(plain_server.url, start(realtime=False), frames))
    assert time.perf_counter() - t0 < 1.9  # realtime: false is not paced


def test_overflow_drop_reports_each_drop_to_the_client(tiny_bundle):
    config = PipelineConfig(asr=ASR, backend="onnxruntime", overflow="drop", max_in_flight=1)
    with serve_in_background(tiny_bundle, config, ServerConfig(port=0)) as server:
        messages, code, _ = run(talk(server.url, start(), jfk_chunks()))
        done = messages[-1]
        drops = [m for m in of_type(messages, "error") if m["code"] == "utterance_dropped"]
        assert code == 1000 and done["reason"] == "stop"
        assert done["dropped_utterances"] >= 1  # utterance 0 is in ASR while the others arrive
        assert len(drops) == done["dropped_utterances"] and not any(m["fatal"] for m in drops)
        assert done["events"] + done["dropped_utterances"] == done["utterances"] == 4
        assert metric(server.port, "crab_rt_utterances_dropped_total") == done["dropped_utterances"]


# ---- bad input: each gets an error and a close code; a good stream alongside is untouched --------------------
BAD_INPUTS = {
    # name: (first message, then, expected error code or None, close code)
    "audio before start": (b"\0\0\0\0", [], "protocol", 1008),
    "start not JSON": ("{start", [], "bad_start", 1008),
    "start missing sample_rate": (json.dumps({"type": "start", "format": "s16le"}), [], "bad_start", 1008),
    "start with unknown field": (json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le",
                                             "sample_rte": 1}), [], "bad_start", 1008),
    "start with bad format": (json.dumps({"type": "start", "sample_rate": 16000, "format": "mp3"}), [],
                              "bad_start", 1008),
    "first message is stop": (STOP, [], "protocol", 1008),
    "unsupported language": (json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le",
                                         "language": "de"}), [], "unsupported_language", 1008),
    "odd byte count": (start(format="s16le"), [b"\0" * 3], "bad_audio", 1007),
    "NaN samples": (start(), [np.array([0.0, np.nan], "<f4").tobytes()], "bad_audio", 1007),
    "second start": (start(), [start()], "protocol", 1008),
    "unknown message type": (start(), [json.dumps({"type": "pause"})], "protocol", 1008),
    "text that is not JSON": (start(), ["hello"], "protocol", 1008),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_an_error_a_close_code_and_one_log_line(plain_server, name, caplog):
    first, then, code, close = BAD_INPUTS[name]
    caplog.set_level("WARNING", logger="crab_rt")
    messages, close_code, _ = run(talk(plain_server.url, first, then, stop=False))
    errors = of_type(messages, "error")
    assert [e["code"] for e in errors] == [code] and errors[0]["fatal"]
    assert close_code == close
    if messages[0]["type"] == "ready":  # the stream had started: it ends with done
        assert messages[-1]["type"] == "done" and messages[-1]["reason"] == "error"
    lines = [r for r in caplog.records if r.name.startswith("crab_rt.serve")]
    assert len(lines) == 1 and errors[0]["message"] in lines[0].getMessage()


def test_oversized_message_closes_with_1009(plain_server):
    async def scenario():
        async with connect(plain_server.url, max_size=None) as ws:
            await ws.send(start())
            assert received(await ws.recv())["type"] == "ready"  # then the stream is open: the limit ends it
            await ws.send(b"\0" * (64 * 1024 + 4))
            rest = [received(text) async for text in _until_closed(ws)]
        return rest, ws.close_code, ws.close_reason

    rest, code, reason = run(scenario())
    assert code == 1009 and reason == "frame exceeds limit of 65536 bytes" and rest == []


async def _until_closed(ws):
    try:
        async for text in ws:
            yield text
    except ConnectionClosed:
        return


def test_bad_streams_do_not_disturb_a_good_one(plain_server):
    chunks = jfk_chunks()

    async def abrupt():
        """Disconnect mid-utterance without a close frame."""
        ws = await connect(plain_server.url)
        await ws.send(start())
        for chunk in chunks[:60]:  # about 1.9 s: inside the first utterance
            await ws.send(chunk)
        ws.transport.abort()

    async def scenario():
        solo = await talk(plain_server.url, start(stream_id="good"), chunks)
        together = await asyncio.gather(
            talk(plain_server.url, start(stream_id="good"), chunks, pause_s=0.001),
            abrupt(),
            *(talk(plain_server.url, first, then, stop=False) for first, then, _, _ in BAD_INPUTS.values()),
        )
        return solo, together[0]

    solo, good = run(scenario())

    def without_timing(messages, kind):  # events and marks interleave by timing; each kind's sequence is fixed
        return [{k: v for k, v in m.items() if k != "latency_ms"} for m in of_type(messages, kind)]

    for kind in ("ready", "speech_start", "speech_end", "event", "done", "error"):
        assert without_timing(good[0], kind) == without_timing(solo[0], kind)
    assert len(of_type(good[0], "event")) == 4 and good[1] == 1000


def test_abrupt_disconnect_mid_utterance_is_one_log_line(plain_server, caplog):
    caplog.set_level("WARNING", logger="crab_rt")
    chunks = jfk_chunks()

    async def abrupt():
        ws = await connect(plain_server.url)
        await ws.send(start(stream_id="gone"))
        for chunk in chunks[:60]:  # about 1.9 s: inside the first utterance
            await ws.send(chunk)
        await asyncio.sleep(0.2)
        ws.transport.abort()  # no close frame

    run(abrupt())
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if "gone" in r.getMessage()] and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("crab_rt.serve")]
    assert len(lines) == 1 and "stream gone: client disconnected without stop (close code 1006)" in lines[0]
    assert http_get(plain_server.port, "/healthz")[0] == 200


def test_idle_timeout_ends_the_stream_with_its_events(tiny_bundle, jfk):
    config = ServerConfig(port=0, idle_timeout_s=0.5)
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        audio = jfk[: int(2.5 * 16000)].astype("<f4").tobytes()  # ends inside the first utterance
        messages, code, _ = run(talk(server.url, start(), [audio], stop=False))
        assert code == 1000
        kinds = [m["type"] for m in messages]
        assert kinds == ["ready", "speech_start", "error", "speech_end", "event", "done"]
        assert of_type(messages, "error")[0]["code"] == "idle_timeout"
        assert messages[-1]["reason"] == "idle_timeout" and messages[-1]["events"] == 1  # flushed, as stop does


# ---- access ---------------------------------------------------------------------------------------------------
def test_bearer_token(tiny_bundle, jfk):
    config = ServerConfig(port=0, token="s3cret-token")
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            with pytest.raises(InvalidStatus) as refused:
                run(talk(server.url, start(), headers=headers))
            assert refused.value.response.status_code == 401
            assert "missing or wrong bearer token" in refused.value.response.body.decode()
        messages, code, _ = run(talk(server.url, start(), [jfk[:16000].astype("<f4").tobytes()],
                                     headers={"Authorization": "Bearer s3cret-token"}))
        assert code == 1000 and messages[-1]["type"] == "done"
        assert metric(server.port, 'crab_rt_connections_refused_total{reason="unauthorized"}') == 3
        assert http_get(server.port, "/healthz")[0] == 200  # health and metrics need no token

        # A browser's way: the token as the access_token query parameter (RFC 6750 2.3); the header wins.
        messages, code, _ = run(talk(server.url + "?access_token=s3cret-token", start(),
                                     [jfk[:16000].astype("<f4").tobytes()]))
        assert code == 1000 and messages[-1]["type"] == "done"
        with pytest.raises(InvalidStatus) as refused:
            run(talk(server.url + "?access_token=s3cret-token", start(), headers={"Authorization": "Bearer no"}))
        assert refused.value.response.status_code == 401
        # GET /admit answers what the handshake would: the page asks it before it opens a stream.
        status, body = http_get(server.port, "/admit?access_token=wrong")
        assert (status, body) == (401, "missing or wrong bearer token (send the header Authorization: Bearer "
                                       "<token>)\n")
        status, body = http_get(server.port, "/admit?access_token=s3cret-token")
        assert status == 200
        assert json.loads(body) | {"backend": "?"} == {
            "status": "ok", "server": "crab-rt 0.1.0", "protocol": 1.1, "labels": ["a", "b", "c", "d"],
            "provisional": True, "asr": False, "backend": "?"}
        assert metric(server.port, 'crab_rt_connections_refused_total{reason="unauthorized"}') == 5


# ---- the browser page (the browser itself: tests/test_browser.py) -----------------------------------------------
def test_page_files_and_their_headers(plain_server):
    import urllib.request

    from crab_rt.serve import page

    for path, (name, content_type) in page.ASSETS.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{plain_server.port}{path}", timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"] == content_type
            assert r.read() == (Path(page.__file__).parent / "static" / name).read_bytes()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    index = http_get(plain_server.port, "/")[1]
    for path in page.ASSETS:  # every file the page loads is served, nothing from elsewhere
        assert path == "/" or path in index or path in (Path(page.__file__).parent / "static" / "app.js").read_text()
    assert "http://" not in index and "https://" not in index
    assert http_get(plain_server.port, "/static/missing.js")[0] == 426  # not a page file: a WebSocket path
    # The WebSocket on / is unchanged: the same path, with an Upgrade header, is a stream.
    messages, code, _ = run(talk(plain_server.url, start(stream_id="page-path"), []))
    assert code == 1000 and messages[0]["type"] == "ready"


def test_no_ui_turns_the_page_off(tiny_bundle):
    config = ServerConfig(port=0, ui=False)
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        assert http_get(server.port, "/") == (404, "the browser page is off (crab-rt serve --no-ui)\n")
        assert http_get(server.port, "/static/app.js")[0] == 404
        messages, code, _ = run(talk(server.url, start(), []))
        assert code == 1000 and messages[-1]["type"] == "done"


def test_tls(tiny_bundle, self_signed_cert, jfk):
    import ssl

    cert, key = self_signed_cert
    config = ServerConfig(port=0, tls_cert=str(cert), tls_key=str(key))
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        assert server.url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(cert))

        async def secure():
            async with connect(server.url, ssl=context) as ws:
                await ws.send(start())
                await ws.send(jfk[:16000].astype("<f4").tobytes())
                await ws.send(STOP)
                return [received(m) for m in [m async for m in ws]]

        assert run(secure())[-1]["type"] == "done"
        with pytest.raises(ssl.SSLError):  # an untrusted certificate is refused by the client
            run(talk(server.url, start()))


def test_missing_certificate_is_one_line(tiny_bundle, tmp_path):
    from crab_rt.errors import ConfigError
    from crab_rt.serve.server import Server

    with pytest.raises(ConfigError, match=r"TLS: cannot load certificate .*nope.pem"):
        Server(tiny_bundle, PipelineConfig(asr=None), ServerConfig(tls_cert=str(tmp_path / "nope.pem"),
                                                                   tls_key=str(tmp_path / "nope.key")))


# ---- health and metrics ----------------------------------------------------------------------------------------
def test_health_and_metrics_count_what_happened(plain_server, jfk):
    status, body = http_get(plain_server.port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    before = metric(plain_server.port, "crab_rt_events_total")
    audio_before = metric(plain_server.port, "crab_rt_audio_seconds_total")
    messages, _, _ = run(talk(plain_server.url, start(), jfk_chunks()))
    assert metric(plain_server.port, "crab_rt_events_total") - before == len(of_type(messages, "event")) == 4
    assert metric(plain_server.port, "crab_rt_audio_seconds_total") - audio_before == pytest.approx(11.0)
    _, text = http_get(plain_server.port, "/metrics")
    for name in ("crab_rt_streams_active", 'crab_rt_queue_depth{queue="asr"}',
                 'crab_rt_stage_latency_seconds_bucket{le="0.1",stage="end_to_event"}'):
        assert name in text


def test_health_says_loading_and_connections_are_refused_until_the_models_are_loaded(tiny_bundle):
    import threading

    from crab_rt.serve import server as server_module

    gate = threading.Event()

    class SlowServer(server_module.Server):
        def _load_pipeline(self):
            gate.wait(30)
            return super()._load_pipeline()

    server = SlowServer(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), ServerConfig(port=0))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while server.port is None and time.monotonic() < deadline:
            time.sleep(0.01)
        status, body = http_get(server.port, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "loading"
        with pytest.raises(InvalidStatus) as refused:
            run(talk(server.url, start()))
        assert refused.value.response.status_code == 503
        assert "loading" in refused.value.response.body.decode()
    finally:
        gate.set()
        while server.state == "loading" and thread.is_alive():
            time.sleep(0.01)
        server.request_drain()
        thread.join(30)


# ---- drain ----------------------------------------------------------------------------------------------------
def test_drain_finishes_streams_and_refuses_new_connections(tiny_bundle):
    with serve_in_background(tiny_bundle, PipelineConfig(asr=ASR, backend="onnxruntime"),
                             ServerConfig(port=0)) as server:
        chunks = jfk_chunks()[:250]  # 8 s: two whole utterances and one in flight

        async def scenario():
            ws = await connect(server.url)
            await ws.send(start(stream_id="draining"))
            for chunk in chunks:
                await ws.send(chunk)
            while metric(server.port, "crab_rt_audio_seconds_total") < 8.0:  # read: the third utterance is open
                await asyncio.sleep(0.02)
            server.server.request_drain()
            while server.server.state != "draining":
                await asyncio.sleep(0.005)
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.url)
            messages = [received(text) async for text in ws]
            return messages, ws.close_code, refused.value.response

        messages, code, refusal = run(scenario())
        assert refusal.status_code == 503 and "draining" in refusal.body.decode()
        assert code == 1001
        done = messages[-1]
        assert done["reason"] == "drain" and done["utterances"] == done["events"] == 3  # the one in flight too
        server.thread.join(30)
        assert not server.thread.is_alive()


def test_sigterm_drains_the_cli_server(tiny_bundle, tmp_path):
    """`crab-rt serve` in its own process: SIGTERM, the client gets its events and done, exit 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", str(tiny_bundle), "--port", "0",
                             "--no-asr", "--backend", "onnxruntime"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, before = None, []
        for line in proc.stderr:
            if "ready on " in line:
                url = line.split("ready on ", 1)[1].split()[0]
                break
            before.append(line)
        assert url, "the server did not start: " + "".join(before)
        assert before == []  # one status line at the default level: what runs where, without the reasons
        assert "(backend onnxruntime (CPUExecutionProvider, fp32) on cpu; no ASR)" in line
        chunks = jfk_chunks()

        async def scenario():
            ws = await connect(url)
            await ws.send(start())
            for chunk in chunks[:200]:
                await ws.send(chunk)
            messages = []
            while not of_type(messages, "event"):
                messages.append(received(await ws.recv()))
            proc.send_signal(signal.SIGTERM)
            async for text in ws:
                messages.append(received(text))
            return messages, ws.close_code

        messages, code = run(scenario())
        assert code == 1001 and messages[-1]["reason"] == "drain"
        assert messages[-1]["events"] == messages[-1]["utterances"] == len(of_type(messages, "event"))
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert "draining: 1 stream(s) open" in rest and "server stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- CLI errors ------------------------------------------------------------------------------------------------
def test_cli_refuses_bad_settings_in_one_line(tiny_bundle, tmp_path, capsys):
    from crab_rt.cli import main

    empty = tmp_path / "token"
    empty.write_text("  \n")
    cases = [
        (["--token-file", str(empty)], f"--token-file {empty}: the file is empty"),
        (["--token-file", str(tmp_path / "missing")], "missing: file not found"),
        (["--max-streams", "0"], "server.max_streams = 0 is out of range"),
        (["--tls-cert", "x.pem"], "TLS needs both a certificate and a key"),
        (["--bundle", str(tmp_path)], "bundle"),
    ]
    for extra, expected in cases:
        argv = ["serve", "--bundle", str(tiny_bundle), "--no-asr", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("crab-rt: error:") and expected in err[0], err


def test_cli_port_in_use_is_one_line(tiny_bundle, capsys):
    import socket

    from crab_rt.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bundle", str(tiny_bundle), "--no-asr", "--port", str(port), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crab-rt: error: cannot listen on 127.0.0.1:{port}: address already in use"] or \
        (len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0])


def test_session_queue_bound_drops_counts_and_keeps_must_send(plain_server):
    """A client that reads too slowly: the outgoing queue's bound drops new messages and counts them."""
    from crab_rt.serve import protocol
    from crab_rt.serve.server import _Session

    class FakeServer:
        metrics = plain_server.server.metrics
        config = ServerConfig(max_pending_messages=8)

    async def scenario():
        session = _Session(FakeServer(), connection=None, number=0)
        sent = [session.post(protocol.speech_message("speech_start", "s", float(k))) for k in range(10)]
        assert sent == [True] * 8 + [False] * 2
        assert session.post(protocol.done_message("s", "stop", 1.0, 0, 0, 0, 2), must_send=True)
        return session

    session = run(scenario())
    assert session.dropped_messages == 2 and session.unreported_drops == 2 and session.out.qsize() == 9


def test_protocol_doc_names_every_error_code_and_close_code():
    from crab_rt.serve.protocol import CLOSE, ERROR_CODES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    schema = json.loads(schema_path("server").read_text())
    assert set(schema["$defs"]["error"]["properties"]["code"]["enum"]) == set(ERROR_CODES)
    for code in ERROR_CODES:
        assert f"`{code}`" in doc
    for number in CLOSE.values():
        assert str(number) in doc
