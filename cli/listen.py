"""`crab-rt listen`: live emotion events from a microphone, a file or raw PCM on stdin."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    import numpy as np

    from crab_rt.runtime.events import EmotionEvent
    from crab_rt.runtime.segmenter import SpeechMark

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
    o.add_argument("--plot", metavar="PNG",
                   help="after the run, draw the file's timeline to this PNG: waveform, speech regions, one band per "
                   "utterance coloured by its label with its probability, and the transcript (rows of 60 s); only "
                   "with --input FILE; needs matplotlib: pip install 'crab-rt[plot]'")
    p.set_defaults(func=run)


def _check_plot(args: argparse.Namespace) -> None:
    """Refuse --plot before anything loads: without a file input, without matplotlib, or where it cannot be written."""
    import os
    from pathlib import Path

    from crab_rt.errors import ConfigError, DependencyError
    from crab_rt.plot import check_matplotlib

    if args.plot is None:
        return
    check_input_flags(args)
    if args.input in (None, "-"):
        raise ConfigError("--plot draws a file's timeline: give --input FILE (not --device or --input -)")
    try:
        check_matplotlib()
    except DependencyError as e:
        raise DependencyError(f"--plot: {e}") from e
    out = Path(args.plot)
    if out.is_dir():
        raise ConfigError(f"--plot {args.plot}: is a folder; give a file name")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--plot {args.plot}: give a .png file name (the plot is a PNG)")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"--plot {args.plot}: folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"--plot {args.plot}: cannot write there (permission denied)")


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

    import numpy as np

    from crab_rt.bundle import load_bundle
    from crab_rt.errors import AudioError, CrabError
    from crab_rt.runtime.pipeline import Pipeline
    from crab_rt.runtime.summary import format_summary, run_summary

    check_output(args.output)
    _check_plot(args)
    bundle = load_bundle(args.bundle)
    source, live = _source(args)
    config = pipeline_config_from_args(args, bundle.asr_model, live)
    out = open_output(args.output) if args.output else sys.stdout
    pretty = args.format == "pretty"
    status = sys.stderr
    plotting = args.plot is not None
    heard: list[np.ndarray] = []  # for --plot: the stream's audio, its speech marks and its events
    marks: list[SpeechMark] = []
    events: list[EmotionEvent] = []

    def on_event(event) -> None:
        if pretty:
            if status.isatty():
                status.write("\r\033[K")  # clear the live status line
            out.write(pretty_line(event))
        else:
            out.write(event.to_json() + "\n")
        out.flush()
        if plotting:
            events.append(event)

    started = time.perf_counter()
    interrupted = False
    source_error: CrabError | None = None
    try:
        with Pipeline(bundle, config) as pipeline:
            if args.verbosity >= 0:  # the one status line; -v adds the reasons behind each choice
                print(f"crab-rt: {pipeline.describe()}", file=sys.stderr)
            stream = pipeline.create_stream("file" if args.input not in (None, "-") else "live", on_event=on_event,
                                            on_speech=marks.append if plotting else None)
            try:
                with source:
                    for chunk in source:
                        stream.accept(chunk)
                        if plotting:
                            heard.append(np.array(chunk, dtype=np.float32))  # a copy: a chunk may be a view
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
    if plotting:
        _write_plot(args, bundle.labels, heard, marks, events)
    return 0


def _write_plot(args: argparse.Namespace, labels: Sequence[str], heard: list[np.ndarray], marks: list[SpeechMark],
                events: list[EmotionEvent]) -> None:
    """Draw what the stream heard (the --plot PNG) and say where it went."""
    from pathlib import Path

    import numpy as np

    from crab_rt.plot import plot_timeline

    audio = np.concatenate(heard) if heard else np.zeros(0, dtype=np.float32)
    duration = audio.size / SAMPLE_RATE
    speech: list[tuple[float, float]] = []
    start = None
    for mark in marks:
        if mark.kind == "speech_start":
            start = mark.time_s
        elif start is not None:
            speech.append((start, mark.time_s))
            start = None
    if start is not None:  # interrupted in the middle of speech
        speech.append((start, duration))
    finals = sum(e.stage == "final" for e in events)
    title = f"{Path(args.input).name}  ·  {duration:.1f} s  ·  {finals} utterance{'s' * (finals != 1)}"
    plot_timeline(audio, SAMPLE_RATE, speech, events, args.plot, title=title, labels=labels)
    if args.verbosity >= 0:
        print(f"crab-rt: plot written to {args.plot}", file=sys.stderr)
