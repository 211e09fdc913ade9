"""Model inputs from raw waveforms: normalisation, truncation and padding.

Training's collate and the runtime both call `pad_waveforms`, so the speech
encoder sees identical inputs in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_SAMPLES", "pad_waveforms"]

# The CNN feature encoder's receptive field (400 samples, 25 ms at 16 kHz):
# shorter inputs would yield zero frames.
MIN_SAMPLES = 400


def pad_waveforms(
    audios: Sequence[np.ndarray],
    normalize: bool,
    max_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack waveforms into a right-padded batch.

    Args:
        audios: float32 mono waveforms at 16 kHz.
        normalize: zero mean, unit variance per utterance (over its own samples),
            as the encoder's feature extractor was trained with (WavLM Large: yes).
        max_samples: truncate longer waveforms to this many samples.

    Returns:
        input_values float32 [B, T] and attention_mask int64 [B, T]; T is the
        longest (truncated) waveform, at least MIN_SAMPLES. Waveforms shorter
        than MIN_SAMPLES are zero-padded to it and count as valid.
    """
    clipped = []
    for a in audios:
        a = np.asarray(a, dtype=np.float32).reshape(-1)
        if max_samples is not None:
            a = a[:max_samples]
        if normalize and a.size:
            a = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
        if a.size < MIN_SAMPLES:
            a = np.pad(a, (0, MIN_SAMPLES - a.size))
        clipped.append(a)
    length = max((a.size for a in clipped), default=MIN_SAMPLES)
    values = np.zeros((len(clipped), length), dtype=np.float32)
    mask = np.zeros((len(clipped), length), dtype=np.int64)
    for i, a in enumerate(clipped):
        values[i, : a.size] = a
        mask[i, : a.size] = 1
    return values, mask
