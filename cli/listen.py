"""`crab-rt listen`: live emotion events from a microphone, a file or raw PCM on stdin."""

from __future__ import annotations

import argparse
import sys


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
    src.add_argument("--rate", type=int, default=16000, help="sample rate of --input - (default 16000)")
    src.add_argument("--channels", type=int, default=1, help="channels of --input - (default 1)")
    src.add_argument("--realtime", action="store_true", help="pace a file at 1x (default: as fast as possible)")
    m = p.add_argument_group("model")
    m.add_argument("--bundle", required=True, help="model bundle folder from `crab-rt export`")
    m.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    m.add_argument("--gpu", type=int, help="CUDA device index for the model and ASR (default: CPU, or GPU 0 for auto)")
    m.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    m.add_argument("--threads", type=int, default=0, help="CPU threads per ONNX Runtime session (0 = default)")
    a = p.add_argument_group("ASR")
    a.add_argument("--asr", help="faster-whisper size name or CTranslate2 folder (default: the bundle's, else small.en)")
    a.add_argument("--language", default="en", help="language code, or 'auto' (default en)")
    a.add_argument("--asr-guard", default="drop", choices=("drop", "flag", "off"),
                   help="on no-speech/low-confidence text: drop it, flag it, or keep it (default drop)")
    a.add_argument("--no-asr", action="store_true", help="run without ASR (empty text)")
    s = p.add_argument_group("segmentation")
    s.add_argument("--start-threshold", type=float, default=0.5)
    s.add_argument("--end-threshold", type=float, default=0.35)
    s.add_argument("--min-speech-ms", type=float, default=250.0)
    s.add_argument("--min-silence-ms", type=float, default=500.0, help="hangover before an utterance ends")
    s.add_argument("--pre-roll-ms", type=float, default=300.0)
    s.add_argument("--max-utterance-s", type=float, default=12.0)
    o = p.add_argument_group("output")
    o.add_argument("--format", default="jsonl", choices=("jsonl", "pretty"))
    o.add_argument("--output", help="write events to this file instead of stdout")
    o.add_argument("--overflow", choices=("block", "drop"),
                   help="when processing falls behind: wait (files, default) or drop new utterances (microphone, default)")
    p.set_defaults(func=run)


def _source(args):
    from crab_rt.errors import ConfigError
    from crab_rt.runtime import sources

    if (args.input is None) == (args.device is None):
        raise ConfigError("give exactly one input: --input FILE, --input - (PCM on stdin) or --device MIC")
    if args.device is not None:
        device = int(args.device) if args.device.isdigit() else args.device
        return sources.MicrophoneSource(device), True
    if args.input == "-":
        return sources.PcmStreamSource(sys.stdin.buffer, args.rate, 2, args.channels), True
    return sources.FileSource(args.input, realtime=args.realtime), args.realtime


def run(args: argparse.Namespace) -> int:
    import time

    from crab_rt.bundle import load_bundle
    from crab_rt.runtime.asr import AsrConfig
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig
    from crab_rt.runtime.segmenter import SegmenterConfig
    from crab_rt.runtime.summary import format_summary, run_summary

    bundle = load_bundle(args.bundle)
    source, live = _source(args)
    asr = None
    if not args.no_asr:
        asr = AsrConfig(
            model=args.asr or bundle.asr_model or "small.en",
            device="auto" if args.gpu is not None else "cpu", device_index=args.gpu or 0,
            language=None if args.language == "auto" else args.language, guard=args.asr_guard,
        )
    config = PipelineConfig(
        segmenter=SegmenterConfig(
            start_threshold=args.start_threshold, end_threshold=args.end_threshold, min_speech_ms=args.min_speech_ms,
            min_silence_ms=args.min_silence_ms, pre_roll_ms=args.pre_roll_ms, max_utterance_s=args.max_utterance_s,
        ),
        asr=asr, backend=args.backend, gpu=args.gpu, precision=args.precision, threads=args.threads,
        overflow=args.overflow or ("drop" if live else "block"),
    )
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
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
    with Pipeline(bundle, config) as pipeline:
        print(f"crab-rt: {pipeline.model.choice.describe()}", file=sys.stderr)
        stream = pipeline.create_stream("file" if args.input not in (None, "-") else "live", on_event=on_event)
        try:
            with source:
                for chunk in source:
                    stream.accept(chunk)
                    if pretty and status.isatty():
                        state = "speech" if stream.front_end.segmenter.in_speech else "silence"
                        status.write(f"\r\033[K{stream.samples_accepted / 16000:7.1f} s  {state}  "
                                     f"events {stream.emitted}")
                        status.flush()
        except KeyboardInterrupt:
            interrupted = True
        stream.flush()
        stream.wait()
        pipeline.check()
        summary = run_summary(pipeline.latencies, stream.samples_accepted / 16000,
                              time.perf_counter() - started, stream.dropped_utterances)
    if out is not sys.stdout:
        out.close()
    print(("interrupted; " if interrupted else "") + format_summary(summary),
          file=sys.stdout if pretty and out is sys.stdout else sys.stderr)
    return 0
