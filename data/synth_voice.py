"""Synthetic voiced "speech": the signal model behind `crab_rt.data.synth`.

A band-limited glottal pulse train with a pitch contour and slow jitter,
shaped per STFT frame by a spectral tilt, a soft low-pass and three formant
resonances of a vowel drawn per syllable, with band-passed noise bursts as
consonant onsets. `ProsodyProfile` holds what one emotion class sounds like.
Nothing here is speech. Spoken corpora come from espeak-ng (`synth_espeak`, the
default); this voice stays for the latency benchmarks (their conversations are
unchanged), for tests that need its exactly known pitch and levels, and where
the `[demo]` extra is not installed (numpy only). See `crab_rt.data.synth`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from crab_rt.audio import SAMPLE_RATE

__all__ = ["ProsodyProfile", "render_voice", "background_noise", "scale_to_level"]

_STFT_N, _STFT_HOP = 512, 128  # periodic Hann, 4x overlap: sum of squared windows = 1.5
_NYQUIST_GUARD_HZ = 7000.0  # harmonics fade out between 7 and 7.5 kHz (no aliasing at 16 kHz)
_MAX_INTRA_PAUSE_S = 0.2  # pauses inside an utterance stay below typical VAD min-silence settings


@dataclass(frozen=True)
class ProsodyProfile:
    """How one class sounds.

    Attributes:
        f0_hz: mean fundamental frequency.
        f0_range: half-range of the pitch contour, relative to f0.
        f0_slope: relative pitch change from start to end (negative: falling).
        level_dbfs: RMS level of the voiced samples.
        syllables_per_s: speaking rate.
        num_harmonics: bandwidth: the spectrum fades above num_harmonics * 400 Hz.
        spectral_tilt: the source falls as (f / f0) ** -spectral_tilt (small: bright).
    """

    f0_hz: float
    f0_range: float
    f0_slope: float
    level_dbfs: float
    syllables_per_s: float
    num_harmonics: int
    spectral_tilt: float


# Vowel formants (F1, F2, F3) in Hz: a, e, i, o, u, ae, schwa (adult-ish averages).
_VOWELS_HZ = np.array(
    [
        (730.0, 1090.0, 2440.0),
        (530.0, 1840.0, 2480.0),
        (360.0, 2100.0, 2700.0),
        (570.0, 900.0, 2410.0),
        (400.0, 1000.0, 2300.0),
        (660.0, 1720.0, 2410.0),
        (500.0, 1500.0, 2500.0),
    ]
)


_FORMANT_BW_HZ = np.array([90.0, 110.0, 170.0])


# Fricative-like consonant bands (lo, hi) in Hz: "s", "sh", "f/h".
_FRICATIVE_BANDS_HZ = ((3500.0, 7000.0), (1800.0, 5000.0), (800.0, 6000.0))


def _stft_shape(x: np.ndarray, gain_at: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter `x` with a time-varying magnitude response by STFT overlap-add.

    `gain_at(centres)` gets the frame centres (samples) and returns gains [frames, N/2 + 1].
    """
    n, size, hop = x.size, _STFT_N, _STFT_HOP
    xp = np.concatenate([np.zeros(size), x, np.zeros(size + hop)])
    n_frames = (xp.size - size) // hop + 1
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(xp.astype(np.float32), size)[::hop][:n_frames]
    centres = np.arange(n_frames) * hop + size // 2 - size
    spec = np.fft.rfft(frames * win, axis=1) * gain_at(centres).astype(np.complex64)
    y = np.fft.irfft(spec, size, axis=1).astype(np.float32) * win
    out = np.zeros(n_frames * hop + size - hop, np.float32)
    for k in range(size // hop):
        out[k * hop : k * hop + n_frames * hop] += y[:, k * hop : (k + 1) * hop].reshape(-1)
    return out[size : size + n].astype(np.float64) / 1.5


def render_voice(
    profile: ProsodyProfile, n_samples: int, f0_scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Vowel-like syllables filling `n_samples`; returns (float64 signal, voiced mask).

    Source: a band-limited glottal pulse train (all harmonics below 7 kHz, sum
    of cosines in closed form) with the class's pitch contour plus slow jitter.
    Filter (STFT, per frame): source tilt f^-spectral_tilt, a soft low-pass at
    num_harmonics * 400 Hz, and three formant resonances of a vowel drawn per
    syllable (glided between syllables). Consonants: band-passed noise bursts
    of 20-60 ms over the onset of about 60% of syllables.
    """
    sr = SAMPLE_RATE
    t = np.arange(n_samples) / sr
    rate = profile.syllables_per_s * rng.uniform(0.9, 1.1)
    slot = t * rate
    idx = slot.astype(np.int64)
    n_syl = int(idx[-1]) + 1
    duty = np.maximum(rng.uniform(0.55, 0.8, n_syl), 1.0 - _MAX_INTRA_PAUSE_S * rate)
    v = (slot - idx) / duty[idx]  # position inside the syllable, >= 1 in the pause
    voiced = v < 1.0
    attack, release = 0.15, 0.35  # raised-cosine attack, sustained vowel, raised-cosine release
    env = np.where(
        v < attack,
        0.5 - 0.5 * np.cos(np.pi * v / attack),
        0.5 + 0.5 * np.cos(np.pi * np.clip((v - 1.0 + release) / release, 0.0, 1.0)),
    )
    syl_amp = rng.uniform(0.6, 1.0, n_syl)
    env *= voiced * syl_amp[idx]
    # Consonant onsets: a noise burst over the first 20-60 ms of a syllable.
    syl_len_s = duty / rate  # voiced length of each syllable
    cons_s = rng.uniform(0.02, 0.06, n_syl) * (rng.random(n_syl) < 0.6)
    cons_frac = np.minimum(cons_s / syl_len_s, 0.45)  # in units of v
    cv = v / np.maximum(cons_frac[idx], 1e-9)
    cons_env = np.where((cv < 1.0) & (cons_frac[idx] > 0), np.sin(np.pi * np.clip(cv, 0.0, 1.0)), 0.0)
    cons_env *= syl_amp[idx]
    if voiced[-1] and n_syl > 1:  # drop a syllable cut by the clip end: no click
        env[idx == n_syl - 1] = 0.0
        cons_env[idx == n_syl - 1] = 0.0

    duration = max(n_samples / sr, 1e-3)
    grid = np.arange(0.0, duration + 0.04, 0.02)  # slow pitch jitter, 50 Hz knots, ~1.5%
    jitter = 0.015 * np.interp(t, grid, rng.standard_normal(grid.size))
    contour = (
        profile.f0_range
        * (0.6 * np.sin(2 * np.pi * rng.uniform(0.4, 1.2) * t + rng.uniform(0, 2 * np.pi))
           + 0.4 * rng.uniform(-1.0, 1.0, n_syl)[idx])
        + profile.f0_slope * (t / duration - 0.5)
        + jitter
    )  # fmt: skip
    f0 = profile.f0_hz * f0_scale * (1.0 + contour)
    phase = 2 * np.pi * np.cumsum(f0) / sr + rng.uniform(0, 2 * np.pi)
    # sum_{h=1..H} cos(h x) = sin((H + 1/2) x) / (2 sin(x / 2)) - 1/2: a pulse
    # train with H equal harmonics, all below the Nyquist guard.
    n_harm = max(1, int(_NYQUIST_GUARD_HZ // float(f0.max())))
    half = np.sin(phase / 2)
    safe = np.abs(half) > 1e-6
    pulses = np.where(
        safe, np.sin((n_harm + 0.5) * phase) / (2 * np.where(safe, half, 1.0)), n_harm + 0.5
    ) - 0.5  # fmt: skip

    # Per-syllable vowels, glided over ~40 ms at syllable boundaries.
    vowel_of_syl = rng.integers(len(_VOWELS_HZ), size=n_syl)
    formants = _VOWELS_HZ[vowel_of_syl] * rng.uniform(0.92, 1.08, (n_syl, 1))  # [syl, 3]
    freqs = np.fft.rfftfreq(_STFT_N, 1.0 / sr)  # [bins]
    f_ref = profile.f0_hz * f0_scale
    source = (np.maximum(freqs, f_ref) / f_ref) ** -profile.spectral_tilt
    cutoff = profile.num_harmonics * 400.0
    source = source / np.sqrt(1.0 + (freqs / cutoff) ** 4) * (freqs > 50.0)
    # A chirp all-pass (group delay rising to one period at 4 kHz) spreads each
    # pulse over the period: a lower crest factor, so loud classes stay loud.
    source = source * np.exp(-1j * np.pi * (freqs**2) * (1.0 / f_ref) / 4000.0)

    def vowel_gain(centres: np.ndarray) -> np.ndarray:
        syl = idx[np.clip(centres, 0, n_samples - 1)]
        fm = formants[syl]  # [frames, 3]
        kernel = np.ones(5) / 5.0
        fm = np.stack([np.convolve(np.pad(fm[:, i], 2, mode="edge"), kernel, "valid") for i in range(3)], 1)
        f2 = freqs[None, :, None] ** 2
        ff = fm[:, None, :] ** 2
        res = ff / np.sqrt((ff - f2) ** 2 + (_FORMANT_BW_HZ * freqs[None, :, None]) ** 2)
        return source[None, :] * res.prod(axis=2)

    vowel = _stft_shape(pulses, vowel_gain)
    vowel_rms = math.sqrt(float(np.mean(vowel[voiced] ** 2))) if voiced.any() else 1.0
    sig = vowel / max(vowel_rms, 1e-12) * env

    if cons_env.any():
        band_of_syl = rng.integers(len(_FRICATIVE_BANDS_HZ), size=n_syl)
        bands = np.array(_FRICATIVE_BANDS_HZ)
        lo, hi = bands[:, 0:1], bands[:, 1:2]
        band_gain = 1.0 / np.sqrt((1.0 + (lo / np.maximum(freqs, 1.0)) ** 4) * (1.0 + (freqs / hi) ** 4))
        band_gain /= np.sqrt(np.mean(band_gain**2, axis=1, keepdims=True) * 2.0)
        def noise_gain(centres: np.ndarray) -> np.ndarray:
            return band_gain[band_of_syl[idx[np.clip(centres, 0, n_samples - 1)]]]

        noise = _stft_shape(rng.standard_normal(n_samples), noise_gain)
        sig += 0.3 * noise * cons_env
    return sig, (env > 0) | (cons_env > 0)


def background_noise(rng: np.random.Generator, n: int, pink: bool) -> np.ndarray:
    if not pink or n < 4:
        return rng.standard_normal(n)
    n_fft = 1 << (n - 1).bit_length()  # a power of two: clip lengths are often prime-ish
    spec = np.fft.rfft(rng.standard_normal(n_fft))
    f = np.arange(spec.size, dtype=float)
    f[0] = 1.0
    pink_sig = np.fft.irfft(spec / np.sqrt(f), n_fft)[:n]
    return pink_sig / (np.sqrt(np.mean(pink_sig**2)) + 1e-12)


def scale_to_level(voice: np.ndarray, voiced: np.ndarray, level_dbfs: float) -> np.ndarray:
    rms = math.sqrt(float(np.mean(voice[voiced] ** 2))) if voiced.any() else 0.0
    if rms <= 0:
        return voice
    out = voice * (10 ** (level_dbfs / 20) / rms)
    # Peaks above 0.5 are softly compressed towards 0.9 (never clipped): pulse
    # trains have a high crest factor and loud classes must stay loudest.
    knee, ceiling = 0.5, 0.9
    mag = np.abs(out)
    over = mag > knee
    if over.any():
        soft = knee + (ceiling - knee) * np.tanh((mag[over] - knee) / (ceiling - knee))
        out[over] = np.sign(out[over]) * soft
    return out
