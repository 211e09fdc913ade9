"""Incremental speech encoding: split graphs, chunked front end, per-stream state, pipeline parity, fallbacks."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from crab_rt.bundle import load_bundle  # noqa: E402
from crab_rt.features import pad_waveforms  # noqa: E402
from crab_rt.runtime.segmenter import Segmenter, SegmenterConfig  # noqa: E402
from crab_rt.runtime.speech_frontend import (  # noqa: E402
    FrontendGeometry,
    IncrementalStream,
    UtteranceFrames,
    encode_split,
    run_chunks,
)

SHARED_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"


@pytest.fixture(scope="module")
def local_bundle(tiny_model_parts, tmp_path_factory) -> Path:
    """The tiny model without waveform normalisation (a LayerNorm CNN: frames are local), exported."""
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.model.crab import CrabModel
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    local = CrabModel.from_architecture({**model.architecture(), "normalize_waveform": False})
    local.load_state_dict(model.state_dict())
    root = tmp_path_factory.mktemp("local_bundle")
    ckpt = save_checkpoint(root / "model.pt", local.eval(), tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32})
    return export_bundle(ckpt, root / "bundle", ExportOptions(parity=False))


@pytest.fixture(scope="module")
def model(local_bundle):
    from crab_rt.runtime.emotion_model import EmotionModel

    m = EmotionModel.load(local_bundle, "onnxruntime")
    yield m
    m.close()


def _corpus(jfk) -> list[np.ndarray]:
    """Real speech (jfk.flac, and the shared clips when present), else nothing more."""
    clips = [jfk]
    if SHARED_SPEECH.is_dir():
        from crab_rt.audio import load_audio

        clips += [load_audio(p) for p in sorted(SHARED_SPEECH.glob("*.wav"))]
    return clips


def _whole(model, audio: np.ndarray) -> np.ndarray:
    return model.encode_speech([audio])[0].hidden


def test_manifest_records_incremental_parity(local_bundle, tiny_bundle):
    entry = load_bundle(local_bundle).incremental_speech
    assert entry["graphs"] == ["speech_frontend", "speech_backend"] and entry["within_bound"]
    assert entry["locality"] == []
    assert entry["parity"]["encoder"] <= entry["bound"]["encoder"]
    assert entry["parity"]["probabilities"] <= entry["bound"]["probabilities"]
    assert entry["parity"]["force_split"] >= 1
    assert (entry["stride_samples"], entry["receptive_field_samples"]) == (320, 400)
    manifest = json.loads((local_bundle / "manifest.json").read_text())
    assert {"speech_frontend", "speech_backend"} <= set(manifest["graphs"])
    assert load_bundle(local_bundle).graph_names == ("speech_encoder", "speech_classifier", "text_encoder", "head")
    # The default tiny model normalises the waveform over the utterance: not local, no split graphs.
    entry = load_bundle(tiny_bundle).incremental_speech
    assert not entry["within_bound"] and entry["graphs"] == []
    assert "normalize_waveform" in entry["locality"][0]
    assert entry["parity"]["encoder"] > entry["bound"]["encoder"]
    assert not (tiny_bundle / "speech_frontend.onnx").exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_front_end_equals_whole(model, jfk, seed):
    """Frames from random chunkings (and coalesced visits) equal the whole-utterance frames."""
    rng = np.random.default_rng(seed)
    frontend = model.split["speech_frontend"]
    start = int(rng.integers(0, 16000))
    audio = jfk[start: start + int(rng.integers(8000, 64000))]
    whole = frontend.run({"input_values": audio[None]})["features"][0]
    state = UtteranceFrames(0, model.frontend_geometry)
    pos = 0
    while pos < audio.size:
        step = int(rng.integers(1, 5000))
        state.append(audio[pos: pos + step])
        pos += step
        if rng.random() < 0.5:
            run_chunks(frontend, [state], max_chunks=int(rng.integers(1, 5)))
    got = state.frames_for(audio)
    assert got is not None and 0 < got.shape[0] <= whole.shape[0]
    np.testing.assert_allclose(got, whole[: got.shape[0]], atol=1e-5, rtol=0)
    hidden, _ = encode_split(frontend, model.split["speech_backend"], model.frontend_geometry, [audio], [None])
    np.testing.assert_allclose(hidden[0], _whole(model, audio), atol=1e-4, rtol=0)


def test_state_refuses_audio_it_did_not_see(model, jfk):
    state = UtteranceFrames(0, model.frontend_geometry)
    state.append(jfk[:16000])
    run_chunks(model.split["speech_frontend"], [state])
    other = jfk[:16000].copy()
    other[100] += 0.5
    assert state.frames_for(other) is None  # the whole front end runs instead
    assert not state.chunk_ready()  # closed


def _segment(audio: np.ndarray, probs: np.ndarray, config: SegmenterConfig, geometry, frontend, rng):
    """Run a segmenter on `audio` with the given per-frame probabilities and an IncrementalStream beside it,
    as `Stream.accept` does; returns (utterances, their states)."""
    visits: list[UtteranceFrames] = []
    seg = Segmenter(config)
    tracker = IncrementalStream(geometry, visits.append)
    utterances, states = [], []
    for i, p in enumerate(probs):
        done = seg.push(audio[i * 512: (i + 1) * 512], float(p))
        states += tracker.sync(seg, done)
        utterances += done
        if visits and rng.random() < 0.7:
            for v in visits:
                v.queued = False
            run_chunks(frontend, visits)
            visits.clear()
    last = seg.flush()
    done = [last] if last is not None else []
    states += tracker.sync(seg, done)
    utterances += done
    return utterances, states


def test_stream_tracker_with_false_starts_and_forced_splits(model, jfk):
    """Every utterance of a segmenter (pre-roll, false starts, forced splits) encodes as the whole pass."""
    rng = np.random.default_rng(3)
    frames = jfk.size // 512
    probs = np.zeros(frames)
    probs[10:14] = 0.9  # a false start: 128 ms of speech < min_speech_ms, dropped
    probs[40:200] = 0.9  # a long region: split at max_utterance_s
    probs[230:236] = 0.9  # another false start
    probs[260:330] = 0.9
    config = SegmenterConfig(max_utterance_s=2.0, min_speech_ms=250)
    utterances, states = _segment(jfk, probs, config, model.frontend_geometry, model.split["speech_frontend"], rng)
    assert len(utterances) >= 4 and any(u.forced_split for u in utterances)
    assert sum(s is not None for s in states) >= 3  # most utterances come with their frames
    hidden, _ = encode_split(model.split["speech_frontend"], model.split["speech_backend"], model.frontend_geometry,
                             [u.audio for u in utterances], states)
    for u, h in zip(utterances, hidden):
        np.testing.assert_allclose(h, _whole(model, u.audio), atol=1e-4, rtol=0)


def _events(bundle, audio: np.ndarray, incremental: bool, backend: str = "onnxruntime", chunk_seed: int = 0):
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(asr=None, backend=backend, incremental_speech=incremental,
                            segmenter=SegmenterConfig(max_utterance_s=3.0))
    rng = np.random.default_rng(chunk_seed)
    with Pipeline(bundle, config) as pipeline:
        stream = pipeline.create_stream("s")
        pos = 0
        while pos < audio.size:
            step = int(rng.integers(100, 3000))
            stream.accept(audio[pos: pos + step])
            pos += step
        stream.flush()
        return list(stream.events()), pipeline


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_events_match_the_whole_pass(local_bundle, jfk, conversation, backend):
    """Labels equal and probabilities within the bundle's bound, with and without incremental encoding, on real
    speech (force-split at 3 s) and the synthetic conversation."""
    from crab_rt.audio import load_audio

    bound = load_bundle(local_bundle).incremental_speech["bound"]["probabilities"]
    clips = _corpus(jfk) + [load_audio(conversation[0])]
    if backend == "torch":
        clips = clips[:1]
    for i, audio in enumerate(clips):
        on, pipeline = _events(local_bundle, audio, True, backend, chunk_seed=i)
        assert pipeline._incremental
        off, _ = _events(local_bundle, audio, False, backend, chunk_seed=i + 10)
        assert [(e.start_s, e.end_s, e.forced_split) for e in on] == [(e.start_s, e.end_s, e.forced_split) for e in off]
        assert on and (i > 0 or any(e.forced_split for e in on))
        for a, b in zip(on, off):
            assert a.label == b.label
            assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) <= bound
        assert sum(e.latency_ms["speech_frontend"] for e in on) > 0  # work moved to during speech
        assert all("speech_frontend" not in e.latency_ms and "speech_tail" not in e.latency_ms for e in off)


def test_missed_bound_falls_back_with_one_line(tiny_bundle, jfk, caplog):
    with caplog.at_level(logging.DEBUG, logger="crab_rt"):
        events, pipeline = _events(tiny_bundle, jfk[:48000], True)
    assert not pipeline._incremental and events
    lines = [r for r in caplog.records if "incremental speech encoding off" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG  # a reason: shown with -v, not by default
    assert "misses its bound" in lines[0].getMessage() and "normalize_waveform" in lines[0].getMessage()


def test_old_bundle_without_split_graphs_runs(local_bundle, jfk, tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(local_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("speech_frontend", "speech_backend"):
        (old / manifest["graphs"].pop(name)["fp32"]["file"]).unlink()
    del manifest["incremental_speech"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.DEBUG, logger="crab_rt"):
        events, pipeline = _events(old, jfk[:48000], True)
    assert events and not pipeline._incremental
    assert any("exported before incremental encoding" in r.getMessage() for r in caplog.records)


def test_cli_flag_turns_it_off():
    import argparse

    from crab_rt.cli._pipeline_options import add_pipeline_options, pipeline_config_from_args

    p = argparse.ArgumentParser()
    add_pipeline_options(p, "block")
    on = pipeline_config_from_args(p.parse_args(["--bundle", "b", "--no-asr"]), None, live=False)
    off = pipeline_config_from_args(p.parse_args(["--bundle", "b", "--no-asr", "--no-incremental-speech"]), None,
                                    live=False)
    assert on.incremental_speech and not off.incremental_speech


def test_geometry_tail_matches_pad_waveforms():
    """Short utterances are padded to the receptive field exactly as the whole pass pads them."""
    from crab_rt.runtime.speech_frontend import tail_inputs

    g = FrontendGeometry(normalize=True)
    audio = np.linspace(-1, 1, 250, dtype=np.float32)
    values, count = tail_inputs(audio, 0, g)
    whole, _ = pad_waveforms([audio], True)
    assert count == 1
    np.testing.assert_allclose(values, whole[0], atol=1e-6)
