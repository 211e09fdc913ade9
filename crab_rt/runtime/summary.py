"""End-of-run summary: utterances, audio seconds, real-time factor, latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crab_rt.runtime.events import LATENCY_KEYS

__all__ = ["run_summary", "format_summary"]


def run_summary(latencies: Sequence[dict[str, float]], audio_s: float, wall_s: float, dropped: int = 0) -> dict:
    """Summary numbers of a run.

    Args:
        latencies: per utterance, the event's latency_ms dict.
        audio_s: seconds of audio consumed.
        wall_s: wall-clock seconds of the run.
        dropped: utterances dropped by the overflow policy.

    Returns:
        {"utterances", "audio_s", "wall_s", "real_time_factor" (wall / audio), "dropped",
         "latency_ms": {stage: {"p50", "p95"}}}.
    """
    summary = {
        "utterances": len(latencies),
        "audio_s": round(audio_s, 3),
        "wall_s": round(wall_s, 3),
        "real_time_factor": round(wall_s / audio_s, 4) if audio_s > 0 else None,
        "dropped": dropped,
        "latency_ms": {},
    }
    for key in LATENCY_KEYS:
        values = np.array([lat[key] for lat in latencies if key in lat], dtype=np.float64)
        if values.size:
            summary["latency_ms"][key] = {"p50": round(float(np.percentile(values, 50)), 2),
                                          "p95": round(float(np.percentile(values, 95)), 2)}
    return summary


def format_summary(summary: dict) -> str:
    """One human-readable block."""
    rtf = summary["real_time_factor"]
    lines = [
        f"utterances {summary['utterances']}  audio {summary['audio_s']:.1f} s  wall {summary['wall_s']:.1f} s  "
        f"RTF {rtf if rtf is not None else 'n/a'}  dropped {summary['dropped']}"
    ]
    for key, p in summary["latency_ms"].items():
        lines.append(f"  {key:<15} p50 {p['p50']:8.1f} ms   p95 {p['p95']:8.1f} ms")
    return "\n".join(lines)
