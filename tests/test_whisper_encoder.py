"""Whisper tiny.en's encoder as crab-rt's speech encoder: weights read from the CTranslate2 model, log-mel,
batch independence, freezing, and the bundle it exports."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crab_rt.errors import BackendError  # noqa: E402


def _tiny_en_folder():
    from crab_rt.runtime.asr import resolve_model

    try:
        return resolve_model("tiny.en")
    except BackendError as e:
        pytest.skip(f"Whisper tiny.en is not available offline: {e}")


@pytest.fixture(scope="module")
def whisper_encoder():
    from crab_rt.model.encoders import SpeechEncoder, load_hf_model

    _tiny_en_folder()
    return SpeechEncoder(load_hf_model("whisper:tiny.en", "speech")).eval()


@pytest.fixture(scope="module")
def jfk_16k(jfk):
    return jfk


def test_log_mel_equals_faster_whisper(whisper_encoder, jfk_16k):
    from faster_whisper.feature_extractor import FeatureExtractor

    reference = FeatureExtractor()(jfk_16k)  # [80, samples // 160 + 1], reflect-padded STFT
    frames = jfk_16k.size // 160
    with torch.no_grad():
        ours = whisper_encoder.log_mel(torch.from_numpy(jfk_16k)[None], torch.ones(1, frames, dtype=torch.bool))[0]
    assert ours.shape == (80, frames)
    # Zero padding instead of reflection changes only the last frame's window.
    assert np.abs(ours.numpy()[:, :-1] - reference[:, : frames - 1]).max() < 1e-4


def test_weights_equal_ctranslate2_encoder(whisper_encoder, jfk_16k):
    """The torch encoder with the weights read from model.bin gives CTranslate2's own encoder output."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    audio = np.zeros(30 * 16000, dtype=np.float32)
    audio[: jfk_16k.size] = jfk_16k
    values = torch.from_numpy(audio)[None]
    with torch.no_grad():
        mel = whisper_encoder.log_mel(values, torch.ones(1, 3000, dtype=torch.bool))
        ours, mask = whisper_encoder(values, torch.ones(1, audio.size, dtype=torch.long))
    model = ctranslate2.models.Whisper(str(_tiny_en_folder()), compute_type="float32")
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours.numpy() - theirs).max() < 1e-3


def test_output_is_independent_of_batch_padding(whisper_encoder, jfk_16k):
    from crab_rt.features import pad_waveforms

    short = jfk_16k[:30_007]
    values, mask = pad_waveforms([short, jfk_16k], normalize=False)
    with torch.no_grad():
        batched, frame_mask = whisper_encoder(torch.from_numpy(values), torch.from_numpy(mask))
        alone, alone_mask = whisper_encoder(torch.from_numpy(short)[None], torch.ones(1, short.size, dtype=torch.long))
    frames = int(frame_mask[0].sum())
    assert frames == alone.shape[1] == int(whisper_encoder.frame_lengths(torch.tensor([short.size]))[0]) == 94
    assert np.abs(batched[0, :frames].numpy() - alone[0].numpy()).max() < 1e-4
    assert float(batched[0, frames:].abs().max()) == 0.0  # padded frames are zero


def test_build_freezes_and_round_trips(tmp_path):
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel

    _tiny_en_folder()
    config = ModelConfig(speech_encoder="whisper:tiny.en", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=8, classifier_dim=8, modality="speech"),
                         freeze_speech_encoder=True)
    model = CrabModel.build(config, ["a", "b"])
    assert model.normalize_waveform is False  # Whisper hears the level as recorded
    assert not any(p.requires_grad for p in model.speech_encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    again = CrabModel.from_architecture(model.architecture())
    again.load_state_dict(model.state_dict())
    values = torch.randn(1, 16000) * 0.1
    mask = torch.ones(1, 16000, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model.eval()(values, mask, None, None), again.eval()(values, mask, None, None))


def test_errors_name_the_model(tmp_path):
    from crab_rt.model.encoders import load_hf_model
    from crab_rt.model.whisper_encoder import read_ctranslate2_encoder

    with pytest.raises(BackendError, match="no model.bin"):
        read_ctranslate2_encoder(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00\x0c\x00TransformerX\x00" + b"\x00" * 8)
    with pytest.raises(BackendError, match="not Whisper"):
        read_ctranslate2_encoder(tmp_path)
    with pytest.raises(BackendError, match="speech encoder"):
        load_hf_model("whisper:tiny.en", "text")
    with pytest.raises(BackendError, match="does not exist"):
        load_hf_model(f"whisper:{tmp_path / 'absent'}/", "speech")


def test_bundle_exports_without_split_graphs(tmp_path):
    """A Whisper-encoder model exports, passes parity, and says why it has no incremental split graphs."""
    from crab_rt.bundle import load_bundle
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel
    from crab_rt.runtime.speech_frontend import split_status
    from crab_rt.train.checkpoint import save_checkpoint

    _tiny_en_folder()
    torch.manual_seed(0)
    config = ModelConfig(speech_encoder="whisper:tiny.en", head=HeadConfig(hidden_dim=8, classifier_dim=8,
                                                                           modality="speech"))
    model = CrabModel.build(config, ["a", "b", "c", "d"]).eval()
    ckpt = save_checkpoint(tmp_path / "m.pt", model, None, {"max_audio_s": 4.0, "max_text_tokens": 32})
    bundle = load_bundle(export_bundle(ckpt, tmp_path / "bundle", ExportOptions(cpu_int8=False)))
    entry = bundle.incremental_speech
    assert entry["graphs"] == [] and "log-mel" in entry["locality"][0]
    ok, why = split_status(bundle)
    assert not ok and "not split" in why


def test_fewer_layers_give_layer_n_through_the_final_norm_and_round_trip(whisper_encoder):
    """`speech_encoder_layers=2` keeps 2 of tiny.en's 4 layers: the output is transformers' own hidden state of
    layer 2 through the encoder's final LayerNorm, and the architecture rebuilds the 2-layer encoder."""
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel

    config = ModelConfig(speech_encoder="whisper:tiny.en", head=HeadConfig(hidden_dim=8, classifier_dim=8,
                                                                           modality="speech"),
                         freeze_speech_encoder=True, speech_encoder_layers=2)
    model = CrabModel.build(config, ["a", "b"]).eval()
    assert len(model.speech_encoder.model.layers) == 2
    assert model.architecture()["speech_encoder"]["encoder_layers"] == 2
    values = torch.randn(1, 30 * 16000) * 0.1
    with torch.no_grad():
        ours, _ = model.speech_encoder(values, torch.ones(1, values.shape[1], dtype=torch.long))
        mel = whisper_encoder.log_mel(values, torch.ones(1, 3000, dtype=torch.bool))
        full = whisper_encoder.model(mel, output_hidden_states=True)
        reference = whisper_encoder.model.layer_norm(full.hidden_states[2])
    assert ours.shape == reference.shape == (1, 1500, 384)
    assert float((ours - reference).abs().max()) < 1e-4
    assert float((ours - full.last_hidden_state).abs().max()) > 0.1  # layer 2 is not layer 4
    again = CrabModel.from_architecture(model.architecture())
    again.load_state_dict(model.state_dict())  # strict: the dropped layers' weights are gone from both
    short = values[:, :16000]
    with torch.no_grad():
        mask = torch.ones(1, 16000, dtype=torch.long)
        assert torch.equal(model(short, mask, None, None), again.eval()(short, mask, None, None))


@pytest.mark.parametrize("layers,match", [(5, "has 4 layers"), (0, "positive integer"), (True, "positive integer")])
def test_speech_encoder_layers_errors_name_the_setting(layers, match):
    from crab_rt.errors import ConfigError
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel

    _tiny_en_folder()
    config = ModelConfig(speech_encoder="whisper:tiny.en", head=HeadConfig(hidden_dim=8, classifier_dim=8,
                                                                           modality="speech"),
                         speech_encoder_layers=layers)
    with pytest.raises(ConfigError, match=f"model.speech_encoder_layers.*{match}"):
        CrabModel.build(config, ["a", "b"])
