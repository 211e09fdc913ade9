"""`crab-rt listen`: live emotion events from a microphone, a file or raw PCM on stdin."""

from __future__ import annotations

import argparse
import logging
import sys

from crab_rt.audio import SAMPLE_RATE
from crab_rt.cli._pipeline_options import add_pipeline_options, pipeline_config_from_args

__all__ = ["register", "run", "pipeline_config_from_args"]

log = logging.getLogger(__name__)


class _PcmOption(argparse.Action):
    """Stores the value and records the flag, so that --rate/--channels without --input - can be refused."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.pcm_flags = [*getattr(namespace, "pcm_flags", []), option_string]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "listen", parents=[common],
        help="stream audio (microphone, file, stdin) to emotion events",
        description="Segment speech with Silero VAD, transcribe with faster-whisper, classify the emotion of "
        "each utterance with a crab-rt bundle. Events are JSON lines on stdout (or --format pretty).",
    )
    src = p.add_argument_group("input (one of)")
    src.add_argument("--input", help="audio/video file, or - for raw signed 16-bit little-endian PCM on stdin")
    src.add_argument("--device", help="microphone: index or (part of) a name, see `crab-rt devices`")
    src.add_argument("--rate", type=int, default=SAMPLE_RATE, action=_PcmOption,
                     help=f"sample rate of --input - (default {SAMPLE_RATE}); only with --input -")
    src.add_argument("--channels", type=int, default=1, action=_PcmOption,
                     help="channels of --input - (default 1); only with --input -")
    src.add_argument("--realtime", action="store_true", help="pace a file at 1x (default: as fast as possible)")
    add_pipeline_options(p, overflow_default="block for files and stdin, drop for a microphone")
    o = p.add_argument_group("output")
    o.add_argument("--format", default="jsonl", choices=("jsonl", "pretty"))
    o.add_argument("--output", help="write events to this file instead of stdout (the summary goes to stderr)")
    p.set_defaults(func=run)


def _source(args):
    """The audio source and whether it is live (a microphone: only it defaults to --overflow drop)."""
    from crab_rt.errors import ConfigError
    from crab_rt.runtime import sources

    if (args.input is None) == (args.device is None):
        raise ConfigError("give exactly one input: --input FILE, --input - (PCM on stdin) or --device MIC")
    pcm_flags = getattr(args, "pcm_flags", [])
    if pcm_flags and args.input != "-":
        raise ConfigError(f"{'/'.join(dict.fromkeys(pcm_flags))} apply only to --input - (raw PCM on stdin); "
                          "a file or microphone gives its own")
    if args.device is not None:
        device = int(args.device) if args.device.isdigit() else args.device
        return sources.MicrophoneSource(device), True
    if args.input == "-":
        return sources.PcmStreamSource(sys.stdin.buffer, args.rate, 2, args.channels), False
    return sources.FileSource(args.input, realtime=args.realtime), False


def _check_output(path: str | None) -> None:
    """Refuse an --output that cannot be written (a folder, a missing folder) before the model loads."""
    from pathlib import Path

    from crab_rt.errors import ConfigError

    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--output {path}: is a folder; give a file name")
    if not out.parent.is_dir():
        what = "is not a folder" if out.parent.exists() else "does not exist"
        raise ConfigError(f"--output {path}: folder {out.parent} {what}")


def _open_output(path: str):
    from crab_rt.errors import ConfigError

    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot write: {e.strerror or e}") from e


def _sigterm_as_interrupt(signum, frame) -> None:
    """SIGTERM (systemd, `docker stop`) ends a run as Ctrl-C does: the utterance in flight is emitted, exit 0."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """`crab-rt listen`, with SIGTERM handled like Ctrl-C for the duration of the run."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    import time

    from crab_rt.bundle import load_bundle
    from crab_rt.errors import AudioError, CrabError
    from crab_rt.runtime.pipeline import Pipeline
    from crab_rt.runtime.summary import format_summary, run_summary

    _check_output(args.output)
    bundle = load_bundle(args.bundle)
    source, live = _source(args)
    config = pipeline_config_from_args(args, bundle.asr_model, live)
    out = _open_output(args.output) if args.output else sys.stdout
    pretty = args.format == "pretty"
    status = sys.stderr

    def on_event(event) -> None:
        if pretty:
            text = f' "{event.text}"' if event.text else ""
            flag = " (text flagged)" if event.text_flagged else ""
            if status.isatty():
                status.write("\r\033[K")  # clear the live status line
            out.write(f"[{event.start_s:7.2f}-{event.end_s:7.2f}s] {event.label:<10} {event.confidence:5.2f}  "
                      f"{event.latency_ms['end_to_event']:6.0f} ms{text}{flag}\n")
        else:
            out.write(event.to_json() + "\n")
        out.flush()

    started = time.perf_counter()
    interrupted = False
    source_error: CrabError | None = None
    try:
        with Pipeline(bundle, config) as pipeline:
            if args.verbosity >= 0:
                print(f"crab-rt: {pipeline.model.choice.describe()}", file=sys.stderr)
            stream = pipeline.create_stream("file" if args.input not in (None, "-") else "live", on_event=on_event)
            try:
                with source:
                    for chunk in source:
                        stream.accept(chunk)
                        if pretty and status.isatty():
                            state = "speech" if stream.in_speech else "silence"
                            status.write(f"\r\033[K{stream.samples_accepted / SAMPLE_RATE:7.1f} s  {state}  "
                                         f"events {stream.emitted}")
                            status.flush()
            except KeyboardInterrupt:
                interrupted = True
            except AudioError as e:  # the microphone went away: emit what was heard, then report it (exit 2)
                source_error = e
            # A worker error is raised by accept, flush or wait: leaving the `with` still emits the utterances
            # in flight, then main() prints the error as one line and exits 2.
            stream.flush()
            stream.wait()
            summary = run_summary(pipeline.latencies, stream.samples_accepted / SAMPLE_RATE,
                                  time.perf_counter() - started, stream.dropped_utterances)
    finally:
        if pretty and status.isatty():
            status.write("\r\033[K")  # the live status line ends here
        if out is not sys.stdout:
            out.close()
    # stdout carries events only, in either format
    print(("interrupted; " if interrupted else "") + format_summary(summary), file=sys.stderr)
    dropped_chunks = getattr(source, "dropped_chunks", 0)
    if dropped_chunks:
        log.warning("%d microphone chunk(s) (%.1f s of audio) were dropped because processing fell behind",
                    dropped_chunks, dropped_chunks * source.chunk_s)
    if source_error is not None:
        raise source_error
    return 0
