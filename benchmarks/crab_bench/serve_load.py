"""`python benchmarks/serve.py`: `crab-rt serve` under load, N real-time WebSocket clients on loopback.

Each run starts a fresh server process (`python -m crab_rt.cli serve --port 0
...` with the preset's benchmark bundle and, by default, the real Whisper
tiny.en), reads its URL from the "ready on ws://..." line on its stderr, warms
it up with one untimed stream, then connects N clients at once. Each client
streams real speech (samples/jfk.flac by default, 11 s, 4 utterances, with
`--gap-s` of silence after each loop) looped to `--duration-s`, at real time
(16 kHz f32le, one `--chunk-ms` message each time that much audio would have
been recorded), after `k * period / N` seconds of leading silence for client k
(so utterance ends do not all coincide), and `min_silence + 0.5 s` of trailing
silence (so the last utterance also ends by the hangover, not by `stop`).

Latency, per utterance:
- client side: from the moment the client sent (began to send) the audio up to the point
  where the server could decide that the speech ended (the end of the VAD frame
  in which the hangover ran out: `speech_end.time_s` + `--min-silence-ms`
  rounded up to whole 32 ms VAD frames, 512 ms for 500) to the arrival of that utterance's
  `event`. It includes the network (loopback), the server's queues, its
  WebSocket and asyncio layers, and this client process's own scheduling;
- server side: the event's `latency_ms.end_to_event`.

The server's CPU seconds (user + system, children included, from /proc/<pid>/stat)
are read after the warm-up and after the last client's `done`, and divided by the
audio seconds the clients sent. The server gets `--max-streams` = the largest
level; during that level one more connection is attempted and must be refused
with HTTP 503 (the refusal probe). Every level is run `--repeats` times, each in
its own server process, repeats interleaved (1, 2, 4, ..., 1, 2, 4, ...), and
reported as the median with the min-max spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from crab_bench.bundles import PRESETS, check_asr_spec
from crab_bench.common import (
    CommonBenchConfig,
    add_bool_option,
    add_common_arguments,
    add_list_option,
    check_choice,
    check_range,
    finish_run,
    resolve_threads,
    start_run,
)
from crab_bench.stats import spread
from crab_rt.audio import SAMPLE_RATE
from crab_rt.backends.base import BACKEND_NAMES
from crab_rt.cli._options import add_config_option
from crab_rt.errors import ConfigError

__all__ = ["CONFIG", "ServeBenchConfig", "add_arguments", "run", "TARGET_P95_MS", "VAD_FRAME"]

TARGET_P95_MS = 1000.0  # a level "holds" when the client-side p95 stays under this
VAD_FRAME = 512  # samples per Silero VAD frame: the segmenter decides at frame ends
_SR = SAMPLE_RATE  # the clients send 16 kHz: stream seconds are sample counts / _SR
_READY = re.compile(r"ready on (wss?://\S+/)")
_LOG_PROBLEM = re.compile(r"^(crab-rt: (warning|error):|Traceback|\S*Error\b|\S*Exception\b)")
_METRICS = ("crab_rt_streams_total", "crab_rt_connections_refused_total", "crab_rt_stream_errors_total",
            "crab_rt_utterances_total", "crab_rt_events_total", "crab_rt_utterances_dropped_total",
            "crab_rt_messages_dropped_total", "crab_rt_audio_seconds_total")


@dataclasses.dataclass(frozen=True)
class ServeBenchConfig(CommonBenchConfig):
    """Options of `serve` (and of CommonBenchConfig).

    Attributes:
        preset: model sizes of the benchmark bundle, one of PRESETS: "tiny", "base" or "large".
        bundle: serve this bundle folder instead of the preset's random-weight benchmark bundle.
        backend: the server's `--backend`.
        asr: the server's ASR: a faster-whisper name or CTranslate2 folder ("tiny.en": the real Whisper
            tiny.en, offline with the [demo] extra), "random:whisper-micro|tiny|base|small" (random
            weights, built offline), or "none" (`--no-asr`).
        clients: client counts, one level each (1 to 256).
        repeats: runs of each level, each in a fresh server process (medians and min-max reported).
        duration_s: speech per client: the input, looped (with `gap_s` after each loop), cut to this length.
        input: audio file the clients stream; None = samples/jfk.flac (real speech, 11 s, 4 utterances).
        gap_s: silence after each loop of the input (jfk.flac's speech runs to its last sample).
        chunk_ms: audio per WebSocket message, milliseconds.
        realtime: send at real time (`realtime: true`); False = as fast as the server reads.
        stagger: client k first sends k * period / N seconds of silence (period = input + gap, at most
            duration_s), so that the utterance ends of the clients do not coincide.
        min_silence_ms: the server's `--min-silence-ms` (the VAD hangover); also used for the client-side
            latency's starting point.
        max_streams: the server's `--max-streams`; 0 = the largest of `clients`.
        probe: during the level whose client count equals max_streams, try one more connection (it must get 503).
        start_timeout_s: how long to wait for the server's "ready on" line.
        warm_up_s: before the clients, an untimed as-fast-as-possible pass over the input's first 11 s
            always runs; this adds an untimed real-time stream of its first this many seconds (0 = none:
            with the fast pass alone, the first utterances of a run were no slower than the later ones).
        ray: compare the single-process server with `crab-rt serve --ray` (the Ray Serve app) under the same
            load instead (crab_bench.serve_ray; results serve_ray_<preset>).
        ray_config: the Ray app's `--ray-config` file (None: crab_bench.serve_ray's default for one machine).
    """

    preset: str = "base"
    bundle: str | None = None
    backend: str = "onnxruntime"
    asr: str = "tiny.en"
    clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    repeats: int = 3
    duration_s: float = 33.0
    input: str | None = None
    gap_s: float = 1.0
    chunk_ms: float = 32.0
    realtime: bool = True
    stagger: bool = True
    min_silence_ms: float = 500.0
    max_streams: int = 0
    probe: bool = True
    start_timeout_s: float = 300.0
    warm_up_s: float = 0.0
    ray: bool = False
    ray_config: str | None = None

    def validate(self) -> None:
        super().validate()
        check_choice("--preset", self.preset, PRESETS)
        check_choice("--backend", self.backend, BACKEND_NAMES)
        check_asr_spec("--asr", self.asr)
        if self.asr is None:
            raise ConfigError("--asr needs a model name or 'none'")
        check_range("--clients", self.clients, 1, 256)
        check_range("--repeats", self.repeats, 1, 100)
        check_range("--duration-s", self.duration_s, 1, 3600)
        check_range("--gap-s", self.gap_s, 0, 60)
        check_range("--chunk-ms", self.chunk_ms, 4, 1000)
        check_range("--min-silence-ms", self.min_silence_ms, 32, 10_000)
        check_range("--max-streams", self.max_streams, 0, 1024, note=" (0 = the largest --clients)")
        check_range("--start-timeout-s", self.start_timeout_s, 1, 3600)
        check_range("--warm-up-s", self.warm_up_s, 0, 60)
        if self.bundle is not None and not self.bundle.strip():
            raise ConfigError("--bundle: an empty path")
        if self.ray_config is not None and not self.ray:
            raise ConfigError("--ray-config goes with --ray")

    @property
    def server_max_streams(self) -> int:
        return self.max_streams or max(self.clients)


CONFIG = ServeBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cls = ServeBenchConfig
    add_common_arguments(p)
    add_config_option(p, "--preset", cls, "preset", "model preset of the benchmark bundle: tiny, base or large")
    add_config_option(p, "--bundle", cls, "bundle", "serve this bundle folder instead", type=str,
                      default_text="the preset's random-weight benchmark bundle")
    add_config_option(p, "--backend", cls, "backend", "the server's inference backend")
    add_config_option(p, "--asr", cls, "asr", "the server's ASR: faster-whisper name or CTranslate2 folder, "
                      "'random:whisper-micro|tiny|base|small' (random weights, built offline), or 'none'")
    add_list_option(p, "--clients", cls, "clients", "client counts, one level each", int)
    add_config_option(p, "--repeats", cls, "repeats", "runs per level, each in a fresh server process")
    add_config_option(p, "--duration-s", cls, "duration_s", "speech per client in seconds (the input looped)")
    add_config_option(p, "--input", cls, "input", "audio file the clients stream", type=str,
                      default_text="samples/jfk.flac")
    add_config_option(p, "--gap-s", cls, "gap_s", "silence after each loop of the input, seconds")
    add_config_option(p, "--chunk-ms", cls, "chunk_ms", "audio per WebSocket message in ms")
    add_bool_option(p, "--realtime", cls, "realtime", "send at real time, or as fast as the server reads")
    add_bool_option(p, "--stagger", cls, "stagger", "client k first sends k * period / N s of silence")
    add_config_option(p, "--min-silence-ms", cls, "min_silence_ms", "the server's VAD hangover in ms")
    add_config_option(p, "--max-streams", cls, "max_streams", "the server's --max-streams, 0 = the largest "
                      "--clients")
    add_bool_option(p, "--probe", cls, "probe", "at the level of max-streams clients, one more connection "
                    "must be refused (503)")
    add_config_option(p, "--start-timeout-s", cls, "start_timeout_s", "wait this long for the server to load")
    add_config_option(p, "--warm-up-s", cls, "warm_up_s", "untimed real-time warm-up stream of the input's first "
                      "seconds, after a fast pass over its first 11 s (0 = the fast pass only)")
    add_bool_option(p, "--ray", cls, "ray", "compare the single-process server with `crab-rt serve --ray` (Ray "
                    "Serve) under the same load; writes serve_ray_<preset>")
    add_config_option(p, "--ray-config", cls, "ray_config", "the Ray app's --ray-config file", type=str,
                      default_text="one replica each, sized for this machine")


# ---- the server process ----------------------------------------------------------------------
def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` and its waited-for children (/proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3, utime..cstime are fields 14..17
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _proc_memory_mb(pid: int) -> dict:
    """{"rss_mb", "peak_rss_mb"} of process `pid` (VmRSS, VmHWM); empty where there is no /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            key = {"VmRSS:": "rss_mb", "VmHWM:": "peak_rss_mb"}.get(line.split(":", 1)[0] + ":")
            if key:
                out[key] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


def _cpu_times() -> tuple[int, int] | None:
    """(all jiffies, steal jiffies) of the machine so far (/proc/stat); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(values[:8]), values[7] if len(values) > 7 else 0


def _steal_pct(t0: tuple[int, int] | None, t1: tuple[int, int] | None) -> float | None:
    """Percent of the machine's CPU time the hypervisor took between two `_cpu_times()`."""
    if t0 is None or t1 is None or t1[0] <= t0[0]:
        return None
    return round(100.0 * (t1[1] - t0[1]) / (t1[0] - t0[0]), 1)


class ServerProcess:
    """`python -m crab_rt.cli serve ...` as a child process; its stderr is collected line by line."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout: float) -> str:
        """Start and wait for the "ready on" line; returns the URL.

        Raises:
            ConfigError: the server exited or did not get ready in time (its stderr tail is in the message).
        """
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                what = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                        else f"was not ready after {timeout:g} s")
                self.stop()
                raise ConfigError(f"the server {what}: {' | '.join(self.lines[-4:]) or 'no output'}")
        self.startup_s = time.perf_counter() - t0
        return self.url

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            m = _READY.search(line)
            if m and self.url is None:
                self.url = m.group(1)
                self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        return _proc_cpu_seconds(self.proc.pid)

    def memory_mb(self) -> dict:
        return _proc_memory_mb(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the server drains), wait; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.lines.append(f"(benchmark: killed after {timeout:g} s without exiting)")
        time.sleep(0.05)  # the reader thread takes the last lines
        return self.proc.returncode

    def problems(self) -> list[str]:
        """The stderr lines that are warnings, errors or tracebacks."""
        return [line for line in self.lines if _LOG_PROBLEM.search(line)]


def _server_argv(config: ServeBenchConfig, bundle: Path, asr_model: str | None, threads: int) -> list[str]:
    argv = [sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
            "--port", "0", "--backend", config.backend, "--max-streams", str(config.server_max_streams),
            "--threads", str(threads), "--min-silence-ms", f"{config.min_silence_ms:g}"]
    return argv + (["--no-asr"] if asr_model is None else ["--asr", asr_model])


def _read_metrics(url: str) -> dict:
    """The server's counters from GET /metrics (name{labels} -> value); empty when unreachable."""
    import urllib.request

    http = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1) + "metrics"
    try:
        with urllib.request.urlopen(http, timeout=10) as r:
            text = r.read().decode("utf-8")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name.split("{", 1)[0] in _METRICS and not name.endswith("_created"):
            out[name] = float(value)
    return out


# ---- the clients -------------------------------------------------------------------------------
def client_audio(speech: np.ndarray, duration_s: float, gap_s: float, offset_s: float, tail_s: float) -> np.ndarray:
    """`offset_s` of silence, `speech` + `gap_s` of silence looped and cut to `duration_s`, `tail_s` of silence."""
    loop = np.concatenate([speech, np.zeros(int(round(gap_s * _SR)), np.float32)])
    n = int(round(duration_s * _SR))
    body = np.tile(loop, int(math.ceil(n / loop.size)))[:n]
    return np.concatenate([np.zeros(int(round(offset_s * _SR)), np.float32), body,
                           np.zeros(int(round(tail_s * _SR)), np.float32)]).astype(np.float32)


async def _stream(url: str, name: str, audio: np.ndarray, chunk: int, realtime: bool,
                  on_ready=None) -> dict:
    """One client: start, paced f32le messages, stop; every server message with its arrival time.

    Returns:
        {"refused": HTTP status or None, "error": str or None, "sent": [(end sample, send time, due time)],
         "stop_at", "messages": [(arrival time, message)], "t0"}.
    """
    import asyncio
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    out = {"name": name, "refused": None, "error": None, "sent": [], "stop_at": None, "messages": [], "t0": None}
    try:
        ws = await connect(url, open_timeout=60, ping_interval=None, max_size=None)
    except InvalidStatus as e:
        out["refused"] = e.response.status_code
        if on_ready:
            on_ready()
        return out
    except (OSError, asyncio.TimeoutError) as e:
        out["error"] = f"connect: {type(e).__name__}: {e}"
        if on_ready:
            on_ready()
        return out
    loop = asyncio.get_running_loop()

    async def receive() -> None:
        try:
            async for text in ws:
                msg = json.loads(text)
                out["messages"].append((loop.time(), msg))
                if msg.get("type") == "ready" and on_ready:
                    on_ready()
                if msg.get("type") == "done":
                    return
        except ConnectionClosed as e:
            out["error"] = out["error"] or f"closed before done: {e}"

    receiver = asyncio.ensure_future(receive())
    try:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "sample_rate": _SR, "format": "f32le",
                                  "stream_id": name, "realtime": realtime}))
        t0 = out["t0"] = loop.time()
        for k in range(0, audio.size, chunk):
            end = min(k + chunk, audio.size)
            due = t0 + end / _SR  # when a microphone would have recorded the message's last sample
            if realtime and due > loop.time():
                await asyncio.sleep(due - loop.time())
            # The send time is read before the send: read after it, it can come later than the event the
            # audio caused (the receiver runs while `send` waits), and the client-side latency would be short.
            sent_at = loop.time()
            await ws.send(audio[k:end].astype("<f4").tobytes())
            out["sent"].append((end, sent_at, due))
            if receiver.done():  # the server ended the stream (an error message says why)
                break
        await ws.send(json.dumps({"type": "stop"}))
        out["stop_at"] = loop.time()
    except ConnectionClosed as e:
        out["error"] = f"closed while sending: {e}"
    try:
        await asyncio.wait_for(receiver, 600)
    except asyncio.TimeoutError:
        out["error"] = out["error"] or "no done within 600 s after stop"
    finally:
        await ws.close()
    if not any(m.get("type") == "done" for _, m in out["messages"]) and out["error"] is None:
        out["error"] = "the connection closed without done"
    return out


async def _load(url: str, audios: list[np.ndarray], chunk: int, realtime: bool, probe: bool) -> tuple[list, dict]:
    """All clients at once; with `probe`, one more connection once every client is in (or refused)."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    in_count = 0
    all_in = asyncio.Event()

    def one_in() -> None:
        nonlocal in_count
        in_count += 1
        if in_count >= len(audios):
            all_in.set()

    async def probe_once() -> dict | None:
        if not probe:
            return None
        try:
            await asyncio.wait_for(all_in.wait(), 120)
        except asyncio.TimeoutError:
            return {"status": None, "refused": False, "note": "the clients were not all in after 120 s"}
        try:
            ws = await connect(url, open_timeout=30, ping_interval=None)
        except InvalidStatus as e:
            body = (e.response.body or b"").decode("utf-8", "replace").strip()
            return {"status": e.response.status_code, "refused": e.response.status_code == 503, "body": body,
                    "retry_after": e.response.headers.get("Retry-After")}
        except (OSError, asyncio.TimeoutError) as e:
            return {"status": None, "refused": False, "note": f"{type(e).__name__}: {e}"}
        await ws.close()
        return {"status": 101, "refused": False, "note": f"accepted beyond max-streams ({len(audios)} open)"}

    tasks = [_stream(url, f"bench-{k}", a, chunk, realtime, one_in) for k, a in enumerate(audios)]
    *clients, probed = await asyncio.gather(*tasks, probe_once())
    return clients, probed


def _client_result(raw: dict, hangover_samples: int) -> dict:
    """Per-utterance client-side and server-side latencies, counts and `done` of one client."""
    sent_end = np.array([s[0] for s in raw["sent"]], dtype=np.int64)
    ends, events, errors, done = {}, [], [], None
    for arrival, msg in raw["messages"]:
        kind = msg.get("type")
        if kind == "speech_end" and msg.get("utterance_id") is not None:
            ends[msg["utterance_id"]] = msg["time_s"]
        elif kind == "event":
            events.append((arrival, msg))
        elif kind == "error":
            errors.append({"code": msg.get("code"), "message": msg.get("message"), "fatal": msg.get("fatal")})
        elif kind == "done":
            done = msg
    utterances, unmatched = [], 0
    for arrival, ev in events:
        uid = ev.get("utterance_id")
        lat = ev.get("latency_ms") or {}
        row = {"utterance_id": uid, "server_ms": round(float(lat["end_to_event"]), 1),
               "stages_ms": {k: round(float(v), 1) for k, v in lat.items() if k != "end_to_event"}}
        if uid in ends:
            decided = int(round(ends[uid] * _SR)) + hangover_samples  # the end of the deciding VAD frame
            i = int(np.searchsorted(sent_end, decided, side="left"))
            if i < len(raw["sent"]):
                sent_at, due = raw["sent"][i][1], raw["sent"][i][2]
            else:  # decided at `stop` (the stream ended within the hangover)
                sent_at = due = raw["stop_at"]
            row.update(speech_end_s=round(ends[uid], 3), client_ms=round((arrival - sent_at) * 1000, 1),
                       capture_ms=round((arrival - due) * 1000, 1))
        else:
            unmatched += 1
        utterances.append(row)
    lags = [s[1] - s[2] for s in raw["sent"]]
    return {
        "client": raw["name"], "refused": raw["refused"], "error": raw["error"], "errors": errors,
        "audio_s": round(int(sent_end[-1]) / _SR, 3) if sent_end.size else 0.0,
        "events": len(events), "unmatched_events": unmatched, "speech_end_utterances": len(ends),
        "done": None if done is None else {k: done.get(k) for k in ("reason", "audio_s", "utterances", "events",
                                                                     "dropped_utterances", "dropped_messages")},
        "max_send_lag_s": round(max(lags), 3) if lags else None,
        "utterances": utterances,
    }


def _stats(values: list[float]) -> dict:
    from crab_bench.stats import summarize_ms

    out = summarize_ms(values, (50, 95))
    if values:
        out["max"] = round(float(max(values)), 3)
    return out


def _warm_up(url: str, speech: np.ndarray, chunk: int, realtime_s: float, tail_s: float,
             server: ServerProcess) -> None:
    """Untimed streams: the first 11 s of the input as fast as possible, then, when `realtime_s` > 0, its
    first `realtime_s` at real time (each utterance alone, as a lone client sends it)."""
    import asyncio

    quiet = np.zeros(int(round(tail_s * _SR)), np.float32)
    streams = [("warm-up-batched", speech[: 11 * _SR], False)]
    if realtime_s > 0:
        streams.append(("warm-up-realtime", np.concatenate([speech[: int(realtime_s * _SR)], quiet]), True))
    for name, audio, realtime in streams:
        warm = asyncio.run(_stream(url, name, audio, chunk, realtime))
        if warm["error"] or warm["refused"]:
            raise ConfigError(f"the warm-up stream failed: {warm['error'] or warm['refused']}; server: "
                              f"{' | '.join(server.lines[-4:])}")


def _run_level(config: ServeBenchConfig, argv: list[str], n: int, speech: np.ndarray, repeat: int, say,
               process: type | None = None) -> dict:
    """One run: a fresh server (a `process`, default ServerProcess), an untimed warm-up stream, then `n` clients at
    once; the server stopped."""
    import asyncio

    from crab_bench.machine import cpu_seconds, matmul_gflops

    chunk = max(1, int(round(config.chunk_ms * _SR / 1000)))
    period = min(speech.size / _SR + config.gap_s, config.duration_s)
    tail = config.min_silence_ms / 1000 + 0.5
    audios = [client_audio(speech, config.duration_s, config.gap_s, k * period / n if config.stagger else 0.0, tail)
              for k in range(n)]
    hangover = int(math.ceil(config.min_silence_ms * _SR / 1000 / VAD_FRAME)) * VAD_FRAME
    yardstick = matmul_gflops()  # a shared machine drifts: each run says how fast it was just before
    server = (process or ServerProcess)(argv)
    url = server.start(config.start_timeout_s)
    try:
        _warm_up(url, speech, chunk, config.warm_up_s, tail, server)
        cpu0, mine0, wall0, machine0 = server.cpu_seconds(), cpu_seconds(), time.perf_counter(), _cpu_times()
        raw, probed = asyncio.run(_load(url, audios, chunk, config.realtime,
                                        config.probe and n == config.server_max_streams))
        wall = time.perf_counter() - wall0
        cpu1, mine, steal = server.cpu_seconds(), cpu_seconds() - mine0, _steal_pct(machine0, _cpu_times())
        memory = server.memory_mb()
        metrics = _read_metrics(url)
    finally:
        exit_code = server.stop()
    clients = [_client_result(r, hangover) for r in raw]
    rows = [u for c in clients for u in c["utterances"]]
    done = [c["done"] for c in clients if c["done"] is not None]
    # a stream cut before `done` expected at least the utterances whose speech_end it received
    expected = sum(c["done"]["utterances"] if c["done"] else c["speech_end_utterances"] for c in clients)
    received = sum(c["events"] for c in clients)
    dropped = sum(d["dropped_utterances"] for d in done)
    audio_s = sum(c["audio_s"] for c in clients)
    cpu = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2)
    problems = server.problems()
    level = {
        "clients": n, "repeat": repeat, "wall_s": round(wall, 2), "audio_s": round(audio_s, 2),
        "connected": sum(c["refused"] is None and not (c["error"] or "").startswith("connect") for c in clients),
        "refused": sum(c["refused"] is not None for c in clients),
        "refused_status": sorted({c["refused"] for c in clients if c["refused"] is not None}),
        "client_errors": [f"{c['client']}: {c['error']}" for c in clients if c["error"]],
        "error_messages": [{"client": c["client"], **e} for c in clients for e in c["errors"]],
        "utterances_expected": expected, "events_received": received,
        "events_lost": expected - received - dropped,
        "events_server_sent": sum(d["events"] for d in done),
        "dropped_utterances": dropped, "dropped_messages": sum(d["dropped_messages"] for d in done),
        "done_reasons": sorted({d["reason"] for d in done}),
        "streams_cut": sum(c["refused"] is None and c["done"] is None for c in clients),
        "unmatched_events": sum(c["unmatched_events"] for c in clients),
        "client_ms": _stats([u["client_ms"] for u in rows if "client_ms" in u]),
        "capture_ms": _stats([u["capture_ms"] for u in rows if "capture_ms" in u]),
        "server_ms": _stats([u["server_ms"] for u in rows]),
        "max_send_lag_s": max((c["max_send_lag_s"] or 0.0 for c in clients), default=0.0),
        "server_cpu_s": cpu, "server_cpu_s_per_audio_s": round(cpu / audio_s, 4) if cpu is not None else None,
        "server_cores_busy": round(cpu / wall, 2) if cpu is not None else None,
        "client_cpu_s": round(mine, 2), "steal_pct": steal, "yardstick_gflops": yardstick,
        "server_startup_s": round(server.startup_s, 1),
        "server_memory_mb": memory, "server_exit_code": exit_code, "server_metrics": metrics,
        "probe": probed, "server_log_problems": problems[:50], "server_log_problem_count": len(problems),
        "per_client": [{k: c[k] for k in ("client", "audio_s", "events", "done", "max_send_lag_s")} | {
            "utterances": c["utterances"]} for c in clients],
    }
    cm, sm = level["client_ms"], level["server_ms"]
    say(f"  {n} clients (repeat {repeat + 1}): events {received}/{expected}, lost {level['events_lost']}, refused "
        f"{level['refused']}; client-side p50 {cm.get('p50')} p95 {cm.get('p95')} max {cm.get('max')} ms; "
        f"server-side p50 {sm.get('p50')} p95 {sm.get('p95')} ms; server CPU {level['server_cpu_s_per_audio_s']} "
        f"s per audio s" + (f"; probe: {probed.get('status')}" if probed else "")
        + (f"; {len(problems)} server log problem(s)" if problems else ""))
    return level


# ---- summary -------------------------------------------------------------------------------------
def _summarize(runs: list[dict], counts: list[int]) -> list[dict]:
    levels = []
    for n in counts:
        mine = [r for r in runs if r["clients"] == n]
        p95s = [r["client_ms"].get("p95") for r in mine]
        lv = {"clients": n, "repeats": len(mine)}
        for key in ("client_ms", "server_ms", "capture_ms"):
            lv[key] = {s: spread([r[key].get(s) for r in mine]) for s in ("p50", "p95", "max")}
        for key in ("server_cpu_s_per_audio_s", "server_cores_busy", "max_send_lag_s", "client_cpu_s", "wall_s"):
            lv[key] = spread([r[key] for r in mine])
        for key in ("utterances_expected", "events_received", "events_lost", "streams_cut", "dropped_utterances",
                    "dropped_messages", "refused", "unmatched_events", "server_log_problem_count"):
            lv[key] = sum(r[key] for r in mine)
        lv["client_errors"] = sum(len(r["client_errors"]) for r in mine)
        lv["fatal_errors"] = sum(bool(e.get("fatal")) for r in mine for e in r["error_messages"])
        median_p95 = lv["client_ms"]["p95"]["median"]
        lv["p95_under_1s"] = median_p95 is not None and median_p95 < TARGET_P95_MS
        lv["p95_under_1s_every_repeat"] = all(p is not None and p < TARGET_P95_MS for p in p95s)
        lv["holds"] = (lv["p95_under_1s"] and lv["events_lost"] == 0 and lv["refused"] == 0 and lv["streams_cut"] == 0
                       and lv["client_errors"] == 0 and lv["fatal_errors"] == 0)
        levels.append(lv)
    return levels


def _most_held(levels: list[dict]) -> int | None:
    """The largest client count that holds, every smaller level holding too."""
    best = None
    for lv in sorted(levels, key=lambda x: x["clients"]):
        if not lv["holds"]:
            break
        best = lv["clients"]
    return best


def prepare(config: ServeBenchConfig, threads: int, say) -> tuple:
    """Checks the inputs and starts the run: (run context, (source, speech, bundle, bundle info, ASR model, ASR
    note)). Shared with crab_bench.serve_ray."""
    import crab_rt
    from crab_bench.bundles import bundle_info, ensure_bundle, resolve_asr
    from crab_rt.audio import load_audio

    source = Path(config.input or Path(crab_rt.__file__).resolve().parents[1] / "samples" / "jfk.flac")
    if not source.is_file():
        raise ConfigError(f"--input {source}: no such file")
    if config.bundle is not None and not (Path(config.bundle) / "manifest.json").is_file():
        raise ConfigError(f"--bundle {config.bundle}: not a bundle folder (no manifest.json)")
    ctx = start_run(config, threads)
    speech = load_audio(source)
    bundle = Path(config.bundle) if config.bundle else ensure_bundle(config.preset, config.cache_dir, say)
    try:
        info = bundle_info(bundle)
    except (OSError, ValueError):
        info = {"preset": None, "note": "not a benchmark bundle"}
    asr_model, asr_note = resolve_asr(config.asr, config.cache_dir)
    return ctx, (source, speech, bundle, info, asr_model, asr_note)


def run(config: ServeBenchConfig) -> int:
    """Every level `repeats` times, each in a fresh server; writes serve_<preset>[_tag].json, .md and a PNG."""
    config.validate()
    if config.ray:
        from crab_bench.serve_ray import run as run_ray

        return run_ray(config)
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx, inputs = prepare(config, threads, say)
    source, speech, bundle, info, asr_model, asr_note = inputs
    argv = _server_argv(config, bundle, asr_model, threads)
    counts = list(config.clients)
    say(f"serve: {source.name} ({speech.size / _SR:.1f} s) looped to {config.duration_s:g} s per client, "
        f"{'at real time' if config.realtime else 'as fast as possible'}, {config.chunk_ms:g} ms messages; clients "
        f"{','.join(map(str, counts))} x {config.repeats} repeat(s); ASR: {asr_note}")
    runs = []
    for r in range(config.repeats):
        for n in counts:
            runs.append(_run_level(config, argv, n, speech, r, say))
    levels = _summarize(runs, counts)
    held = _most_held(levels)
    probes = [r["probe"] for r in runs if r["probe"] is not None]
    payload = {
        "kind": "serve", "preset": info.get("preset") or ("custom" if config.bundle else config.preset),
        "bundle": {"path": str(bundle), **info},
        "backend": config.backend, "asr": asr_note, "threads": threads,
        "server_command": " ".join(argv[1:]), "server_max_streams": config.server_max_streams,
        "input": f"{source.name}, {speech.size / _SR:.1f} s, looped with {config.gap_s:g} s of silence after each "
                 f"loop to {config.duration_s:g} s per client",
        "realtime": config.realtime, "chunk_ms": config.chunk_ms, "stagger": config.stagger,
        "min_silence_ms": config.min_silence_ms, "warm_up_s": config.warm_up_s, "target_p95_ms": TARGET_P95_MS,
        "most_clients_p95_under_1s": held,
        "refusal_probe": {"runs": len(probes), "refused_503": sum(bool(p["refused"]) for p in probes),
                          "statuses": [p.get("status") for p in probes]},
        "levels": levels, "runs": runs,
    }
    say(f"  most streams this machine holds at p95 under 1 s: {held if held is not None else 'none'} "
        f"(of {','.join(map(str, counts))})")
    finish_run(ctx, f"serve_{payload['preset']}", payload, markdown(payload), lambda stem: plots(stem, payload), say)
    return 0


def _cell(s: dict) -> str:
    if s["median"] is None:
        return "-"
    med = f"{s['median']:.0f}" if s["median"] >= 10 else f"{s['median']:.3g}"
    if s["min"] == s["max"]:
        return med
    fmt = "{:.0f}" if s["max"] >= 10 else "{:.3g}"
    return f"{med} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def markdown(p: dict) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    levels, runs = p["levels"], p["runs"]
    rows = [[lv["clients"], lv["repeats"], _cell(lv["client_ms"]["p50"]), _cell(lv["client_ms"]["p95"]),
             _cell(lv["client_ms"]["max"]), _cell(lv["server_ms"]["p50"]), _cell(lv["server_ms"]["p95"]),
             f"{lv['events_received']}/{lv['utterances_expected']}", lv["events_lost"], lv["streams_cut"],
             lv["dropped_utterances"], lv["dropped_messages"], lv["refused"],
             _cell(lv["server_cpu_s_per_audio_s"]), _cell(lv["server_cores_busy"]),
             "yes" if lv["p95_under_1s"] else "**no**"] for lv in levels]
    levels_table = markdown_table(
        ["clients", "runs", "client p50 ms", "client p95 ms", "client max ms", "server p50 ms", "server p95 ms",
         "events / utterances", "lost", "streams cut", "dropped utt.", "dropped msg.", "refused",
         "server CPU s / audio s", "cores busy", "p95 < 1 s"], rows)
    run_rows = [[r["clients"], r["repeat"] + 1, r["client_ms"].get("p50"), r["client_ms"].get("p95"),
                 r["client_ms"].get("max"), r["server_ms"].get("p50"), r["server_ms"].get("p95"),
                 r["server_ms"].get("max"), f"{r['events_received']}/{r['utterances_expected']}", r["streams_cut"],
                 r["refused"],
                 r["server_cpu_s_per_audio_s"], r["max_send_lag_s"], r["yardstick_gflops"], r["steal_pct"],
                 r["server_startup_s"],
                 r["server_log_problem_count"],
                 "-" if r["probe"] is None else r["probe"].get("status")] for r in runs]
    runs_table = markdown_table(
        ["clients", "repeat", "client p50", "client p95", "client max", "server p50", "server p95", "server max",
         "events / utterances", "streams cut", "refused", "server CPU s / audio s", "max send lag s",
         "yardstick GFLOP/s",
         "steal %", "startup s",
         "server log problems", "probe status"], run_rows)
    held = p["most_clients_p95_under_1s"]
    probe = p["refusal_probe"]
    problems = sorted({line for r in runs for line in r["server_log_problems"]})
    notes = [
        f"**most streams this machine holds at p95 under 1 s: {held if held is not None else 'none'}** (levels "
        f"{', '.join(str(lv['clients']) for lv in levels)}; a level holds when the median over runs of the "
        "client-side p95 is under 1 s, with no event lost, no connection refused and no error; every smaller "
        "level must hold too)",
        f"server: `{p['server_command']}` (a fresh process per run); bundle: "
        + (f"preset {p['preset']} ({p['bundle']['speech_encoder']} + {p['bundle']['text_encoder']}, random weights)"
           if "speech_encoder" in p["bundle"] else f"`{p['bundle']['path']}`")
        + f"; ASR: {p['asr']}; ONNX Runtime threads {p['threads']}",
        f"clients: one asyncio process on the same machine (loopback 127.0.0.1), each streaming {p['input']}, "
        f"{'at real time' if p['realtime'] else 'as fast as the server reads'} in {p['chunk_ms']:g} ms f32le "
        "messages (each sent when a microphone would have recorded its last sample)"
        + (", client k of N after k/N of a loop of leading silence" if p["stagger"] else "")
        + f", then {p['min_silence_ms'] / 1000 + 0.5:g} s of trailing silence; untimed warm-up first (the input's "
        "first 11 s as fast as possible" + (f", then its first {p['warm_up_s']:g} s at real time)"
                                              if p["warm_up_s"] else ")"),
        f"client-side latency: from the moment the client had sent the audio up to the server's decision point "
        f"(speech_end.time_s + the {p['min_silence_ms']:g} ms hangover rounded up to whole 32 ms VAD frames) to "
        "the arrival of the utterance's event; server-side: the event's latency_ms.end_to_event",
        "cells: median over runs (min-max over runs); p50/p95/max pool every utterance of every client of a run; "
        "lost = done.utterances - events received - done.dropped_utterances (a stream cut before its done "
        "counts the utterances whose speech_end it received: a lower bound); streams cut: connected, no done",
        "every run records the yardstick (numpy fp32 matmul GFLOP/s) just before its server starts and the "
        "hypervisor's steal time during the load: a run far below the others' yardstick ran on a slowed machine",
        "server CPU: user + system seconds of the server process (/proc/<pid>/stat, children included) from "
        "after the warm-up to the last client's done, per second of audio sent (silence included); cores busy = "
        "server CPU s / wall s",
        f"refusal probe (one connection beyond --max-streams {p['server_max_streams']} while the largest level "
        f"is connected): {probe['refused_503']} of {probe['runs']} refused with 503 (statuses {probe['statuses']})",
        ("server log warnings and errors: " + "; ".join(f"`{x}`" for x in problems[:10])
         + (f" ... ({len(problems)} distinct)" if len(problems) > 10 else "")) if problems
        else "server log: no warning or error",
    ]
    return (f"crab-rt serve under load, preset {p['preset']}",
            [("End of speech to event vs clients", levels_table), ("Every run", runs_table)], notes)


def plots(stem, p: dict) -> list:
    from crab_bench.report import line_panels

    levels = p["levels"]
    xs = [lv["clients"] for lv in levels]

    def med(key, stat):
        return [lv[key][stat]["median"] for lv in levels]

    path = Path(f"{stem}_vs_clients.png")
    line_panels(path, f"crab-rt serve, preset {p['preset']}: N real-time clients on loopback (medians of runs)", [
        {"title": "end of speech to event", "xlabel": "clients", "ylabel": "ms", "series": {
            "client-side p50": (xs, med("client_ms", "p50")), "client-side p95": (xs, med("client_ms", "p95")),
            "server-side p50": (xs, med("server_ms", "p50")), "server-side p95": (xs, med("server_ms", "p95")),
            "1 s": (xs, [TARGET_P95_MS] * len(xs))}},
        {"title": "server CPU", "xlabel": "clients", "ylabel": "CPU s per audio s", "series": {
            "server CPU s / audio s": (xs, [lv["server_cpu_s_per_audio_s"]["median"] for lv in levels])}},
    ])
    return [path]
