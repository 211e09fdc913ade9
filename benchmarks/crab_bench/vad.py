"""`python benchmarks/vad.py`: Silero VAD cost per 32 ms frame, and the whole front end (VAD + segmenter).

Frames are fed one at a time, as a live stream does (one ONNX Runtime call per
frame, one intra-op thread); a batched whole-file call is timed too, divided
by its frame count. Input: a synthetic conversation (speech and silence).
"""

from __future__ import annotations

import argparse
import dataclasses

from crab_bench.common import (
    CommonBenchConfig,
    add_common_arguments,
    check_range,
    finish_run,
    resolve_threads,
    start_run,
)
from crab_rt.cli._options import add_config_option

__all__ = ["CONFIG", "VadBenchConfig", "add_arguments", "run", "TARGET_MS"]

TARGET_MS = 0.3


@dataclasses.dataclass(frozen=True)
class VadBenchConfig(CommonBenchConfig):
    """Options of `vad` (and of CommonBenchConfig).

    Attributes:
        frames: timed frames, 32 ms each (3000 = 96 s of audio); >= 10.
        warmup: untimed frames first; >= 0.
    """

    frames: int = 3000
    warmup: int = 100

    def validate(self) -> None:
        super().validate()
        check_range("--frames", self.frames, 10)
        check_range("--warmup", self.warmup, 0)


CONFIG = VadBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    add_config_option(p, "--frames", VadBenchConfig, "frames", "timed frames, 32 ms each")
    add_config_option(p, "--warmup", VadBenchConfig, "warmup", "untimed frames first")


def run(config: VadBenchConfig) -> int:
    """Time Silero VAD and the front end per frame; writes vad[_tag].json and .md."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from crab_bench.report import markdown_table
    from crab_bench.stats import summarize_ms, time_calls
    from crab_rt.audio import load_audio
    from crab_rt.data.synth import SynthConfig, synthesize_conversation
    from crab_rt.runtime.segmenter import SegmenterConfig, StreamFrontEnd
    from crab_rt.runtime.vad import FRAME_SAMPLES, SileroVad, VadState

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    ctx = start_run(config, resolve_threads(config.threads))
    total = config.frames + config.warmup
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "conversation.wav"
        turns = 6
        # --voice harmonic (the default) is the home-made voice of the committed results.
        synthesize_conversation(wav, SynthConfig(voice=config.voice), num_turns=turns, seed=config.seed)
        audio = load_audio(wav)
    reps = -(-total * FRAME_SAMPLES // audio.size)
    audio = np.tile(audio, reps)[: total * FRAME_SAMPLES].astype(np.float32)
    frames = audio.reshape(total, FRAME_SAMPLES)
    vad = SileroVad(num_threads=1)

    state, it = VadState.initial(), iter(range(total))
    per_frame = time_calls(lambda: vad.process_stream(frames[next(it)], state), config.warmup, config.frames)
    batched = time_calls(lambda: vad.process_stream(frames, VadState.initial()), 1, 3)
    front = StreamFrontEnd(vad, SegmenterConfig())
    it2 = iter(range(total))
    front_end = time_calls(lambda: front.accept(frames[next(it2)]), config.warmup, config.frames)
    rows = {
        "vad_per_frame": summarize_ms(per_frame, (50, 90, 99)),
        "vad_batched_per_frame": {k: (round(v / total, 4) if k != "n" else v) for k, v in
                                  summarize_ms(batched, (50,)).items()},
        "front_end_per_frame": summarize_ms(front_end, (50, 90, 99)),
    }
    p50 = rows["vad_per_frame"]["p50"]
    payload = {"kind": "vad", "model": str(vad.model_path.name), "frame_ms": 32, "intra_op_threads": 1,
               "input": f"synthetic conversation ({turns} turns) repeated", "frames": config.frames,
               "warmup": config.warmup, "results": rows,
               "target": {"what": "VAD p50 per 32 ms frame", "target_ms": TARGET_MS, "measured_ms": p50,
                          "met": p50 < TARGET_MS}}
    say(f"VAD per frame p50 {p50:.3f} ms (target < {TARGET_MS} ms: {'met' if p50 < TARGET_MS else 'MISSED'}); "
        f"front end p50 {rows['front_end_per_frame']['p50']:.3f} ms")
    table = markdown_table(["what", "n", "mean ms", "p50 ms", "p90 ms", "p99 ms"],
                           [[k, r["n"], r["mean"], r["p50"], r.get("p90"), r.get("p99")] for k, r in rows.items()])
    notes = [f"Silero VAD v6 ({payload['model']}), ONNX Runtime CPU, 1 intra-op thread; one call per 512-sample "
             f"(32 ms) frame; batched = one call over {total} frames, divided by the frame count",
             "front end = VAD + hysteresis segmenter, what `Stream.accept` does in the caller's thread",
             f"target < {TARGET_MS} ms per frame: **{'met' if p50 < TARGET_MS else 'missed'}** (p50 {p50:.3f} ms)"]
    finish_run(ctx, "vad", payload, ("Silero VAD cost per frame", [("Per frame", table)], notes), None, say)
    return 0
