"""espeak-ng through espeakng-loader (crab_rt.data.espeak) and the spoken corpus's prosody (synth_espeak)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from audio_measures import median_f0

from crab_rt.audio import SAMPLE_RATE
from crab_rt.data import espeak as espeak_module
from crab_rt.data.espeak import EspeakVoice, get_espeak
from crab_rt.data.synth_espeak import (
    ESPEAK_LANGUAGES,
    ESPEAK_VARIANTS,
    espeak_profile,
    make_speakers,
    render_espeak,
    seconds_per_word,
    utterance_voice,
)
from crab_rt.errors import ConfigError, DependencyError

LABELS = ("neutral", "happy", "angry", "sad")
SENTENCE = "My friend took the early train this morning and it was okay."


def test_speaks_text_as_16k_float32_of_plausible_length():
    voice = EspeakVoice("en-us", "m1", rate_wpm=150)
    audio = get_espeak().speak(SENTENCE, voice)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.05 < np.abs(audio).max() <= 1.0
    seconds = audio.size / SAMPLE_RATE
    words = len(SENTENCE.split())
    assert seconds == pytest.approx(words * seconds_per_word(voice), rel=0.35)  # 12 words at 150 wpm: ~4 s
    # at twice the rate, about half as long
    fast = get_espeak().speak(SENTENCE, EspeakVoice("en-us", "m1", rate_wpm=300))
    assert 0.4 < fast.size / audio.size < 0.65
    # an energy envelope with pauses between words, not a tone: many 10 ms frames well below the peak
    frames = np.sqrt(np.mean(audio[: audio.size // 160 * 160].reshape(-1, 160) ** 2, axis=1))
    assert np.mean(frames < 0.1 * frames.max()) > 0.1


def test_output_depends_only_on_text_and_voice():
    """espeak-ng's state carries over between utterances unless the library is reloaded: it is."""
    es = get_espeak()
    a = es.speak(SENTENCE, EspeakVoice("en", "f2"))
    es.speak("Something else entirely, spoken first.", EspeakVoice("en-us", "m3", rate_wpm=300, pitch=90))
    b = es.speak(SENTENCE, EspeakVoice("en", "f2"))
    assert a.size == b.size and np.array_equal(a, b)


def test_voices_and_variants_differ_in_pitch():
    es = get_espeak()
    male = median_f0(es.speak(SENTENCE, EspeakVoice("en-us", "m1")))
    female = median_f0(es.speak(SENTENCE, EspeakVoice("en-us", "f3")))
    assert 70 < male < 140 and 140 < female < 280
    assert female / male > 1.5
    low = median_f0(es.speak(SENTENCE, EspeakVoice("en-us", "m1", pitch=20)))
    high = median_f0(es.speak(SENTENCE, EspeakVoice("en-us", "m1", pitch=80)))
    assert high / low > 1.4
    rp = es.speak(SENTENCE, EspeakVoice("en-gb-x-rp", "m1"))
    us = es.speak(SENTENCE, EspeakVoice("en-us", "m1"))
    assert rp.size != us.size or not np.array_equal(rp, us)  # another accent, other phonemes


def test_every_corpus_voice_and_variant_exists():
    es = get_espeak()
    assert set(ESPEAK_LANGUAGES) <= set(es.languages)
    assert set(ESPEAK_VARIANTS) <= set(es.variants)
    for sp in make_speakers(0, len(ESPEAK_LANGUAGES) * len(ESPEAK_VARIANTS)):
        es.check(EspeakVoice(sp.language, sp.variant))


@pytest.mark.parametrize(
    ("voice", "message"),
    [
        (EspeakVoice(language="xx-nowhere"), "unknown language 'xx-nowhere'"),
        (EspeakVoice(variant="m99"), "unknown variant 'm99'"),  # espeak-ng itself would ignore it
        (EspeakVoice(rate_wpm=20), r"rate_wpm=20 must be an integer in \[80, 450\]"),
        (EspeakVoice(pitch=100), r"pitch=100"),
        (EspeakVoice(variant="m1+f2"), "is not a voice name"),
    ],
)
def test_bad_voices_are_config_errors(voice, message):
    with pytest.raises(ConfigError, match=message):
        get_espeak().speak("Hello there.", voice)


def test_empty_text_is_a_config_error():
    with pytest.raises(ConfigError, match="empty text"):
        get_espeak().speak("  ")


def test_missing_espeakng_loader_names_the_demo_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # None: "not installed" to the import system
    monkeypatch.setattr(espeak_module, "_INSTANCE", None)
    with pytest.raises(DependencyError) as info:
        get_espeak()
    message = str(info.value)
    assert "crab-rt[demo]" in message and "espeakng_loader" in message and "\n" not in message


def test_class_prosody_ordering_per_speaker():
    """Same sentence, same speaker, the four class profiles: f0, level and duration in the designed order."""
    for sp in make_speakers(0, 4):  # en-us+m1, en+f1, en-gb-x-rp+m2, en-029+f2
        f0, level, seconds = {}, {}, {}
        for lab in LABELS:
            profile = espeak_profile(lab, LABELS)
            voice = utterance_voice(profile, sp, np.random.default_rng(1))
            audio, mask = render_espeak(SENTENCE, voice, profile.level_dbfs)
            f0[lab] = median_f0(audio)
            level[lab] = 20 * np.log10(np.sqrt(np.mean(audio[mask] ** 2)))
            seconds[lab] = audio.size / SAMPLE_RATE
        where = sp.voice_name
        assert f0["sad"] < f0["neutral"] < f0["angry"] < f0["happy"], (where, f0)
        assert f0["happy"] / f0["sad"] > 1.6, (where, f0)  # measured 1.85-1.9
        assert level["sad"] < level["neutral"] < level["happy"] < level["angry"], (where, level)
        assert level["angry"] - level["sad"] > 14.0, (where, level)  # designed 16 dB
        assert seconds["happy"] < seconds["angry"] < seconds["neutral"] < seconds["sad"], (where, seconds)
        assert seconds["sad"] / seconds["neutral"] > 1.25, (where, seconds)  # measured about 1.4


def test_generated_profiles_for_other_labels():
    labels = ("calm", "excited", "bored", "tense", "proud", "shy", "neutral")
    profiles = [espeak_profile(lab, labels) for lab in labels]
    assert profiles[-1] == espeak_profile("neutral", LABELS)
    assert len({(p.rate_wpm, p.pitch, p.pitch_range) for p in profiles[:-1]}) == 6
    for p in profiles:
        voice = utterance_voice(p, make_speakers(0, 1)[0], np.random.default_rng(0))
        assert voice.validate() is voice
