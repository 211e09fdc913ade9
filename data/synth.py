"""A synthetic bimodal emotion corpus: real WAV files, transcripts and a manifest.

Every clip speaks one short English sentence whose cue words depend on a class,
with a prosody that depends on a class, in the voice of one of several
synthetic speakers. Two renderers (`SynthConfig.voice`):

- **"espeak"** (the default): the sentence is spoken by espeak-ng (through
  `espeakng-loader`, the `[demo]` extra; `crab_rt.data.espeak`), so the audio is
  speech a speech recognizer can transcribe, and the spoken text is exactly the
  manifest's transcript. The class sets espeak-ng's rate, pitch, pitch range and
  word gap and the clip's level (RMS over the active 10 ms frames):

  | class   | rate (wpm) | pitch (0-99) | range (0-99) | level     | word gap |
  |---------|------------|--------------|--------------|-----------|----------|
  | neutral | 150        | 45           | 35           | -26 dBFS  | 10 ms    |
  | happy   | 180        | 70           | 80 (wide)    | -22 dBFS  | 0        |
  | angry   | 170        | 58           | 40           | -17 dBFS  | 0        |
  | sad     | 120        | 22           | 10 (flat)    | -33 dBFS  | 40 ms    |

  (ESPEAK_PROFILES; measured on one sentence, median f0 for a male voice is
  about 90 / 125 / 105 / 68 Hz and for a female one 150 / 215 / 177 / 113 Hz,
  and sad takes 1.4x as long as neutral, happy 0.75x.) Other labels get
  generated profiles. Speaker s speaks the English voice ESPEAK_LANGUAGES[s % 5]
  (en-us, en (British), en-gb-x-rp, en-029 (Caribbean), en-us-nyc) with the
  variant ESPEAK_VARIANTS[s % 13] (m1-m8, f1-f5: 65 distinct voices), and its
  own pitch (+-8) and range (+-8) offsets, rate scale (0.92-1.08) and level
  offset (+-2 dB); each utterance jitters rate (+-5%), pitch (+-3), range (+-5)
  and level (+-1.5 dB). Female and male variants differ by most of an octave,
  so pitch tells the class only relative to the speaker. Sentences read like
  English: a neutral clause ("my friend took the early train this morning")
  joined to a clause with one or two cue words ("and it was wonderful",
  "because I feel lonely"), or the cue clause alone for short clips; the number
  of words follows the clip's target duration (a sentence that does not fit the
  duration range is drawn again, up to 4 times; a short one is padded with
  silence). Whisper tiny.en (greedy) wrote back 85% of the cue words and 76% of
  all words of the default corpus (160 clips, noise at 20 dB).
- **"harmonic"**: the home-made voice of `crab_rt.data.synth_voice`, not speech:
  a train of vowel-like "syllables" (a band-limited glottal pulse train with a
  pitch contour and jitter, formant resonances, noise-burst consonants, short
  pauses), with f0 120 / 220 / 170 / 90 Hz, levels -25 / -20 / -16 / -33 dBFS
  and 4 / 5.5 / 5 / 2.5 syllables per second for neutral / happy / angry / sad
  (PROSODY_PROFILES), speakers scaling f0 by up to +-15%, and a transcript of
  filler words with 1-2 cue words that is not spoken. It stays only where it
  still serves: the latency benchmarks (`crab_bench` passes voice="harmonic":
  its conversations are byte-for-byte what they were, so the committed results
  stay comparable), tests that measure its exactly known f0 and levels
  (tests/test_synth.py), and machines without the `[demo]` extra (it needs
  nothing beyond numpy). Its corpora use the same plan (speaker-disjoint
  splits included) and the same cue words; its conversations keep their old
  random draws.

Both add white or pink noise at `noise_snr_db` and 0.05-0.25 s of silence before
and after each clip.

The label rule: neither modality is perfect on purpose. With probability
`1 - prosody_reliability` an utterance is rendered with another class's
prosody (drawn uniformly); independently, with probability
`1 - text_reliability` its cue words come from another class. The manifest
keeps both cue classes in the extra columns `prosody_label` and `text_label`.

Expected ceilings: a classifier that recognises the cues perfectly and knows
the class priors (`expected_ceilings`) reaches, with the defaults (480 clips,
ratio 3, reliabilities 0.75 / 0.7), WAR 0.75 from prosody only, 0.70 from
text only and 0.78 from both. Because the two corruptions are independent and
a substituted cue is a clean rendering of another class, fusion gains little
over the more reliable modality from the cue classes alone (the 0.03 comes
from the priors). Real prosody-only models fall below 0.75 (speakers overlap:
a high male voice speaking sadly is as high as a low female one speaking
neutrally, a slow speaker's happy is as fast as a fast speaker's neutral) and
text breaks the ties. Whisper's errors (above) take the text ceiling down too.

Splits are speaker-disjoint and stratified (`speaker_splits`): each class is
split 70 / 15 / 15 (at least one clip of every class in every split asked for,
once a class has 3 clips); the speakers are drawn (seeded) into the splits in
proportion to the fractions, at least one per split asked for (12 speakers:
8 / 2 / 2), and each split's clips of a class are dealt evenly over that
split's speakers. So no speaker is in two splits and every split has every
class. With the defaults (480 clips): train 334, dev 73, test 73 (neutral /
happy / angry / sad 133 / 93 / 64 / 44, 29 / 20 / 14 / 10, 29 / 20 / 14 / 10).

This module owns the classes, words, plan, splits and files; the signals come
from `crab_rt.data.synth_espeak` and `crab_rt.data.synth_voice`. Speed on 2 CPU
cores: the default 480 espeak clips take about 3.5-4 s (espeak-ng itself
about 5 ms a clip, library reload included), the harmonic ones about 5.5 s.

`synthesize_conversation` writes one conversation-like WAV of utterances by two
alternating speakers separated by near-silence, plus a JSON sidecar with exact
turn boundaries and texts; Silero VAD with the default segmenter finds each
turn as one utterance (pauses inside a turn stay far below its 500 ms).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from crab_rt.audio import SAMPLE_RATE, write_wav
from crab_rt.data.manifest import ManifestRow, read_manifest, write_manifest
from crab_rt.data.synth_espeak import (
    ESPEAK_LANGUAGES,
    ESPEAK_PROFILES,
    ESPEAK_VARIANTS,
    EspeakProfile,
    EspeakSpeaker,
    espeak_profile,
    make_speakers,
    render_espeak,
    seconds_per_word,
    utterance_voice,
)
from crab_rt.data.synth_voice import ProsodyProfile, background_noise, render_voice, scale_to_level
from crab_rt.errors import ConfigError, ManifestError

__all__ = [
    "SynthConfig",
    "VOICES",
    "ProsodyProfile",
    "PROSODY_PROFILES",
    "EspeakProfile",
    "ESPEAK_PROFILES",
    "CUE_WORDS",
    "FILLER_WORDS",
    "class_counts",
    "expected_ceilings",
    "speaker_splits",
    "corpus_plan",
    "make_sentence",
    "synthesize_corpus",
    "synthesize_conversation",
    "read_conversation_truth",
    "summarize_manifest",
    "format_summary",
]

SPLITS = ("train", "dev", "test")
VOICES = ("espeak", "harmonic")
_BACKGROUND_RMS = 1e-3  # -60 dBFS background noise between conversation turns


PROSODY_PROFILES: dict[str, ProsodyProfile] = {
    "neutral": ProsodyProfile(120.0, 0.04, -0.05, -25.0, 4.0, 10, 1.2),
    "happy": ProsodyProfile(220.0, 0.25, 0.10, -20.0, 5.5, 12, 1.0),
    "angry": ProsodyProfile(170.0, 0.12, -0.05, -16.0, 5.0, 24, 0.6),
    "sad": ProsodyProfile(90.0, 0.03, -0.12, -33.0, 2.5, 8, 1.6),
}

# Common English adjectives, chosen among about 80 for how often Whisper tiny.en wrote them
# back from espeak-ng (4 voices x 2 sentences each: most of these in 6-8 of 8; "average",
# "ordinary", "gloomy", "scared" and "gross" were dropped at 1-2 of 8; disgust's "revolting",
# "filthy" (4) and "disgusted" (3) are the best of the rest of their class). The harmonic
# voice draws from the same lists with its old algorithm: the lengths per class are kept, so
# its random draws and its audio are unchanged.
CUE_WORDS: dict[str, tuple[str, ...]] = {
    "neutral": ("okay", "normal", "simple", "reasonable", "quiet", "calm"),
    "happy": ("wonderful", "perfect", "fantastic", "excellent", "delighted", "amazing", "lovely"),
    "angry": ("angry", "furious", "stupid", "ridiculous", "unacceptable", "outrageous", "awful"),
    "sad": ("miserable", "lonely", "hopeless", "depressing", "unhappy", "tired", "sorry"),
    "surprise": ("unexpected", "unbelievable", "surprised", "shocked", "incredible"),
    "fear": ("anxious", "nervous", "worried", "terrified", "afraid"),
    "disgust": ("disgusting", "nasty", "revolting", "filthy", "disgusted"),
}
# Which cue words describe a person ("I feel X") and which a situation ("it was X").
_FEELINGS = frozenset(
    "okay calm wonderful perfect fantastic delighted angry furious miserable lonely hopeless unhappy tired "
    "sorry surprised shocked anxious nervous worried terrified afraid disgusted".split()
)
_EVALUATIONS = frozenset(
    "okay normal simple reasonable quiet calm wonderful perfect fantastic excellent amazing lovely stupid "
    "ridiculous unacceptable outrageous awful miserable lonely hopeless depressing unexpected unbelievable "
    "incredible disgusting nasty revolting filthy".split()
)
_FEEL_FRAMES = ("I feel {}", "I am so {}", "I was {}", "she was {}", "he seemed {}", "we were all {}",
                "they looked {}", "I felt {}")  # fmt: skip
_EVAL_FRAMES = ("it was {}", "that is so {}", "this is {}", "it all seemed {}", "the whole day was {}",
                "that sounds {}", "it was really {}")  # fmt: skip
# Neutral clauses: subject + action + time, 3 to 10 words, none of them a cue word.
_SUBJECTS = ("we", "my friend", "she", "he", "they", "our team", "my sister", "the new neighbor", "my boss",
             "the driver", "I")  # fmt: skip
_ACTIONS = (
    "went to the office", "took the early train", "called about the plan", "read the letter",
    "moved the meeting", "cooked dinner", "walked to the station", "fixed the old car", "sent the report",
    "cleaned the kitchen", "talked about the project", "visited the house", "watched the news",
    "checked the email", "painted the fence", "bought some bread", "opened the window",
    "parked the car outside", "answered the phone", "carried the boxes upstairs",
)  # fmt: skip
_TIMES = ("", "today", "this morning", "after lunch", "on the weekend", "yesterday", "last week",
          "last night", "in the evening", "again", "on Monday")  # fmt: skip
_OPENERS = ("well", "honestly", "so", "you know")
_AFTER_CUE = ("because", "when", "after")  # "<cue clause> because <neutral clause>"

FILLER_WORDS: tuple[str, ...] = (
    "the", "we", "went", "to", "it", "was", "today", "meeting", "house", "train",
    "and", "then", "about", "yesterday", "that", "my", "friend", "work", "this",
    "morning", "call", "they", "said", "after", "dinner", "again", "with", "our",
    "new", "plan", "letter", "car", "office", "weekend", "she", "he", "there",
)  # fmt: skip


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic corpus.

    Attributes:
        num_utterances: clips in the corpus.
        labels: class names; the first is the most frequent.
        imbalance_ratio: largest / smallest class count; counts are spaced geometrically.
        train_fraction, dev_fraction, test_fraction: split sizes, stratified by class.
        min_duration_s, max_duration_s: clip length range (uniform).
        noise_snr_db: speech-to-noise ratio of the added white or pink noise.
        prosody_reliability: probability that the prosody follows the true class.
        text_reliability: probability that the cue words follow the true class.
        num_speakers: synthetic speakers (espeak: voice, variant and offsets; harmonic: an f0
            scale of +-15%); each belongs to one split, so at least one per split asked for.
        voice: "espeak" (speech by espeak-ng, the `[demo]` extra) or "harmonic" (the
            home-made voice, numpy only); see the module docstring.
        seed: everything is a function of the config, seed included.
    """

    num_utterances: int = 480
    labels: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
    imbalance_ratio: float = 3.0
    train_fraction: float = 0.7
    dev_fraction: float = 0.15
    test_fraction: float = 0.15
    min_duration_s: float = 1.5
    max_duration_s: float = 3.5
    noise_snr_db: float = 20.0
    prosody_reliability: float = 0.75
    text_reliability: float = 0.7
    num_speakers: int = 12
    voice: str = "espeak"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))

    def validate(self) -> SynthConfig:
        """Check every field; returns self.

        Raises:
            ConfigError: naming the field, its value and the allowed range.
        """

        def check_range(name: str, lo: float, hi: float, integer: bool = False) -> None:
            value = getattr(self, name)
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                what = "an integer" if integer else "a number"
                raise ConfigError(f"synth config: {name}={value!r} must be {what} in [{lo}, {hi}]")
            if not lo <= value <= hi:
                raise ConfigError(f"synth config: {name}={value!r} is out of range [{lo}, {hi}]")

        check_range("num_utterances", 1, 1_000_000, integer=True)
        if not isinstance(self.labels, tuple) or len(self.labels) < 2:
            raise ConfigError(f"synth config: labels={self.labels!r} must name at least 2 classes")
        for lab in self.labels:
            if not isinstance(lab, str) or not lab.strip() or lab != lab.strip() or "," in lab:
                raise ConfigError(f"synth config: labels contains {lab!r}; labels must be non-empty words")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"synth config: labels={self.labels!r} has duplicates")
        check_range("imbalance_ratio", 1.0, 100.0)
        for name in ("train_fraction", "dev_fraction", "test_fraction"):
            check_range(name, 0.0, 1.0)
        if self.train_fraction <= 0:
            raise ConfigError(f"synth config: train_fraction={self.train_fraction!r} must be > 0")
        total = self.train_fraction + self.dev_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"synth config: train_fraction + dev_fraction + test_fraction = {total:g}, must be 1"
            )
        check_range("min_duration_s", 0.5, 30.0)
        check_range("max_duration_s", 0.5, 30.0)
        if self.max_duration_s < self.min_duration_s:
            raise ConfigError(
                f"synth config: max_duration_s={self.max_duration_s!r} is below "
                f"min_duration_s={self.min_duration_s!r}"
            )
        check_range("noise_snr_db", -10.0, 120.0)
        check_range("prosody_reliability", 0.0, 1.0)
        check_range("text_reliability", 0.0, 1.0)
        check_range("num_speakers", 1, 10_000, integer=True)
        asked = [s for s in SPLITS if getattr(self, f"{s}_fraction") > 0]
        if self.num_speakers < len(asked):
            raise ConfigError(
                f"synth config: num_speakers={self.num_speakers} is below {len(asked)}: splits are "
                f"speaker-disjoint, so each of {', '.join(asked)} needs a speaker of its own"
            )
        if self.voice not in VOICES:
            raise ConfigError(f"synth config: voice={self.voice!r} must be one of {', '.join(VOICES)}")
        check_range("seed", 0, 2**63 - 1, integer=True)
        counts = _geometric_counts(self.num_utterances, len(self.labels), self.imbalance_ratio)
        if min(counts) < 1:
            need = next(
                n for n in range(len(self.labels), 100 * len(self.labels) * 100)
                if min(_geometric_counts(n, len(self.labels), self.imbalance_ratio)) >= 1
            )
            raise ConfigError(
                f"synth config: num_utterances={self.num_utterances} leaves a class empty at "
                f"imbalance_ratio={self.imbalance_ratio:g}; use num_utterances >= {need}"
            )
        return self


# ---------------------------------------------------------------- the plan


def _geometric_counts(total: int, k: int, ratio: float) -> list[int]:
    weights = ratio ** (-np.arange(k) / max(k - 1, 1))
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    # Largest remainders get the leftover clips, so counts sum to `total`.
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def class_counts(config: SynthConfig) -> dict[str, int]:
    """Clips per class: geometric from the first label (largest) to the last.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    counts = _geometric_counts(config.num_utterances, len(config.labels), config.imbalance_ratio)
    return dict(zip(config.labels, counts))


def _split_sizes(n: int, config: SynthConfig) -> tuple[int, int, int]:
    n_dev = int(round(n * config.dev_fraction))
    n_test = int(round(n * config.test_fraction))
    if n >= 3:  # every split that is asked for gets at least one clip of every class
        n_dev = max(n_dev, 1 if config.dev_fraction > 0 else 0)
        n_test = max(n_test, 1 if config.test_fraction > 0 else 0)
    while n - n_dev - n_test < 1:  # and train keeps at least one
        if n_dev >= n_test and n_dev > 0:
            n_dev -= 1
        else:
            n_test -= 1
    return n - n_dev - n_test, n_dev, n_test


def _speaker_split_counts(config: SynthConfig) -> dict[str, int]:
    """Speakers per split: proportional to the fractions (largest remainders), at least one per split asked for."""
    fractions = {s: getattr(config, f"{s}_fraction") for s in SPLITS}
    asked = [s for s in SPLITS if fractions[s] > 0]
    raw = {s: config.num_speakers * fractions[s] for s in asked}
    counts = {s: max(1, int(math.floor(raw[s]))) for s in asked}
    while sum(counts.values()) > config.num_speakers:  # the minimum of one took speakers from the largest
        big = max(asked, key=lambda s: counts[s])
        counts[big] -= 1
    while sum(counts.values()) < config.num_speakers:
        best = max(asked, key=lambda s: raw[s] - counts[s])  # first of SPLITS on ties
        counts[best] += 1
    return counts


def speaker_splits(config: SynthConfig) -> list[str]:
    """The split of each speaker (index = speaker number): speakers are drawn into the splits (seeded),
    in proportion to the split fractions and at least one per split asked for.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    counts = _speaker_split_counts(config)
    perm = np.random.default_rng([config.seed, 5]).permutation(config.num_speakers)
    out = [""] * config.num_speakers
    i = 0
    for split, n in counts.items():
        for s in perm[i : i + n]:
            out[int(s)] = split
        i += n
    return out


def _profile(label: str, labels: Sequence[str]) -> ProsodyProfile:
    if label in PROSODY_PROFILES:
        return PROSODY_PROFILES[label]
    j = list(labels).index(label)  # generated, deterministic, spread out
    return ProsodyProfile(
        f0_hz=100.0 + 37.0 * (j % 6),
        f0_range=0.04 + 0.05 * (j % 4),
        f0_slope=0.08 * ((j % 3) - 1),
        level_dbfs=-28.0 + 4.0 * (j % 5),
        syllables_per_s=2.5 + 0.75 * (j % 5),
        num_harmonics=8 + 4 * (j % 4),
        spectral_tilt=1.6 - 0.25 * (j % 4),
    )


def _cue_words(label: str) -> tuple[str, ...]:
    return CUE_WORDS.get(label) or tuple(f"{label}{k}" for k in range(1, 6))


def _other_class(rng: np.random.Generator, k: int, true_idx: int, reliability: float) -> int:
    if k < 2 or rng.random() < reliability:
        return true_idx
    others = [i for i in range(k) if i != true_idx]
    return int(others[rng.integers(len(others))])


def expected_ceilings(config: SynthConfig) -> dict[str, float]:
    """Bayes-optimal accuracy (WAR) from the cue classes alone.

    Assumes a classifier that recognises which class's prosody and which
    class's cue words an utterance carries, and knows the class priors.

    Returns:
        {"prosody_only", "text_only", "fused"} accuracies in [0, 1].
    """
    counts = np.array(list(class_counts(config).values()), dtype=float)
    prior = counts / counts.sum()
    k = len(prior)

    def confusion(rel: float) -> np.ndarray:  # P(cue class a | true class y), [y, a]
        m = np.full((k, k), (1.0 - rel) / (k - 1))
        np.fill_diagonal(m, rel)
        return m

    p, q = confusion(config.prosody_reliability), confusion(config.text_reliability)
    joint_p = prior[:, None] * p  # [y, a]
    joint_q = prior[:, None] * q
    joint_pq = prior[:, None, None] * p[:, :, None] * q[:, None, :]  # [y, a, b]
    return {
        "prosody_only": float(joint_p.max(axis=0).sum()),
        "text_only": float(joint_q.max(axis=0).sum()),
        "fused": float(joint_pq.max(axis=0).sum()),
    }


# ---------------------------------------------------------------- rendering


def _sentence(rng: np.random.Generator, cue_label: str) -> str:
    """The harmonic voice's transcript: 4-9 filler words, 1-2 of them replaced by cue words (not spoken)."""
    n_words = int(rng.integers(4, 10))
    n_cue = int(rng.integers(1, 3))
    cues = _cue_words(cue_label)
    words = [FILLER_WORDS[i] for i in rng.integers(len(FILLER_WORDS), size=n_words)]
    positions = rng.choice(n_words, size=n_cue, replace=False)
    picks = rng.choice(len(cues), size=n_cue, replace=False)
    for pos, pick in zip(positions, picks):
        words[int(pos)] = cues[int(pick)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _spoken_cue_words(label: str) -> tuple[str, ...]:
    return CUE_WORDS.get(label) or (label,)  # an unknown label is its own cue word


def _cue_clause(rng: np.random.Generator, words: Sequence[str]) -> str:
    def kinds(w: str) -> list[str]:
        k = [name for name, group in (("eval", _EVALUATIONS), ("feel", _FEELINGS)) if w in group]
        return k or ["eval", "feel"]

    def frame(kind: str) -> str:
        frames = _EVAL_FRAMES if kind == "eval" else _FEEL_FRAMES
        return frames[int(rng.integers(len(frames)))]

    if len(words) == 1:
        k = kinds(words[0])
        return frame(k[int(rng.integers(len(k)))]).format(words[0])
    a, b = words
    common = [k for k in kinds(a) if k in kinds(b)]
    if common:
        return frame(common[int(rng.integers(len(common)))]).format(f"{a} and {b}")
    ka, kb = kinds(a), kinds(b)
    return f"{frame(ka[0]).format(a)} and {frame(kb[0]).format(b)}"


def _neutral_clause(rng: np.random.Generator) -> str:
    parts = [_SUBJECTS[int(rng.integers(len(_SUBJECTS)))], _ACTIONS[int(rng.integers(len(_ACTIONS)))],
             _TIMES[int(rng.integers(len(_TIMES)))]]  # fmt: skip
    return " ".join(p for p in parts if p)


def _neutral_words(rng: np.random.Generator, n_words: float) -> str:
    """Neutral clauses of about `n_words` words in all: one, or up to three joined by "and then"."""
    clauses: list[str] = []
    left = n_words
    while True:
        candidates = [_neutral_clause(rng) for _ in range(12)]
        if left > 12 and len(clauses) < 2:  # room for another clause after this one
            clause = candidates[0]
            clauses.append(clause)
            left -= len(clause.split()) + 2  # + "and then"
            continue
        clauses.append(min(candidates, key=lambda c: abs(len(c.split()) - left)))
        return " and then ".join(clauses)


def make_sentence(rng: np.random.Generator, cue_label: str, n_words: float) -> str:
    """A natural sentence of about `n_words` words carrying 1-2 cue words of `cue_label`.

    A neutral clause joined to a cue clause ("we cooked dinner and it was wonderful",
    "I feel lonely because my boss moved the meeting"; long budgets chain up to three
    neutral clauses with "and then"), or, when fewer than about 7 words
    fit, the cue clause alone, maybe with an opener and a time ("honestly it was okay
    this morning"). Two cue words only from 7 words on. The neutral words are never cue
    words of any class. No commas (espeak-ng would pause), one final period.
    """
    cues = _spoken_cue_words(cue_label)
    n_cue = 1 if n_words < 7 or len(cues) < 2 else int(rng.integers(1, 3))
    picks = rng.choice(len(cues), size=n_cue, replace=False)
    clause = _cue_clause(rng, [cues[int(i)] for i in picks])
    rest = n_words - len(clause.split())
    if rest < 4:
        text = clause
        if rest >= 1.5 and rng.random() < 0.6:
            opener = _OPENERS[int(rng.integers(len(_OPENERS)))]
            text = f"{opener} {clause}"
            rest -= len(opener.split())
        if rest >= 1.5:
            times = [t for t in _TIMES if t]
            candidates = [times[int(i)] for i in rng.integers(len(times), size=4)]
            text = f"{text} {min(candidates, key=lambda t: abs(len(t.split()) - rest))}"
    else:
        neutral = _neutral_words(rng, rest - 1)
        if rng.random() < 0.5:
            text = f"{neutral} and {clause}"
        else:
            text = f"{clause} {_AFTER_CUE[int(rng.integers(len(_AFTER_CUE)))]} {neutral}"
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class _Utterance:
    audio: np.ndarray  # float32
    text: str
    prosody_label: str
    text_label: str


def _make_utterance(
    config: SynthConfig,
    label_idx: int,
    f0_scale: float,
    rng: np.random.Generator,
    n_samples: int,
    lead_tail: bool,
    noise: bool,
) -> tuple[_Utterance, np.ndarray]:
    labels = config.labels
    k = len(labels)
    p_idx = _other_class(rng, k, label_idx, config.prosody_reliability)
    t_idx = _other_class(rng, k, label_idx, config.text_reliability)
    profile = _profile(labels[p_idx], labels)
    if lead_tail:
        lead = int(min(rng.uniform(0.05, 0.25) * SAMPLE_RATE, 0.1 * n_samples))
        tail = int(min(rng.uniform(0.05, 0.25) * SAMPLE_RATE, 0.1 * n_samples))
    else:
        lead = tail = 0
    voice, voiced = render_voice(profile, n_samples - lead - tail, f0_scale, rng)
    voice = scale_to_level(voice, voiced, profile.level_dbfs + rng.uniform(-2.0, 2.0))
    audio = np.zeros(n_samples)
    audio[lead : n_samples - tail] = voice
    mask = np.zeros(n_samples, dtype=bool)
    mask[lead : n_samples - tail] = voiced
    if noise:
        speech_rms = math.sqrt(float(np.mean(audio[mask] ** 2))) if mask.any() else 0.0
        noise_rms = speech_rms / 10 ** (config.noise_snr_db / 20)
        audio += noise_rms * background_noise(rng, n_samples, pink=bool(rng.random() < 0.5))
    utt = _Utterance(audio.astype(np.float32), _sentence(rng, labels[t_idx]), labels[p_idx], labels[t_idx])
    return utt, mask


_MAX_TRIES = 4  # sentences drawn again, shorter or longer, while the speech does not fit the duration range


def _make_spoken_utterance(
    config: SynthConfig,
    label_idx: int,
    speaker: EspeakSpeaker,
    rng: np.random.Generator,
    n_samples: int,
    lead_tail: bool,
    noise: bool,
) -> tuple[_Utterance, np.ndarray]:
    """An espeak-ng utterance of about `n_samples` (the target sets the number of words).

    Sentences are drawn again (at most 4 in all) while the speech is longer or shorter than
    the duration range allows. Returns the utterance (lead silence + speech + tail
    silence; a sentence still too short is padded with silence when `lead_tail`) and the
    mask of its active 10 ms frames.
    """
    labels = config.labels
    k = len(labels)
    p_idx = _other_class(rng, k, label_idx, config.prosody_reliability)
    t_idx = _other_class(rng, k, label_idx, config.text_reliability)
    profile = espeak_profile(labels[p_idx], labels)
    voice = utterance_voice(profile, speaker, rng)
    level = profile.level_dbfs + speaker.level_offset_db + rng.uniform(-1.5, 1.5)
    sr = SAMPLE_RATE
    if lead_tail:
        lead = int(min(rng.uniform(0.05, 0.25) * sr, 0.1 * n_samples))
        tail = int(min(rng.uniform(0.05, 0.25) * sr, 0.1 * n_samples))
    else:
        lead = tail = 0
    min_speech = int(config.min_duration_s * sr) - lead - tail
    max_speech = int(config.max_duration_s * sr) - lead - tail
    n_words = (n_samples - lead - tail) / sr / seconds_per_word(voice)
    for _ in range(_MAX_TRIES):
        text = make_sentence(rng, labels[t_idx], n_words)
        speech, mask = render_espeak(text, voice, level)
        if speech.size > max_speech:
            n_words = min(n_words, len(text.split())) * 0.9 * max_speech / max(speech.size, 1)
        elif speech.size < min_speech:
            n_words = max(n_words, len(text.split())) * 1.1 * min_speech / max(speech.size, 1)
        else:
            break
    short = int(config.min_duration_s * sr) - (lead + speech.size + tail)
    if lead_tail and short > 0:  # pad a short sentence with silence, half before and half after
        lead += short // 2
        tail += short - short // 2
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    full_mask = np.concatenate([np.zeros(lead, bool), mask, np.zeros(tail, bool)])
    if noise:
        speech_rms = math.sqrt(float(np.mean(audio[full_mask] ** 2))) if full_mask.any() else 0.0
        noise_rms = speech_rms / 10 ** (config.noise_snr_db / 20)
        audio += noise_rms * background_noise(rng, audio.size, pink=bool(rng.random() < 0.5))
    return _Utterance(audio.astype(np.float32), text, labels[p_idx], labels[t_idx]), full_mask


# ---------------------------------------------------------------- corpus


def _speaker_scales(seed: int, num_speakers: int) -> np.ndarray:
    return np.random.default_rng([seed, 1]).uniform(0.85, 1.15, num_speakers)


def _checked_speakers(seed: int, num_speakers: int) -> list[EspeakSpeaker]:
    """`make_speakers`, after checking that espeak-ng is installed and has every voice and variant.

    Raises:
        DependencyError: espeakng_loader is missing (naming `crab-rt[demo]`).
    """
    from crab_rt.data.espeak import EspeakVoice, get_espeak

    espeak = get_espeak()
    speakers = make_speakers(seed, num_speakers)
    for sp in speakers[: len(ESPEAK_LANGUAGES) * len(ESPEAK_VARIANTS)]:  # the voices repeat after that
        espeak.check(EspeakVoice(sp.language, sp.variant))
    return speakers


def _speaker_id(s: int) -> str:
    return f"synthetic-spk{s:02d}"


def _voice_description(config: SynthConfig) -> str:
    if config.voice == "harmonic":
        return (
            "Voice: 'harmonic', the home-made voice (crab_rt.data.synth_voice). Not speech:\n"
            "every clip is a train of vowel-like 'syllables' (glottal pulse train with a\n"
            "pitch contour, formant resonances, noise-burst consonants, short pauses)\n"
            "whose pitch, level, speaking rate and brightness depend on a class, with speaker\n"
            "f0 variation (+-15%). Each transcript is a filler sentence with 1-2 class cue\n"
            "words; it is not spoken.\n"
        )
    rows = "\n".join(
        f"  {lab:<10} {p.rate_wpm:>5.0f} {p.pitch:>6.0f} {p.pitch_range:>6.0f} {p.level_dbfs:>8.1f} "
        f"{10 * p.word_gap:>6.0f}"
        for lab, p in ((lab, espeak_profile(lab, config.labels)) for lab in config.labels)
    )
    return (
        "Voice: 'espeak'. Every clip is a short English sentence spoken by espeak-ng 1.52\n"
        "(espeakng-loader); the spoken words are exactly the transcript. A neutral clause\n"
        "carries 1-2 cue words of a class ('we cooked dinner and it was wonderful'). The\n"
        "prosody class sets espeak-ng's rate, pitch, pitch range and word gap and the level\n"
        "(RMS over the active 10 ms frames):\n\n"
        "  class      rate  pitch  range  level dB  gap ms\n"
        f"{rows}\n\n"
        "Each speaker has its own voice (language voice + variant) and offsets (pitch +-8,\n"
        "range +-8, rate x0.92-1.08, level +-2 dB); each utterance jitters rate (+-5%),\n"
        "pitch (+-3), range (+-5) and level (+-1.5 dB).\n"
    )


def _speaker_table(config: SynthConfig, splits: list[str], clips: dict[int, int]) -> str:
    if config.voice == "espeak":
        speakers = make_speakers(config.seed, config.num_speakers)
        lines = [
            f"  {_speaker_id(s)}  {splits[s]:<5}  {clips.get(s, 0):>4}  {sp.voice_name:<20} "
            f"pitch {sp.pitch_offset:+5.1f}  range {sp.range_offset:+5.1f}  rate x{sp.rate_scale:.2f}  "
            f"level {sp.level_offset_db:+4.1f} dB"
            for s, sp in enumerate(speakers)
        ]
        head = "  speaker            split  clips  voice"
    else:
        scales = _speaker_scales(config.seed, config.num_speakers)
        lines = [
            f"  {_speaker_id(s)}  {splits[s]:<5}  {clips.get(s, 0):>4}  f0 x{scales[s]:.3f}"
            for s in range(config.num_speakers)
        ]
        head = "  speaker            split  clips  f0 scale"
    return "\n".join([head, *lines]) + "\n"


def _readme(config: SynthConfig, counts: dict[str, dict[str, int]], speakers: str) -> str:
    ceilings = expected_ceilings(config)
    settings = "\n".join(f"  {f.name} = {getattr(config, f.name)!r}" for f in fields(config))
    return (
        "SYNTHETIC emotion corpus, made by crab-rt (crab_rt.data.synth). Not recorded speech.\n\n"
        f"{_voice_description(config)}"
        "Background: white or pink noise at noise_snr_db; 0.05-0.25 s of silence before and\n"
        "after each clip.\n\n"
        "Label rule: the prosody follows the true class with probability\n"
        f"prosody_reliability ({config.prosody_reliability:g}) and the cue words with probability\n"
        f"text_reliability ({config.text_reliability:g}), independently; otherwise another class's,\n"
        "drawn uniformly. The manifest's extra columns prosody_label and text_label say which.\n\n"
        "Expected accuracy ceilings (WAR of a classifier that recognises the cue classes\n"
        "perfectly and knows the class priors; crab_rt.data.synth.expected_ceilings):\n"
        f"  prosody only {ceilings['prosody_only']:.3f}\n"
        f"  text only    {ceilings['text_only']:.3f}\n"
        f"  both         {ceilings['fused']:.3f}\n\n"
        "Splits are speaker-disjoint: every speaker belongs to exactly one split (speakers\n"
        "drawn into the splits in proportion to the split fractions, at least one per split);\n"
        "each class is split by the fractions (at least one clip per split once a class has 3)\n"
        "and dealt evenly over the split's speakers, so every split has every class.\n\n"
        f"Speakers:\n{speakers}\n"
        f"Clips per split and class:\n{format_summary(counts, config.labels)}\n"
        f"Settings:\n{settings}\n\n"
        "Files: manifest.csv (id, audio, text, label, split, speaker, prosody_label,\n"
        "text_label), wav/synthetic-NNNNN.wav (16 kHz mono 16-bit PCM).\n"
    )


def _plan(config: SynthConfig) -> list[tuple[int, str, int]]:
    """(label index, split, speaker) of every clip, in id order."""
    plan_rng = np.random.default_rng([config.seed, 0])
    counts = class_counts(config)
    plan: list[tuple[int, str]] = []  # (label index, split)
    for li, lab in enumerate(config.labels):
        n_train, n_dev, n_test = _split_sizes(counts[lab], config)
        splits = ["train"] * n_train + ["dev"] * n_dev + ["test"] * n_test
        plan.extend((li, s) for s in plan_rng.permutation(splits).tolist())
    order = plan_rng.permutation(len(plan))  # interleave classes in id order
    # Speakers: each split's clips of a class are dealt round-robin over the split's speakers.
    owner = speaker_splits(config)
    pools = {s: [i for i, o in enumerate(owner) if o == s] for s in SPLITS}
    deal_rng = np.random.default_rng([config.seed, 6])
    offsets = {(s, li): int(deal_rng.integers(config.num_speakers)) for s in SPLITS for li in range(len(counts))}
    dealt: dict[tuple[str, int], int] = {}
    out = []
    for j in order:
        li, split = plan[int(j)]
        n = dealt.get((split, li), 0)
        dealt[(split, li)] = n + 1
        pool = pools[split]
        out.append((li, split, pool[(offsets[(split, li)] + n) % len(pool)]))
    return out


def corpus_plan(config: SynthConfig) -> list[tuple[str, str, str]]:
    """(label, split, speaker id) of every clip of `synthesize_corpus`, in id order, without rendering.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    return [(config.labels[li], split, _speaker_id(s)) for li, split, s in _plan(config)]


def synthesize_corpus(config: SynthConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Write the synthetic corpus: wav/*.wav, manifest.csv and README.txt.

    Args:
        config: corpus settings (validated here); `config.voice` picks the renderer.
        out_dir: output folder, created if needed; earlier synthetic-*.wav
            files in its wav/ folder are removed.
        progress: show a tqdm progress bar.

    Returns:
        Path of manifest.csv.

    Raises:
        ConfigError: the config is invalid.
        DependencyError: tqdm (the `[data]` extra) or, for voice "espeak", espeakng_loader
            (the `[demo]` extra) is not installed.
    """
    from crab_rt.errors import requires_extra

    with requires_extra("data", "tqdm"):
        from tqdm import tqdm

    config.validate()
    if config.voice == "espeak":
        speakers = _checked_speakers(config.seed, config.num_speakers)  # a missing [demo] extra fails here
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    for stale in wav_dir.glob("synthetic-*.wav"):
        stale.unlink()

    plan = _plan(config)
    scales = _speaker_scales(config.seed, config.num_speakers)
    rows: list[ManifestRow] = []
    summary: dict[str, dict[str, int]] = {}
    clips: dict[int, int] = {}
    for n, (label_idx, split, speaker) in enumerate(
        tqdm(plan, desc="synthetic corpus", unit="clip", disable=not progress)
    ):
        rng = np.random.default_rng([config.seed, 2, n])
        n_samples = int(rng.uniform(config.min_duration_s, config.max_duration_s) * SAMPLE_RATE)
        if config.voice == "espeak":
            utt, _ = _make_spoken_utterance(config, label_idx, speakers[speaker], rng, n_samples, True, True)
        else:
            utt, _ = _make_utterance(config, label_idx, float(scales[speaker]), rng, n_samples, True, True)
        utt_id = f"synthetic-{n:05d}"
        path = wav_dir / f"{utt_id}.wav"
        write_wav(path, utt.audio)
        label = config.labels[label_idx]
        rows.append(
            ManifestRow(
                id=utt_id,
                audio=path,
                text=utt.text,
                label=label,
                split=split,
                speaker=_speaker_id(speaker),
                extra={"prosody_label": utt.prosody_label, "text_label": utt.text_label},
            )
        )
        summary.setdefault(split, {}).setdefault(label, 0)
        summary[split][label] += 1
        clips[speaker] = clips.get(speaker, 0) + 1
    manifest = write_manifest(out_dir / "manifest.csv", rows)
    speakers_text = _speaker_table(config, speaker_splits(config), clips)
    (out_dir / "README.txt").write_text(_readme(config, summary, speakers_text), encoding="utf-8")
    return manifest


def summarize_manifest(manifest: str | Path) -> dict[str, dict[str, int]]:
    """Clips per split and label of a manifest: {split: {label: count}}.

    Raises:
        ManifestError: the manifest cannot be read.
    """
    out: dict[str, dict[str, int]] = {}
    for r in read_manifest(manifest):
        lab = r.label if r.label is not None else "(none)"
        out.setdefault(r.split, {}).setdefault(lab, 0)
        out[r.split][lab] += 1
    return out


def format_summary(counts: dict[str, dict[str, int]], labels: Sequence[str] | None = None) -> str:
    """A plain-text table of `summarize_manifest` output, splits as rows, with totals."""
    if labels is None:
        labels = sorted({lab for per in counts.values() for lab in per})
    labels = list(labels)
    splits = [s for s in SPLITS if s in counts] + sorted(s for s in counts if s not in SPLITS)
    width = max([7, *(len(lab) for lab in labels)])
    head = f"{'split':<8}" + "".join(f"{lab:>{width + 1}}" for lab in labels) + f"{'total':>{width + 1}}"
    lines = [head, "-" * len(head)]

    def row(name: str, vals: list[int]) -> str:
        return f"{name:<8}" + "".join(f"{v:>{width + 1}}" for v in [*vals, sum(vals)])

    col_tot = [0] * len(labels)
    for s in splits:
        vals = [counts[s].get(lab, 0) for lab in labels]
        col_tot = [a + b for a, b in zip(col_tot, vals)]
        lines.append(row(s, vals))
    lines.append("-" * len(head))
    lines.append(row("total", col_tot))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- conversation


def synthesize_conversation(
    out_path: str | Path,
    config: SynthConfig | None = None,
    num_turns: int = 6,
    seed: int | None = None,
) -> list[dict]:
    """Write one conversation-like WAV and its ground truth.

    Synthetic utterances of different classes by two alternating speakers
    ("synthetic-A", "synthetic-B"), spoken with `config.voice`, separated by
    0.8-2.0 s of near-silence (-60 dBFS white noise, which also lies under the
    speech), with 0.5 s before the first turn and 1.0 s after the last. Each
    turn is trimmed to its first and last voiced sample (espeak: the first and
    last above -60 dBFS), so `start_s`/`end_s` are exact to the sample. Pauses
    inside a turn stay well below the segmenter's 500 ms (harmonic: at most
    0.2 s; espeak: word gaps of at most 40 ms and stop closures, no commas; the
    longest stretch below -50 dBFS measured inside a turn was 0.18 s), so each
    turn is one utterance. With espeak, speakers A and B are speakers 0 and 1
    of `make_speakers` (en-us+m1 and en+f1, offsets from the seed) and turn
    texts are spoken exactly; turn lengths follow the duration range (a turn
    is never padded, so it may be shorter than min_duration_s). The sidecar
    `<stem>.json` holds
    `{"synthetic": true, "voice", "audio", "sample_rate", "duration_s", "turns": [...]}`.

    Args:
        out_path: the .wav to write (parent folders are created).
        config: voice, labels, durations and cue reliabilities (default `SynthConfig()`).
        num_turns: number of utterances, 1 to 1000.
        seed: defaults to `config.seed`.

    Returns:
        The turns, in time order: {"start_s", "end_s", "label", "text",
        "prosody_label", "text_label", "speaker"}.

    Raises:
        ConfigError: invalid config, num_turns, or a path that is not .wav.
        DependencyError: voice "espeak" without espeakng_loader (the `[demo]` extra).
    """
    config = (config or SynthConfig()).validate()
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".wav":
        raise ConfigError(f"conversation: out_path {out_path} must end in .wav")
    if isinstance(num_turns, bool) or not isinstance(num_turns, int) or not 1 <= num_turns <= 1000:
        raise ConfigError(f"conversation: num_turns={num_turns!r} is out of range [1, 1000]")
    seed = config.seed if seed is None else int(seed)
    rng = np.random.default_rng([seed, 3])
    k = len(config.labels)
    # Cycle through shuffled classes so neighbouring turns differ.
    label_seq: list[int] = []
    while len(label_seq) < num_turns:
        perm = rng.permutation(k).tolist()
        if label_seq and perm[0] == label_seq[-1]:
            perm.reverse()
        label_seq.extend(perm)
    label_seq = label_seq[:num_turns]
    if config.voice == "harmonic":  # the benchmarks' conversations: keep these draws as they are
        scales = (float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1)))
    else:
        speakers = _checked_speakers(seed, 2)

    sr = SAMPLE_RATE
    pieces: list[np.ndarray] = [np.zeros(int(0.5 * sr))]
    cursor = pieces[0].size
    turns: list[dict] = []
    for i, li in enumerate(label_seq):
        if i > 0:
            gap = np.zeros(int(rng.uniform(0.8, 2.0) * sr))
            pieces.append(gap)
            cursor += gap.size
        n_samples = int(rng.uniform(config.min_duration_s, config.max_duration_s) * sr)
        if config.voice == "harmonic":
            utt, mask = _make_utterance(config, li, scales[i % 2], rng, n_samples, False, False)
        else:
            utt, _ = _make_spoken_utterance(config, li, speakers[i % 2], rng, n_samples, False, False)
            mask = np.abs(utt.audio) > _BACKGROUND_RMS  # audible above the background
        on = np.flatnonzero(mask)
        audio = utt.audio[on[0] : on[-1] + 1].astype(np.float64)
        pieces.append(audio)
        turns.append(
            {
                "start_s": cursor / sr,
                "end_s": (cursor + audio.size) / sr,
                "label": config.labels[li],
                "text": utt.text,
                "prosody_label": utt.prosody_label,
                "text_label": utt.text_label,
                "speaker": "synthetic-A" if i % 2 == 0 else "synthetic-B",
            }
        )
        cursor += audio.size
    pieces.append(np.zeros(int(1.0 * sr)))
    signal = np.concatenate(pieces)
    signal += _BACKGROUND_RMS * rng.standard_normal(signal.size)
    write_wav(out_path, signal.astype(np.float32))
    sidecar = {
        "synthetic": True,
        "voice": config.voice,
        "audio": out_path.name,
        "sample_rate": sr,
        "duration_s": signal.size / sr,
        "turns": turns,
    }
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return turns


def read_conversation_truth(path: str | Path) -> list[dict]:
    """The turns of a conversation sidecar; `path` may be the .wav or the .json.

    Raises:
        ManifestError: the sidecar is missing or malformed.
    """
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        raise ManifestError(f"{path}: conversation ground truth not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    turns = data.get("turns") if isinstance(data, dict) else None
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and {"start_s", "end_s", "label", "text"} <= t.keys() for t in turns
    ):
        raise ManifestError(
            f"{path}: expected an object with 'turns': [{{start_s, end_s, label, text}}, ...]"
        )
    return turns
