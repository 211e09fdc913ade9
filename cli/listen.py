"""`crab-rt listen`: live emotion events from a microphone, a file or raw PCM on stdin."""

from __future__ import annotations

import argparse
import logging
import sys

from crab_rt.audio import SAMPLE_RATE
from crab_rt.cli._io import (
    add_input_options,
    check_input_flags,
    check_output,
    open_output,
    pretty_line,
    run_with_sigterm_as_interrupt,
)
from crab_rt.cli._pipeline_options import add_pipeline_options, pipeline_config_from_args

__all__ = ["register", "run", "pipeline_config_from_args"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "listen", parents=[common],
        help="stream audio (microphone, file, stdin) to emotion events",
        description="Segment speech with Silero VAD, transcribe with faster-whisper, classify the emotion of "
        "each utterance with a crab-rt bundle. Events are JSON lines on stdout (or --format pretty).",
    )
    add_input_options(p, "pace a file at 1x (default: as fast as possible)")
    add_pipeline_options(p, overflow_default="block for files and stdin, drop for a microphone")
    o = p.add_argument_group("output")
    o.add_argument("--format", default="jsonl", choices=("jsonl", "pretty"))
    o.add_argument("--output", help="write events to this file instead of stdout (the summary goes to stderr)")
    p.set_defaults(func=run)


def _source(args):
    """The audio source and whether it is live (a microphone: only it defaults to --overflow drop)."""
    from crab_rt.runtime import sources

    check_input_flags(args)
    if args.device is not None:
        device = int(args.device) if args.device.isdigit() else args.device
        return sources.MicrophoneSource(device), True
    if args.input == "-":
        return sources.PcmStreamSource(sys.stdin.buffer, args.rate, 2, args.channels), False
    return sources.FileSource(args.input, realtime=args.realtime), False


def run(args: argparse.Namespace) -> int:
    """`crab-rt listen`, with SIGTERM handled like Ctrl-C (the utterance in flight is emitted, exit 0)."""
    return run_with_sigterm_as_interrupt(_run, args)


def _run(args: argparse.Namespace) -> int:
    import time

    from crab_rt.bundle import load_bundle
    from crab_rt.errors import AudioError, CrabError
    from crab_rt.runtime.pipeline import Pipeline
    from crab_rt.runtime.summary import format_summary, run_summary

    check_output(args.output)
    bundle = load_bundle(args.bundle)
    source, live = _source(args)
    config = pipeline_config_from_args(args, bundle.asr_model, live)
    out = open_output(args.output) if args.output else sys.stdout
    pretty = args.format == "pretty"
    status = sys.stderr

    def on_event(event) -> None:
        if pretty:
            if status.isatty():
                status.write("\r\033[K")  # clear the live status line
            out.write(pretty_line(event))
        else:
            out.write(event.to_json() + "\n")
        out.flush()

    started = time.perf_counter()
    interrupted = False
    source_error: CrabError | None = None
    try:
        with Pipeline(bundle, config) as pipeline:
            if args.verbosity >= 0:  # the one status line; -v adds the reasons behind each choice
                print(f"crab-rt: {pipeline.describe()}", file=sys.stderr)
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
            paced = True if live else (None if args.input == "-" else bool(args.realtime))
            summary = run_summary(pipeline.latencies, stream.samples_accepted / SAMPLE_RATE,
                                  time.perf_counter() - started, stream.dropped_utterances, paced,
                                  pipeline.provisional_latencies)
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
