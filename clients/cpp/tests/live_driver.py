"""ctest's Python side of the C++ client tests: run by the project's Python (CRAB_RT_PYTHON, the .venv).

    live_driver.py format --tool crab_rt_format_tool
        random server messages through the C++ parser and formatter, compared byte for byte with Python's
        EmotionEvent.to_json() and json.dumps (what `crab-rt client` prints)
    live_driver.py bundle --bundle DIR
        builds the tiny random-weight test bundle (as tests/conftest.py's tiny_bundle) unless DIR holds one
    live_driver.py events --bundle DIR --asr tiny.en|none --work DIR --listen BIN --live-client BIN --c-api BIN
        starts `crab-rt serve` (with a token) on a free loopback port, streams real speech (samples/jfk.flac)
        from the example, the C++ API and the C API, compares the example's lines with `crab-rt client`'s, and
        checks a bad token's refusal
    live_driver.py errors --bundle DIR --work DIR --listen BIN --live-client BIN --c-api BIN
        an invalid URL, a refused connection, wss:// with and without the CA, and a server killed mid-stream
    live_driver.py mic --bundle DIR --work DIR --listen BIN
        --device through PortAudio, ALSA's pulse plugin and a private PulseAudio (skipped without `make mic-stack`)

Exit code 77 (ctest: skipped) when this Python lacks crab-rt's dev install.
"""

# ruff: noqa: T201  (a command-line driver: it prints what it checked)
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
JFK = ROOT / "samples" / "jfk.flac"
PROG = "crab-rt-cpp-listen"
SKIP = 77


def need(*modules: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"SKIP: {sys.executable} cannot import {name} ({e}); run `make install` first")
            sys.exit(SKIP)


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


# ---- format ----------------------------------------------------------------------------------------------------


def _number(rng: random.Random) -> float | int:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randrange(0, 200)  # a JSON integer: Python's float() prints it as "3.0"
    if kind == 1:
        return rng.randrange(0, 100000) / 1000 + rng.choice([0.0005, 0.00005, 0.005])  # near rounding ties
    if kind == 2:
        return 10 ** rng.uniform(-9, 17)
    if kind == 3:
        return rng.choice([0.0, 1.0, 11.0, 0.3119, 2.34, 1e-05, 0.0001, 1e16, 1e15, 2.675, 0.125, 1.0005, 5e-324])
    return rng.uniform(0, 1) * rng.choice([1, 10, 1000, 100000])


def _text(rng: random.Random) -> str:
    pieces = ["and so", " my fellow", " americans", "\"quoted\"", "back\\slash", "\n", "\t", "\r", "\x00", "\x01",
              "\x1f", "\x7f", "é", "☃", "😀", "\u2028", "/", " ask not "]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 8)))


def _messages(rng: random.Random, n: int) -> list[str]:
    out = []
    for i in range(n):
        kind = rng.randrange(10)
        if kind < 6:
            labels = rng.sample(["angry", "happy", "neutral", "sad", "été", "a\"b"], rng.randrange(2, 6))
            msg = {"type": "event", "stream_id": rng.choice(["file", "robot-7:mic-0", "s"]), "utterance_id": i,
                   "start_s": _number(rng), "end_s": _number(rng), "text": _text(rng),
                   "text_flagged": rng.random() < 0.5, "label": rng.choice(labels), "confidence": _number(rng),
                   "probabilities": {label: _number(rng) for label in labels},
                   "latency_ms": {k: _number(rng) for k in ("end_to_event", "asr", "speech_encoder", "text_encoder",
                                                            "head", "queue_wait")},
                   "forced_split": rng.random() < 0.2}
            if rng.random() < 0.3:
                msg["unknown_field"] = {"nested": [1, "x"]}
            if rng.random() < 0.1:
                del msg[rng.choice(["label", "text", "probabilities", "forced_split"])]
        elif kind < 8:
            msg = {"type": "speech_start", "stream_id": rng.choice(["s", "été", "robot-7"]), "time_s": _number(rng)}
        elif kind < 9:
            msg = {"type": "speech_end", "stream_id": "s", "time_s": _number(rng),
                   "utterance_id": rng.choice([None, i])}
        else:
            msg = {"type": rng.choice(["ready", "done", "whatever"])}
        out.append(json.dumps(msg, ensure_ascii=rng.random() < 0.5))
    return out


def cmd_format(args: argparse.Namespace) -> None:
    need("crab_rt.client", "numpy")
    from crab_rt.client import ClientError, Event, SpeechEnd, SpeechStart, parse_message

    rng = random.Random(12)
    messages = _messages(rng, 2000)
    got = subprocess.run([args.tool], input="\n".join(messages) + "\n", capture_output=True, text=True,
                         encoding="utf-8", check=True).stdout.split("\n")[:-1]
    check(len(got) == len(messages), f"{len(got)} output lines for {len(messages)} messages")
    counts = {"event": 0, "speech": 0, "refused": 0, "other": 0}
    for text, line in zip(messages, got):
        try:
            msg = parse_message(text)
        except ClientError:
            counts["refused"] += 1
            check(line.startswith("ERROR bad_message: the server sent a "), f"C++ accepted {text!r}: {line!r}")
            continue
        if isinstance(msg, Event):
            counts["event"] += 1
            want = msg.to_json()
        elif isinstance(msg, (SpeechStart, SpeechEnd)):
            counts["speech"] += 1
            want = json.dumps(msg.to_dict())
        else:
            counts["other"] += 1
            want = "-"
        check(line == want, f"for {text!r}\n  C++:    {line!r}\n  Python: {want!r}")
    print(f"format: {len(messages)} messages, identical lines: {counts}")


# ---- bundle ----------------------------------------------------------------------------------------------------


def cmd_bundle(args: argparse.Namespace) -> None:
    need("crab_rt", "torch")
    target = Path(args.bundle)
    if (target / ".complete").exists():
        print(f"bundle: {target} is there")
        return
    import shutil

    import torch

    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel
    from crab_rt.text import train_bpe_tokenizer
    from crab_rt.train.checkpoint import save_checkpoint

    torch.manual_seed(0)  # as tests/conftest.py's tiny_model_parts and tiny_bundle
    config = ModelConfig(speech_encoder="random:wavlm-tiny", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=16, classifier_dim=16), max_text_tokens=32)
    model = CrabModel.build(config, ["a", "b", "c", "d"]).eval()
    tokenizer = train_bpe_tokenizer(["i love this so much", "this is terrible", "okay fine then", "so sad today"],
                                    vocab_size=300, max_length=32)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        ckpt = save_checkpoint(Path(tmp) / "model.pt", model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32})
        built = export_bundle(ckpt, Path(tmp) / "bundle", ExportOptions(parity=False))
        (Path(built) / ".complete").write_text("tiny random-weight bundle for the C++ client's live tests\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(built, target)
    print(f"bundle: built {target}")


# ---- a live server -----------------------------------------------------------------------------------------------


class Server:
    """`crab-rt serve` on a free loopback port (port 0), from this Python."""

    def __init__(self, bundle: str, *, asr: str = "none", token_file: Path | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        cmd = [sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", bundle, "--port", "0",
               "--backend", "onnxruntime"]
        if tls is not None:
            cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        cmd += ["--no-asr"] if asr == "none" else ["--asr", asr]
        if token_file is not None:
            cmd += ["--token-file", str(token_file)]
        self.log: list[str] = []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     encoding="utf-8", errors="replace")
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                m = re.search(r"ready on (wss?://[^/\s]+)/?", line)
                if m and not self.url:
                    self.url = m.group(1) + "/"
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        ready.wait(300)
        if not self.url:
            self.stop()
            raise Failed("crab-rt serve did not start:\n" + "\n".join(self.log[-30:]))
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, encoding="utf-8", timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, pattern: str, what: str) -> None:
    lines = proc.stderr.splitlines()
    check(proc.returncode == 2, f"{what}: exit code {proc.returncode}, expected 2; stderr: {proc.stderr!r}")
    check(len(lines) == 1, f"{what}: {len(lines)} stderr lines, expected one: {proc.stderr!r}")
    check(lines[0].startswith(f"{PROG}: error: ") and re.search(pattern, lines[0]) is not None,
          f"{what}: {lines[0]!r} does not match {pattern!r}")
    print(f"{what}: exit 2, {lines[0]}")


def prepare_audio(work: Path) -> dict[str, Path]:
    """jfk.flac as the inputs: a 16 kHz mono float WAV (what `crab-rt client` sends), raw f32le of the same, and
    raw s16le at the file's own rate and channels (44.1 kHz stereo)."""
    import numpy as np
    import soundfile as sf

    from crab_rt.audio import load_audio

    work.mkdir(parents=True, exist_ok=True)
    mono = load_audio(JFK).astype(np.float32)
    paths = {"wav16k": work / "jfk16k.wav", "f32": work / "jfk16k.f32", "s16": work / "jfk44k-stereo.s16"}
    sf.write(paths["wav16k"], mono, 16000, subtype="FLOAT")
    mono.astype("<f4").tofile(paths["f32"])
    native, rate = sf.read(JFK, dtype="int16", always_2d=True)
    check(rate == 44100 and native.shape[1] == 2, f"samples/jfk.flac is {rate} Hz x {native.shape[1]}")
    native.astype("<i2").tofile(paths["s16"])
    return paths


def without_latency(line: str) -> dict:
    return {k: v for k, v in json.loads(line).items() if k != "latency_ms"}


def cmd_events(args: argparse.Namespace) -> None:
    need("crab_rt.client", "crab_rt.serve.server", "websockets", "soundfile")
    from crab_rt.runtime.events import EmotionEvent

    work = Path(args.work)
    audio = prepare_audio(work)
    token = work / "token"
    token.write_text("s3cret-token\n")
    wrong = work / "wrong-token"
    wrong.write_text("not-the-token\n")
    words = args.asr != "none"
    server = Server(args.bundle, asr=args.asr, token_file=token)
    try:
        url = server.url

        def both_clients(flag: str):
            """The example and `crab-rt client` on the same 16 kHz audio with `flag`: (C++, Python) once both exited
            0, the example silently on stderr."""
            common = ["--url", url, "--input", audio["wav16k"], "--token-file", token, flag, "-q"]
            cpp = run([args.listen, *common])
            check(cpp.returncode == 0 and cpp.stderr == "", f"{PROG} {flag} failed ({cpp.returncode}): {cpp.stderr}")
            py = run([sys.executable, "-m", "crab_rt.cli", "client", *common])
            check(py.returncode == 0, f"crab-rt client {flag} failed ({py.returncode}): {py.stderr}")
            return cpp, py

        # 1. The example and `crab-rt client` on the same 16 kHz audio: the same lines.
        cpp, py = both_clients("--show-speech")
        cpp_lines, py_lines = cpp.stdout.splitlines(), py.stdout.splitlines()
        cpp_events = [line for line in cpp_lines if '"type": "speech_' not in line]
        py_events = [line for line in py_lines if '"type": "speech_' not in line]
        check(len(cpp_events) == 4, f"{len(cpp_events)} events from {PROG}, expected 4 (jfk.flac's utterances):\n"
              + cpp.stdout)
        check([line for line in cpp_lines if '"type": "speech_' in line]
              == [line for line in py_lines if '"type": "speech_' in line],
              f"speech lines differ:\nC++:\n{cpp.stdout}\nPython:\n{py.stdout}")
        check([list(json.loads(line)) for line in cpp_events] == [list(json.loads(line)) for line in py_events],
              "the keys or their order differ")
        check([without_latency(line) for line in cpp_events] == [without_latency(line) for line in py_events],
              f"the events differ:\nC++:\n{cpp.stdout}\nPython:\n{py.stdout}")
        for line in cpp_events:  # and the bytes: Python's formatting of the very same values
            check(line == EmotionEvent(**json.loads(line)).to_json(), f"not Python's formatting: {line}")
        print(f"{PROG} == crab-rt client: {len(cpp_events)} events and {len(cpp_lines) - len(cpp_events)} speech "
              f"lines, byte for byte (latency_ms values aside)")
        for line in cpp_events:
            print("   ", line)

        # 1b. Provisional events (protocol 1.1): each utterance's provisional line (the voice alone, no text) comes
        # before its final one, with `stage` printed, from both clients alike.
        cpp, py = both_clients("--provisional")
        cpp_events = [json.loads(line) for line in cpp.stdout.splitlines()]
        check(len(cpp_events) == 8, f"{len(cpp_events)} events from {PROG} --provisional, expected 4 + 4:\n"
              + cpp.stdout)
        for n in range(4):
            stages = [e["stage"] for e in cpp_events if e["utterance_id"] == n]
            check(stages == ["provisional", "final"], f"utterance {n}: stages {stages}, expected provisional, final")
        check(all(e["text"] == "" for e in cpp_events if e["stage"] == "provisional"), "a provisional event has text")

        def by_stage(lines: list[str]) -> list[dict]:
            return sorted((without_latency(line) for line in lines), key=lambda e: (e["utterance_id"], e["stage"]))

        check(by_stage(cpp.stdout.splitlines()) == by_stage(py.stdout.splitlines()),
              f"the provisional and final events differ:\nC++:\n{cpp.stdout}\nPython:\n{py.stdout}")
        for line in cpp.stdout.splitlines():
            check(line == EmotionEvent(**json.loads(line)).to_json(), f"not Python's formatting: {line}")
        print(f"{PROG} --provisional == crab-rt client --provisional: 4 provisional events, each before its final one")

        # 2. The file at its own rate and channels (44.1 kHz stereo FLAC): the server resamples and mixes down.
        flac = run([args.listen, "--url", url, "--input", JFK, "--token-file", token])
        check(flac.returncode == 0, f"{PROG} --input jfk.flac failed: {flac.stderr}")
        events = [json.loads(line) for line in flac.stdout.splitlines()]
        check(len(events) == 4, f"{len(events)} events for jfk.flac at 44.1 kHz stereo, expected 4")
        check([e["utterance_id"] for e in events] == [0, 1, 2, 3] and all(e["stream_id"] == "file" for e in events),
              "utterance ids and stream ids")
        text = " ".join(e["text"] for e in events).lower()
        if words:
            check("ask not" in text, f"'ask not' is not in the transcript: {text!r}")
        print(f"{PROG} --input samples/jfk.flac (44.1 kHz stereo): 4 events; transcript: {text.strip()!r}")
        print("   ", flac.stderr.strip())

        # 3. The C++ API from a capture thread (shared library), and the C API.
        live = run([args.live_client, "--url", url, "--pcm", audio["s16"], "--rate", 44100, "--channels", 2,
                    "--token", "s3cret-token", "--events", 4, *(["--text", "ask not"] if words else [])])
        check(live.returncode == 0, f"the C++ API test failed:\n{live.stdout}{live.stderr}")
        print(live.stdout.strip())
        c_api = run([args.c_api, url, audio["f32"], "s3cret-token"])
        check(c_api.returncode == 0, f"the C API test failed:\n{c_api.stdout}{c_api.stderr}")
        print(c_api.stdout.strip().splitlines()[0])

        # 4. A bad token: HTTP 401, through the error callback, one stderr line, exit 2.
        bad = run([args.listen, "--url", url, "--input", audio["wav16k"], "--token-file", wrong])
        one_error_line(bad, rf"127\.0\.0\.1:{server.port}: unauthorized \(HTTP 401\): .+; check the token$",
                       "bad token")
        bad_api = run([args.live_client, "--url", url, "--pcm", audio["s16"], "--rate", 44100, "--channels", 2,
                       "--token", "not-the-token", "--expect-error", "unauthorized"])
        check(bad_api.returncode == 0, f"bad token, C++ API:\n{bad_api.stdout}{bad_api.stderr}")
        print(bad_api.stdout.strip())
    finally:
        code = server.stop()
    check(code == 0, f"crab-rt serve exited with {code} after SIGTERM:\n" + "\n".join(server.log[-20:]))


def cmd_errors(args: argparse.Namespace) -> None:
    need("crab_rt.client", "crab_rt.serve.server", "websockets", "soundfile")
    work = Path(args.work)
    audio = prepare_audio(work)

    # An invalid URL, and nothing listening.
    bad = run([args.listen, "--url", "http://127.0.0.1:8765/", "--input", audio["wav16k"]])
    one_error_line(bad, r"invalid server URL 'http://127\.0\.0\.1:8765/': expected ws://HOST:PORT/ or wss://",
                   "invalid URL")
    port = free_port()
    refused = run([args.listen, "--url", f"ws://127.0.0.1:{port}/", "--input", audio["wav16k"]])
    one_error_line(refused, rf"cannot connect to 127\.0\.0\.1:{port}: connection refused", "refused connection")
    missing = run([args.listen, "--url", f"ws://127.0.0.1:{port}/", "--input", work / "missing.wav"])
    one_error_line(missing, r"--input .*missing\.wav: cannot read it", "missing input")

    # wss://: a self-signed certificate for 127.0.0.1, trusted with --cafile, refused without it.
    import shutil

    if shutil.which("openssl") is None:
        print("wss: skipped: no openssl command to make a certificate")
    else:
        cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        tls = Server(args.bundle, tls=(cert, key))
        try:
            check(tls.url.startswith("wss://"), f"not a wss:// server: {tls.url}")
            if args.tls == "off":  # a build without OpenSSL: one clear line
                off = run([args.listen, "--url", tls.url, "--input", audio["wav16k"], "--cafile", cert])
                one_error_line(off, r"wss:// is not supported: this crab_rt_client was built without TLS",
                               "wss:// in a build without TLS")
            else:
                ok = run([args.listen, "--url", tls.url, "--input", audio["wav16k"], "--cafile", cert, "-q"])
                check(ok.returncode == 0 and len(ok.stdout.splitlines()) == 4,
                      f"wss:// with --cafile: exit {ok.returncode}, {len(ok.stdout.splitlines())} events: {ok.stderr}")
                print(f"wss:// with --cafile: {len(ok.stdout.splitlines())} events")
                untrusted = run([args.listen, "--url", tls.url, "--input", audio["wav16k"]])
                one_error_line(untrusted,
                               rf"127\.0\.0\.1:{tls.port}: TLS handshake failed: .*certificate verify failed",
                               "wss:// without the CA")
                plain = run([args.listen, "--url", f"ws://127.0.0.1:{tls.port}/", "--input", audio["wav16k"],
                             "--cafile", cert])
                one_error_line(plain, r"a CA file applies only to wss:// URLs", "--cafile with ws://")
        finally:
            tls.stop()

    # The server goes away mid-stream (SIGKILL: no close frame): the example and the C++ API at once.
    server = Server(args.bundle)
    try:
        listen = subprocess.Popen([args.listen, "--url", server.url, "--input", str(audio["wav16k"]), "--realtime"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        api = subprocess.Popen([str(args.live_client), "--url", server.url, "--pcm", str(audio["s16"]),
                                "--rate", "44100", "--channels", "2", "--speed", "1", "--expect-error", "closed"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        first = listen.stdout.readline()  # the first event, about 3 s into the speech
        check(first.startswith('{"stream_id": "file"'), f"no first event before the kill: {first!r}")
        server.kill()
        t0 = time.monotonic()
        out, err = listen.communicate(timeout=60)
        waited = time.monotonic() - t0
        api_out, api_err = api.communicate(timeout=60)
    finally:
        if server.proc.poll() is None:
            server.kill()
    proc = subprocess.CompletedProcess(listen.args, listen.returncode, first + out, err)
    one_error_line(proc, rf"127\.0\.0\.1:{server.port}: the server closed the connection before done "
                         r"\(the connection was lost \(no close frame, code 1006\)\)", "server killed mid-stream")
    check(waited < 10, f"{PROG} took {waited:.1f} s to notice")
    check(api.returncode == 0, f"server killed, C++ API:\n{api_out}{api_err}")
    print(api_out.strip())


def cmd_mic(args: argparse.Namespace) -> None:
    """--device through a real audio stack: PortAudio -> ALSA's pulse plugin -> a private PulseAudio whose null sink's
    monitor is the microphone (tests/test_microphone_real.py's setup), fed by paplay."""
    import shutil

    need("crab_rt", "soundfile", "pytest")
    missing = [tool for tool in ("pulseaudio", "paplay", "pactl") if shutil.which(tool) is None]
    if missing or not Path("/usr/share/alsa/alsa.conf").is_file():
        print(f"SKIP: {', '.join(missing) or 'ALSA'} not installed: make mic-stack (root and apt)")
        sys.exit(SKIP)
    sys.path.insert(0, str(ROOT / "tests"))
    import soundfile as sf
    from test_microphone_real import PrivatePulse

    from crab_rt.audio import load_audio

    work = Path(args.work).resolve()  # pulseaudio wants an absolute HOME
    (work / "pulse").mkdir(parents=True, exist_ok=True)
    wav = work / "jfk16k-pcm16.wav"
    sf.write(wav, load_audio(JFK), 16000, subtype="PCM_16")
    pulse = PrivatePulse(work / "pulse")
    try:
        problem = pulse.wait_ready()
        if problem is not None:
            print(f"SKIP: the private pulseaudio cannot start: {problem}")
            sys.exit(SKIP)
        devices = subprocess.run([args.listen, "--list-devices"], env=pulse.env, capture_output=True, text=True,
                                 timeout=30)
        check(devices.returncode == 0 and "\tcrabmic\t" in devices.stdout and devices.stderr == "",
              f"--list-devices: {devices.stdout!r} {devices.stderr!r}")
        server = Server(args.bundle)
        try:
            listen = subprocess.Popen([args.listen, "--url", server.url, "--device", "crabmic"], env=pulse.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
            time.sleep(3.5)  # past the pulse plugin's start delay (up to about 2 s before the first audio)
            if listen.poll() is not None:
                raise Failed(f"{PROG} --device exited early: {listen.communicate()}")
            subprocess.run(["paplay", "--device=vmic", str(wav)], env=pulse.env, check=True, timeout=30)
            time.sleep(3.0)  # the last utterance's hangover
            listen.send_signal(signal.SIGINT)
            out, err = listen.communicate(timeout=30)
            events = [json.loads(line) for line in out.splitlines()]
            check(listen.returncode == 0, f"--device: exit {listen.returncode}: {err}")
            check(3 <= len(events) <= 4 and all(e["stream_id"] == "live" for e in events),
                  f"--device: {len(events)} events for jfk.flac's 4 utterances:\n{out}{err}")
            print(f"--device crabmic (PortAudio -> ALSA -> PulseAudio): {len(events)} events; {err.strip()}")
            # the microphone goes away mid-stream: what was heard is printed, then one error line, exit 2
            listen = subprocess.Popen([args.listen, "--url", server.url, "--device", "crabmic"], env=pulse.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
            time.sleep(2.5)
            if listen.poll() is not None:
                raise Failed(f"{PROG} --device exited early: {listen.communicate()}")
            pulse.kill()
            out, err = listen.communicate(timeout=15)
            lines = err.splitlines()
            check(listen.returncode == 2 and len(lines) == 1 and "the capture stopped" in lines[0],
                  f"the microphone went away: exit {listen.returncode}: {err!r}")
            print(f"the microphone went away: exit 2, {lines[0]}")
        finally:
            server.stop()
    finally:
        pulse.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("format")
    f.add_argument("--tool", required=True)
    b = sub.add_parser("bundle")
    b.add_argument("--bundle", required=True)
    m = sub.add_parser("mic")
    m.add_argument("--bundle", required=True)
    m.add_argument("--work", required=True)
    m.add_argument("--listen", required=True)
    for name in ("events", "errors"):
        s = sub.add_parser(name)
        s.add_argument("--bundle", required=True)
        s.add_argument("--work", required=True)
        s.add_argument("--listen", required=True)
        s.add_argument("--live-client", required=True)
        s.add_argument("--c-api", required=True)
        if name == "events":
            s.add_argument("--asr", default="tiny.en")
        else:
            s.add_argument("--tls", choices=("on", "off"), default="on", help="was the client built with TLS")
    args = p.parse_args()
    try:
        commands = {"format": cmd_format, "bundle": cmd_bundle, "events": cmd_events, "errors": cmd_errors,
                    "mic": cmd_mic}
        commands[args.command](args)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
