"""`python benchmarks/flood_serve.py`: `crab-rt serve` under connection floods, beside one healthy real-time client.

Each repeat starts a fresh server process (`crab-rt serve`, the preset's benchmark
bundle, the real Whisper tiny.en by default, loopback only) and runs four phases
of `--phase-s` each. In every phase one healthy client streams real speech
(samples/jfk.flac looped) at real time, connected before anything else starts:

- `idle`: nothing else;
- `tcp`: `--tcp` (1,000) TCP connections held open and re-opened `--reopen-s`
  after the server closes one (most are closed at accept: `--max-connections`);
- `slowloris`: `--slowloris` (200) connections that send an HTTP upgrade request
  one byte per second and never finish it (closed after `--handshake-timeout-s`);
- `silent`: `--silent` (100) WebSocket connections that finish the handshake and
  never send `start` (closed after `--start-timeout-s`; they hold no stream slot).

The flood runs in a child process of its own, so that its sockets and event loop
do not share the healthy client's. Per phase: the healthy client's end-of-speech
to event latency as it sees it (`crab_bench.serve_load`'s definition), its events
against its utterances, and the server's open file descriptors, threads and RSS,
sampled every 0.25 s from /proc. Reported: medians over repeats with min-max; the
flood phases' p95 against the idle p95 (goal: within +25 %); the largest
file-descriptor count against the documented bound (docs/protocol.md):
`--max-connections` + 2 x 128 + the idle server's own descriptors. The event
loop accepts up to 128 sockets (the listen backlog) per turn; those beyond the
limit are closed in the next turn, and a connection counted out in
`connection_lost` closes its socket right after, so at most about two bursts of
sockets are in transit beside the counted ones.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from crab_bench.bundles import PRESETS, check_asr_spec
from crab_bench.common import (
    CommonBenchConfig,
    add_common_arguments,
    check_choice,
    check_range,
    finish_run,
    resolve_threads,
)
from crab_bench.serve_load import VAD_FRAME, ServerProcess, _client_result, _read_metrics, _stream, client_audio
from crab_bench.stats import spread
from crab_rt.audio import SAMPLE_RATE
from crab_rt.cli._options import add_config_option
from crab_rt.errors import ConfigError

__all__ = ["CONFIG", "FloodBenchConfig", "add_arguments", "run", "PHASES", "ACCEPT_BACKLOG"]

PHASES = ("idle", "tcp", "slowloris", "silent")
ACCEPT_BACKLOG = 128  # crab_rt.serve.server.ACCEPT_BACKLOG (not imported: the server runs in its own process)
P95_GOAL = 1.25  # a flood phase's p95 within +25 % of the idle phase's
_SR = SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class FloodBenchConfig(CommonBenchConfig):
    """Options of `flood_serve` (and of CommonBenchConfig).

    Attributes:
        preset: model sizes of the benchmark bundle (crab_bench.bundles.PRESETS).
        bundle: serve this bundle folder instead of the preset's random-weight benchmark bundle.
        input: the audio the healthy client streams; None = samples/jfk.flac.
        asr: the server's ASR ("tiny.en": the real Whisper tiny.en, offline with the [demo] extra; "none").
        repeats: runs, each in a fresh server process.
        phase_s: seconds of each phase (the healthy client's speech, jfk.flac looped).
        tcp, slowloris, silent: connections of each flood.
        reopen_s: a flood connection the server closed is opened again after this long.
        max_connections, handshake_timeout_s, start_timeout_s, max_streams: the server's flags.
        min_silence_ms: the server's VAD hangover (and the client-side latency's starting point).
    """

    preset: str = "tiny"
    bundle: str | None = None
    input: str | None = None
    asr: str = "tiny.en"
    repeats: int = 3
    phase_s: float = 33.0
    tcp: int = 1000
    slowloris: int = 200
    silent: int = 100
    reopen_s: float = 1.0
    max_connections: int = 256
    handshake_timeout_s: float = 5.0
    start_timeout_s: float = 5.0
    max_streams: int = 16
    min_silence_ms: float = 500.0

    def validate(self) -> None:
        super().validate()
        check_choice("--preset", self.preset, PRESETS)
        check_asr_spec("--asr", self.asr)
        check_range("--repeats", self.repeats, 1, 100)
        check_range("--phase-s", self.phase_s, 5, 3600)
        for flag, value in (("--tcp", self.tcp), ("--slowloris", self.slowloris), ("--silent", self.silent)):
            check_range(flag, value, 0, 10_000)
        check_range("--reopen-s", self.reopen_s, 0.01, 60)
        check_range("--max-connections", self.max_connections, self.max_streams, 65536)
        check_range("--max-streams", self.max_streams, 1, 1024)
        check_range("--handshake-timeout-s", self.handshake_timeout_s, 0.1, 3600)
        check_range("--start-timeout-s", self.start_timeout_s, 0.1, 3600)
        check_range("--min-silence-ms", self.min_silence_ms, 32, 10_000)


CONFIG = FloodBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cls = FloodBenchConfig
    add_common_arguments(p)
    add_config_option(p, "--preset", cls, "preset", "model preset of the benchmark bundle: tiny, base or large")
    add_config_option(p, "--bundle", cls, "bundle", "serve this bundle folder instead", type=str,
                      default_text="the preset's random-weight benchmark bundle")
    add_config_option(p, "--input", cls, "input", "audio file the healthy client streams", type=str,
                      default_text="samples/jfk.flac")
    add_config_option(p, "--asr", cls, "asr", "the server's ASR: faster-whisper name or CTranslate2 folder, or 'none'")
    add_config_option(p, "--repeats", cls, "repeats", "runs, each in a fresh server process")
    add_config_option(p, "--phase-s", cls, "phase_s", "seconds of each phase (idle, tcp, slowloris, silent)")
    add_config_option(p, "--tcp", cls, "tcp", "TCP connections held open in the tcp phase")
    add_config_option(p, "--slowloris", cls, "slowloris", "connections that never finish the handshake")
    add_config_option(p, "--silent", cls, "silent", "WebSocket connections that never send start")
    add_config_option(p, "--reopen-s", cls, "reopen_s", "reopen a flood connection this long after it closed")
    add_config_option(p, "--max-connections", cls, "max_connections", "the server's --max-connections")
    add_config_option(p, "--handshake-timeout-s", cls, "handshake_timeout_s", "the server's --handshake-timeout-s")
    add_config_option(p, "--start-timeout-s", cls, "start_timeout_s", "the server's --start-timeout-s")
    add_config_option(p, "--max-streams", cls, "max_streams", "the server's --max-streams")
    add_config_option(p, "--min-silence-ms", cls, "min_silence_ms", "the server's VAD hangover in ms")


# ---- the flood (a child process) -------------------------------------------------------------------
async def _hold_tcp(port: int, stop: asyncio.Event, reopen_s: float, counts: dict) -> None:
    """One TCP connection that sends nothing, reopened after the server closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            counts["opened"] += 1
            await _until(reader.read(1), stop)
            writer.close()
        except OSError:
            counts["failed"] += 1
        await _until(asyncio.sleep(reopen_s), stop)


async def _slowloris(port: int, stop: asyncio.Event, reopen_s: float, counts: dict) -> None:
    """An HTTP upgrade request sent one byte per second, never finished; reopened when the server closes it."""
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Slow: ").encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            counts["opened"] += 1
            for k in range(10_000):
                writer.write(request[k:k + 1] if k < len(request) else b"a")
                await writer.drain()
                if await _until(reader.read(1), stop, 1.0) is not None or stop.is_set():
                    break  # the server answered or closed: it is over
            writer.close()
        except OSError:
            counts["failed"] += 1
        await _until(asyncio.sleep(reopen_s), stop)


async def _silent(url: str, stop: asyncio.Event, reopen_s: float, counts: dict) -> None:
    """A WebSocket connection that never sends start; reopened when the server closes it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    while not stop.is_set():
        try:
            ws = await connect(url, open_timeout=30, ping_interval=None)
            counts["opened"] += 1
            await _until(ws.wait_closed(), stop)
            await ws.close()
        except (OSError, InvalidHandshake, InvalidStatus, asyncio.TimeoutError):
            counts["failed"] += 1
        await _until(asyncio.sleep(reopen_s), stop)


async def _until(awaitable, stop: asyncio.Event, timeout: float | None = None):
    """`awaitable`'s result, or None when `stop` is set or `timeout` passes first (the awaitable is cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        try:
            return task.result()
        except (OSError, asyncio.IncompleteReadError):
            return b""
    task.cancel()
    return None


def _flood_process(kind: str, n: int, url: str, port: int, reopen_s: float, seconds: float, out) -> None:
    """Child process: `n` connections of `kind` for `seconds`; puts {"opened", "failed"} on `out`."""
    async def main() -> dict:
        stop = asyncio.Event()
        counts = {"opened": 0, "failed": 0}
        one = {"tcp": lambda: _hold_tcp(port, stop, reopen_s, counts),
               "slowloris": lambda: _slowloris(port, stop, reopen_s, counts),
               "silent": lambda: _silent(url, stop, reopen_s, counts)}[kind]
        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait(tasks, timeout=30)
        return counts

    out.put(asyncio.run(main()))


# ---- one phase, one run ----------------------------------------------------------------------------------
def _proc_sample(pid: int) -> dict | None:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"fds": fds, "threads": int(fields["Threads"]), "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


def _phase(kind: str, config: FloodBenchConfig, server: ServerProcess, audio: np.ndarray, hangover: int) -> dict:
    """The healthy client streams `audio` at real time; from 1 s in, the flood of `kind` runs to its end."""
    samples: list[dict] = []
    sampling = True

    def sample() -> None:
        while sampling:
            s = _proc_sample(server.pid)
            if s is not None:
                samples.append(s)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    flood, results = None, multiprocessing.get_context("spawn").Queue()
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    n = {"idle": 0, "tcp": config.tcp, "slowloris": config.slowloris, "silent": config.silent}[kind]
    flood_s = max(1.0, audio.size / _SR - 2.0)

    async def healthy() -> dict:
        async def start_flood_after_ready() -> None:
            nonlocal flood
            await asyncio.sleep(1.0)
            if n:
                flood = multiprocessing.get_context("spawn").Process(
                    target=_flood_process, args=(kind, n, server.url, port, config.reopen_s, flood_s, results),
                    daemon=True)
                flood.start()

        starter = asyncio.ensure_future(start_flood_after_ready())
        raw = await _stream(server.url, f"healthy-{kind}", audio, int(round(0.032 * _SR)), True)
        await starter
        return raw

    raw = asyncio.run(healthy())
    counts = {"opened": 0, "failed": 0}
    if flood is not None:
        flood.join(60)
        if not results.empty():
            counts = results.get()
        if flood.is_alive():
            flood.kill()
    sampling = False
    sampler.join(2)
    client = _client_result(raw, hangover)
    latencies = [u["client_ms"] for u in client["utterances"] if "client_ms" in u]
    done = client["done"] or {}
    return {
        "phase": kind, "connections": n, "flood_opened": counts["opened"], "flood_failed": counts["failed"],
        "client_error": client["error"], "events": client["events"], "utterances": done.get("utterances"),
        "events_lost": None if not done else done["utterances"] - client["events"] - done["dropped_utterances"],
        "p50_ms": _pct(latencies, 50), "p95_ms": _pct(latencies, 95),
        "max_fds": max((s["fds"] for s in samples), default=None),
        "max_threads": max((s["threads"] for s in samples), default=None),
        "max_rss_mb": max((s["rss_mb"] for s in samples), default=None),
    }


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _run_once(config: FloodBenchConfig, argv: list[str], speech: np.ndarray, repeat: int, say) -> dict:
    tail = config.min_silence_ms / 1000 + 0.5
    audio = client_audio(speech, config.phase_s, 1.0, 0.0, tail)
    hangover = int(math.ceil(config.min_silence_ms * _SR / 1000 / VAD_FRAME)) * VAD_FRAME
    server = ServerProcess(argv)
    server.start(300)
    try:
        warm = asyncio.run(_stream(server.url, "warm-up", speech[: 11 * _SR], int(0.032 * _SR), False))
        if warm["error"] or warm["refused"]:
            raise ConfigError(f"the warm-up stream failed: {warm['error'] or warm['refused']}")
        time.sleep(1.0)
        idle_sample = _proc_sample(server.pid) or {}
        phases = []
        for kind in PHASES:
            phases.append(_phase(kind, config, server, audio, hangover))
            ph = phases[-1]
            say(f"  run {repeat + 1} {kind:<9}: healthy client p50 {ph['p50_ms']} p95 {ph['p95_ms']} ms, events "
                f"{ph['events']}/{ph['utterances']}; server fds <= {ph['max_fds']}, threads <= {ph['max_threads']}, "
                f"RSS <= {ph['max_rss_mb']} MB; flood connections opened {ph['flood_opened']}")
            time.sleep(max(config.handshake_timeout_s, config.start_timeout_s) + 1.0)  # the flood's leftovers end
        metrics = _read_metrics(server.url)
    finally:
        exit_code = server.stop()
    return {"repeat": repeat, "idle_fds": idle_sample.get("fds"), "idle_threads": idle_sample.get("threads"),
            "idle_rss_mb": idle_sample.get("rss_mb"), "phases": phases, "server_metrics": metrics,
            "server_exit_code": exit_code, "server_log_problems": server.problems()[:20]}


def run(config: FloodBenchConfig) -> int:
    """Every phase in `repeats` fresh servers; writes flood_serve[_tag].json, .md and a PNG."""
    from crab_bench.serve_load import prepare

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx, (source, speech, bundle, info, asr_model, asr_note) = prepare(config, threads, say)
    argv = [sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
            "--port", "0", "--backend", "onnxruntime", "--threads", str(threads),
            "--max-streams", str(config.max_streams), "--max-connections", str(config.max_connections),
            "--handshake-timeout-s", f"{config.handshake_timeout_s:g}", "--start-timeout-s",
            f"{config.start_timeout_s:g}", "--min-silence-ms", f"{config.min_silence_ms:g}"]
    argv += ["--no-asr"] if asr_model is None else ["--asr", asr_model]
    say(f"flood_serve: phases {', '.join(PHASES)} of {config.phase_s:g} s, {config.repeats} run(s); ASR: {asr_note}")
    runs = [_run_once(config, argv, speech, r, say) for r in range(config.repeats)]
    summary = _summarize(config, runs)
    payload = {"kind": "flood_serve", "preset": info.get("preset") or config.preset, "asr": asr_note,
               "server_command": " ".join(argv[1:]), "summary": summary, "runs": runs}
    finish_run(ctx, "flood_serve", payload, _markdown(config, payload), lambda stem: _plots(stem, payload), say)
    return 0


def _summarize(config: FloodBenchConfig, runs: list[dict]) -> dict:
    idle_fds = spread([r["idle_fds"] for r in runs])
    bound = config.max_connections + 2 * ACCEPT_BACKLOG + int(idle_fds["max"] or 0)
    phases = {}
    for kind in PHASES:
        rows = [next(p for p in r["phases"] if p["phase"] == kind) for r in runs]
        phases[kind] = {key: spread([row[key] for row in rows]) for key in
                        ("p50_ms", "p95_ms", "max_fds", "max_threads", "max_rss_mb", "flood_opened")}
        phases[kind]["events_lost"] = sum(row["events_lost"] or 0 for row in rows)
        phases[kind]["client_errors"] = [row["client_error"] for row in rows if row["client_error"]]
    idle_p95 = phases["idle"]["p95_ms"]["median"]
    for kind in PHASES[1:]:
        p95 = phases[kind]["p95_ms"]["median"]
        phases[kind]["p95_vs_idle"] = None if not idle_p95 or p95 is None else round(p95 / idle_p95, 3)
        phases[kind]["p95_within_goal"] = phases[kind]["p95_vs_idle"] is not None and \
            phases[kind]["p95_vs_idle"] <= P95_GOAL
    max_fds = max((r["phases"][k]["max_fds"] or 0 for r in runs for k in range(len(PHASES))), default=0)
    return {"idle_fds": idle_fds, "fd_bound": bound, "max_fds": max_fds, "fds_within_bound": max_fds <= bound,
            "phases": phases}


def _cell(s: dict) -> str:
    if s["median"] is None:
        return "-"
    return f"{s['median']:g}" if s["min"] == s["max"] else f"{s['median']:g} ({s['min']:g}-{s['max']:g})"


def _markdown(config: FloodBenchConfig, p: dict) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    s = p["summary"]
    rows = []
    for kind in PHASES:
        ph = s["phases"][kind]
        goal = "-"
        if kind != "idle" and ph["p95_vs_idle"] is not None:
            goal = f"{ph['p95_vs_idle']:.2f}x " + ("yes" if ph["p95_within_goal"] else "**no**")
        n = {"idle": 0, "tcp": config.tcp, "slowloris": config.slowloris, "silent": config.silent}[kind]
        rows.append([kind, n, _cell(ph["flood_opened"]), _cell(ph["p50_ms"]), _cell(ph["p95_ms"]), goal,
                     ph["events_lost"], len(ph["client_errors"]), _cell(ph["max_fds"]), _cell(ph["max_threads"]),
                     _cell(ph["max_rss_mb"])])
    table = markdown_table(["phase", "flood connections", "flood connects made", "healthy p50 ms", "healthy p95 ms",
                            "p95 vs idle (goal <= 1.25x)", "events lost", "client errors", "server fds (max)",
                            "server threads (max)", "server RSS MB (max)"], rows)
    notes = [
        f"server: `{p['server_command']}` (a fresh process per run, loopback only); ASR: {p['asr']}",
        f"each phase: one healthy client streams samples/jfk.flac looped to {config.phase_s:g} s at real time, "
        "connected first; the flood starts 1 s later, in a child process, and ends 1 s before the stream; closed "
        f"flood connections are reopened after {config.reopen_s:g} s",
        "healthy p50/p95: end of speech to event as the client sees it (crab_bench.serve_load's definition); "
        "cells: median over runs (min-max)",
        f"server file descriptors: at most {s['max_fds']} seen, bound {s['fd_bound']} = --max-connections "
        f"{config.max_connections} + 2 x {ACCEPT_BACKLOG} (sockets in transit: an accept burst being refused and "
        f"counted-out ones closing) + the idle server's {s['idle_fds']['max']}: "
        + ("**within**" if s["fds_within_bound"] else "**over**"),
    ]
    return "crab-rt serve under connection floods", [("A healthy real-time client during each flood", table)], notes


def _plots(stem, p: dict) -> list:
    from crab_bench.report import line_panels

    xs = list(range(len(PHASES)))
    ph = p["summary"]["phases"]
    path = Path(f"{stem}.png")
    line_panels(path, "crab-rt serve under floods (0 idle, 1 tcp, 2 slowloris, 3 silent; medians of runs)", [
        {"title": "healthy client, end of speech to event", "xlabel": "phase", "ylabel": "ms", "series": {
            "p50": (xs, [ph[k]["p50_ms"]["median"] for k in PHASES]),
            "p95": (xs, [ph[k]["p95_ms"]["median"] for k in PHASES])}},
        {"title": "server file descriptors (max)", "xlabel": "phase", "ylabel": "fds", "series": {
            "max fds": (xs, [ph[k]["max_fds"]["median"] for k in PHASES]),
            "bound": (xs, [p["summary"]["fd_bound"]] * len(PHASES))}},
    ])
    return [path]
