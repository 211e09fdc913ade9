"""Tests of crab_rt.data.synth (both voices) and the `crab-rt synth` command; espeak-ng itself is in test_espeak.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from audio_measures import median_f0

from crab_rt.audio import SAMPLE_RATE, load_audio
from crab_rt.cli import main
from crab_rt.data.manifest import read_manifest
from crab_rt.data.synth import (
    CUE_WORDS,
    FILLER_WORDS,
    PROSODY_PROFILES,
    SynthConfig,
    class_counts,
    corpus_plan,
    expected_ceilings,
    format_summary,
    read_conversation_truth,
    summarize_manifest,
    synthesize_conversation,
    synthesize_corpus,
)
from crab_rt.errors import ConfigError, ManifestError

LABELS = ("neutral", "happy", "angry", "sad")


@pytest.fixture(scope="module", params=["espeak", "harmonic"])
def corpus(request, tmp_path_factory) -> Path:
    cfg = SynthConfig(num_utterances=40, seed=3, voice=request.param)
    return synthesize_corpus(cfg, tmp_path_factory.mktemp("synth") / "corpus", progress=False)


@pytest.fixture(scope="module")
def clean_corpus(tmp_path_factory) -> Path:
    """Harmonic, balanced, prosody always follows the class, little noise: for measuring prosody."""
    cfg = SynthConfig(
        num_utterances=24, imbalance_ratio=1.0, prosody_reliability=1.0, noise_snr_db=30.0, seed=5, voice="harmonic"
    )
    return synthesize_corpus(cfg, tmp_path_factory.mktemp("synth") / "clean", progress=False)


@pytest.fixture(scope="module")
def clean_spoken_corpus(tmp_path_factory) -> Path:
    """espeak, balanced, prosody always follows the class, little noise: for measuring prosody."""
    cfg = SynthConfig(num_utterances=48, imbalance_ratio=1.0, prosody_reliability=1.0, noise_snr_db=30.0, seed=5)
    return synthesize_corpus(cfg, tmp_path_factory.mktemp("synth") / "clean_spoken", progress=False)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_utterances": 0}, "num_utterances"),
        ({"num_utterances": 2}, "num_utterances"),
        ({"labels": ("a",)}, "labels"),
        ({"labels": ("a", "a")}, "labels"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
        ({"dev_fraction": 0.3}, "fraction"),
        ({"min_duration_s": 3.0, "max_duration_s": 2.0}, "max_duration_s"),
        ({"noise_snr_db": float("nan")}, "noise_snr_db"),
        ({"prosody_reliability": 1.5}, "prosody_reliability"),
        ({"text_reliability": -0.1}, "text_reliability"),
        ({"seed": -1}, "seed"),
        ({"voice": "robot"}, "voice='robot' must be one of espeak, harmonic"),
        ({"num_speakers": 2}, "num_speakers=2 is below 3: splits are speaker-disjoint"),
    ],
)
def test_config_validate_names_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        SynthConfig(**changes).validate()


def test_default_config_is_valid_and_list_labels_accepted():
    assert SynthConfig().validate() == SynthConfig()
    assert SynthConfig().voice == "espeak"
    assert SynthConfig(labels=["x", "y"]).validate().labels == ("x", "y")
    # two speakers are enough when only two splits are asked for
    SynthConfig(num_speakers=2, dev_fraction=0.0, train_fraction=0.85).validate()


def test_class_counts_follow_imbalance_ratio():
    counts = class_counts(SynthConfig(num_utterances=480, imbalance_ratio=3.0))
    vals = list(counts.values())
    assert list(counts) == list(LABELS)
    assert sum(vals) == 480
    assert vals == sorted(vals, reverse=True)
    assert vals[0] / vals[-1] == pytest.approx(3.0, rel=0.03)
    # geometric spacing: each step is 3 ** (1/3)
    for a, b in zip(vals, vals[1:]):
        assert a / b == pytest.approx(3 ** (1 / 3), rel=0.05)
    assert set(class_counts(SynthConfig(num_utterances=100, imbalance_ratio=1.0)).values()) == {25}


def test_expected_ceilings():
    c = expected_ceilings(SynthConfig())
    assert c["prosody_only"] == pytest.approx(0.75)
    assert c["text_only"] == pytest.approx(0.70)
    assert max(c["prosody_only"], c["text_only"]) <= c["fused"] < 0.9
    perfect = expected_ceilings(SynthConfig(prosody_reliability=1.0, text_reliability=1.0))
    assert perfect == pytest.approx({"prosody_only": 1.0, "text_only": 1.0, "fused": 1.0})


# ------------------------------------------------------------------ corpus


def test_corpus_files_decode_and_manifest_reads_back(corpus):
    rows = read_manifest(corpus)
    spoken = "Voice: 'espeak'" in (corpus.parent / "README.txt").read_text()
    assert corpus.name == "manifest.csv"
    assert len(rows) == 40
    assert all(r.id.startswith("synthetic-") for r in rows)
    assert {r.label for r in rows} == set(LABELS)
    assert (corpus.parent / "README.txt").read_text().startswith("SYNTHETIC")
    import soundfile as sf

    for r in rows[:10]:
        info = sf.info(str(r.audio))
        assert info.samplerate == SAMPLE_RATE and info.channels == 1
        audio = load_audio(r.audio)
        assert audio.dtype == np.float32
        assert 1.5 <= audio.size / SAMPLE_RATE <= 3.5
        assert np.abs(audio).max() < 1.0
        assert np.sqrt(np.mean(audio**2)) > 1e-3
        n_words = len(r.text.rstrip(".").split())
        assert (3 <= n_words <= 14) if spoken else (4 <= n_words <= 9)
        assert r.text[0].isupper() and r.text.endswith(".") and "," not in r.text
        assert r.speaker and r.speaker.startswith("synthetic-spk")
        assert r.extra["prosody_label"] in LABELS and r.extra["text_label"] in LABELS


def test_corpus_class_counts_and_stratified_splits(corpus):
    counts = summarize_manifest(corpus)
    expected = class_counts(SynthConfig(num_utterances=40, seed=3))
    totals = {lab: sum(counts[s].get(lab, 0) for s in counts) for lab in LABELS}
    assert totals == expected
    assert set(counts) == {"train", "dev", "test"}
    for lab, n in expected.items():
        # every class is in every split, in proportion (+-1 clip of rounding)
        assert counts["dev"][lab] >= 1 and counts["test"][lab] >= 1
        assert abs(counts["dev"][lab] - 0.15 * n) <= 1
        assert abs(counts["test"][lab] - 0.15 * n) <= 1
        assert counts["train"][lab] == n - counts["dev"][lab] - counts["test"][lab]
    table = format_summary(counts, LABELS)
    assert table.splitlines()[-1].split() == ["total", *map(str, expected.values()), "40"]


@pytest.mark.parametrize("voice", ["espeak", "harmonic"])
def test_corpus_is_deterministic_with_seed(tmp_path, voice):
    # espeak-ng seeds its noise (breath, flutter) from the clock unless told: 80 clips showed it every time
    cfg = SynthConfig(num_utterances=80 if voice == "espeak" else 8, seed=11, voice=voice)
    m1 = synthesize_corpus(cfg, tmp_path / "a", progress=False)
    m2 = synthesize_corpus(cfg, tmp_path / "b", progress=False)
    m3 = synthesize_corpus(SynthConfig(num_utterances=8, seed=12, voice=voice), tmp_path / "c", progress=False)
    assert m1.read_text() == m2.read_text()
    assert m1.read_text() != m3.read_text()
    for r1, r2 in zip(read_manifest(m1), read_manifest(m2)):
        assert r1.audio.read_bytes() == r2.audio.read_bytes()
    # rewriting a folder with fewer clips leaves no stale WAVs behind
    synthesize_corpus(SynthConfig(num_utterances=5, seed=11, voice=voice), tmp_path / "a", progress=False)
    assert len(list((tmp_path / "a" / "wav").glob("*.wav"))) == 5


@pytest.mark.parametrize(
    "config",
    [
        SynthConfig(),  # the default: 480 clips, 12 speakers (8 / 2 / 2)
        SynthConfig(seed=7),
        SynthConfig(num_speakers=3),
        SynthConfig(num_speakers=40, seed=2),
        SynthConfig(num_utterances=40, seed=3),
        SynthConfig(dev_fraction=0.0, train_fraction=0.85),
        SynthConfig(labels=("neutral", "happy", "angry", "sad", "fear", "surprise"), num_utterances=300),
    ],
)
def test_splits_are_speaker_disjoint_and_every_split_has_every_class(config):
    plan = corpus_plan(config)
    split_of: dict[str, set[str]] = {}
    for _, split, speaker in plan:
        split_of.setdefault(speaker, set()).add(split)
    assert all(len(s) == 1 for s in split_of.values()), split_of  # each speaker in exactly one split
    asked = {s for s in ("train", "dev", "test") if getattr(config, f"{s}_fraction") > 0}
    for split in asked:
        assert {lab for lab, s, _ in plan if s == split} == set(config.labels), split
    assert {s for _, s, _ in plan} == asked
    # clips of a class are dealt evenly over the split's speakers
    for split in asked:
        for lab in config.labels:
            per = {}
            for lab2, s, spk in plan:
                if s == split and lab2 == lab:
                    per[spk] = per.get(spk, 0) + 1
            speakers = {spk for spk, s in split_of.items() if split in s}
            counts = [per.get(spk, 0) for spk in speakers]
            assert max(counts) - min(counts) <= 1, (split, lab, per)


def test_default_split_sizes():
    from collections import Counter

    plan = corpus_plan(SynthConfig())
    assert Counter(s for _, s, _ in plan) == {"train": 334, "dev": 73, "test": 73}
    speakers = {spk: s for _, s, spk in plan}
    assert Counter(speakers.values()) == {"train": 8, "dev": 2, "test": 2}


def test_prosody_differs_by_class(clean_corpus):
    f0: dict[str, list[float]] = {}
    rms: dict[str, list[float]] = {}
    for r in read_manifest(clean_corpus):
        assert r.extra["prosody_label"] == r.label
        x = load_audio(r.audio)
        f0.setdefault(r.label, []).append(median_f0(x, fmin=60.0, hop=512, min_level=0.3))
        rms.setdefault(r.label, []).append(float(np.sqrt(np.mean(x**2))))
    mean_f0 = {k: float(np.mean(v)) for k, v in f0.items()}
    mean_rms = {k: float(np.mean(v)) for k, v in rms.items()}
    assert mean_f0["sad"] < mean_f0["neutral"] < mean_f0["angry"] < mean_f0["happy"]
    for lab, val in mean_f0.items():  # near the nominal f0 (speaker scaling averages out)
        assert val == pytest.approx(PROSODY_PROFILES[lab].f0_hz, rel=0.2)
    assert mean_rms["sad"] < mean_rms["neutral"] < mean_rms["happy"] < mean_rms["angry"]
    assert mean_rms["angry"] / mean_rms["sad"] > 4.0  # more than 12 dB apart


def test_prosody_differs_by_class_when_spoken(clean_spoken_corpus):
    """Level (RMS over active frames) and speaking rate (words per second of speech) order the classes
    across speakers; f0 is ordered within each speaker (test_espeak.py), not across male and female voices."""
    from crab_rt.data.synth_espeak import active_mask

    level: dict[str, list[float]] = {}
    rate: dict[str, list[float]] = {}
    for r in read_manifest(clean_spoken_corpus):
        assert r.extra["prosody_label"] == r.label
        x = load_audio(r.audio).astype(np.float64)
        mask = active_mask(x)
        on = np.flatnonzero(mask)
        level.setdefault(r.label, []).append(20 * np.log10(np.sqrt(np.mean(x[mask] ** 2))))
        rate.setdefault(r.label, []).append(len(r.text.split()) / ((on[-1] - on[0]) / SAMPLE_RATE))
    lvl = {k: float(np.mean(v)) for k, v in level.items()}
    wps = {k: float(np.mean(v)) for k, v in rate.items()}
    assert lvl["sad"] < lvl["neutral"] < lvl["happy"] < lvl["angry"], lvl
    for lab, designed in (("neutral", -26.0), ("happy", -22.0), ("angry", -17.0), ("sad", -33.0)):
        assert lvl[lab] == pytest.approx(designed, abs=2.0), lvl  # speaker offsets average out
    assert wps["sad"] < wps["neutral"] < wps["happy"], wps
    assert wps["happy"] / wps["sad"] > 1.4, wps


def test_text_cue_words_follow_text_label(corpus):
    others = {lab: {w for k, ws in CUE_WORDS.items() if k != lab for w in ws} for lab in CUE_WORDS}
    for r in read_manifest(corpus):
        words = set(r.text.lower().rstrip(".").split())
        assert words & set(CUE_WORDS[r.extra["text_label"]]), r.text
        assert not words & others[r.extra["text_label"]], r.text  # no cue word of another class


def test_neutral_words_are_never_cue_words():
    from crab_rt.data import synth

    cues = {w for ws in CUE_WORDS.values() for w in ws}
    neutral = {w.lower() for part in (*synth._SUBJECTS, *synth._ACTIONS, *synth._TIMES, *synth._OPENERS,
                                      *synth._AFTER_CUE, *FILLER_WORDS) for w in part.split()}  # fmt: skip
    frames = {w.lower() for f in (*synth._FEEL_FRAMES, *synth._EVAL_FRAMES) for w in f.replace("{}", "").split()}
    assert not cues & (neutral | frames)
    # every cue word fits a sentence frame
    assert cues <= synth._FEELINGS | synth._EVALUATIONS
    assert (synth._FEELINGS | synth._EVALUATIONS) <= cues


def test_sentences_follow_the_word_budget():
    from crab_rt.data.synth import make_sentence

    rng = np.random.default_rng(0)
    for budget in (3, 5, 8, 11, 14, 20, 28):
        lengths = [len(make_sentence(rng, "happy", budget).split()) for _ in range(40)]
        assert abs(np.mean(lengths) - budget) <= 1.5, (budget, lengths)
    assert make_sentence(np.random.default_rng(1), "bored", 9).lower().count("bored") == 1  # unknown label


def test_readme_and_manifest_state_the_label_rule_and_ceilings(corpus):
    readme = (corpus.parent / "README.txt").read_text()
    c = expected_ceilings(SynthConfig(num_utterances=40, seed=3))
    assert f"prosody only {c['prosody_only']:.3f}" in readme
    assert f"text only    {c['text_only']:.3f}" in readme
    assert f"both         {c['fused']:.3f}" in readme
    assert "prosody_reliability (0.75)" in readme and "text_reliability (0.7)" in readme
    assert "speaker-disjoint" in readme
    for n in range(12):
        assert f"synthetic-spk{n:02d}" in readme
    rows = read_manifest(corpus)
    prosody_agree = np.mean([r.extra["prosody_label"] == r.label for r in rows])
    text_agree = np.mean([r.extra["text_label"] == r.label for r in rows])
    assert 0.5 <= prosody_agree <= 0.95 and 0.45 <= text_agree <= 0.95  # 0.75 and 0.7 expected, 40 clips


# ------------------------------------------------------------------ conversation


@pytest.mark.parametrize("voice", ["espeak", "harmonic"])
def test_conversation_boundaries_match_audio(tmp_path, voice):
    wav = tmp_path / "conv" / "talk.wav"
    turns = synthesize_conversation(wav, SynthConfig(seed=2, voice=voice), num_turns=5)
    assert len(turns) == 5
    assert read_conversation_truth(wav) == turns
    sidecar = json.loads(wav.with_suffix(".json").read_text())
    assert sidecar["synthetic"] is True and sidecar["sample_rate"] == SAMPLE_RATE
    assert sidecar["voice"] == voice
    assert [t["speaker"] for t in turns] == ["synthetic-A", "synthetic-B"] * 2 + ["synthetic-A"]
    audio = load_audio(wav)
    assert audio.size / SAMPLE_RATE == pytest.approx(sidecar["duration_s"], abs=1e-6)
    assert all(a["label"] != b["label"] for a, b in zip(turns, turns[1:]))

    def seg(a: float, b: float) -> np.ndarray:
        return audio[int(round(a * SAMPLE_RATE)) : int(round(b * SAMPLE_RATE))]

    for t in turns:
        start, end = t["start_s"], t["end_s"]
        assert start * SAMPLE_RATE == pytest.approx(round(start * SAMPLE_RATE), abs=1e-6)  # sample-exact
        assert 1.0 < end - start <= 3.5
        assert t["text"] and t["label"] in LABELS
        assert set(t["text"].lower().rstrip(".").split()) & set(CUE_WORDS[t["text_label"]])
        assert np.sqrt(np.mean(seg(start, end) ** 2)) > 0.01  # speech inside the turn
        # the first and last 100 ms already carry energy: the turn is trimmed to its voice
        assert np.sqrt(np.mean(seg(start, start + 0.1) ** 2)) > 0.004
        assert np.sqrt(np.mean(seg(end - 0.1, end) ** 2)) > 0.002
        # and the 50 ms just outside are background only
        assert np.abs(seg(start - 0.05, start)).max() < 0.006
        assert np.abs(seg(end, end + 0.05)).max() < 0.006
    for a, b in zip(turns, turns[1:]):
        gap = b["start_s"] - a["end_s"]
        assert 0.8 <= gap <= 2.0
        assert np.sqrt(np.mean(seg(a["end_s"], b["start_s"]) ** 2)) < 0.002  # near-silence
    assert turns[0]["start_s"] == pytest.approx(0.5)


def test_conversation_is_deterministic_and_checks_args(tmp_path):
    t1 = synthesize_conversation(tmp_path / "a.wav", num_turns=3, seed=9)
    t2 = synthesize_conversation(tmp_path / "b.wav", num_turns=3, seed=9)
    assert t1 == t2
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    t3 = synthesize_conversation(tmp_path / "c.wav", num_turns=3, seed=10)
    assert [t["text"] for t in t3] != [t["text"] for t in t1]
    with pytest.raises(ConfigError, match="num_turns=0"):
        synthesize_conversation(tmp_path / "c.wav", num_turns=0)
    with pytest.raises(ConfigError, match=r"must end in \.wav"):
        synthesize_conversation(tmp_path / "c.mp3")
    with pytest.raises(ManifestError, match="not found"):
        read_conversation_truth(tmp_path / "missing.wav")


def test_harmonic_conversation_of_the_benchmarks_is_unchanged(tmp_path):
    """crab_bench replays harmonic conversations: the random draws (and so the audio) are those of the
    committed results. Turn boundaries are exact functions of the draws; they were recorded before espeak."""
    wav = tmp_path / "bench.wav"
    turns = synthesize_conversation(wav, SynthConfig(voice="harmonic"), num_turns=6, seed=0)
    bounds = [(round(t["start_s"] * SAMPLE_RATE), round(t["end_s"] * SAMPLE_RATE)) for t in turns]
    assert bounds == [(8000, 51629), (71082, 102113), (124117, 147554), (173345, 210633), (234348, 278931),
                      (300198, 327125)]
    assert [t["prosody_label"] for t in turns] == ["angry", "happy", "neutral", "angry", "angry", "angry"]
    assert load_audio(wav).size == 343125


# ------------------------------------------------------------------ CLI


@pytest.mark.parametrize("voice", ["espeak", "harmonic"])
def test_cli_synth_writes_corpus_and_conversation(tmp_path, capsys, voice):
    out = tmp_path / "cli"
    conv = tmp_path / "conv.wav"
    rc = main(["synth", "--out", str(out), "--num", "12", "--seed", "4", "--imbalance", "2", "--voice", voice,
               "--noise-snr-db", "25", "--speakers", "4", "--conversation", str(conv), "--turns", "3",
               "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"synthetic corpus ({voice} voice): 12 clips" in captured.out
    assert f"Voice: '{voice}'" in (out / "README.txt").read_text()
    assert json.loads(conv.with_suffix(".json").read_text())["voice"] == voice
    assert "total" in captured.out and "neutral" in captured.out
    rows = read_manifest(out / "manifest.csv")
    assert len(rows) == 12
    assert {r.speaker for r in rows} == {f"synthetic-spk{i:02d}" for i in range(4)}  # 2 train, 1 dev, 1 test
    assert len(read_conversation_truth(conv)) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num", "0"], "num_utterances=0"),
        (["--imbalance", "0.5"], "imbalance_ratio=0.5"),
        (["--noise-snr-db", "500"], "noise_snr_db=500"),
        (["--conversation", "talk.txt"], "must end in .wav"),
        (["--speakers", "2"], "num_speakers=2 is below 3"),
    ],
)
def test_cli_synth_bad_values_exit_2(tmp_path, capsys, argv, message):
    rc = main(["synth", "--out", str(tmp_path / "x"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("crab-rt: error:") and message in err
    assert not (tmp_path / "x" / "manifest.csv").exists()


@pytest.mark.parametrize(("voice", "seeds", "tolerance_s"), [("espeak", (0, 1, 2, 3), 0.15), ("harmonic", (0, 1), 0.3)])
def test_conversation_turns_are_found_by_silero_segmenter(tmp_path, voice, seeds, tolerance_s):
    """Each synthetic turn is one utterance of the default segmenter (500 ms min silence): pauses inside a turn
    are far shorter, gaps between turns far longer. espeak turns are found within 0.15 s (measured: 0.12 s)."""
    from crab_rt.errors import CrabError

    try:
        from crab_rt.runtime.segmenter import SegmenterConfig, StreamFrontEnd
        from crab_rt.runtime.vad import SileroVad

        vad = SileroVad()
    except (CrabError, ImportError) as e:
        pytest.skip(f"Silero VAD model not available: {e}")
    min_silence_s = SegmenterConfig().min_silence_ms / 1000
    for seed in seeds:
        wav = tmp_path / f"conv{seed}.wav"
        turns = synthesize_conversation(wav, SynthConfig(seed=seed, voice=voice), num_turns=6)
        audio = load_audio(wav)
        for t in turns:  # the longest run of 10 ms frames below -50 dBFS inside a turn
            seg = audio[round(t["start_s"] * SAMPLE_RATE) : round(t["end_s"] * SAMPLE_RATE)]
            quiet = np.sqrt(np.mean(seg[: seg.size // 160 * 160].reshape(-1, 160) ** 2, axis=1)) < 10 ** (-50 / 20)
            runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(int), [0]]))))[::2]
            assert (runs.max(initial=0) * 0.01) < 0.5 * min_silence_s, (seed, t["text"])
        fe = StreamFrontEnd(vad, SegmenterConfig())
        utts = fe.accept(audio) + fe.flush()
        assert len(utts) == len(turns), (seed, [(u.speech_start_s, u.speech_end_s) for u in utts])
        for t, u in zip(turns, utts):
            assert u.speech_start_s == pytest.approx(t["start_s"], abs=tolerance_s), (seed, t["label"])
            assert u.speech_end_s == pytest.approx(t["end_s"], abs=tolerance_s), (seed, t["label"])


def test_missing_tqdm_names_the_data_extra(tmp_path, monkeypatch, capsys):
    """tqdm is the [data] extra's: without it, synth is one line naming the extra (sys.modules None = not installed)."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    code = main(["synth", "--out", str(tmp_path / "c"), "--num", "8"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("crab-rt: error:") and "crab-rt[data]" in err and "tqdm" in err, err
    assert len(err.strip().splitlines()) == 1


def test_missing_espeak_names_the_demo_extra(tmp_path, monkeypatch, capsys):
    """espeakng-loader is the [demo] extra's: without it, synth is one line naming the extra; harmonic still works."""
    from crab_rt.data import espeak as espeak_module

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(espeak_module, "_INSTANCE", None)
    code = main(["synth", "--out", str(tmp_path / "c"), "--num", "8", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("crab-rt: error:") and "crab-rt[demo]" in err and "espeakng_loader" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "manifest.csv").exists()
    code = main(["synth", "--out", str(tmp_path / "h"), "--num", "8", "--voice", "harmonic", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert len(read_manifest(tmp_path / "h" / "manifest.csv")) == 8
