"""What the `crab-rt serve` and `crab-rt serve --ray` tests share: messages checked against the protocol's JSON
Schemas, one client connection (`talk`), and HTTP reads of /healthz and /metrics.

Import it after `pytest.importorskip` of websockets and jsonschema.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crab_bench.fuzz_client import http_get  # the tests' reads of /healthz and /metrics, as the fuzzing's
from crab_rt.runtime.sources import FileSource
from crab_rt.serve.protocol import schema_path

JFK = Path(__file__).resolve().parents[1] / "samples" / "jfk.flac"
SERVER_SCHEMA = jsonschema.Draft202012Validator(json.loads(schema_path("server").read_text()))
CLIENT_SCHEMA = jsonschema.Draft202012Validator(json.loads(schema_path("client").read_text()))
STOP = json.dumps({"type": "stop"})


def start(**fields) -> str:
    """A `start` message (16 kHz f32le, not real time unless given), checked against the client schema."""
    msg = {"type": "start", "sample_rate": 16000, "format": "f32le", "realtime": False, **fields}
    CLIENT_SCHEMA.validate(msg)
    return json.dumps(msg)


def jfk_chunks() -> list[bytes]:
    """samples/jfk.flac as `crab-rt listen` reads it (FileSource's 32 ms chunks), as f32le messages."""
    with FileSource(JFK) as source:
        return [chunk.astype("<f4").tobytes() for chunk in source]


def received(text) -> dict:
    """A server message, parsed and checked against the server schema."""
    msg = json.loads(text)
    SERVER_SCHEMA.validate(msg)
    return msg


def of_type(messages, kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


async def talk(url: str, first, chunks=(), stop: bool = True, headers=None, pause_s: float = 0.0,
               on_message=None, open_timeout: float = 60.0):
    """One connection: send `first`, the chunks, `stop`; read to the end. Returns (messages, close code, reason)."""
    messages = []
    async with connect(url, additional_headers=headers, max_size=None, open_timeout=open_timeout) as ws:
        await ws.send(first)
        for chunk in chunks:
            await ws.send(chunk)
            if pause_s:
                await asyncio.sleep(pause_s)
        if stop:
            await ws.send(STOP)
        try:
            async for text in ws:
                messages.append(received(text))
                if on_message is not None:
                    on_message(messages[-1])
        except ConnectionClosed:
            pass
    return messages, ws.close_code, ws.close_reason


def metric(port: int, name: str) -> float:
    """The value of an unlabelled metric in /metrics."""
    _, text = http_get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")
