"""`crab-rt prepare`: import a corpus (IEMOCAP, MELD, MSP-Podcast 2.0) into a manifest."""

from __future__ import annotations

import argparse
import sys

from crab_rt.errors import ConfigError

__all__ = ["register", "run"]

CORPORA = ("iemocap", "meld", "msp-podcast")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `prepare` parser."""
    p = subparsers.add_parser(
        "prepare", parents=[common],
        help="import IEMOCAP, MELD or MSP-Podcast 2.0 into a manifest",
        description=(
            "Read a corpus in its official layout and write a crab-rt manifest (CSV or JSONL by suffix). "
            "Prints class counts per split beside the paper's Table I. Missing or unreadable audio is listed "
            "and left out (exit 0 with a warning); a root that is not the corpus exits 2."
        ),
    )
    p.add_argument("corpus", choices=CORPORA, help="which corpus")
    p.add_argument("--root", required=True, help="corpus folder (IEMOCAP_full_release, MELD.Raw, MSP-Podcast)")
    p.add_argument("--out", required=True, help="manifest to write (.csv or .jsonl)")
    p.add_argument(
        "--audio-cache",
        default=None,
        help="MELD only: folder for the extracted 16 kHz WAVs (default: <out folder>/meld_wav)",
    )
    p.add_argument("--workers", type=int, default=1, help="MELD only: clips decoded in parallel (default 1)")
    p.add_argument("--max-listed", type=int, default=10, help="problem files to list by name (default 10)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Import the corpus; print the summary. Returns 0 (warnings go to stderr)."""
    from crab_rt.data.corpora import prepare_iemocap, prepare_meld, prepare_msp_podcast

    if args.audio_cache is not None and args.corpus != "meld":
        raise ConfigError(f"--audio-cache applies only to meld, not {args.corpus}")
    if args.max_listed < 0:
        raise ConfigError(f"--max-listed must be >= 0, got {args.max_listed}")
    if args.corpus == "iemocap":
        summary = prepare_iemocap(args.root, args.out)
    elif args.corpus == "meld":
        summary = prepare_meld(
            args.root,
            args.out,
            audio_cache=args.audio_cache,
            progress=not args.no_progress and args.verbosity >= 0,
            workers=args.workers,
        )
    else:
        summary = prepare_msp_podcast(args.root, args.out)
    print(summary.format(max_listed=args.max_listed))
    if not summary.complete:
        print(
            f"crab-rt: warning: {len(summary.missing)} missing and {len(summary.unreadable)} unreadable "
            f"audio file(s); their rows are not in {summary.manifest}",
            file=sys.stderr,
        )
    return 0
