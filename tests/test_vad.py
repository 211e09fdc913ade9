"""Silero VAD v6 engine: streaming equals faster-whisper's whole-file run, state per stream."""

from __future__ import annotations

import numpy as np
import pytest

from crab_rt.errors import BackendError
from crab_rt.runtime.segmenter import FrameBuffer
from crab_rt.runtime.vad import CONTEXT_SAMPLES, FRAME_SAMPLES, SileroVad, VadState, default_model_path


def test_initial_state_shapes():
    s = VadState.initial()
    assert s.h.shape == (1, 1, 128) and s.c.shape == (1, 1, 128)
    assert s.context.shape == (CONTEXT_SAMPLES,)
    assert not s.h.any() and not s.context.any()


def test_default_model_is_faster_whispers():
    path = default_model_path()
    assert path.name == "silero_vad_v6.onnx" and path.parent.name == "assets"


def test_frame_by_frame_equals_faster_whisper_whole_file(vad, jfk):
    from faster_whisper.vad import get_vad_model

    padded = np.pad(jfk, (0, FRAME_SAMPLES - jfk.size % FRAME_SAMPLES))
    ref = np.asarray(get_vad_model()(padded.copy())).reshape(-1)
    state = VadState.initial()
    frames = padded.reshape(-1, FRAME_SAMPLES)
    streamed = np.array([vad.process_stream(f, state)[0] for f in frames])
    assert streamed.shape == ref.shape == (344,)
    np.testing.assert_allclose(streamed, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(vad.whole_file_probs(jfk), ref, atol=1e-5, rtol=0)
    # The clip has speech: the probabilities are not trivially small.
    assert ref.max() > 0.9 and (ref > 0.5).mean() > 0.5


@pytest.mark.parametrize("chunk", [1, 333, 512, 1000, 7919])
def test_odd_chunks_through_frame_buffer_equal_whole_file(vad, jfk, chunk):
    whole = vad.whole_file_probs(jfk)
    buf, state, probs = FrameBuffer(), VadState.initial(), []
    audio = jfk if chunk > 100 else jfk[:20_000]  # 1-sample chunks: keep it fast
    for i in range(0, audio.size, chunk):
        frames = buf.push(audio[i : i + chunk])
        if frames.shape[0]:
            probs.append(vad.process_stream(frames, state))
    tail = buf.flush()
    padded = np.zeros(FRAME_SAMPLES, np.float32)
    padded[: tail.size] = tail
    probs.append(vad.process_stream(padded, state))
    got = np.concatenate(probs)
    np.testing.assert_allclose(got, vad.whole_file_probs(audio), atol=1e-5, rtol=0)
    if audio is jfk:
        np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)


def test_process_batches_streams_with_own_state(vad, jfk):
    # Three streams at different offsets, one frame each per call.
    streams = [jfk[o : o + 64 * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES) for o in (0, 16_000, 48_000)]
    refs = [vad.whole_file_probs(s.reshape(-1)) for s in streams]
    states = [VadState.initial() for _ in streams]
    got = np.stack([vad.process(np.stack([s[k] for s in streams]), states) for k in range(64)], axis=1)
    for g, r in zip(got, refs):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)
    assert not np.allclose(got[0], got[1])  # streams really differ


def test_silence_gives_low_probabilities(vad):
    probs = vad.whole_file_probs(np.zeros(16_000 * 2, np.float32))
    assert probs.shape == (63,)
    assert probs.max() < 0.1


def test_shape_errors(vad):
    with pytest.raises(ValueError, match=r"shape \[N, 512\]"):
        vad.process_stream(np.zeros((2, 100), np.float32), VadState.initial())
    with pytest.raises(ValueError, match="2 frames but 1 states"):
        vad.process(np.zeros((2, 512), np.float32), [VadState.initial()])


def test_missing_model_file(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        SileroVad(tmp_path / "nope.onnx")


def test_wrong_model_is_rejected(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 576])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 576])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BackendError, match=r"not a Silero VAD v6 model: inputs are \['x'\]"):
        SileroVad(path)
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot load the VAD model"):
        SileroVad(tmp_path / "garbage.onnx")
