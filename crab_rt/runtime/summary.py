"""End-of-run summary: utterances, audio seconds, real-time factor, latency percentiles.

`LatencyStats` is what a `Pipeline` records its events' latencies in: one fixed
log-spaced histogram per stage, so its memory does not grow with the run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from crab_rt.runtime.events import LATENCY_KEYS

__all__ = ["LatencyHistogram", "LatencyStats", "run_summary", "format_summary"]


class LatencyHistogram:
    """One stage's latencies (ms) in fixed log-spaced buckets: bounded memory, any run length.

    Count, min, max and mean are exact. A percentile is numpy's default (linear
    interpolation between the two nearest ranks) within `RELATIVE_ERROR` for
    values from `LOW_MS` to `HIGH_MS`; smaller values stand for their mean
    (zeros stay exact), larger ones for the maximum seen. Not thread-safe:
    `LatencyStats` locks around it.
    """

    RELATIVE_ERROR = 0.005
    LOW_MS = 1e-3  # 1 us
    HIGH_MS = 1e7  # 2.8 hours
    _GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
    _LOG_GAMMA = math.log(_GAMMA)
    _BUCKETS = math.ceil(math.log(HIGH_MS / LOW_MS) / _LOG_GAMMA)
    # Bucket k in 1.._BUCKETS holds (LOW * g^(k-1), LOW * g^k]; its midpoint in relative terms is within
    # RELATIVE_ERROR of every value in it. Bucket 0 holds values <= LOW_MS, the last one values above HIGH_MS.
    _VALUES = np.concatenate([[LOW_MS], 2 * LOW_MS * _GAMMA ** np.arange(1, _BUCKETS + 1) / (_GAMMA + 1), [np.inf]])

    def __init__(self) -> None:
        self._counts = np.zeros(self._BUCKETS + 2, dtype=np.int64)
        self._count = 0
        self._sum = 0.0
        self._low_sum = 0.0  # of the values in bucket 0, its representative is their mean
        self._min = math.inf
        self._max = -math.inf

    def add(self, value_ms: float) -> None:
        """Record one value (ms)."""
        x = float(value_ms)
        if x <= self.LOW_MS or math.isnan(x):
            k = 0
            self._low_sum += x
        else:
            k = min(math.ceil(math.log(x / self.LOW_MS) / self._LOG_GAMMA), self._BUCKETS + 1)
        self._counts[k] += 1
        self._count += 1
        self._sum += x
        self._min = min(self._min, x)
        self._max = max(self._max, x)

    @property
    def count(self) -> int:
        return self._count

    @property
    def min(self) -> float | None:
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        return self._sum / self._count if self._count else None

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) as `np.percentile` computes it, within `RELATIVE_ERROR`; None when empty."""
        if not self._count:
            return None
        position = (self._count - 1) * min(max(q, 0.0), 100.0) / 100.0
        below = math.floor(position)
        cumulative = np.cumsum(self._counts)
        low = self._value_at(cumulative, below)
        if position == below:
            return low
        return low + (position - below) * (self._value_at(cumulative, below + 1) - low)

    def _value_at(self, cumulative: np.ndarray, rank: int) -> float:
        if rank == 0:
            return self._min
        if rank == self._count - 1:
            return self._max
        bucket = int(np.searchsorted(cumulative, rank, side="right"))
        value = self._low_sum / self._counts[0] if bucket == 0 else self._VALUES[bucket]
        return float(min(max(value, self._min), self._max))

    def copy(self) -> LatencyHistogram:
        """An independent snapshot."""
        other = LatencyHistogram()
        other._counts = self._counts.copy()
        other._count, other._sum, other._low_sum = self._count, self._sum, self._low_sum
        other._min, other._max = self._min, self._max
        return other


class LatencyStats:
    """Per-stage latency histograms of a run's events; bounded memory, thread-safe.

    Args:
        stages: the latency_ms keys to record (others are ignored).
    """

    def __init__(self, stages: Sequence[str] = LATENCY_KEYS) -> None:
        self._lock = threading.Lock()
        self._stages = {key: LatencyHistogram() for key in stages}
        self._count = 0

    def add(self, latency_ms: Mapping[str, float]) -> None:
        """Record one event's latency_ms dict."""
        with self._lock:
            self._count += 1
            for key, value in latency_ms.items():
                if key in self._stages:
                    self._stages[key].add(value)

    @property
    def count(self) -> int:
        """Events recorded."""
        return self._count

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._stages)

    def stage(self, key: str) -> LatencyHistogram:
        """A snapshot of one stage's histogram (KeyError for a stage not recorded)."""
        with self._lock:
            return self._stages[key].copy()

    def percentile(self, key: str, q: float) -> float | None:
        """The q-th percentile of one stage (ms), None before its first value."""
        with self._lock:
            return self._stages[key].percentile(q)


# Below this wall/audio ratio, input of unknown pace (stdin) is taken to have come faster than real time.
PACED_MIN_RTF = 0.95


def run_summary(latencies: LatencyStats | Iterable[Mapping[str, float]], audio_s: float, wall_s: float,
                dropped: int = 0, paced: bool | None = None, provisional: LatencyStats | None = None) -> dict:
    """Summary numbers of a run.

    Args:
        latencies: the pipeline's `LatencyStats`, or per utterance the event's latency_ms dict.
        audio_s: seconds of audio consumed.
        wall_s: wall-clock seconds of the run.
        dropped: utterances dropped by the overflow policy.
        paced: whether the audio arrived at real time (a microphone, a file with --realtime: True; a file fed as
            fast as possible: False; None: unknown, e.g. stdin, judged from the run's wall/audio ratio).
            Latencies of input faster than real time include the time utterances queued behind earlier ones.
        provisional: the pipeline's `provisional_latencies`; when it holds events, the summary has
            "provisional_end_to_event" ({"p50", "p95"}, end of speech to the provisional event).

    Returns:
        {"utterances", "audio_s", "wall_s", "real_time_factor" (wall / audio), "dropped", "paced",
         "latency_ms": {stage: {"p50", "p95"}}} (the final events' stages).
    """
    stats = latencies
    if not isinstance(stats, LatencyStats):
        stats = LatencyStats()
        for lat in latencies:
            stats.add(lat)
    summary = {
        "utterances": stats.count,
        "audio_s": round(audio_s, 3),
        "wall_s": round(wall_s, 3),
        "real_time_factor": round(wall_s / audio_s, 4) if audio_s > 0 else None,
        "dropped": dropped,
        "paced": paced if paced is not None else (audio_s <= 0 or wall_s >= PACED_MIN_RTF * audio_s),
        "latency_ms": {},
    }
    for key in LATENCY_KEYS:
        if key not in stats.stages:
            continue
        hist = stats.stage(key)
        if hist.count:
            summary["latency_ms"][key] = {"p50": round(hist.percentile(50), 2), "p95": round(hist.percentile(95), 2)}
    if provisional is not None and provisional.count:
        hist = provisional.stage("end_to_event")
        summary["provisional_end_to_event"] = {"p50": round(hist.percentile(50), 2),
                                               "p95": round(hist.percentile(95), 2)}
    return summary


def format_summary(summary: dict) -> str:
    """One human-readable block."""
    rtf = summary["real_time_factor"]
    lines = [
        f"utterances {summary['utterances']}  audio {summary['audio_s']:.1f} s  wall {summary['wall_s']:.1f} s  "
        f"RTF {rtf if rtf is not None else 'n/a'}  dropped {summary['dropped']}"
    ]
    if "provisional_end_to_event" in summary:
        p = summary["provisional_end_to_event"]
        lines.append(f"  {'end_to_event':<15} p50 {p['p50']:8.1f} ms   p95 {p['p95']:8.1f} ms   (provisional events)")
    for key, p in summary["latency_ms"].items():
        lines.append(f"  {key:<15} p50 {p['p50']:8.1f} ms   p95 {p['p95']:8.1f} ms")
    if not summary.get("paced", True) and summary["latency_ms"]:
        lines.append("  (input faster than real time: utterances queued behind each other, so these latencies "
                     "include that wait; --realtime gives the live figures)")
    return "\n".join(lines)
