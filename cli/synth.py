"""`crab-rt synth`: write the synthetic bimodal emotion corpus (and a conversation)."""

from __future__ import annotations

import argparse
import inspect

from crab_rt.cli._options import add_config_option, config_from_args
from crab_rt.data.synth import VOICES, SynthConfig, synthesize_conversation


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `synth` parser."""
    p = subparsers.add_parser(
        "synth", parents=[common],
        help="write a SYNTHETIC bimodal emotion corpus (WAV + manifest) for tests and demos",
        description=(
            "Write a synthetic emotion corpus: short English sentences with class cue words, spoken by "
            "espeak-ng with a class-dependent prosody by several speakers (or, with --voice harmonic, "
            "the home-made 'syllable' voice, which is not speech), 16 kHz WAVs, manifest.csv with "
            "speaker-disjoint splits, and README.txt with the label rule and the accuracy ceilings."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_config_option(p, "--num", SynthConfig, "num_utterances", "number of utterances", metavar="N")
    add_config_option(p, "--seed", SynthConfig, "seed", "random seed", metavar="S")
    add_config_option(p, "--speakers", SynthConfig, "num_speakers",
                      "synthetic speakers, drawn into the splits in proportion to their fractions",
                      metavar="N")  # fmt: skip
    add_config_option(p, "--imbalance", SynthConfig, "imbalance_ratio", "largest/smallest class count", metavar="R")
    add_config_option(p, "--noise-snr-db", SynthConfig, "noise_snr_db", "speech-to-noise ratio in dB", metavar="X")
    add_config_option(p, "--voice", SynthConfig, "voice",
                      "espeak: speech by espeak-ng (needs crab-rt[demo]); harmonic: the home-made voice, "
                      "not speech, numpy only", choices=VOICES)  # fmt: skip
    p.add_argument(
        "--conversation", default=None, metavar="PATH",
        help="also write a conversation WAV here, with ground-truth turns in PATH's .json sidecar",
    )  # fmt: skip
    turns = inspect.signature(synthesize_conversation).parameters["num_turns"].default
    p.add_argument("--turns", type=int, default=turns, help=f"turns in the conversation (default: {turns})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the settings, write the corpus, print the per-split class counts."""
    from crab_rt.data.synth import expected_ceilings, format_summary, summarize_manifest, synthesize_corpus
    from crab_rt.errors import ConfigError

    config = config_from_args(SynthConfig, args).validate()
    if args.conversation and not str(args.conversation).lower().endswith(".wav"):
        raise ConfigError(f"--conversation {args.conversation} must end in .wav")
    if not 1 <= args.turns <= 1000:
        raise ConfigError(f"--turns {args.turns} is out of range [1, 1000]")
    manifest = synthesize_corpus(config, args.out, progress=not args.no_progress and args.verbosity >= 0)
    print(f"synthetic corpus ({config.voice} voice): {config.num_utterances} clips -> {manifest}")
    print(format_summary(summarize_manifest(manifest), config.labels), end="")
    c = expected_ceilings(config)
    print(
        f"accuracy ceilings from the cues: prosody {c['prosody_only']:.3f}, "
        f"text {c['text_only']:.3f}, both {c['fused']:.3f}"
    )
    if args.conversation:
        turns = synthesize_conversation(args.conversation, config, num_turns=args.turns)
        print(f"synthetic conversation: {len(turns)} turns -> {args.conversation} (+ .json ground truth)")
    return 0
