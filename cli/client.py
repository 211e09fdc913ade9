"""`crab-rt client`: stream a file, stdin or a microphone to a `crab-rt serve` server; print its events.

The output is `crab-rt listen`'s: the same JSON lines (or `--format pretty` lines) on stdout, the summary on
stderr. The main thread reads the input and sends it; a second thread prints what the server sends.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from crab_rt.audio import SAMPLE_RATE
from crab_rt.cli._io import (
    add_input_options,
    check_input_flags,
    check_output,
    open_output,
    pretty_line,
    read_token_file,
    run_with_sigterm_as_interrupt,
)
from crab_rt.serve.protocol import DEFAULT_PORT

log = logging.getLogger(__name__)

_FILE_CHUNK_MS = 100.0  # files: fewer, larger messages
_LIVE_CHUNK_MS = 32.0  # stdin and microphones: as listen reads them


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "client", parents=[common],
        help="stream audio (file, stdin, microphone) to a `crab-rt serve` server and print its events",
        description="Send audio to a `crab-rt serve` server over WebSocket (docs/protocol.md) and print its "
        "emotion events as `crab-rt listen` does: JSON lines on stdout (or --format pretty), the summary on "
        "stderr.",
    )
    p.add_argument("--url", default=f"ws://127.0.0.1:{DEFAULT_PORT}",
                   help=f"server URL, ws:// or wss:// (default ws://127.0.0.1:{DEFAULT_PORT})")
    add_input_options(p, "send a file at 1x as live audio (default: as fast as the server takes it); "
                      "stdin and a microphone are always live")
    c = p.add_argument_group("connection")
    c.add_argument("--token-file", help="file holding the server's bearer token (one line)")
    c.add_argument("--cafile", help="PEM file of the CA(s) to trust for a wss:// server (default: the system's)")
    c.add_argument("--stream-id", help="your name for the stream (1-64 of A-Za-z0-9_.:@-)")
    c.add_argument("--language", help="ASR language code the server must use (default: the server's)")
    c.add_argument("--provisional", action="store_true",
                   help="also receive a provisional event per utterance, from the voice alone before ASR (no "
                   "text), then the final one (protocol 1.1; the server's bundle needs the voice-only classifier)")
    o = p.add_argument_group("output")
    o.add_argument("--format", default="jsonl", choices=("jsonl", "pretty"))
    o.add_argument("--output", help="write events to this file instead of stdout (the summary goes to stderr)")
    o.add_argument("--show-speech", action="store_true",
                   help="also print the server's speech_start / speech_end messages (JSON), e.g. to debug barge-in")
    p.set_defaults(func=run)


def _ssl_context(cafile: str | None, url: str):
    from pathlib import Path

    from crab_rt.errors import ConfigError

    if cafile is None:
        return None
    if not url.lower().startswith("wss://"):
        raise ConfigError(f"--cafile applies only to a wss:// --url, not {url}")
    if not Path(cafile).is_file():
        raise ConfigError(f"--cafile {cafile}: file not found")
    import ssl

    try:
        return ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"--cafile {cafile}: not a PEM certificate file ({e})") from None


def _stdin_chunks(stream, rate: int, channels: int):
    """Whole s16le frames from a binary stream, about _LIVE_CHUNK_MS each; a trailing partial frame is dropped."""
    frame = 2 * channels
    size = max(1, round(rate * _LIVE_CHUNK_MS / 1000)) * frame
    pending = b""
    while True:
        data = stream.read(size)
        if not data:
            break
        pending += data
        usable = len(pending) - len(pending) % frame
        if usable:
            yield pending[:usable]
            pending = pending[usable:]
    if pending:
        log.warning("stdin ended inside a sample frame: %d trailing byte(s) ignored", len(pending))


def _stream_options(args: argparse.Namespace) -> dict:
    """The `start` options the input implies, checked before anything is opened."""
    from crab_rt.errors import ConfigError

    check_input_flags(args)
    if args.realtime and args.input in (None, "-"):
        raise ConfigError("--realtime applies only to a file: stdin and a microphone are always live")
    if args.input == "-":
        if not 8000 <= args.rate <= 192_000:
            raise ConfigError(f"--rate {args.rate}: must be in [8000, 192000] Hz")
        if not 1 <= args.channels <= 8:
            raise ConfigError(f"--channels {args.channels}: must be in [1, 8]")
        return {"sample_rate": args.rate, "format": "s16le", "channels": args.channels, "realtime": True}
    return {"sample_rate": SAMPLE_RATE, "format": "f32le", "channels": 1,
            "realtime": args.device is not None or args.realtime}


def _open_source(args: argparse.Namespace):
    """The input as (iterable of chunks: float32 16 kHz arrays or s16le bytes, the source to close or None)."""
    from crab_rt.runtime import sources

    if args.input == "-":
        return _stdin_chunks(sys.stdin.buffer, args.rate, args.channels), None
    if args.device is not None:
        device = int(args.device) if args.device.isdigit() else args.device
        source = sources.MicrophoneSource(device, chunk_ms=_LIVE_CHUNK_MS)
        return source, source
    source = sources.FileSource(args.input, chunk_ms=_FILE_CHUNK_MS, realtime=args.realtime)
    return source, source


class _Printer(threading.Thread):
    """Prints the server's messages as they arrive; keeps `done`, the latencies and the terminal error."""

    def __init__(self, client, out, pretty: bool, show_speech: bool) -> None:
        from crab_rt.runtime.summary import LatencyStats

        super().__init__(name="crab-rt-client-printer", daemon=True)
        self.client, self.out, self.pretty, self.show_speech = client, out, pretty, show_speech
        self.latencies = LatencyStats()
        self.done = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        from crab_rt.client import Done, ServerError, SpeechEnd, SpeechStart
        from crab_rt.runtime.events import EmotionEvent

        try:
            for msg in self.client.messages():
                if isinstance(msg, EmotionEvent):
                    self.latencies.add(msg.latency_ms)
                    self.out.write(pretty_line(msg) if self.pretty else msg.to_json() + "\n")
                    self.out.flush()
                elif isinstance(msg, (SpeechStart, SpeechEnd)) and self.show_speech:
                    self.out.write(json.dumps(msg.to_dict()) + "\n")
                    self.out.flush()
                elif isinstance(msg, ServerError) and not msg.fatal:  # a fatal one is raised after done
                    log.warning("server: %s: %s", msg.code, msg.message)
                elif isinstance(msg, Done):
                    self.done = msg
        except BaseException as e:  # noqa: BLE001 - re-raised by the main thread
            self.error = e
        finally:
            self.finished.set()


def run(args: argparse.Namespace) -> int:
    """`crab-rt client`, with SIGTERM handled like Ctrl-C (as listen does)."""
    return run_with_sigterm_as_interrupt(_run, args)


def _run(args: argparse.Namespace) -> int:
    import time

    from crab_rt.client import Client, ClientError
    from crab_rt.errors import AudioError
    from crab_rt.runtime.summary import format_summary, run_summary

    check_output(args.output)
    token = read_token_file(args.token_file)
    ssl_context = _ssl_context(args.cafile, args.url)
    # listen's stream names by default, so that the JSON lines are the same
    stream_id = args.stream_id or ("file" if args.input not in (None, "-") else "live")
    client = Client(args.url, token=token, ssl_context=ssl_context, stream_id=stream_id,
                    language=args.language, provisional=args.provisional, **_stream_options(args))
    chunks, source = _open_source(args)
    out = printer = None
    started = time.perf_counter()
    interrupted = stopped = False
    send_error: ClientError | None = None
    source_error: AudioError | None = None
    try:
        with client:
            ready = client.ready
            if args.verbosity >= 0:
                print(f"crab-rt: connected to {ready.server} at {args.url} (stream {ready.stream_id})",
                      file=sys.stderr)
            out = open_output(args.output) if args.output else sys.stdout
            printer = _Printer(client, out, args.format == "pretty", args.show_speech)
            printer.start()
            try:
                for chunk in chunks:
                    if printer.finished.is_set():  # the server ended the stream (an error, a drain)
                        break
                    client.send_audio(chunk)
            except KeyboardInterrupt:
                interrupted = True
            except AudioError as e:  # the microphone went away: get what was heard, then report it (exit 2)
                source_error = e
            except ClientError as e:  # the connection ended (the printer sees why too) or is unusable
                send_error = e
            finally:
                if source is not None:  # stop capturing now: what follows only waits for the server
                    source.close()
            if send_error is None and not printer.finished.is_set():
                try:
                    client.stop()
                    stopped = True
                except ClientError as e:
                    send_error = e
            if send_error is not None and not printer.finished.is_set():
                client.close()  # wakes the printer, which would otherwise wait for a done that will not come
                printer.join()
                raise send_error
            while printer.is_alive():  # a timeout, so that a second Ctrl-C ends the wait (exit 130)
                printer.join(0.5)
    finally:
        if source is not None:
            source.close()
        if out is not None and out is not sys.stdout:
            out.close()
    if printer.error is not None:
        raise printer.error
    done = printer.done
    paced = args.device is not None or args.input in (None, "-") or bool(args.realtime)  # stdin and mics are live
    summary = run_summary(printer.latencies, done.audio_s, time.perf_counter() - started, done.dropped_utterances,
                          paced)
    print(("interrupted; " if interrupted else "") + format_summary(summary), file=sys.stderr)
    if done.dropped_messages:
        log.warning("the server dropped %d message(s) for this stream: they were not read fast enough",
                    done.dropped_messages)
    dropped_chunks = getattr(source, "dropped_chunks", 0)
    if dropped_chunks:
        log.warning("%d microphone chunk(s) (%.1f s of audio) were dropped because sending fell behind",
                    dropped_chunks, dropped_chunks * source.chunk_s)
    if not stopped and done.reason == "drain":
        raise ClientError(f"{args.url}: the server shut down (drain) after {done.audio_s:.1f} s of audio, before "
                          "the input ended")
    if source_error is not None:
        raise source_error
    return 0
