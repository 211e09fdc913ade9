"""Tests of crab_rt.data.synth and the `crab-rt synth` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from crab_rt.audio import SAMPLE_RATE, load_audio
from crab_rt.cli import main
from crab_rt.data.manifest import read_manifest
from crab_rt.data.synth import (
    PROSODY_PROFILES,
    SynthConfig,
    class_counts,
    expected_ceilings,
    format_summary,
    read_conversation_truth,
    summarize_manifest,
    synthesize_conversation,
    synthesize_corpus,
)
from crab_rt.errors import ConfigError, ManifestError

LABELS = ("neutral", "happy", "angry", "sad")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    cfg = SynthConfig(num_utterances=40, seed=3)
    return synthesize_corpus(cfg, tmp_path_factory.mktemp("synth") / "corpus", progress=False)


@pytest.fixture(scope="module")
def clean_corpus(tmp_path_factory) -> Path:
    """Balanced, prosody always follows the class, little noise: for measuring prosody."""
    cfg = SynthConfig(
        num_utterances=24, imbalance_ratio=1.0, prosody_reliability=1.0, noise_snr_db=30.0, seed=5
    )
    return synthesize_corpus(cfg, tmp_path_factory.mktemp("synth") / "clean", progress=False)


def _f0_autocorr(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Median f0 (Hz) over loud frames, from the autocorrelation peak in 60-400 Hz."""
    frame, hop = 1024, 512
    level = np.sqrt(np.mean(x**2))
    lo, hi = sr // 400, sr // 60
    out = []
    for s in range(0, len(x) - frame, hop):
        fr = x[s : s + frame] - x[s : s + frame].mean()
        if np.sqrt(np.mean(fr**2)) < 0.3 * level:
            continue
        ac = np.correlate(fr, fr, "full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            out.append(sr / lag)
    return float(np.median(out))


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
    ],
)
def test_config_validate_names_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        SynthConfig(**changes).validate()


def test_default_config_is_valid_and_list_labels_accepted():
    assert SynthConfig().validate() == SynthConfig()
    assert SynthConfig(labels=["x", "y"]).validate().labels == ("x", "y")


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
        assert 4 <= n_words <= 9
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


def test_corpus_is_deterministic_with_seed(tmp_path):
    cfg = SynthConfig(num_utterances=8, seed=11)
    m1 = synthesize_corpus(cfg, tmp_path / "a", progress=False)
    m2 = synthesize_corpus(cfg, tmp_path / "b", progress=False)
    m3 = synthesize_corpus(SynthConfig(num_utterances=8, seed=12), tmp_path / "c", progress=False)
    assert m1.read_text() == m2.read_text()
    assert m1.read_text() != m3.read_text()
    for r1, r2 in zip(read_manifest(m1), read_manifest(m2)):
        assert r1.audio.read_bytes() == r2.audio.read_bytes()
    # rewriting a folder with fewer clips leaves no stale WAVs behind
    synthesize_corpus(SynthConfig(num_utterances=5, seed=11), tmp_path / "a", progress=False)
    assert len(list((tmp_path / "a" / "wav").glob("*.wav"))) == 5


def test_prosody_differs_by_class(clean_corpus):
    f0: dict[str, list[float]] = {}
    rms: dict[str, list[float]] = {}
    for r in read_manifest(clean_corpus):
        assert r.extra["prosody_label"] == r.label
        x = load_audio(r.audio)
        f0.setdefault(r.label, []).append(_f0_autocorr(x))
        rms.setdefault(r.label, []).append(float(np.sqrt(np.mean(x**2))))
    mean_f0 = {k: float(np.mean(v)) for k, v in f0.items()}
    mean_rms = {k: float(np.mean(v)) for k, v in rms.items()}
    assert mean_f0["sad"] < mean_f0["neutral"] < mean_f0["angry"] < mean_f0["happy"]
    for lab, val in mean_f0.items():  # near the nominal f0 (speaker scaling averages out)
        assert val == pytest.approx(PROSODY_PROFILES[lab].f0_hz, rel=0.2)
    assert mean_rms["sad"] < mean_rms["neutral"] < mean_rms["happy"] < mean_rms["angry"]
    assert mean_rms["angry"] / mean_rms["sad"] > 4.0  # more than 12 dB apart


def test_text_cue_words_follow_text_label(corpus):
    from crab_rt.data.synth import CUE_WORDS

    for r in read_manifest(corpus):
        words = set(r.text.lower().rstrip(".").split())
        assert words & set(CUE_WORDS[r.extra["text_label"]])


# ------------------------------------------------------------------ conversation


def test_conversation_boundaries_match_audio(tmp_path):
    wav = tmp_path / "conv" / "talk.wav"
    turns = synthesize_conversation(wav, SynthConfig(seed=2), num_turns=5)
    assert len(turns) == 5
    assert read_conversation_truth(wav) == turns
    sidecar = json.loads(wav.with_suffix(".json").read_text())
    assert sidecar["synthetic"] is True and sidecar["sample_rate"] == SAMPLE_RATE
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
    with pytest.raises(ConfigError, match="num_turns=0"):
        synthesize_conversation(tmp_path / "c.wav", num_turns=0)
    with pytest.raises(ConfigError, match=r"must end in \.wav"):
        synthesize_conversation(tmp_path / "c.mp3")
    with pytest.raises(ManifestError, match="not found"):
        read_conversation_truth(tmp_path / "missing.wav")


# ------------------------------------------------------------------ CLI


def test_cli_synth_writes_corpus_and_conversation(tmp_path, capsys):
    out = tmp_path / "cli"
    conv = tmp_path / "conv.wav"
    rc = main(["synth", "--out", str(out), "--num", "12", "--seed", "4", "--imbalance", "2",
               "--noise-snr-db", "25", "--conversation", str(conv), "--turns", "3", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "synthetic corpus: 12 clips" in captured.out
    assert "total" in captured.out and "neutral" in captured.out
    assert len(read_manifest(out / "manifest.csv")) == 12
    assert len(read_conversation_truth(conv)) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num", "0"], "num_utterances=0"),
        (["--imbalance", "0.5"], "imbalance_ratio=0.5"),
        (["--noise-snr-db", "500"], "noise_snr_db=500"),
        (["--conversation", "talk.txt"], "must end in .wav"),
    ],
)
def test_cli_synth_bad_values_exit_2(tmp_path, capsys, argv, message):
    rc = main(["synth", "--out", str(tmp_path / "x"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("crab-rt: error:") and message in err
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_conversation_turns_are_found_by_silero_segmenter(tmp_path):
    """Each synthetic turn is one utterance of the default segmenter, boundaries within 0.3 s."""
    from crab_rt.errors import CrabError

    try:
        from crab_rt.runtime.segmenter import SegmenterConfig, StreamFrontEnd
        from crab_rt.runtime.vad import SileroVad

        vad = SileroVad()
    except (CrabError, ImportError) as e:
        pytest.skip(f"Silero VAD model not available: {e}")
    for seed in (0, 1):
        wav = tmp_path / f"conv{seed}.wav"
        turns = synthesize_conversation(wav, SynthConfig(seed=seed), num_turns=6)
        fe = StreamFrontEnd(vad, SegmenterConfig())
        utts = fe.accept(load_audio(wav)) + fe.flush()
        assert len(utts) == len(turns), (seed, [(u.speech_start_s, u.speech_end_s) for u in utts])
        for t, u in zip(turns, utts):
            assert u.speech_start_s == pytest.approx(t["start_s"], abs=0.3), (seed, t["label"])
            assert u.speech_end_s == pytest.approx(t["end_s"], abs=0.3), (seed, t["label"])


def test_missing_tqdm_names_the_data_extra(tmp_path, monkeypatch, capsys):
    """tqdm is the [data] extra's: without it, synth is one line naming the extra (sys.modules None = not installed)."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    code = main(["synth", "--out", str(tmp_path / "c"), "--num", "8"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("crab-rt: error:") and "crab-rt[data]" in err and "tqdm" in err, err
    assert len(err.strip().splitlines()) == 1
