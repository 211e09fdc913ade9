"""The streaming pipeline and `crab-rt listen`: events, flush, overflow policy, errors, no torch."""

import json
import subprocess
import sys

import numpy as np
import pytest

from crab_rt.cli import main

pytest.importorskip("torch")  # building the bundle fixture needs the [train] extra

EVENT_SCHEMA = {
    "type": "object",
    "required": ["stream_id", "utterance_id", "start_s", "end_s", "text", "text_flagged", "label", "confidence",
                 "probabilities", "latency_ms", "forced_split"],
    "properties": {
        "stream_id": {"type": "string"},
        "utterance_id": {"type": "integer", "minimum": 0},
        "start_s": {"type": "number", "minimum": 0},
        "end_s": {"type": "number"},
        "text": {"type": "string"},
        "text_flagged": {"type": "boolean"},
        "label": {"enum": ["a", "b", "c", "d"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "probabilities": {"type": "object", "required": ["a", "b", "c", "d"]},
        "latency_ms": {"type": "object", "required": ["end_to_event", "asr", "speech_encoder", "text_encoder",
                                                      "head", "queue_wait"]},
        "forced_split": {"type": "boolean"},
    },
}


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    from crab_rt.data.synth import read_conversation_truth, synthesize_conversation

    path = tmp_path_factory.mktemp("conv") / "conversation.wav"
    synthesize_conversation(path, num_turns=4, seed=0)
    return path, read_conversation_truth(path)


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    from crab_rt.data.tiny_asr import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("asr") / "tiny")


def _pipeline(bundle, asr=None, **kw):
    from crab_rt.runtime.asr import AsrConfig
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    asr_config = None if asr is None else AsrConfig(model=str(asr), device="cpu")
    return Pipeline(bundle, PipelineConfig(asr=asr_config, backend="onnxruntime", **kw))


def test_one_event_per_turn_with_boundaries(bundle, conversation, tiny_asr):
    from crab_rt.audio import load_audio

    path, truth = conversation
    audio = load_audio(path)
    with _pipeline(bundle, tiny_asr) as pipeline:
        stream = pipeline.create_stream("conv")
        for i in range(0, audio.size, 4000):  # odd chunk size on purpose
            stream.accept(audio[i: i + 4000])
        stream.flush()
        events = list(stream.events())
    assert len(events) == len(truth)
    for event, turn in zip(events, truth):
        # Event spans include pre-roll (300 ms) and post-roll (100 ms) around the detected speech. Silero is
        # less sure of synthetic voices than of real speech (the 100 ms check on real speech is in
        # test_segmenter.py), so a weak synthetic onset may be found up to ~0.45 s late.
        assert abs((event.start_s + 0.3) - turn["start_s"]) < 0.5
        assert abs((event.end_s - 0.1) - turn["end_s"]) < 0.5
        assert event.text  # the tiny ASR always emits words
        assert abs(sum(event.probabilities.values()) - 1.0) < 1e-4
        assert event.latency_ms["end_to_event"] >= event.latency_ms["head"] >= 0
    assert [e.utterance_id for e in events] == list(range(len(truth)))
    assert all(a.end_s <= b.start_s for a, b in zip(events, events[1:]))


def test_batch_of_streams_gives_same_probabilities(bundle, conversation):
    """Two streams fed together (utterances batched) give what one stream alone gives."""
    from crab_rt.audio import load_audio

    audio = load_audio(conversation[0])
    with _pipeline(bundle) as pipeline:
        alone = pipeline.create_stream("alone")
        alone.accept(audio)
        alone.flush()
        expected = [e.probabilities for e in alone.events()]
        s1, s2 = pipeline.create_stream("s1"), pipeline.create_stream("s2")
        s1.accept(audio)
        s2.accept(audio[: audio.size // 2])
        s1.flush()
        s2.flush()
        got = [e.probabilities for e in s1.events()]
        assert len(list(s2.events())) >= 1
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_flush_emits_the_utterance_in_flight(bundle, conversation):
    from crab_rt.audio import load_audio

    path, truth = conversation
    audio = load_audio(path)
    cut = int((truth[0]["start_s"] + 1.0) * 16000)  # input ends in the middle of turn 0
    with _pipeline(bundle) as pipeline:
        stream = pipeline.create_stream()
        assert stream.accept(audio[:cut]) == 0
        assert stream.flush() == 1
        events = list(stream.events())
        with pytest.raises(RuntimeError, match="accept\\(\\) after flush\\(\\)"):
            stream.accept(audio[:100])
    assert len(events) == 1 and events[0].utterance_id == 0


def test_drop_policy_bounds_work_and_counts(bundle, conversation):
    from crab_rt.audio import load_audio

    audio = load_audio(conversation[0])
    with _pipeline(bundle, max_in_flight=1, overflow="drop") as pipeline:
        pipeline._admission.acquire()  # simulate a slow consumer: the only slot is taken
        stream = pipeline.create_stream()
        stream.accept(audio)
        stream.flush()
        assert stream.dropped_utterances == len(conversation[1])
        assert stream.get_event(timeout=5) is None
        pipeline._admission.release()


def test_unread_event_queue_drops_oldest(bundle, conversation):
    from crab_rt.audio import load_audio

    audio = load_audio(conversation[0])
    with _pipeline(bundle, event_queue_size=1) as pipeline:
        stream = pipeline.create_stream()
        stream.accept(audio)
        stream.flush()
        stream.wait(timeout=30)
        events = list(stream.events())
    assert stream.dropped_events == len(conversation[1]) - 1 + 1  # the end marker pushes the last event out too
    assert events == []


def test_listen_cli_jsonl_schema_and_summary(bundle, conversation, tiny_asr, tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "events.jsonl"
    code = main(["listen", "--bundle", str(bundle), "--input", str(conversation[0]), "--asr", str(tiny_asr),
                 "--backend", "onnxruntime", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == len(conversation[1])
    for e in events:
        jsonschema.validate(e, EVENT_SCHEMA)
    assert "backend onnxruntime" in err and f"utterances {len(events)}" in err and "end_to_event" in err


def test_listen_stdin_pcm(bundle, conversation):
    from crab_rt.audio import load_audio

    pcm = (np.clip(load_audio(conversation[0]), -1, 1) * 32767).astype("<i2").tobytes()
    proc = subprocess.run(
        [sys.executable, "-m", "crab_rt.cli", "listen", "--bundle", str(bundle), "--input", "-", "--no-asr",
         "--backend", "onnxruntime"], input=pcm, capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout.decode().splitlines()) == len(conversation[1])


@pytest.mark.parametrize("args,message", [
    (["--input", "{missing}"], "audio file not found"),
    (["--input", "{corrupt}"], "cannot decode audio"),
    (["--input", "{empty}"], "holds no samples"),
    ([], "give exactly one input"),
    (["--input", "-", "--rate", "0"], "rate"),
    (["--device", "0"], "pip install 'crab-rt[mic]'"),
    (["--input", "{wav}", "--asr", "{missing}"], "does not exist"),
])
def test_listen_bad_input_is_one_line_exit_2(args, message, bundle, conversation, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(64))
    empty = tmp_path / "empty.wav"
    import soundfile as sf

    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    paths = {"missing": tmp_path / "nope.wav", "corrupt": corrupt, "empty": empty, "wav": conversation[0]}
    args = [a.format(**paths) for a in args]
    code = main(["listen", "--bundle", str(bundle), "--backend", "onnxruntime", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and err[-1].startswith("crab-rt: error:")


def test_listen_broken_bundle(bundle, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "head.onnx").write_bytes(b"tampered")
    assert main(["listen", "--bundle", str(broken), "--input", "x.wav"]) == 2
    assert "head.onnx" in capsys.readouterr().err


def test_onnx_runtime_path_never_imports_torch(bundle, conversation):
    code = f"""
import sys
from crab_rt.runtime.pipeline import Pipeline, PipelineConfig
from crab_rt.audio import load_audio
p = Pipeline({str(bundle)!r}, PipelineConfig(asr=None, backend="auto"))
s = p.create_stream()
s.accept(load_audio({str(conversation[0])!r}))
s.flush()
n = len(list(s.events()))
p.close()
bad = [m for m in ("torch", "transformers", "tensorrt") if m in sys.modules]
print(n, bad)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1:] == ["[]"]
    assert int(proc.stdout.split()[0]) >= 1


def test_ctrl_c_flushes_and_exits_0(bundle, conversation):
    """SIGINT in the middle of a real-time replay: the utterances so far are emitted, exit 0."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "crab_rt.cli", "listen", "--bundle", str(bundle), "--input", str(conversation[0]),
         "--realtime", "--no-asr", "--backend", "onnxruntime"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    second_turn_end = conversation[1][1]["end_s"]
    time.sleep(second_turn_end + 2.5)  # startup, then the second turn and its hangover have passed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert 2 <= len(events) < len(conversation[1])
    assert "interrupted" in err
