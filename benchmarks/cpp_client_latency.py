"""The C++ client's end-of-speech-to-event latency beside the Python client's, at the same server (issue 12).

    python benchmarks/cpp_client_latency.py --bench-bin build/cpp/clients/cpp/crab-rt-cpp-bench \\
        --bundle build/cpp-test-bundle --runs 8

One `crab-rt serve` (ONNX Runtime, the given bundle, --no-asr unless --asr) on a free loopback port; the
clients take turns, C++ (`crab-rt-cpp-bench`, crab_rt::Client) then Python (crab_rt.client.Client), each in its
own process, each streaming the same audio (samples/jfk.flac as 16 kHz mono float32, 4 utterances) as live
audio: 32 ms chunks, each handed to the client's send call when its audio would have been heard.

Latency of an utterance, measured in the client process: the time its `event` reached the application (C++: the
on_event callback; Python: `Client.messages()`) minus the time the chunk holding its end of speech
(`speech_end.time_s`, where the silence began) was handed to the client. It includes both clients' send and
receive paths, the network (loopback), the server's end-of-speech wait (--min-silence-ms) and its processing;
the server's own `end_to_event` is recorded beside it, so that a difference between the clients can be told
from the server's run-to-run variation. Writes cpp_client_latency.{json,md} to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "samples" / "jfk.flac"
CHUNK_MS = 32.0


def _python_client(url: str, wav: str) -> int:
    """The Python side of one run: prints one JSON line per event (as crab-rt-cpp-bench does)."""
    import soundfile as sf

    from crab_rt.client import Client, Event, SpeechEnd

    audio, rate = sf.read(wav, dtype="float32")
    chunk = round(rate * CHUNK_MS / 1000)
    sent: list[float] = []
    ends: dict[int, float] = {}
    lines: list[str] = []
    lock = threading.Lock()
    client = Client(url, sample_rate=rate, format="f32le", channels=1, realtime=True, stream_id="bench")
    client.open()

    def consume() -> None:
        for msg in client.messages():
            now = time.perf_counter()
            with lock:
                if isinstance(msg, SpeechEnd) and msg.utterance_id is not None:
                    ends[msg.utterance_id] = msg.time_s
                elif isinstance(msg, Event) and msg.utterance_id in ends:
                    index = int(ends[msg.utterance_id] * rate) // chunk
                    if index < len(sent):
                        lines.append(json.dumps({
                            "utterance_id": msg.utterance_id, "client_ms": round((now - sent[index]) * 1000, 3),
                            "server_end_to_event_ms": msg.latency_ms.get("end_to_event"),
                            "speech_end_s": ends[msg.utterance_id]}))

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    start = time.perf_counter()
    for k, i in enumerate(range(0, len(audio), chunk)):
        delay = start + k * chunk / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            sent.append(time.perf_counter())
        client.send_audio(audio[i:i + chunk])
    client.stop()
    reader.join()
    client.close()
    for line in lines:
        print(line)
    return 0


class _Server:
    def __init__(self, bundle: str, asr: str) -> None:
        cmd = [sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", bundle, "--port", "0",
               "--backend", "onnxruntime", *(["--no-asr"] if asr == "none" else ["--asr", asr])]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                m = re.search(r"ready on (ws://[^/\s]+)/?", line)
                if m and not self.url:
                    self.url = m.group(1) + "/"
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(300)
        if not self.url:
            raise SystemExit("crab-rt serve did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _run(cmd: list[str]) -> list[dict]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({out.returncode}): {out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _stats(values: list[float]) -> dict:
    values = sorted(values)
    n = len(values)
    return {"n": n, "p50": round(statistics.median(values), 3), "mean": round(statistics.fmean(values), 3),
            "p90": round(values[min(n - 1, int(0.9 * n))], 3), "min": round(values[0], 3), "max": round(values[-1], 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-bin", default=str(ROOT / "build/cpp/clients/cpp/crab-rt-cpp-bench"))
    p.add_argument("--bundle", default=str(ROOT / "build/cpp-test-bundle"),
                   help="a bundle folder (default: the C++ live tests' tiny bundle)")
    p.add_argument("--asr", default="none", help="the server's --asr (default none: --no-asr)")
    p.add_argument("--runs", type=int, default=8, help="runs per client, alternating")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks/results/cpu-2core-amd-epyc"))
    p.add_argument("--python-client", nargs=2, metavar=("URL", "WAV"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.python_client:
        return _python_client(*args.python_client)

    import numpy as np
    import soundfile as sf

    from crab_rt.audio import load_audio

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = Path("/tmp") / f"crab-rt-cpp-bench-{os.getpid()}.wav"
    sf.write(wav, load_audio(JFK).astype(np.float32), 16000, subtype="FLOAT")
    server = _Server(args.bundle, args.asr)
    load_start = os.getloadavg()
    runs = []
    try:
        # one warm-up run each (first ONNX Runtime calls, page cache), not counted
        _run([args.bench_bin, "--url", server.url, "--input", str(wav)])
        _run([sys.executable, __file__, "--python-client", server.url, str(wav)])
        for r in range(args.runs):
            for client in ("cpp", "python"):
                cmd = ([args.bench_bin, "--url", server.url, "--input", str(wav)] if client == "cpp"
                       else [sys.executable, __file__, "--python-client", server.url, str(wav)])
                events = _run(cmd)
                runs.append({"client": client, "run": r, "events": events})
                print(f"run {r} {client:6}: client_ms " + " ".join(f"{e['client_ms']:.1f}" for e in events)
                      + "  server end_to_event " + " ".join(f"{e['server_end_to_event_ms']:.1f}" for e in events))
    finally:
        server.stop()
        wav.unlink(missing_ok=True)

    load_end = os.getloadavg()
    bundle = args.bundle
    if Path(bundle).resolve().is_relative_to(ROOT):
        bundle = str(Path(bundle).resolve().relative_to(ROOT))
    summary = {}
    for client in ("cpp", "python"):
        events = [e for run in runs if run["client"] == client for e in run["events"]]
        summary[client] = {
            "client_ms": _stats([e["client_ms"] for e in events]),
            "server_end_to_event_ms": _stats([e["server_end_to_event_ms"] for e in events]),
            # what the client adds beyond the server's own measure (the end-of-speech wait included)
            "client_minus_server_ms": _stats([e["client_ms"] - e["server_end_to_event_ms"] for e in events]),
        }
    diff = summary["cpp"]["client_ms"]["p50"] - summary["python"]["client_ms"]["p50"]
    diff_net = (summary["cpp"]["client_minus_server_ms"]["p50"]
                - summary["python"]["client_minus_server_ms"]["p50"])
    import crab_rt

    result = {
        "kind": "cpp_client_latency",
        "target": "the C++ client's end-of-speech-to-event p50 within 1 ms of the Python client's (issue 12, item 6)",
        "met": abs(diff) <= 1.0,
        "cpp_minus_python_p50_ms": round(diff, 3),
        "cpp_minus_python_p50_of_client_minus_server_ms": round(diff_net, 3),
        "summary": summary,
        "config": {"bundle": bundle, "asr": args.asr, "runs_per_client": args.runs, "chunk_ms": CHUNK_MS,
                   "audio": "samples/jfk.flac as 16 kHz mono float32 (11.0 s, 4 utterances)",
                   "server": "crab-rt serve --backend onnxruntime, defaults otherwise, loopback"},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
                    "crab_rt": crab_rt.__version__,
                    "load_average_1_5_15_min": {"start": [round(x, 2) for x in load_start],
                                                "end": [round(x, 2) for x in load_end]}},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs,
    }
    (out_dir / "cpp_client_latency.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = ["| client | n | client end-of-speech to event p50 / mean / p90 (ms) | server end_to_event p50 (ms) "
            "| client minus server p50 (ms) |", "|---|---|---|---|---|"]
    for client, name in (("cpp", "C++ (crab_rt::Client, crab-rt-cpp-bench)"),
                         ("python", "Python (crab_rt.client.Client)")):
        s = summary[client]
        c = s["client_ms"]
        rows.append(f"| {name} | {c['n']} | {c['p50']:.1f} / {c['mean']:.1f} / {c['p90']:.1f} | "
                    f"{s['server_end_to_event_ms']['p50']:.1f} | {s['client_minus_server_ms']['p50']:.1f} |")
    md = [
        "# C++ client vs Python client: end-of-speech to event, same server",
        "",
        f"{result['date']}, `python benchmarks/cpp_client_latency.py --runs {args.runs}` (issue 12, item 6). "
        f"Load average (1 min) {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end.",
        "",
        f"Bundle `{bundle}` (ASR: {args.asr}), ONNX Runtime, loopback; samples/jfk.flac as 16 kHz mono "
        f"float32 sent as live audio in {CHUNK_MS:g} ms chunks; {args.runs} runs per client, alternating, after "
        "one warm-up run each.",
        "",
        *rows,
        "",
        f"**C++ minus Python, p50: {diff:+.2f} ms** (target: within 1 ms; "
        f"{'met' if abs(diff) <= 1.0 else 'not met'}). Of the part beyond the server's own end_to_event "
        f"(client minus server): {diff_net:+.2f} ms.",
        "",
        "The latency counts from the moment the chunk holding the end of speech was handed to the client, so it "
        "includes the server's end-of-speech wait (--min-silence-ms) and its processing, which are the same for "
        "both clients; the per-run values are in cpp_client_latency.json.",
        "",
    ]
    (out_dir / "cpp_client_latency.md").write_text("\n".join(md))
    print("\n".join(rows))
    print(f"C++ minus Python p50: {diff:+.2f} ms; client-minus-server p50 difference {diff_net:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
