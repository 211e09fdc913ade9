"""The pipeline flags that `crab-rt listen` and `crab-rt serve` share: model, ASR, segmentation, overflow."""

from __future__ import annotations

import argparse
import dataclasses

from crab_rt.backends.base import BACKEND_NAMES
from crab_rt.bundle import PRECISIONS
from crab_rt.cli._options import add_config_option, config_from_args
from crab_rt.runtime.asr import COMPUTE_TYPES, GUARDS, WINDOWS, AsrConfig
from crab_rt.runtime.pipeline import OVERFLOW_POLICIES, PipelineConfig
from crab_rt.runtime.segmenter import SegmenterConfig

__all__ = ["add_pipeline_options", "pipeline_config_from_args"]


def add_pipeline_options(p: argparse.ArgumentParser, overflow_default: str, provisional_flag: bool = True) -> None:
    """Add the model, ASR, events and segmentation groups (with --bundle) to a command's parser.

    Args:
        overflow_default: how --help describes the default of --overflow for this command.
        provisional_flag: add --provisional (`crab-rt serve` leaves it out: each client asks in its start).
    """
    m = p.add_argument_group("model")
    m.add_argument("--bundle", required=True, help="model bundle folder from `crab-rt export`")
    add_config_option(m, "--backend", PipelineConfig, "backend", "inference backend", choices=BACKEND_NAMES)
    add_config_option(m, "--gpu", PipelineConfig, "gpu", "CUDA device index for the model and ASR", type=int,
                      default_text="CPU, or GPU 0 for auto")
    add_config_option(m, "--precision", PipelineConfig, "precision", "graph precision (fp16: GPU only)",
                      choices=PRECISIONS)
    add_config_option(m, "--threads", PipelineConfig, "threads",
                      "CPU threads per ONNX Runtime session of the encoders and the head (0 = the core budget's, "
                      "see --cores; at most 4 per CPU core)")
    add_config_option(m, "--cores", PipelineConfig, "cores",
                      "CPUs the core budget splits between the stages: ASR gets half, the speech encoder (beside "
                      "it, then alone), the text encoder and the head all, the VAD 1; --threads and --asr-threads "
                      "override their share (0 = the CPUs this process may run on)")
    add_config_option(m, "--overflow", PipelineConfig, "overflow",
                      "when processing falls behind: wait (block) or drop new utterances, each with a warning",
                      choices=OVERFLOW_POLICIES, default_text=overflow_default)
    add_config_option(m, "--max-in-flight", PipelineConfig, "max_in_flight",
                      "most utterances being processed at once; then --overflow applies")
    m.add_argument("--no-incremental-speech", action="store_true",
                   help="run the whole speech encoder at the end of speech instead of its front end while the "
                        "person speaks (incremental encoding is used only where the bundle's parity allows)")
    a = p.add_argument_group("ASR")
    add_config_option(a, "--asr", AsrConfig, "model", "faster-whisper size name or CTranslate2 folder",
                      default_text=f"the bundle's, else {AsrConfig.model}")
    add_config_option(a, "--language", AsrConfig, "language", "language code, or 'auto' to detect it",
                      convert=lambda code: None if code == "auto" else code)
    add_config_option(a, "--asr-guard", AsrConfig, "guard", "on no-speech/low-confidence text: drop it, flag it, "
                      "or keep it", choices=GUARDS)
    add_config_option(a, "--asr-compute-type", AsrConfig, "compute_type", "CTranslate2 compute type (int8 is "
                      "fastest on a CPU; default keeps the model's type where the device supports it)",
                      choices=COMPUTE_TYPES)
    add_config_option(a, "--asr-threads", AsrConfig, "cpu_threads",
                      "CTranslate2 threads on a CPU (0 = the core budget's, see --cores)")
    add_config_option(a, "--asr-window", AsrConfig, "window",
                      "Whisper's encoder window: 30 pads every utterance to 30 s (faster-whisper's transcripts); "
                      "auto encodes the utterance plus 10 s, 1.9-4.3x faster for 1-12 s (tiny.en int8, 2 cores), "
                      "but the text changes (tiny.en int8: 1 word of 125 on JFK's speech; 44-49%% of espeak-ng "
                      "clips, word error vs the spoken text 27.2%% vs 29.4%% and 15.9%% vs 17.4%%)",
                      choices=WINDOWS)
    add_config_option(a, "--asr-max-batch", PipelineConfig, "asr_max_batch",
                      "most utterances per ASR call, across streams (0: auto = 8 on a GPU, 1 on a CPU, where "
                      "batching saves no work)")
    a.add_argument("--no-asr", action="store_true", help="run without ASR (empty text)")
    e = p.add_argument_group("events")
    if provisional_flag:
        e.add_argument("--provisional", action="store_true",
                       help="also print a provisional event per utterance from the voice alone, the moment the "
                       "speech encoder has run (before ASR; no text), then the final one with the same "
                       "utterance_id (needs a bundle with the voice-only classifier)")
    add_config_option(e, "--min-confidence", PipelineConfig, "min_confidence",
                      "mark an event whose (calibrated) confidence is below this as abstained; its label stays")
    s = p.add_argument_group("segmentation")
    add_config_option(s, "--start-threshold", SegmenterConfig, "start_threshold", "speech starts at this probability")
    add_config_option(s, "--end-threshold", SegmenterConfig, "end_threshold", "frames below this count as silence")
    add_config_option(s, "--min-speech-ms", SegmenterConfig, "min_speech_ms", "shorter speech is dropped")
    add_config_option(s, "--min-silence-ms", SegmenterConfig, "min_silence_ms", "hangover before an utterance ends")
    add_config_option(s, "--pre-roll-ms", SegmenterConfig, "pre_roll_ms", "audio kept before the speech")
    add_config_option(s, "--post-roll-ms", SegmenterConfig, "post_roll_ms",
                      "audio kept after the speech (at most --min-silence-ms)",
                      default_text=f"{SegmenterConfig.post_roll_ms}, or --min-silence-ms if that is less")
    add_config_option(s, "--max-utterance-s", SegmenterConfig, "max_utterance_s",
                      "longer speech is split; at most the bundle's max_audio_s (a larger value is refused)",
                      default_text=f"{SegmenterConfig.max_utterance_s}, or the bundle's max_audio_s if less")


def pipeline_config_from_args(args: argparse.Namespace, bundle_asr_model: str | None, live: bool) -> PipelineConfig:
    """The pipeline settings: config defaults, the bundle's ASR model, the input kind, then the flags given.

    `live` (a microphone) makes overflow default to drop. Without --post-roll-ms, its default is lowered to
    --min-silence-ms when that is less, so that a short hangover alone is valid.
    """
    asr = None
    if not args.no_asr:
        asr = AsrConfig(model=bundle_asr_model) if bundle_asr_model else AsrConfig()
        asr = config_from_args(asr, args)
        asr = dataclasses.replace(asr, device="auto" if args.gpu is not None else "cpu", device_index=args.gpu or 0)
    segmenter = config_from_args(SegmenterConfig, args)
    if getattr(args, "post_roll_ms", None) is None and segmenter.post_roll_ms > segmenter.min_silence_ms:
        segmenter = dataclasses.replace(segmenter, post_roll_ms=segmenter.min_silence_ms)
    config = PipelineConfig(segmenter=segmenter, asr=asr,
                            overflow="drop" if live else "block",
                            incremental_speech=not getattr(args, "no_incremental_speech", False),
                            provisional=bool(getattr(args, "provisional", False)))
    return config_from_args(config, args)
