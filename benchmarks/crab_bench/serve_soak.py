"""`python benchmarks/soak_serve.py`: `crab-rt serve` for an hour with N real-time clients; does anything drift?

One server process (`crab-rt serve`, the preset's benchmark bundle, the real
Whisper tiny.en by default, loopback only) and `--clients` (8) clients in this
process, each streaming real speech (samples/jfk.flac and `--gap-s` of silence,
looped without end, client k offset by k/N of a loop) at real time for
`--duration-s` (3600). Every `--sample-every-s` the server's resident memory, open
file descriptors and threads are read from /proc. Per `--window-s` (300) window:
those (mean and max) and the clients' end-of-speech-to-event latency as they see
it (p50, p95; `crab_bench.serve_load`'s definition; an event counts in the
window it arrived in). At the end every client sends `stop` and gets `done`:
events lost = utterances the server counted - events received - utterances
dropped.

Flat means: from the second window on (the first holds the warm-up), the last
window's RSS, file descriptors, threads and p95 are within `--flat-pct` (10 %)
of the second window's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
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
from crab_bench.serve_flood import _proc_sample
from crab_bench.serve_load import VAD_FRAME, ServerProcess, _read_metrics
from crab_bench.stats import summarize_ms
from crab_rt.audio import SAMPLE_RATE
from crab_rt.cli._options import add_config_option

__all__ = ["CONFIG", "SoakServeConfig", "add_arguments", "run", "window_rows"]

_SR = SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class SoakServeConfig(CommonBenchConfig):
    """Options of `soak_serve` (and of CommonBenchConfig).

    Attributes:
        preset: model sizes of the benchmark bundle; bundle: serve this folder instead.
        input: audio the clients loop; None = samples/jfk.flac.
        asr: the server's ASR ("tiny.en": the real Whisper tiny.en; "none").
        asr_window: the server's --asr-window ("auto": the utterance plus 10 s, the fast setting; "30": Whisper's
            fixed window).
        clients: real-time clients.
        duration_s: how long every client streams.
        gap_s: silence after each loop of the input.
        window_s: the report's window.
        sample_every_s: seconds between two /proc samples of the server.
        flat_pct: how far the last window may be from the second one and still be flat.
        min_silence_ms: the server's VAD hangover (and the client-side latency's starting point).
        max_streams: the server's --max-streams (0 = clients).
    """

    preset: str = "tiny"
    bundle: str | None = None
    input: str | None = None
    asr: str = "tiny.en"
    asr_window: str = "auto"
    clients: int = 8
    duration_s: float = 3600.0
    gap_s: float = 1.0
    window_s: float = 300.0
    sample_every_s: float = 5.0
    flat_pct: float = 10.0
    min_silence_ms: float = 500.0
    max_streams: int = 0

    def validate(self) -> None:
        super().validate()
        check_choice("--preset", self.preset, PRESETS)
        check_asr_spec("--asr", self.asr)
        check_range("--clients", self.clients, 1, 256)
        check_range("--duration-s", self.duration_s, 10, 7 * 24 * 3600)
        check_range("--gap-s", self.gap_s, 0, 60)
        check_range("--window-s", self.window_s, 5, 24 * 3600)
        check_range("--sample-every-s", self.sample_every_s, 0.1, 3600)
        check_range("--flat-pct", self.flat_pct, 0, 1000)
        check_range("--min-silence-ms", self.min_silence_ms, 32, 10_000)
        check_range("--max-streams", self.max_streams, 0, 1024, note=" (0 = --clients)")


CONFIG = SoakServeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cls = SoakServeConfig
    add_common_arguments(p)
    add_config_option(p, "--preset", cls, "preset", "model preset of the benchmark bundle: tiny, base or large")
    add_config_option(p, "--bundle", cls, "bundle", "serve this bundle folder instead", type=str,
                      default_text="the preset's random-weight benchmark bundle")
    add_config_option(p, "--input", cls, "input", "audio file the clients loop", type=str,
                      default_text="samples/jfk.flac")
    add_config_option(p, "--asr", cls, "asr", "the server's ASR: faster-whisper name or CTranslate2 folder, or 'none'")
    add_config_option(p, "--asr-window", cls, "asr_window", "the server's --asr-window (auto or seconds)")
    add_config_option(p, "--clients", cls, "clients", "real-time clients")
    add_config_option(p, "--duration-s", cls, "duration_s", "seconds every client streams")
    add_config_option(p, "--gap-s", cls, "gap_s", "silence after each loop of the input, seconds")
    add_config_option(p, "--window-s", cls, "window_s", "report window, seconds")
    add_config_option(p, "--sample-every-s", cls, "sample_every_s", "seconds between /proc samples of the server")
    add_config_option(p, "--flat-pct", cls, "flat_pct", "last window within this many percent of the second")
    add_config_option(p, "--min-silence-ms", cls, "min_silence_ms", "the server's VAD hangover in ms")
    add_config_option(p, "--max-streams", cls, "max_streams", "the server's --max-streams (0 = --clients)")


# ---- one looping real-time client ----------------------------------------------------------------------------
async def _client(url: str, name: str, loop_audio: np.ndarray, offset: int, duration_s: float, chunk: int,
                  tail: np.ndarray) -> dict:
    """Stream `loop_audio` from sample `offset`, looped, at real time for `duration_s`, then `tail` and stop.

    Returns {"name", "error", "sent": int64 [n, 2] (end sample, send time), "ends": {utterance_id: time_s},
    "events": [(arrival, utterance_id)], "done"}.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    total = int(duration_s * _SR)
    sent = np.zeros((math.ceil((total + tail.size) / chunk) + 1, 2), dtype=np.float64)
    out = {"name": name, "error": None, "ends": {}, "events": [], "done": None}
    n_sent = 0
    ws = await connect(url, open_timeout=60, ping_interval=None, max_size=None)

    async def receive() -> None:
        try:
            async for text in ws:
                msg = json.loads(text)
                kind = msg.get("type")
                if kind == "speech_end":
                    out["ends"][msg["utterance_id"]] = msg["time_s"]
                elif kind == "event":
                    out["events"].append((loop.time(), msg["utterance_id"]))
                elif kind == "error" and msg.get("fatal"):
                    out["error"] = f"{msg['code']}: {msg['message']}"
                elif kind == "done":
                    out["done"] = msg
                    return
        except ConnectionClosed as e:
            out["error"] = out["error"] or f"closed before done: {e}"

    receiver = asyncio.ensure_future(receive())
    try:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "sample_rate": _SR, "format": "f32le",
                                  "stream_id": name, "realtime": True}))
        t0 = loop.time()
        position = 0
        while position < total + tail.size and not receiver.done():
            n = min(chunk, total + tail.size - position)
            if position < total:
                idx = (offset + position + np.arange(min(n, total - position))) % loop_audio.size
                piece = loop_audio[idx]
                if piece.size < n:
                    piece = np.concatenate([piece, tail[: n - piece.size]])
            else:
                piece = tail[position - total: position - total + n]
            position += n
            due = t0 + position / _SR
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            sent[n_sent] = (position, loop.time())  # before the send, as crab_bench.serve_load reads it
            await ws.send(piece.astype("<f4").tobytes())
            n_sent += 1
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, 600)
    except (ConnectionClosed, asyncio.TimeoutError) as e:
        out["error"] = out["error"] or f"{type(e).__name__}: {e}"
    finally:
        await ws.close()
    out["sent"] = sent[:n_sent]
    out["t0"] = t0
    return out


def _latencies(client: dict, hangover: int) -> list[tuple[float, float]]:
    """(arrival time, client-side ms) of each event whose speech_end the client saw."""
    sent = client["sent"]
    rows = []
    for arrival, uid in client["events"]:
        if uid not in client["ends"] or not len(sent):
            continue
        decided = int(round(client["ends"][uid] * _SR)) + hangover
        i = min(int(np.searchsorted(sent[:, 0], decided, side="left")), len(sent) - 1)
        rows.append((arrival, (arrival - sent[i, 1]) * 1000.0))
    return rows


def window_rows(samples: list[dict], latencies: list[tuple[float, float]], t0: float, window_s: float,
                duration_s: float) -> list[dict]:
    """Per window: server RSS/fds/threads (mean, max) from `samples` ({"t", "rss_mb", "fds", "threads"}) and the
    client-side latency p50/p95 of the events that arrived in it (`latencies`: (arrival, ms))."""
    rows = []
    n = max(1, math.ceil(duration_s / window_s))
    for k in range(n):
        lo, hi = t0 + k * window_s, t0 + (k + 1) * window_s
        mine = [s for s in samples if lo <= s["t"] < hi]
        ms = [v for t, v in latencies if lo <= t < hi]
        row = {"window": k, "start_s": round(k * window_s, 1), "events": len(ms)}
        for key in ("rss_mb", "fds", "threads"):
            vals = [s[key] for s in mine]
            row[key] = {"mean": round(float(np.mean(vals)), 1) if vals else None, "max": max(vals) if vals else None}
        stats = summarize_ms(ms, (50, 95))
        row["p50_ms"], row["p95_ms"] = stats.get("p50"), stats.get("p95")
        rows.append(row)
    return rows


def _flatness(rows: list[dict], pct: float) -> dict:
    """Last window against the second (the first holds the warm-up): relative change of each measure."""
    if len(rows) < 3:
        return {"checked": False, "note": "fewer than 3 windows"}
    a, b = rows[1], rows[-1]
    out = {"checked": True, "against_window": 1, "last_window": b["window"]}
    for key, get in (("rss_mb", lambda r: r["rss_mb"]["mean"]), ("fds", lambda r: r["fds"]["max"]),
                     ("threads", lambda r: r["threads"]["max"]), ("p95_ms", lambda r: r["p95_ms"])):
        x, y = get(a), get(b)
        change = None if not x or y is None else round(100.0 * (y - x) / x, 1)
        out[key] = {"second": x, "last": y, "change_pct": change, "flat": change is not None and abs(change) <= pct}
    out["flat"] = all(out[k]["flat"] for k in ("rss_mb", "fds", "threads", "p95_ms"))
    return out


def run(config: SoakServeConfig) -> int:
    """One server, `clients` real-time clients for `duration_s`; writes soak_serve[_tag].json, .md and a PNG."""
    from crab_bench.serve_load import prepare

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx, (source, speech, bundle, info, asr_model, asr_note) = prepare(config, threads, say)
    argv = [sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
            "--port", "0", "--backend", "onnxruntime", "--threads", str(threads),
            "--max-streams", str(config.max_streams or config.clients),
            "--min-silence-ms", f"{config.min_silence_ms:g}"]
    argv += ["--no-asr"] if asr_model is None else ["--asr", asr_model, "--asr-window", config.asr_window]
    loop_audio = np.concatenate([speech, np.zeros(int(config.gap_s * _SR), np.float32)]).astype(np.float32)
    tail = np.zeros(int((config.min_silence_ms / 1000 + 0.5) * _SR), np.float32)
    hangover = int(math.ceil(config.min_silence_ms * _SR / 1000 / VAD_FRAME)) * VAD_FRAME
    chunk = int(round(0.032 * _SR))
    say(f"soak_serve: {config.clients} real-time clients of {source.name} looped for {config.duration_s:g} s, "
        f"windows of {config.window_s:g} s; ASR: {asr_note}")
    server = ServerProcess(argv)
    server.start(300)
    samples: list[dict] = []
    sampling = True

    def sample() -> None:
        while sampling:
            s = _proc_sample(server.pid)
            if s is not None:
                samples.append({"t": time.monotonic(), **s})
                if len(samples) % max(1, int(config.window_s / config.sample_every_s)) == 0:
                    say(f"  {time.monotonic() - started:7.0f} s: server RSS {s['rss_mb']} MB, fds {s['fds']}, "
                        f"threads {s['threads']}")
            time.sleep(config.sample_every_s)

    async def everyone() -> list[dict]:
        return await asyncio.gather(*(
            _client(server.url, f"soak-{k}", loop_audio, k * loop_audio.size // config.clients, config.duration_s,
                    chunk, tail) for k in range(config.clients)))

    started = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        clients = asyncio.run(everyone())  # asyncio's loop.time() is time.monotonic()
        metrics = _read_metrics(server.url)
    finally:
        sampling = False
        exit_code = server.stop()
    latencies = [row for c in clients for row in _latencies(c, hangover)]
    rows = window_rows(samples, latencies, started, config.window_s, config.duration_s)
    done = [c["done"] for c in clients if c["done"]]
    lost = sum(d["utterances"] - d["events"] - d["dropped_utterances"] for d in done)
    received = sum(len(c["events"]) for c in clients)
    flat = _flatness(rows, config.flat_pct)
    payload = {"kind": "soak_serve", "preset": info.get("preset") or config.preset, "asr": asr_note,
               "server_command": " ".join(argv[1:]), "clients": config.clients, "duration_s": config.duration_s,
               "utterances": sum(d["utterances"] for d in done), "events_received": received,
               "events_lost": lost, "streams_without_done": len(clients) - len(done),
               "client_errors": [f"{c['name']}: {c['error']}" for c in clients if c["error"]],
               "all_ms": summarize_ms([v for _, v in latencies], (50, 95, 99)), "windows": rows, "flatness": flat,
               "server_exit_code": exit_code, "server_metrics": metrics, "server_log_problems": server.problems()[:20]}
    say(f"  events {received}, lost {lost}; flat within {config.flat_pct:g} %: {flat.get('flat')}")
    finish_run(ctx, "soak_serve", payload, _markdown(config, payload), lambda stem: _plots(stem, payload), say)
    return 0


def _markdown(config: SoakServeConfig, p: dict) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    rows = [[r["window"], r["start_s"], r["events"], r["p50_ms"], r["p95_ms"], r["rss_mb"]["mean"], r["rss_mb"]["max"],
             r["fds"]["max"], r["threads"]["max"]] for r in p["windows"]]
    table = markdown_table(["window", "from s", "events", "p50 ms", "p95 ms", "RSS MB mean", "RSS MB max",
                            "fds max", "threads max"], rows)
    f = p["flatness"]
    flat_note = ("flatness not checked: " + f.get("note", "")) if not f.get("checked") else (
        f"last window vs the second (the first holds the warm-up), within {config.flat_pct:g} %: "
        + ", ".join(f"{k} {f[k]['second']} -> {f[k]['last']} ({f[k]['change_pct']:+g} %)"
                    if f[k]["change_pct"] is not None else f"{k} n/a" for k in ("rss_mb", "fds", "threads", "p95_ms"))
        + (": **flat**" if f["flat"] else ": **not flat**"))
    notes = [
        f"server: `{p['server_command']}` (loopback only); ASR: {p['asr']}",
        f"{p['clients']} clients in one asyncio process, each streaming samples/jfk.flac + {config.gap_s:g} s of "
        f"silence looped for {p['duration_s']:g} s at real time (client k offset by k/{p['clients']} of a loop)",
        f"events received {p['events_received']} of {p['utterances']} utterances; **lost {p['events_lost']}**; "
        f"streams without done {p['streams_without_done']}; client errors {len(p['client_errors'])}",
        f"end of speech to event, as the clients see it, whole run: p50 {p['all_ms'].get('p50')} ms, p95 "
        f"{p['all_ms'].get('p95')} ms, p99 {p['all_ms'].get('p99')} ms",
        flat_note,
    ]
    return "crab-rt serve soak", [(f"Per {config.window_s:g} s window", table)], notes


def _plots(stem, p: dict) -> list:
    from crab_bench.report import line_panels

    w = p["windows"]
    xs = [r["start_s"] / 60 for r in w]
    path = Path(f"{stem}.png")
    line_panels(path, f"crab-rt serve soak: {p['clients']} real-time clients, {p['duration_s'] / 60:g} min", [
        {"title": "end of speech to event", "xlabel": "minutes", "ylabel": "ms", "series": {
            "p50": (xs, [r["p50_ms"] for r in w]), "p95": (xs, [r["p95_ms"] for r in w])}},
        {"title": "server RSS", "xlabel": "minutes", "ylabel": "MB", "series": {
            "mean": (xs, [r["rss_mb"]["mean"] for r in w]), "max": (xs, [r["rss_mb"]["max"] for r in w])}},
        {"title": "server fds and threads", "xlabel": "minutes", "ylabel": "count", "series": {
            "fds max": (xs, [r["fds"]["max"] for r in w]), "threads max": (xs, [r["threads"]["max"] for r in w])}},
    ])
    return [path]
