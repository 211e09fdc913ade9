"""Shared fixtures: real speech clips, generated signals, a small synthetic corpus, tiny models."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

JFK = Path(__file__).resolve().parents[1] / "samples" / "jfk.flac"  # shipped (samples/README.md)


@pytest.fixture(autouse=True)
def _restore_crab_rt_logger():
    """Undo what `crab_rt.cli.main()` does to the "crab_rt" logger (level, stderr handler, no propagation),
    so one test's CLI run does not change what the next test logs or what `caplog` sees."""
    import crab_rt  # noqa: F401 (its NullHandler is part of the state to keep)

    logger = logging.getLogger("crab_rt")
    saved = logger.level, logger.propagate, list(logger.handlers)
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.fixture(scope="session")
def jfk() -> np.ndarray:
    """samples/jfk.flac (11 s of real speech, shipped with the project) as 16 kHz float32."""
    from crab_rt.audio import load_audio

    return load_audio(JFK)


@pytest.fixture(scope="session")
def vad():
    """One shared Silero VAD engine (it holds no stream state)."""
    from crab_rt.runtime.vad import SileroVad

    return SileroVad()


@pytest.fixture
def silence() -> np.ndarray:
    return np.zeros(16000, dtype=np.float32)


@pytest.fixture
def tone() -> np.ndarray:
    t = np.arange(16000, dtype=np.float32) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (200 clips, spoken by espeak-ng as in the demo: about 2 s); returns its manifest."""
    from crab_rt.data.synth import SynthConfig, synthesize_corpus

    out = tmp_path_factory.mktemp("synthetic")
    return synthesize_corpus(SynthConfig(num_utterances=200, seed=3, voice="espeak"), out, progress=False)


@pytest.fixture(scope="session")
def conversation(tmp_path_factory):
    """A synthetic 4-turn conversation WAV and its truth (turn times, labels)."""
    from crab_rt.data.synth import read_conversation_truth, synthesize_conversation

    path = tmp_path_factory.mktemp("conv") / "conversation.wav"
    synthesize_conversation(path, num_turns=4, seed=0)
    return path, read_conversation_truth(path)


@pytest.fixture(scope="session")
def tiny_model_parts():
    """A tiny random Crab model (eval mode) and its tokenizer, labels a..d."""
    torch = pytest.importorskip("torch")
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel
    from crab_rt.text import train_bpe_tokenizer

    torch.manual_seed(0)
    config = ModelConfig(
        speech_encoder="random:wavlm-tiny",
        text_encoder="random:roberta-tiny",
        head=HeadConfig(hidden_dim=16, classifier_dim=16),
        max_text_tokens=32,
    )
    model = CrabModel.build(config, ["a", "b", "c", "d"]).eval()
    tokenizer = train_bpe_tokenizer(["i love this so much", "this is terrible", "okay fine then", "so sad today"],
                                    vocab_size=300, max_length=32)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_parts, tmp_path_factory) -> Path:
    """The tiny model exported as an fp32 bundle folder (parity checks are tested in test_export.py)."""
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    root = tmp_path_factory.mktemp("tiny_bundle")
    ckpt = save_checkpoint(root / "model.pt", model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32})
    return export_bundle(ckpt, root / "bundle", ExportOptions(parity=False))


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM), made with the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="session")
def crab_wheel(tmp_path_factory) -> Path:
    """crab-rt's wheel, built once per test session from this checkout without network or build isolation."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(Path(__file__).resolve().parents[1])],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        pytest.fail(f"pip wheel failed:\n{tail}")
    wheels = list(out.glob("crab_rt-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


TINY_RECIPE = """\
[model]
speech_encoder = "random:wavlm-tiny"
text_encoder = "random:roberta-tiny"
max_audio_s = 2.0
max_text_tokens = 16
[model.head]
hidden_dim = 16
classifier_dim = 16
attention_dropout = 0.1
classifier_dropout = 0.1
[data]
manifest = "{manifest}"
labels = ["neutral", "happy", "angry", "sad"]
cache_audio = true
[optim]
epochs = 2
batch_size = 6
grad_accum_steps = 2
head_lr = 1e-3
encoder_lr = 1e-3
head_eta_min = 1e-4
encoder_eta_min = 1e-5
[loss]
leg_dim = 16
[run]
seed = 5
progress = false
"""


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> Path:
    """A recipe file: a tiny Crab whose random encoders train (dropout on), on 39 train and 10 dev clips spoken by
    espeak-ng; global batch 6 in micro-batches of 3 (the epoch's last step has one micro-batch)."""
    from crab_rt.data.synth import SynthConfig, synthesize_corpus

    root = tmp_path_factory.mktemp("tiny_recipe")
    manifest = synthesize_corpus(SynthConfig(num_utterances=60, seed=3, voice="espeak"), root / "corpus",
                                 progress=False)
    lines = manifest.read_text().splitlines()
    train = [line for line in lines[1:] if line.split(",")[4] == "train"][:39]
    kept = [lines[0], *train, *(line for line in lines[1:] if line.split(",")[4] != "train")]
    trimmed = root / "corpus" / "m39.csv"
    trimmed.write_text("\n".join(kept) + "\n")
    path = root / "tiny.toml"
    path.write_text(TINY_RECIPE.format(manifest=trimmed))
    return path
