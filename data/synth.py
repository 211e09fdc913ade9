"""A synthetic bimodal emotion corpus: real WAV files, transcripts and a manifest.

Nothing here is real speech. Each utterance is a train of vowel-like
"syllables" (a band-limited glottal pulse train with a pitch contour and slow
jitter, a spectral tilt, three formant resonances of a vowel drawn per
syllable, band-passed noise bursts as consonant onsets, an attack/sustain/
release envelope and short pauses) whose prosody depends on a class, plus a
short English-like sentence whose cue words depend on a class. Silero VAD
finds each conversation turn as one utterance (mean speech probability about
0.8 per turn):

| class   | f0     | contour        | level     | rate      | spectrum          |
|---------|--------|----------------|-----------|-----------|-------------------|
| neutral | 120 Hz | nearly flat    | -25 dBFS  | 4 syl/s   | to 4 kHz          |
| happy   | 220 Hz | wide, rising   | -20 dBFS  | 5.5 syl/s | to 4.8 kHz        |
| angry   | 170 Hz | moderate       | -16 dBFS  | 5 syl/s   | to 7 kHz, bright  |
| sad     | 90 Hz  | narrow, falling| -33 dBFS  | 2.5 syl/s | to 3.2 kHz, dark  |

Levels are RMS over the voiced samples; peaks above 0.5 are softly
compressed so that nothing passes 0.9.

Other labels get generated profiles. Speakers scale f0 by up to +-15%, each
utterance jitters its rate and level, and white or pink noise is added at
`noise_snr_db`.

Neither modality is perfect on purpose. With probability
`1 - prosody_reliability` an utterance is rendered with another class's
prosody; independently, with probability `1 - text_reliability` its cue words
come from another class. The manifest keeps both cue classes in the extra
columns `prosody_label` and `text_label`.

Expected ceiling: a classifier that recognises the cues perfectly and knows
the class priors (`expected_ceilings`) reaches, with the defaults (480 clips,
ratio 3, reliabilities 0.75 / 0.7), WAR 0.75 from prosody only, 0.70 from
text only and 0.78 from both. Because the two corruptions are independent and
a substituted cue is a clean rendering of another class, fusion gains little
over the more reliable modality from the cue classes alone (the 0.03 comes
from the priors). Fusion also helps where the acoustic cues overlap (speaker
f0 scaling brings neutral and sad together, noise masks energy): real
prosody-only models fall below 0.75 and text breaks the ties.

The signal model lives in `crab_rt.data.synth_voice`; this module owns the classes,
words, splits and files.

`synthesize_conversation` writes one conversation-like WAV of utterances
separated by near-silence, plus a JSON sidecar with exact turn boundaries.
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
from crab_rt.data.synth_voice import ProsodyProfile, background_noise, render_voice, scale_to_level
from crab_rt.errors import ConfigError, ManifestError

__all__ = [
    "SynthConfig",
    "ProsodyProfile",
    "PROSODY_PROFILES",
    "CUE_WORDS",
    "FILLER_WORDS",
    "class_counts",
    "expected_ceilings",
    "synthesize_corpus",
    "synthesize_conversation",
    "read_conversation_truth",
    "summarize_manifest",
    "format_summary",
]

SPLITS = ("train", "dev", "test")
_BACKGROUND_RMS = 1e-3  # -60 dBFS background noise between conversation turns


PROSODY_PROFILES: dict[str, ProsodyProfile] = {
    "neutral": ProsodyProfile(120.0, 0.04, -0.05, -25.0, 4.0, 10, 1.2),
    "happy": ProsodyProfile(220.0, 0.25, 0.10, -20.0, 5.5, 12, 1.0),
    "angry": ProsodyProfile(170.0, 0.12, -0.05, -16.0, 5.0, 24, 0.6),
    "sad": ProsodyProfile(90.0, 0.03, -0.12, -33.0, 2.5, 8, 1.6),
}

CUE_WORDS: dict[str, tuple[str, ...]] = {
    "neutral": ("okay", "usual", "regular", "normal", "scheduled", "standard"),
    "happy": ("great", "wonderful", "love", "yay", "awesome", "fantastic", "delighted"),
    "angry": ("furious", "hate", "ridiculous", "unacceptable", "outrageous", "annoyed", "stupid"),
    "sad": ("miss", "lonely", "sorry", "tired", "crying", "lost", "unfortunately"),
    "surprise": ("wow", "unbelievable", "whoa", "suddenly", "unexpected"),
    "fear": ("scared", "afraid", "terrified", "nervous", "danger"),
    "disgust": ("gross", "disgusting", "yuck", "nasty", "revolting"),
}

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
        num_speakers: synthetic speakers, each with its own f0 scale (+-15%).
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
    num_speakers: int = 10
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


# ---------------------------------------------------------------- corpus


def _speaker_scales(seed: int, num_speakers: int) -> np.ndarray:
    return np.random.default_rng([seed, 1]).uniform(0.85, 1.15, num_speakers)


def _readme(config: SynthConfig, counts: dict[str, dict[str, int]]) -> str:
    ceilings = expected_ceilings(config)
    settings = "\n".join(f"  {f.name} = {getattr(config, f.name)!r}" for f in fields(config))
    return (
        "SYNTHETIC emotion corpus, made by crab-rt (crab_rt.data.synth). Not real speech.\n\n"
        "Every clip is a train of vowel-like 'syllables' (glottal pulse train with a\n"
        "pitch contour, formant resonances, noise-burst consonants, short pauses)\n"
        "whose pitch, level, speaking rate and brightness depend on a class, with speaker f0\n"
        "variation (+-15%) and white or pink noise. Each transcript is a filler\n"
        "sentence with 1-2 class cue words. The prosody follows the true class with\n"
        "probability prosody_reliability and the cue words with probability\n"
        "text_reliability (otherwise another class's); the manifest's extra columns\n"
        "prosody_label and text_label say which.\n\n"
        "Accuracy ceilings from the cue classes alone: "
        f"prosody only {ceilings['prosody_only']:.3f}, text only {ceilings['text_only']:.3f}, "
        f"both {ceilings['fused']:.3f}.\n\n"
        f"Settings:\n{settings}\n\n"
        f"Clips per split and class:\n{format_summary(counts, config.labels)}\n"
        "Files: manifest.csv (id, audio, text, label, split, speaker, prosody_label,\n"
        "text_label), wav/synthetic-NNNNN.wav (16 kHz mono 16-bit PCM).\n"
    )


def synthesize_corpus(config: SynthConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Write the synthetic corpus: wav/*.wav, manifest.csv and README.txt.

    Args:
        config: corpus settings (validated here).
        out_dir: output folder, created if needed; earlier synthetic-*.wav
            files in its wav/ folder are removed.
        progress: show a tqdm progress bar.

    Returns:
        Path of manifest.csv.

    Raises:
        ConfigError: the config is invalid.
    """
    from crab_rt.errors import requires_extra

    with requires_extra("data", "tqdm"):
        from tqdm import tqdm

    config.validate()
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    for stale in wav_dir.glob("synthetic-*.wav"):
        stale.unlink()

    plan_rng = np.random.default_rng([config.seed, 0])
    counts = class_counts(config)
    plan: list[tuple[int, str]] = []  # (label index, split)
    for li, lab in enumerate(config.labels):
        n_train, n_dev, n_test = _split_sizes(counts[lab], config)
        splits = ["train"] * n_train + ["dev"] * n_dev + ["test"] * n_test
        plan.extend((li, s) for s in plan_rng.permutation(splits).tolist())
    order = plan_rng.permutation(len(plan))  # interleave classes in id order
    scales = _speaker_scales(config.seed, config.num_speakers)

    rows: list[ManifestRow] = []
    summary: dict[str, dict[str, int]] = {}
    for n, j in enumerate(tqdm(order, desc="synthetic corpus", unit="clip", disable=not progress)):
        label_idx, split = plan[int(j)]
        rng = np.random.default_rng([config.seed, 2, n])
        speaker = int(rng.integers(config.num_speakers))
        n_samples = int(rng.uniform(config.min_duration_s, config.max_duration_s) * SAMPLE_RATE)
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
                speaker=f"synthetic-spk{speaker:02d}",
                extra={"prosody_label": utt.prosody_label, "text_label": utt.text_label},
            )
        )
        summary.setdefault(split, {}).setdefault(label, 0)
        summary[split][label] += 1
    manifest = write_manifest(out_dir / "manifest.csv", rows)
    (out_dir / "README.txt").write_text(_readme(config, summary), encoding="utf-8")
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

    Synthetic utterances of different classes (two alternating speakers)
    separated by 0.8-2.0 s of near-silence (-60 dBFS white noise, which also
    lies under the speech), with 0.5 s before the first turn and 1.0 s after
    the last. Each turn is trimmed to its first and last voiced sample, so
    `start_s`/`end_s` are exact to the sample. Pauses inside a turn are at most
    0.2 s. The sidecar `<stem>.json` holds
    `{"synthetic": true, "audio", "sample_rate", "duration_s", "turns": [...]}`.

    Args:
        out_path: the .wav to write (parent folders are created).
        config: labels, durations and cue reliabilities (default `SynthConfig()`).
        num_turns: number of utterances, 1 to 1000.
        seed: defaults to `config.seed`.

    Returns:
        The turns, in time order: {"start_s", "end_s", "label", "text",
        "prosody_label", "text_label", "speaker"}.

    Raises:
        ConfigError: invalid config, num_turns, or a path that is not .wav.
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
    scales = (float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1)))

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
        utt, mask = _make_utterance(config, li, scales[i % 2], rng, n_samples, False, False)
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
