"""Timing helpers: warm-up excluded, repetitions under a time budget, percentiles, spread over runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["time_calls", "summarize_ms", "spread", "parse_list"]


def time_calls(fn: Callable[[], object], warmup: int, repeat: int, max_seconds: float = 0.0,
               min_repeat: int = 3) -> list[float]:
    """Milliseconds of `repeat` calls of `fn` after `warmup` untimed calls.

    Args:
        fn: the call to time (it must synchronise its device before returning).
        warmup: untimed calls first.
        repeat: timed calls wanted.
        max_seconds: if > 0, stop early once this much time was spent timing and at least
            `min_repeat` calls were made (the count is reported with the results).
        min_repeat: fewest timed calls under a time budget.

    Returns:
        One duration per timed call, in ms.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed * 1000.0)
        spent += elapsed
        if max_seconds > 0 and spent >= max_seconds and len(samples) >= min_repeat:
            break
    return samples


def summarize_ms(samples: Sequence[float], percentiles: Sequence[int] = (50, 90, 99)) -> dict:
    """{"n", "mean", "p50", ...} rounded to 0.001 ms; empty input gives n = 0 only."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        return {"n": 0}
    out = {"n": int(values.size), "mean": round(float(values.mean()), 3)}
    for p in percentiles:
        out[f"p{p}"] = round(float(np.percentile(values, p)), 3)
    return out


def spread(values: Sequence[float | None]) -> dict:
    """{"median", "min", "max"} of the non-None values, rounded to 3 decimals (all None when there are none)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": round(float(np.median(vals)), 3), "min": round(min(vals), 3), "max": round(max(vals), 3)}


def parse_list(text: str, kind: type = float) -> list:
    """"1,2,4" -> [1, 2, 4] (used by the CLI options)."""
    from crab_rt.errors import ConfigError

    try:
        values = [kind(x) for x in str(text).split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"expected a comma-separated list of numbers, got {text!r}") from e
    if not values:
        raise ConfigError(f"expected a comma-separated list of numbers, got {text!r}")
    return values
