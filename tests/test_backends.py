"""Backend selection and the one interface: onnxruntime and torch agree, auto says what it picked."""

import numpy as np
import pytest

pytest.importorskip("torch")

from crab_rt.errors import BackendError, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from crab_rt.bundle import load_bundle

    return load_bundle(tiny_bundle)


def _inputs():
    g = np.random.default_rng(0)
    return [g.standard_normal(16000).astype(np.float32) * 0.1, g.standard_normal(7000).astype(np.float32) * 0.1], \
        ["i love this so much", "sad"]


def test_auto_picks_onnxruntime_cpu_here_and_says_why(bundle):
    from crab_rt.backends.select import load_sessions

    sessions, choice = load_sessions(bundle, "auto")
    assert set(sessions) == {"speech_encoder", "speech_classifier", "text_encoder", "head"}
    assert choice.backend == "onnxruntime" and choice.device == "cpu"
    assert "TensorRT" in choice.reason and "CPU" in choice.reason
    assert "backend onnxruntime" in choice.describe()


def test_torch_and_onnxruntime_agree(bundle):
    from crab_rt.runtime.emotion_model import EmotionModel

    audios, texts = _inputs()
    ort = EmotionModel.load(bundle, "onnxruntime").predict(audios, texts)
    ref = EmotionModel.load(bundle, "torch").predict(audios, texts)
    assert ort.shape == (2, 4)
    np.testing.assert_allclose(ort, ref, atol=1e-4)
    np.testing.assert_allclose(ort.sum(1), 1.0, atol=1e-5)


def test_per_utterance_features_equal_batched(bundle):
    from crab_rt.runtime.emotion_model import EmotionModel

    model = EmotionModel.load(bundle, "onnxruntime")
    audios, texts = _inputs()
    batched = model.predict(audios, texts)
    alone = np.concatenate([model.predict([a], [t]) for a, t in zip(audios, texts)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_session_input_check_and_errors(bundle):
    from crab_rt.backends.select import load_sessions

    sessions, _ = load_sessions(bundle, "onnxruntime")
    with pytest.raises(BackendError, match="missing \\['attention_mask'\\]"):
        sessions["text_encoder"].run({"input_ids": np.zeros((1, 3), dtype=np.int64)})
    with pytest.raises(ConfigError, match="unknown backend 'cuda'"):
        load_sessions(bundle, "cuda")
    with pytest.raises(ConfigError, match="fp16 graphs are for GPUs"):
        load_sessions(bundle, "onnxruntime", precision="fp16")
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        load_sessions(bundle, "onnxruntime", gpu=0)
    from crab_rt.backends.torch import torch_cuda_available

    if not torch_cuda_available():  # on a GPU machine the device is there
        with pytest.raises(BackendError, match="no CUDA device"):
            load_sessions(bundle, "torch", gpu=0)


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(bundle):
    from crab_rt.backends.select import load_sessions
    from crab_rt.backends.tensorrt import tensorrt_available
    from crab_rt.errors import CrabError

    ok, why = tensorrt_available()
    if ok:
        pytest.skip("TensorRT is installed here")
    assert why
    with pytest.raises(CrabError):
        load_sessions(bundle, "tensorrt", gpu=0)


def test_torch_compile_matches_eager_and_rejects_bad_modes(bundle):
    """torch.compile (inductor) really compiles the text encoder and reproduces eager; bad modes are one-line errors."""
    import torch._dynamo

    from crab_rt.backends.torch import load_torch_sessions

    eager = load_torch_sessions(bundle, "cpu")
    compiled = load_torch_sessions(bundle, "cpu", "inductor")
    assert compiled["text_encoder"].provider == "torch cpu compile=inductor"
    ids = np.array([[0, 11, 12, 13, 2, 1], [0, 21, 2, 1, 1, 1]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)}
    torch._dynamo.reset()
    got = compiled["text_encoder"].run(feed)["hidden_states"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo captured a graph
    np.testing.assert_allclose(got, eager["text_encoder"].run(feed)["hidden_states"], atol=1e-5)
    with pytest.raises(BackendError, match="unknown compile mode 'max'"):
        load_torch_sessions(bundle, "cpu", "max")
    for mode in ("cuda-graphs", "capture"):
        with pytest.raises(BackendError, match=f"{mode} needs a CUDA device, not cpu"):
            load_torch_sessions(bundle, "cpu", mode)


def test_torch_compile_dynamic_shapes_serve_new_lengths_without_recompiling(bundle):
    """dynamic_shapes: one compile for batch 2 serves other lengths too (the static mode compiles per shape)."""
    import torch._dynamo

    from crab_rt.backends.torch import load_torch_sessions

    eager = load_torch_sessions(bundle, "cpu")
    compiled = load_torch_sessions(bundle, "cpu", "inductor", dynamic_shapes=True)
    assert compiled["text_encoder"].provider == "torch cpu compile=inductor dynamic"
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    rng = np.random.default_rng(0)
    graphs = []
    for length in (6, 9, 13):
        ids = rng.integers(5, 250, size=(2, length)).astype(np.int64)
        ids[1, length // 2:] = 1  # padding
        feed = {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)}
        np.testing.assert_allclose(compiled["text_encoder"].run(feed)["hidden_states"],
                                   eager["text_encoder"].run(feed)["hidden_states"], atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1] == graphs[2] == graphs[0], graphs  # 9 and 13 tokens: no new graph


@pytest.mark.parametrize("speech_preset", ["wavlm-tiny", "wavlm-large-layout"])
def test_model_parts_read_no_device_values_on_the_host(tiny_model_parts, speech_preset):
    """What CUDA graph capture (the torch backend's "capture" mode) needs, checked on the CPU: every part runs on
    fake tensors, which refuse `.item()`, data-dependent shapes and tensor truth values as a capture does.
    "wavlm-large-layout" is WavLM Large's layout (stable layer norm, LayerNorm CNN) at tiny widths."""
    import copy

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from crab_rt.model.encoders import SpeechEncoder, hf_model_from_config
    from crab_rt.model.presets import SPEECH_PRESETS

    model, _ = tiny_model_parts
    speech = model.speech_encoder
    if speech_preset == "wavlm-large-layout":
        cfg = dict(SPEECH_PRESETS["wavlm-large"][1], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                   num_conv_pos_embedding_groups=4)
        speech = SpeechEncoder(hf_model_from_config("wavlm", cfg)).eval()
        assert speech.model.config.do_stable_layer_norm
    head = copy.deepcopy(model.head)
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
        mask = torch.ones(2, 16000, dtype=torch.long)
        hidden, frames = speech(torch.randn(2, 16000), mask)
        text = model.text_encoder(torch.full((2, 8), 5), torch.ones(2, 8, dtype=torch.long))
        text_hidden = torch.randn(2, 8, text.shape[-1])
        logits = head(torch.randn(2, hidden.shape[1], model.speech_encoder.hidden_size), frames,
                      text_hidden, torch.ones(2, 8, dtype=torch.bool))
        assert tuple(hidden.shape) == (2, 49, 32) and tuple(logits.shape) == (2, 4)
        x = torch.randn(3)
        with pytest.raises(Exception, match="local_scalar_dense"):  # the check itself refuses a host read
            x.sum().item()


def test_torch_bf16_inference_on_the_cpu_and_its_parity_report(bundle):
    """bf16 (what CUDA runs on tensor cores; the CPU runs it too): encoders cast, head fp32, outputs fp32."""
    import torch

    from crab_rt.backends.torch import load_torch_sessions, precision_parity

    fp32, bf16 = load_torch_sessions(bundle, "cpu"), load_torch_sessions(bundle, "cpu", precision="bf16")
    assert bf16["speech_encoder"].provider == "torch cpu bf16" and fp32["speech_encoder"].provider == "torch cpu"
    assert {p.dtype for p in bf16["text_encoder"]._forward.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16["head"]._forward.parameters()} == {torch.float32}
    ids = np.array([[0, 11, 12, 2]], dtype=np.int64)
    hidden = bf16["text_encoder"].run({"input_ids": ids, "attention_mask": np.ones_like(ids)})["hidden_states"]
    assert hidden.dtype == np.float32 and np.isfinite(hidden).all()
    report = precision_parity(fp32, bf16)
    assert set(report) == {"probabilities", "logits", "speech_hidden", "text_hidden", "labels_equal", "samples"}
    assert report["samples"] == 4 and isinstance(report["labels_equal"], bool)
    # a tiny random model: 2.6e-3 with torch 2.13's CPU kernels, 2.6e-2 with torch 2.11's (the GPU image's)
    assert 0 < report["probabilities"] <= 5e-2 and report["speech_hidden"] <= 0.1, report
    assert precision_parity(fp32, fp32)["probabilities"] == 0.0
    with pytest.raises(BackendError, match=r"unknown precision 'int4' \(choose from fp32, bf16, fp16\)"):
        load_torch_sessions(bundle, "cpu", precision="int4")


def test_onnxruntime_threads_do_not_spin_unless_asked(bundle):
    from crab_rt.backends.select import load_sessions

    def spinning(sessions):
        return {s._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
                for s in sessions.values()}

    assert spinning(load_sessions(bundle, "onnxruntime", threads=2)[0]) == {"0"}
    assert spinning(load_sessions(bundle, "auto", threads=2, spinning=True)[0]) == {"1"}


def test_auto_fp16_on_the_cpu_warns_it_runs_fp32(bundle, caplog):
    import logging

    from crab_rt.backends.select import load_sessions

    with caplog.at_level(logging.WARNING, logger="crab_rt"):
        _, choice = load_sessions(bundle, "auto", precision="fp16")
    if choice.device != "cpu":
        pytest.skip("a GPU backend started here")
    assert choice.precision == "fp32"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["fp16 needs a GPU backend; running fp32 on the CPU"]


def test_torch_backend_keeps_the_key_padding_mask_warning_quiet(bundle):
    """torch's "mismatched key_padding_mask" UserWarning is silenced around the torch backend's call only."""
    import warnings

    from crab_rt.runtime.emotion_model import EmotionModel

    model = EmotionModel.load(bundle, "torch")
    audios, texts = _inputs()  # two lengths: padding masks are in play
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(audios, texts)
    assert not [w for w in caught if "key_padding_mask" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:  # not silenced process-wide
        warnings.simplefilter("always")
        warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated.", UserWarning, stacklevel=1)
    assert len(caught) == 1


def test_torch_backend_fp16_needs_a_gpu(bundle):
    from crab_rt.backends.select import load_sessions

    with pytest.raises(ConfigError, match=r"fp16 on a GPU only \(--gpu N\)"):
        load_sessions(bundle, "torch", precision="fp16")
