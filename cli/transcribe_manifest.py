"""`crab-rt transcribe-manifest`: fill a manifest's transcripts with ASR, resumably (see `crab_rt.data.transcribe`)."""

from __future__ import annotations

import argparse
import sys

from crab_rt.cli._options import add_config_option, config_from_args
from crab_rt.runtime.asr import DEVICES, WINDOWS, AsrConfig


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `transcribe-manifest` parser."""
    p = subparsers.add_parser(
        "transcribe-manifest", parents=[common],
        help="fill a manifest's missing transcripts with faster-whisper (resumable)",
        description=(
            "Transcribe manifest rows with faster-whisper and write a new manifest. Progress is kept in "
            "<out>.partial.jsonl, so rerunning the same command after an interruption continues where it "
            "stopped. The model is a local CTranslate2 folder or a faster-whisper name already in the cache "
            "(add --download to fetch it); tiny.en also comes from the [demo] extra."
        ),
    )
    p.add_argument("--manifest", required=True, help="input manifest (.csv or .jsonl)")
    p.add_argument("--out", required=True, help="output manifest (.csv or .jsonl)")
    add_config_option(p, "--asr", AsrConfig, "model", "faster-whisper model name or local folder")
    add_config_option(p, "--language", AsrConfig, "language", "spoken language code")
    add_config_option(p, "--device", AsrConfig, "device", "ASR device", choices=DEVICES)
    add_config_option(p, "--asr-window", AsrConfig, "window",
                      "Whisper's encoder window: 30 (faster-whisper's, every clip padded to 30 s) or auto (the clip "
                      "plus 10 s of padding: several times faster on short clips, the text can differ slightly)",
                      choices=WINDOWS)
    add_config_option(
        p, "--download", AsrConfig, "local_files_only",
        "let faster-whisper fetch a named model from the Hugging Face hub (default: local files only)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--only-missing",
        dest="only_missing",
        action="store_true",
        default=True,
        help="transcribe only rows with empty text (default)",
    )
    g.add_argument(
        "--all",
        dest="only_missing",
        action="store_false",
        help="transcribe every row (consistent ASR text on all splits, as the paper did)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the transcriber and fill the manifest. Returns 0."""
    import numpy as np

    from crab_rt.data.transcribe import transcribe_manifest
    from crab_rt.runtime.asr import Transcriber

    transcriber = Transcriber(config_from_args(AsrConfig, args))

    def transcribe(audio: np.ndarray) -> str:
        return transcriber.transcribe(audio).text

    result = transcribe_manifest(
        args.manifest,
        args.out,
        transcribe,
        only_missing=args.only_missing,
        progress=not args.no_progress and args.verbosity >= 0,
    )
    print(
        f"{result['out']}: {result['rows']} rows, {result['transcribed']} transcribed now, "
        f"{result['resumed']} resumed, {result['kept']} kept, {len(result['failed'])} unreadable"
    )
    for rid in result["failed"][:10]:
        print(f"  unreadable: {rid}", file=sys.stderr)
    return 0
