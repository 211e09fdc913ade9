"""Running fuzz cases (crab_bench.fuzz) against a live `crab-rt serve`, and judging what came back.

Owns:
- `run_case`: one connection that sends a case's frames and ending, and reads to the close (`Observed`);
- `judge`: every way the answer can break docs/protocol.md: a traceback or a schema-invalid message, the wrong
  `error` code or close code, `ready` / `done` missing or out of place, a wrong `done.audio_s`, a hang;
- `FuzzTarget`: a server under fuzzing: runs cases one by one or several at once, checks `/healthz` and the
  server's log for exceptions after each;
- `HealthyStream`: a well-behaved client streaming real speech at real time beside the fuzzing, which must keep
  getting its events;
- `LogWatch` (server log records with an exception or at ERROR) and `rss_mb` (resident memory, /proc).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from crab_bench.fuzz_oracle import ERRORS, STOP, Case, Expected, expect
from crab_rt.audio import SAMPLE_RATE
from crab_rt.serve.protocol import schema_path

__all__ = ["Observed", "run_case", "judge", "FuzzTarget", "HealthyStream", "LogWatch", "rss_mb", "http_get",
           "TRACEBACK_MARKERS"]

TRACEBACK_MARKERS = ("Traceback", 'File "')


@dataclass
class Observed:
    """What one connection received: text messages as sent, binary messages, the close, or what went wrong."""

    texts: list[str] = field(default_factory=list)
    binary: int = 0
    close_code: int | None = None
    close_reason: str = ""
    failure: str | None = None  # the client could not connect, or the server never closed
    elapsed_s: float = 0.0


async def run_case(url: str, case: Case, expected: Expected, timeout_s: float) -> Observed:
    """Send what `expected.sent` says of `case.wire()`, then the ending, and read until the server closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    seen = Observed()
    t0 = time.perf_counter()
    wire = case.wire()[:expected.sent]
    ended_by_frame = expected.sent < len(case.wire()) or case.ending == "stop"

    async def talk() -> None:
        async with connect(url, max_size=None, open_timeout=timeout_s, close_timeout=timeout_s,
                           ping_interval=None) as ws:
            try:
                for frame in wire:
                    await ws.send(frame.data, text=frame.kind != "binary")
                if not ended_by_frame and case.ending == "close":
                    await ws.close()
                elif not ended_by_frame and case.ending == "abort":
                    ws.transport.abort()
                while True:
                    message = await ws.recv()
                    if isinstance(message, str):
                        seen.texts.append(message)
                    else:
                        seen.binary += 1
            except ConnectionClosed:
                pass
        seen.close_code, seen.close_reason = ws.close_code, ws.close_reason or ""

    try:
        await asyncio.wait_for(talk(), timeout_s)
    except asyncio.TimeoutError:
        seen.failure = f"hang: the server did not close the connection within {timeout_s:g} s"
    except OSError as e:
        seen.failure = f"could not connect: {e}"
    except Exception as e:  # noqa: BLE001 - a refused handshake (InvalidStatus) and the like are findings
        seen.failure = f"client: {type(e).__name__}: {e}"
    seen.elapsed_s = time.perf_counter() - t0
    return seen


@functools.lru_cache(maxsize=1)
def _server_schema():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(schema_path("server").read_text(encoding="utf-8")))


def judge(case: Case, expected: Expected, seen: Observed, max_message_bytes: int) -> list[str]:
    """Every way `seen` breaks what docs/protocol.md promises for `case` (`expected`); empty when it keeps it."""
    problems: list[str] = []
    if seen.failure:
        return [seen.failure]
    for text in [*seen.texts, seen.close_reason]:
        if any(marker in text for marker in TRACEBACK_MARKERS):
            problems.append(f"a traceback reached the client: {text[:300]!r}")
    if seen.binary:
        problems.append(f"{seen.binary} binary message(s) from the server")
    messages = []
    for text in seen.texts:
        try:
            msg = json.loads(text)
        except ValueError:
            problems.append(f"not JSON: {text[:200]!r}")
            continue
        errors = sorted(_server_schema().iter_errors(msg), key=str)
        if errors:
            problems.append(f"breaks the server schema ({errors[0].message[:200]}): {text[:200]!r}")
        if isinstance(msg, dict):
            messages.append(msg)
    kinds = [m.get("type") for m in messages]
    client_ended = expected.close is None
    # ready: first, and only after a valid start (a transport-level close may overtake it)
    if expected.started and not client_ended and not expected.transport and kinds[:1] != ["ready"]:
        problems.append(f"expected ready first, got {kinds[:3]}")
    if not expected.started and "ready" in kinds:
        problems.append("ready after an invalid start")
    if kinds.count("ready") > 1 or ("ready" in kinds and kinds.index("ready") != 0):
        problems.append(f"ready out of place: {kinds}")
    if "ready" in kinds:
        problems += _check_ready(messages[0], expected.start or {}, max_message_bytes)
    # error: exactly the documented fatal code (none where the client or the WebSocket layer ended it)
    codes = [m.get("code") for m in messages if m.get("type") == "error"]
    want = [expected.error] if expected.error else []
    if codes != want and not (client_ended and not codes):
        problems.append(f"error codes {codes}, documented {want}")
    for m in messages:
        if m.get("type") == "error" and m.get("code") in ERRORS and m.get("fatal") != ERRORS[m["code"]].fatal:
            problems.append(f"error {m['code']} has fatal={m.get('fatal')}, documented {ERRORS[m['code']].fatal}")
    # done: last, with the documented reason, once
    if expected.done is not None:
        if kinds[-1:] != ["done"]:
            problems.append(f"expected done ({expected.done}) last, got {kinds[-3:]}")
        else:
            problems += _check_done(messages, expected)
    elif "done" in kinds and not client_ended:
        problems.append(f"done without a stream to end: {kinds}")
    if kinds.count("done") > 1:
        problems.append(f"{kinds.count('done')} done messages")
    if "error" in kinds and "done" in kinds and kinds.index("error") > kinds.index("done"):
        problems.append("error after done")
    ids = {m.get("stream_id") for m in messages if m.get("type") != "error"}
    if len(ids) > 1:
        problems.append(f"messages of several streams on one connection: {sorted(map(str, ids))}")
    if not client_ended and seen.close_code != expected.close:
        problems.append(f"close code {seen.close_code} ({seen.close_reason!r}), documented {expected.close}")
    return problems


def _check_ready(ready: dict, start: dict, max_message_bytes: int) -> list[str]:
    want = {"sample_rate": start.get("sample_rate"), "format": start.get("format"),
            "channels": start.get("channels", 1), "realtime": start.get("realtime", True), "language": None,
            "max_message_bytes": max_message_bytes}
    if start.get("stream_id") is not None:
        want["stream_id"] = start["stream_id"]
    wrong = {k: (ready.get(k), v) for k, v in want.items() if ready.get(k) != v}
    return [f"ready does not echo the start: {wrong}"] if wrong else []


def _check_done(messages: list[dict], expected: Expected) -> list[str]:
    done, problems = messages[-1], []
    if done.get("reason") != expected.done:
        problems.append(f"done.reason {done.get('reason')!r}, documented {expected.done!r}")
    events = sum(1 for m in messages if m.get("type") == "event" and m.get("stage") != "provisional")
    if done.get("events") != events:
        problems.append(f"done.events = {done.get('events')} but {events} final event(s) came")
    if expected.samples_16k is not None and expected.done == "stop" \
            and abs(done.get("audio_s", -1) - expected.samples_16k / SAMPLE_RATE) > 0.0011:
        problems.append(f"done.audio_s = {done.get('audio_s')}, sent {expected.samples_16k / SAMPLE_RATE:.4f} s")
    return problems


# ---- the server side --------------------------------------------------------------------------------------------
class LogWatch(logging.Handler):
    """Counts log records at WARNING and up, and keeps those at ERROR or with an exception (the server crashed
    somewhere): attached to the root logger, it sees the server's `crab_rt`, `websockets` and `asyncio` lines."""

    def __init__(self, keep: int = 200) -> None:
        super().__init__(logging.WARNING)
        self.keep = keep
        self.warnings = 0
        self.crashes = 0
        self.records: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.warnings += record.levelno == logging.WARNING
            if record.levelno >= logging.ERROR or record.exc_info:
                self.crashes += 1
                if len(self.records) < self.keep:
                    exc = record.exc_info[1] if record.exc_info else None
                    self.records.append(f"{record.name}: {record.getMessage()}"
                                        + (f" [{type(exc).__name__}: {exc}]" if exc else ""))

    def install(self) -> LogWatch:
        logging.getLogger().addHandler(self)
        return self

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)


def rss_mb() -> float:
    """Resident memory of this process, MiB (VmRSS in /proc/self/status; 0.0 without /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return 0.0


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class HealthyStream:
    """A good client beside the fuzzing: real speech as 16 kHz f32le in 32 ms messages at real time, `stop`,
    then again, until `stop()`. Every round must end with `done` (reason stop) and the events of its utterances."""

    def __init__(self, url: str, audio: np.ndarray, stream_id: str = "healthy") -> None:
        self.url = url
        chunk = 512
        self.chunks = [audio[i:i + chunk].astype("<f4").tobytes() for i in range(0, audio.size, chunk)]
        self.stream_id = stream_id
        self.events = 0
        self.rounds = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="fuzz-healthy", daemon=True)
        self._checked = (0, time.monotonic())

    def start(self) -> HealthyStream:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    async def _main(self) -> None:
        while not self._stop.is_set():
            try:
                await self._round()
            except Exception as e:  # noqa: BLE001 - recorded: the healthy client must never fail
                self.problems.append(f"healthy stream round {self.rounds}: {type(e).__name__}: {e}")
                await asyncio.sleep(0.5)

    async def _round(self) -> None:
        from websockets.asyncio.client import connect

        messages: list[dict] = []
        async with connect(self.url, max_size=None, open_timeout=60, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "format": "f32le",
                                      "stream_id": self.stream_id, "realtime": True}))

            async def read() -> None:
                async for text in ws:
                    msg = json.loads(text)
                    messages.append(msg)
                    if msg.get("type") == "event":
                        self.events += 1

            reader = asyncio.ensure_future(read())
            t0 = time.perf_counter()
            for i, chunk in enumerate(self.chunks):
                if self._stop.is_set():
                    break
                await ws.send(chunk)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.032 - time.perf_counter()))
            await ws.send(STOP)
            await asyncio.wait_for(reader, 120)
        self.rounds += 1
        kinds = [m.get("type") for m in messages]
        done = messages[-1] if messages else {}
        if kinds[:1] != ["ready"] or done.get("type") != "done" or done.get("reason") != "stop" or "error" in kinds \
                or done.get("events") != kinds.count("event") or ws.close_code != 1000:
            self.problems.append(f"healthy stream round {self.rounds}: {kinds[:4]}...{kinds[-2:]}, done {done}, "
                                 f"close {ws.close_code}")

    def progress(self, every_s: float = 10.0, timeout_s: float = 60.0) -> list[str]:
        """Problems so far; and, when `every_s` passed since the last call that checked, a new event must come
        (waiting up to `timeout_s`)."""
        events, since = self._checked
        if time.monotonic() - since >= every_s:
            deadline = time.monotonic() + timeout_s
            while self.events <= events and time.monotonic() < deadline and self._thread.is_alive():
                time.sleep(0.05)
            if self.events <= events:
                return [*self.problems, f"the healthy stream got no event for {timeout_s:g} s"]
            self._checked = (self.events, time.monotonic())
        return list(self.problems)


class FuzzTarget:
    """A live server under fuzzing: runs cases and judges them, with the server's health and log after each."""

    def __init__(self, url: str, port: int, max_message_bytes: int, idle_timeout_s: float,
                 healthy: HealthyStream | None = None, watch: LogWatch | None = None,
                 server_language: str | None = None) -> None:
        self.url = url
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.timeout_s = idle_timeout_s + 30.0
        self.healthy = healthy
        self.watch = watch
        self.server_language = server_language
        self.recent: deque[Case] = deque(maxlen=200)  # the last cases run (for a replay)
        self.rss_start_mb = rss_mb()

    def expect(self, case: Case) -> Expected:
        return expect(case, self.max_message_bytes, self.server_language)

    async def judge_async(self, case: Case) -> tuple[Expected, Observed, list[str]]:
        expected = self.expect(case)
        seen = await run_case(self.url, case, expected, self.timeout_s)
        return expected, seen, judge(case, expected, seen, self.max_message_bytes)

    def check(self, cases: list[Case]) -> list[str]:
        """Run `cases` at once; every problem of every case, the server's new crash lines, /healthz and the
        healthy stream's progress."""
        crashes = self.watch.crashes if self.watch else 0

        async def all_at_once():
            return await asyncio.gather(*(self.judge_async(c) for c in cases))

        problems = []
        self.recent.extend(cases)
        for case, (_, _, found) in zip(cases, asyncio.run(all_at_once())):
            problems += [f"{case!r}: {p}" for p in found]
        problems += self.server_problems(crashes)
        return problems

    def server_problems(self, crashes_before: int) -> list[str]:
        problems = []
        if self.watch is not None and self.watch.crashes > crashes_before:
            problems += [f"server log: {r}" for r in self.watch.records[crashes_before:self.watch.crashes]] or [
                f"server log: {self.watch.crashes - crashes_before} crash line(s)"]
        status, body = http_get(self.port, "/healthz")
        if status != 200:
            problems.append(f"/healthz answered {status}: {body.strip()}")
        if self.healthy is not None:
            problems += self.healthy.progress()
        return problems
