"""Measurements on generated audio that several tests share."""

from __future__ import annotations

import numpy as np

from crab_rt.audio import SAMPLE_RATE


def median_f0(x: np.ndarray, sr: int = SAMPLE_RATE, fmin: float = 55.0, fmax: float = 400.0, hop: int = 256,
              min_level: float = 0.5) -> float:
    """Median f0 (Hz) over frames at least `min_level` x the clip's RMS, from the autocorrelation peak in
    [fmin, fmax] (frames whose peak is under 0.3 of the zero lag count as unvoiced)."""
    frame = 1024
    level = np.sqrt(np.mean(x**2))
    lo, hi = int(sr // fmax), int(sr // fmin)
    out = []
    for s in range(0, len(x) - frame, hop):
        fr = x[s : s + frame] - x[s : s + frame].mean()
        if np.sqrt(np.mean(fr**2)) < min_level * level:
            continue
        ac = np.correlate(fr, fr, "full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            out.append(sr / lag)
    return float(np.median(out))
