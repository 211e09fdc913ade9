"""Spoken synthetic speech: the espeak-ng renderer behind `crab_rt.data.synth`.

A class's prosody is an `EspeakProfile` (espeak-ng's rate, pitch, pitch range
and word gap, plus an RMS level); a speaker is an `EspeakSpeaker` (a language
voice, a voice variant and its own offsets). `utterance_voice` combines a
profile, a speaker and per-utterance jitter into espeak-ng settings;
`render_espeak` speaks a sentence with them (through `crab_rt.data.espeak`) and
sets its level. The table of profiles and the speaker scheme are documented in
`crab_rt.data.synth`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crab_rt.audio import SAMPLE_RATE
from crab_rt.data.espeak import EspeakVoice, get_espeak
from crab_rt.data.synth_voice import scale_to_level

__all__ = [
    "EspeakProfile",
    "EspeakSpeaker",
    "ESPEAK_PROFILES",
    "ESPEAK_LANGUAGES",
    "ESPEAK_VARIANTS",
    "espeak_profile",
    "make_speakers",
    "utterance_voice",
    "seconds_per_word",
    "render_espeak",
    "active_mask",
]

# espeak-ng speaks at volume 50 (headroom: louder voices clip inside espeak-ng and its
# gain control changes the level); the class level is then set by scaling, as RMS over
# the active 10 ms frames, with the soft knee of `scale_to_level` above 0.5.
_ESPEAK_VOLUME = 50
_FRAME = SAMPLE_RATE // 100  # 10 ms
_ACTIVE_DB = 35.0  # a frame is active within 35 dB of the clip's loudest frame


@dataclass(frozen=True)
class EspeakProfile:
    """How one class is spoken (before speaker offsets and jitter).

    Attributes:
        rate_wpm: espeak-ng speaking rate (words per minute, its own scale).
        pitch: espeak-ng base pitch, 0-99 (50 = the voice's own).
        pitch_range: espeak-ng pitch range, 0 (monotone) to 99.
        level_dbfs: RMS level over the active 10 ms frames.
        word_gap: pause between words in 10 ms units.
    """

    rate_wpm: float
    pitch: float
    pitch_range: float
    level_dbfs: float
    word_gap: float


ESPEAK_PROFILES: dict[str, EspeakProfile] = {
    "neutral": EspeakProfile(150.0, 45.0, 35.0, -26.0, 1.0),
    "happy": EspeakProfile(180.0, 70.0, 80.0, -22.0, 0.0),
    "angry": EspeakProfile(170.0, 58.0, 40.0, -17.0, 0.0),
    "sad": EspeakProfile(120.0, 22.0, 10.0, -33.0, 4.0),
}

# English language voices and voice variants of espeak-ng 1.52's data folder (checked against
# it when speaking). Speaker s speaks ESPEAK_LANGUAGES[s % 5] + ESPEAK_VARIANTS[s % 13]: 65
# distinct voices before one repeats (with other offsets), male and female alternating.
ESPEAK_LANGUAGES: tuple[str, ...] = ("en-us", "en", "en-gb-x-rp", "en-029", "en-us-nyc")
ESPEAK_VARIANTS: tuple[str, ...] = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7", "m8")


@dataclass(frozen=True)
class EspeakSpeaker:
    """One synthetic speaker: a voice and its own offsets from the class profiles.

    Attributes:
        language, variant: the espeak-ng voice (e.g. "en-gb-x-rp", "f2").
        pitch_offset: added to the class pitch (espeak-ng units).
        range_offset: added to the class pitch range.
        rate_scale: multiplies the class rate.
        level_offset_db: added to the class level.
    """

    language: str
    variant: str
    pitch_offset: float
    range_offset: float
    rate_scale: float
    level_offset_db: float

    @property
    def voice_name(self) -> str:
        return f"{self.language}+{self.variant}"


def espeak_profile(label: str, labels: Sequence[str]) -> EspeakProfile:
    """The profile of `label`: ESPEAK_PROFILES, or a generated one spread over the ranges."""
    if label in ESPEAK_PROFILES:
        return ESPEAK_PROFILES[label]
    j = list(labels).index(label)  # generated, deterministic, spread out
    return EspeakProfile(
        rate_wpm=130.0 + 20.0 * (j % 5),
        pitch=30.0 + 10.0 * (j % 6),
        pitch_range=20.0 + 22.0 * (j % 4),
        level_dbfs=-31.0 + 3.5 * (j % 5),
        word_gap=3.0 * (j % 3),
    )


def make_speakers(seed: int, num_speakers: int) -> list[EspeakSpeaker]:
    """`num_speakers` speakers: voice s is language s % 5 with variant s % 13; offsets drawn from the seed."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for s in range(num_speakers):
        out.append(
            EspeakSpeaker(
                language=ESPEAK_LANGUAGES[s % len(ESPEAK_LANGUAGES)],
                variant=ESPEAK_VARIANTS[s % len(ESPEAK_VARIANTS)],
                pitch_offset=float(rng.uniform(-8.0, 8.0)),
                range_offset=float(rng.uniform(-8.0, 8.0)),
                rate_scale=float(rng.uniform(0.92, 1.08)),
                level_offset_db=float(rng.uniform(-2.0, 2.0)),
            )
        )
    return out


def utterance_voice(profile: EspeakProfile, speaker: EspeakSpeaker, rng: np.random.Generator) -> EspeakVoice:
    """The espeak-ng settings of one utterance: profile + speaker offsets + jitter.

    Jitter: rate x U(0.95, 1.05), pitch +- 3, pitch range +- 5 (espeak-ng units).
    """

    def clip(x: float, lo: int, hi: int) -> int:
        return int(min(max(round(x), lo), hi))

    return EspeakVoice(
        language=speaker.language,
        variant=speaker.variant,
        rate_wpm=clip(profile.rate_wpm * speaker.rate_scale * rng.uniform(0.95, 1.05), 80, 450),
        volume=_ESPEAK_VOLUME,
        pitch=clip(profile.pitch + speaker.pitch_offset + rng.uniform(-3.0, 3.0), 0, 99),
        pitch_range=clip(profile.pitch_range + speaker.range_offset + rng.uniform(-5.0, 5.0), 0, 99),
        word_gap=clip(profile.word_gap, 0, 100),
    )


def seconds_per_word(voice: EspeakVoice) -> float:
    """About how long espeak-ng takes per word of the corpus's sentences at these settings."""
    return 51.0 / voice.rate_wpm + 0.021 * voice.word_gap  # fitted on make_sentence output


def active_mask(audio: np.ndarray) -> np.ndarray:
    """Samples in 10 ms frames within 35 dB of the loudest frame (speech, not pauses or padding)."""
    n = audio.size
    n_frames = max(1, -(-n // _FRAME))
    padded = np.zeros(n_frames * _FRAME)
    padded[:n] = audio
    rms = np.sqrt(np.mean(padded.reshape(n_frames, _FRAME) ** 2, axis=1))
    if rms.max() <= 0:
        return np.zeros(n, dtype=bool)
    active = rms > rms.max() * 10 ** (-_ACTIVE_DB / 20)
    return np.repeat(active, _FRAME)[:n]


def render_espeak(
    text: str, voice: EspeakVoice, level_dbfs: float
) -> tuple[np.ndarray, np.ndarray]:
    """Speak `text` and set its level; returns (float64 signal, active mask).

    Raises:
        DependencyError: espeakng_loader is missing (naming `crab-rt[demo]`).
    """
    audio = get_espeak().speak(text, voice).astype(np.float64)
    mask = active_mask(audio)
    if not mask.any() or not math.isfinite(level_dbfs):
        return audio, mask
    return scale_to_level(audio, mask, level_dbfs), mask
