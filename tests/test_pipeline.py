"""The streaming pipeline and `crab-rt listen`: events, flush, overflow policy, errors, no torch."""

import importlib.util
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
    # one status line (what runs where), then the summary; nothing else at the default level
    lines = err.splitlines()
    assert lines[0].startswith("crab-rt: backend onnxruntime (CPUExecutionProvider, ") and ": " not in lines[0][9:]
    assert lines[0].endswith(f"; ASR {tiny_asr} on cpu")
    assert lines[1].startswith(f"utterances {len(events)} ") and "end_to_event" in err
    assert all(line.startswith("  ") for line in lines[2:])
    assert "input faster than real time" in lines[-1]  # a file without --realtime: the latencies include queueing

    code = main(["listen", "--bundle", str(bundle), "--input", str(conversation[0]), "--asr", str(tiny_asr),
                 "--backend", "onnxruntime", "--output", str(out), "-v"])
    err = capsys.readouterr().err
    assert code == 0
    for reason in ("core budget: ", "incremental speech encoding ", f"asr model: folder {tiny_asr}",
                   "backend onnxruntime (CPUExecutionProvider, fp32) on cpu: "):
        assert reason in err  # -v: the reasons behind each choice


def test_listen_quiet_keeps_events_and_summary_only(bundle, conversation, capsys):
    code = main(["listen", "--bundle", str(bundle), "--input", str(conversation[0]), "--no-asr",
                 "--backend", "onnxruntime", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert len(captured.out.splitlines()) == len(conversation[1])
    assert "backend onnxruntime" not in captured.err
    assert captured.err.startswith("utterances ") and "end_to_event" in captured.err


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
    # Without PyAudio: the extra to install; with it (make mic-stack): no such device, wherever the test runs.
    (["--device", "987"], "pip install 'crab-rt[mic]'" if importlib.util.find_spec("pyaudio") is None
     else "audio input device"),
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


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_flushes_and_exits_0(bundle, conversation, sig):
    """SIGINT (Ctrl-C) or SIGTERM (systemd, docker stop) in the middle of a real-time replay: the utterances so far
    are emitted, the summary is printed, exit 0."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "crab_rt.cli", "listen", "--bundle", str(bundle), "--input", str(conversation[0]),
         "--realtime", "--no-asr", "--backend", "onnxruntime"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell starts background jobs (`make test &`) with SIGINT ignored, and Python then installs no Ctrl-C
        # handler: give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Signal once the second turn's event is out: the last turn (at 10 s of audio) is then seconds away, however
    # long the start took.
    first = [proc.stdout.readline() for _ in range(2)]
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in first + out.splitlines() if line.strip()]
    # Stopped by the signal before the end of the file (on a loaded machine the pipeline can lag the reader, so
    # the turns read by then may all be emitted: the count of events alone does not show the interruption).
    assert len(events) >= 2 and "interrupted; " in err  # the summary line
    audio_s = float(err.split("audio ", 1)[1].split()[0])
    import soundfile

    assert audio_s < soundfile.info(str(conversation[0])).duration


def test_listen_restores_the_sigterm_handler(bundle, conversation):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert main(["listen", "--bundle", str(bundle), "--input", str(conversation[0]), "--no-asr",
                 "--backend", "onnxruntime", "--quiet"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("num_streams", [20, 60])
def test_close_while_threads_feed_ends_every_stream(bundle, conversation, num_streams):
    """close() from one thread while four others feed the streams: no wait() or events() hangs, later accept raises."""
    import threading
    import time

    from crab_rt.audio import load_audio

    audio = load_audio(conversation[0])
    pipeline = _pipeline(bundle, max_in_flight=4)
    streams = [pipeline.create_stream(f"s{i}") for i in range(num_streams)]
    refused = []

    def feed(mine):
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the conversation over and over, until close() refuses
                for i in range(0, audio.size, 3200):
                    for stream in mine:
                        stream.accept(audio[i: i + 3200])
        except RuntimeError as e:
            refused.append(str(e))

    feeders = [threading.Thread(target=feed, args=(streams[k::4],), daemon=True) for k in range(4)]
    for t in feeders:
        t.start()
    time.sleep(1.0)  # some utterances are in flight, some streams mid-utterance
    closer = threading.Thread(target=pipeline.close, daemon=True)
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "close() hangs"
    for t in feeders:
        t.join(30)
        assert not t.is_alive(), "a feeder hangs"
    assert refused and all("pipeline closed" in m for m in refused)

    results = {}

    def drain(stream):
        try:
            results[stream.stream_id] = (stream.wait(), len(list(stream.events())))
        except RuntimeError as e:
            results[stream.stream_id] = e

    readers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in streams]
    for t in readers:
        t.start()
    for t in readers:
        t.join(10)
    assert len(results) == num_streams, f"{num_streams - len(results)} streams hang in wait()/events()"
    assert all(r[0] is True for r in results.values() if not isinstance(r, BaseException))
    assert sum(s.emitted for s in streams) == sum(r[1] for r in results.values())  # every event delivered
    for stream in streams:
        with pytest.raises(RuntimeError, match="pipeline closed"):
            stream.accept(audio[:10])  # a chunk too small to finish any utterance is refused too
        with pytest.raises(RuntimeError, match="pipeline closed"):
            stream.flush()


def _failing(message, gate=None):
    """A model method that raises RuntimeError(message), after `gate` is set when one is given."""
    def fail(*args, **kwargs):
        if gate is not None:
            gate.wait(30)
        raise RuntimeError(message)
    return fail


def test_worker_error_is_raised_by_every_later_call_of_the_stream(bundle, conversation, monkeypatch):
    from crab_rt.audio import load_audio
    from crab_rt.errors import BackendError

    audio = load_audio(conversation[0])
    with _pipeline(bundle) as pipeline:
        monkeypatch.setattr(pipeline.model, "encode_speech", _failing("speech encoder exploded"))
        stream = pipeline.create_stream("s")
        assert stream.accept(audio) >= 1  # submitted; the speech worker fails on them
        with pytest.raises(BackendError, match="speech encoder failed: RuntimeError: speech encoder exploded"):
            stream.wait(timeout=30)
        calls = [lambda: stream.accept(audio[:512]), stream.flush, lambda: stream.wait(timeout=5),
                 lambda: stream.get_event(timeout=5), lambda: list(stream.events())]
        for call in calls:
            with pytest.raises(BackendError, match="exploded") as info:
                call()
            assert isinstance(info.value.__cause__, RuntimeError)
        assert isinstance(stream.error, BackendError)
        with pytest.raises(BackendError, match="exploded"):
            pipeline.check()  # kept for compatibility


def test_worker_error_wakes_a_blocked_reader(bundle, conversation, monkeypatch):
    """The head fails while the caller is blocked in get_event: it wakes and raises, it does not hang."""
    import threading
    import time

    from crab_rt.audio import load_audio
    from crab_rt.errors import BackendError

    audio = load_audio(conversation[0])
    gate = threading.Event()
    with _pipeline(bundle) as pipeline:
        monkeypatch.setattr(pipeline.model, "classify", _failing("head exploded", gate))
        stream = pipeline.create_stream()
        stream.accept(audio)
        assert stream.flush() >= 0  # no error yet: the head is held at the gate
        timer = threading.Timer(0.3, gate.set)
        timer.start()
        start = time.perf_counter()
        with pytest.raises(BackendError, match="text encoder \\+ head failed: RuntimeError: head exploded"):
            stream.get_event(timeout=30)
        assert time.perf_counter() - start < 20
        timer.join()


def test_worker_error_fails_only_its_batch(bundle, conversation, monkeypatch):
    """A per-batch failure fails the streams in that batch; later streams run normally."""
    import itertools

    from crab_rt.audio import load_audio
    from crab_rt.errors import BackendError

    path, truth = conversation
    audio = load_audio(path)
    cut = int((truth[0]["start_s"] + 1.0) * 16000)
    with _pipeline(bundle) as pipeline:
        real, calls = pipeline.model.encode_speech, itertools.count()

        def flaky(audios):
            if next(calls) == 0:
                raise RuntimeError("first batch exploded")
            return real(audios)

        monkeypatch.setattr(pipeline.model, "encode_speech", flaky)
        bad = pipeline.create_stream("bad")
        bad.accept(audio[:cut])
        assert bad.flush() == 1
        with pytest.raises(BackendError, match="first batch exploded"):
            bad.wait(timeout=30)
        good = pipeline.create_stream("good")
        good.accept(audio)
        good.flush()
        assert good.wait(timeout=60)
        assert len(list(good.events())) == len(truth) and good.error is None
        with pytest.raises(BackendError):
            pipeline.check()


def test_on_event_error_fails_its_stream_as_is(bundle, conversation):
    from crab_rt.audio import load_audio

    audio = load_audio(conversation[0])

    def broken(event):
        raise BrokenPipeError("reader went away")

    with _pipeline(bundle) as pipeline:
        stream = pipeline.create_stream(on_event=broken)
        stream.accept(audio)
        with pytest.raises(BrokenPipeError, match="reader went away"):
            stream.flush()
            stream.wait(timeout=30)
        assert pipeline.error is None  # the caller's callback, not a worker


def test_listen_worker_error_is_one_line_exit_2(bundle, conversation, tmp_path, monkeypatch, capsys):
    from crab_rt.runtime.emotion_model import EmotionModel

    monkeypatch.setattr(EmotionModel, "encode_speech", _failing("speech encoder exploded\nsecond line"))
    out = tmp_path / "events.jsonl"
    code = main(["listen", "--bundle", str(bundle), "--input", str(conversation[0]), "--no-asr",
                 "--backend", "onnxruntime", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("crab-rt: error:")] == lines[-1:]
    assert "speech encoder failed: RuntimeError: speech encoder exploded second line" in lines[-1]
    assert out.read_text() == ""


def test_stream_state_is_read_only_properties(bundle, conversation):
    from crab_rt.audio import load_audio

    path, truth = conversation
    audio = load_audio(path)
    cut = int((truth[0]["start_s"] + 1.0) * 16000)  # in the middle of turn 0
    with _pipeline(bundle) as pipeline:
        stream = pipeline.create_stream("props")
        assert not stream.in_speech
        stream.accept(audio[:cut])
        assert stream.in_speech and stream.samples_accepted == cut and not stream.flushed
        stream.flush()
        stream.wait(timeout=30)
        assert not stream.in_speech and stream.flushed
        assert (stream.emitted, stream.dropped_utterances, stream.dropped_events, stream.error) == (1, 0, 0, None)
        for name in ("in_speech", "samples_accepted", "emitted", "dropped_utterances", "dropped_events", "flushed"):
            with pytest.raises(AttributeError):
                setattr(stream, name, 0)
        assert pipeline.latencies.count == 1


def test_latency_histogram_is_bounded_and_matches_numpy():
    from crab_rt.runtime.summary import LatencyHistogram

    def storage(obj):  # bytes held by every attribute of the object
        return sum(v.nbytes if isinstance(v, np.ndarray) else sys.getsizeof(v) for v in vars(obj).values())

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(3.0, 1.5, 99_000), np.zeros(500), rng.uniform(1e6, 2e6, 500)])
    rng.shuffle(values)
    hist = LatencyHistogram()
    for i, v in enumerate(values, 1):
        hist.add(v)
        if i == 10_000:
            size_at_10k = storage(hist)
    assert storage(hist) == size_at_10k < 100_000  # fixed buckets, whatever the run length
    assert hist.count == values.size and hist.min == values.min() and hist.max == values.max()
    assert hist.mean == pytest.approx(values.mean(), rel=1e-9)
    for q in (0, 0.1, 1, 5, 25, 50, 75, 95, 99, 99.9, 100):
        expected = np.percentile(values, q)
        assert abs(hist.percentile(q) - expected) <= LatencyHistogram.RELATIVE_ERROR * expected + 1e-9, q
    assert LatencyHistogram().percentile(50) is None


def test_run_summary_from_stats_matches_the_raw_values():
    from crab_rt.runtime.events import LATENCY_KEYS
    from crab_rt.runtime.summary import LatencyStats, format_summary, run_summary

    rng = np.random.default_rng(1)
    latencies = [{k: float(rng.uniform(1, 500)) for k in LATENCY_KEYS} for _ in range(7)]
    stats = LatencyStats()
    for lat in latencies:
        stats.add(lat)
    summary = run_summary(stats, 10.0, 2.0, dropped=1)
    assert summary == run_summary(latencies, 10.0, 2.0, dropped=1)
    assert summary["utterances"] == 7 and summary["real_time_factor"] == 0.2
    for key in LATENCY_KEYS:
        values = [lat[key] for lat in latencies]
        for q in (50, 95):
            assert summary["latency_ms"][key][f"p{q}"] == pytest.approx(np.percentile(values, q), rel=0.006)
    text = format_summary(run_summary(stats, 10.0, 2.0, dropped=1, paced=True))
    assert text.splitlines()[0] == "utterances 7  audio 10.0 s  wall 2.0 s  RTF 0.2  dropped 1"
    assert len(text.splitlines()) == 1 + len(LATENCY_KEYS)
    # 10 s of audio in 2 s of unknown pace came faster than real time: the summary says its latencies queue
    assert summary["paced"] is False and run_summary(stats, 10.0, 9.9)["paced"] is True
    note = format_summary(summary).splitlines()
    assert len(note) == 2 + len(LATENCY_KEYS) and "faster than real time" in note[-1] and "--realtime" in note[-1]
