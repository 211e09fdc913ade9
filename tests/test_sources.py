"""Audio sources (file, raw PCM, microphone) and the `crab-rt devices` command."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
import types

import numpy as np
import pytest

from crab_rt.audio import load_audio, write_wav
from crab_rt.cli import main
from crab_rt.errors import AudioError, ConfigError, DependencyError
from crab_rt.runtime.sources import FileSource, MicrophoneSource, PcmStreamSource, list_input_devices


def pcm_bytes(x: np.ndarray) -> bytes:
    return np.asarray(x, dtype="<i2").tobytes()


# -- PCM ------------------------------------------------------------------------


def test_pcm_16k_values_pass_through():
    ints = np.array([0, 16384, -16384, 32767, -32768] * 1000, dtype=np.int16)
    with PcmStreamSource(io.BytesIO(pcm_bytes(ints)), sample_rate=16000, chunk_ms=32) as src:
        chunks = list(src)
    assert src.sample_rate == 16000
    assert [c.size for c in chunks[:-1]] == [512] * (len(chunks) - 1)
    out = np.concatenate(chunks)
    assert out.dtype == np.float32 and out.size == ints.size
    np.testing.assert_array_equal(out[:5], [0.0, 0.5, -0.5, 32767 / 32768, -1.0])


def test_pcm_stereo_is_averaged():
    frames = np.array([[1000, 3000]] * 100, dtype=np.int16)
    out = np.concatenate(list(PcmStreamSource(io.BytesIO(pcm_bytes(frames)), 16000, channels=2)))
    assert out.size == 100
    np.testing.assert_allclose(out, 2000 / 32768)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_pcm_resamples_to_16k(rate):
    t = np.arange(rate * 2) / rate
    ints = (np.sin(2 * np.pi * 440 * t) * 16000).astype(np.int16)
    out = np.concatenate(list(PcmStreamSource(io.BytesIO(pcm_bytes(ints)), rate, chunk_ms=20)))
    assert abs(out.size - 32000) <= 16  # 2 s at 16 kHz
    # Still a 440 Hz tone at about the same level.
    spectrum = np.abs(np.fft.rfft(out[4000:20000]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)  # 16000-point FFT at 16 kHz: 1 Hz bins
    assert np.sqrt(np.mean(out[4000:28000] ** 2)) == pytest.approx(16000 / 32768 / np.sqrt(2), rel=0.02)


def test_pcm_trailing_byte_is_reported(caplog):
    data = pcm_bytes(np.arange(100, dtype=np.int16)) + b"\x01"
    src = PcmStreamSource(io.BytesIO(data), 16000)
    with caplog.at_level(logging.WARNING, logger="crab_rt.runtime.sources"):
        out = np.concatenate(list(src))
    assert out.size == 100 and src.trailing_bytes == 1
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "1 trailing byte(s)" in record.getMessage()


def test_pcm_rejects_bad_formats():
    with pytest.raises(AudioError, match="sample width 3 bytes is not supported"):
        PcmStreamSource(io.BytesIO(b""), 16000, sample_width=3)
    with pytest.raises(AudioError, match="sample rate 0 Hz"):
        PcmStreamSource(io.BytesIO(b""), 0)
    with pytest.raises(AudioError, match="channels = 0"):
        PcmStreamSource(io.BytesIO(b""), 16000, channels=0)
    with pytest.raises(ConfigError, match="chunk_ms = 0"):
        PcmStreamSource(io.BytesIO(b""), 16000, chunk_ms=0)
    assert list(PcmStreamSource(io.BytesIO(b""), 16000)) == []


def test_pcm_short_reads_from_a_pipe_like_stream():
    class Dribble(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:  # returns 3 bytes at a time, splitting samples
            out, self.data = self.data[:3], self.data[3:]
            return out

    ints = np.arange(-500, 500, dtype=np.int16)
    out = np.concatenate(list(PcmStreamSource(Dribble(pcm_bytes(ints)), 16000)))
    np.testing.assert_array_equal(out, ints / 32768.0)


# -- files -----------------------------------------------------------------------


def test_file_source_chunks_equal_the_file(tmp_path):
    audio = (np.sin(np.arange(16000) / 10.0) * 0.5).astype(np.float32)
    path = tmp_path / "a.wav"
    write_wav(path, audio)
    with FileSource(path, chunk_ms=32) as src:
        chunks = list(src)
    assert src.sample_rate == 16000 and src.duration_s == 1.0
    assert [c.size for c in chunks] == [512] * 31 + [16000 - 31 * 512]
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path))


def test_file_source_realtime_pacing(tmp_path):
    path = tmp_path / "b.wav"
    write_wav(path, np.zeros(4800, np.float32))  # 0.3 s
    t0 = time.perf_counter()
    n = sum(c.size for c in FileSource(path, chunk_ms=50, realtime=True))
    elapsed = time.perf_counter() - t0
    assert n == 4800 and 0.28 <= elapsed < 1.0


def test_file_source_close_stops_iteration(tmp_path):
    path = tmp_path / "c.wav"
    write_wav(path, np.zeros(16000, np.float32))
    src = FileSource(path, chunk_ms=100)
    it = iter(src)
    next(it)
    src.close()
    assert list(it) == []


def test_file_source_errors(tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="corrupt.wav"):
        FileSource(bad)
    with pytest.raises(AudioError, match="not found"):
        FileSource(tmp_path / "missing.wav")


# -- microphone ------------------------------------------------------------------


@pytest.fixture
def no_pyaudio(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` raise ImportError


def test_microphone_without_pyaudio(no_pyaudio):
    with pytest.raises(DependencyError, match=r"pip install 'crab-rt\[mic\]'.*portaudio19-dev.*brew install portaudio"):
        MicrophoneSource()
    with pytest.raises(DependencyError, match="pyaudio"):
        list_input_devices()


def test_devices_command_without_pyaudio(no_pyaudio, capsys):
    assert main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crab-rt: error: ") and "crab-rt[mic]" in err and err.count("\n") == 1


class FakeStream:
    """A PortAudio stream that records nothing by itself: tests call `callback`, or `on_start` feeds it."""

    def __init__(self, callback, on_start=None):
        self.callback = callback
        self.on_start = on_start
        self.active = self.stopped = self.closed = False
        self.starts = 0

    def start_stream(self):
        self.active = True
        self.starts += 1
        if self.on_start is not None:
            threading.Thread(target=self.on_start, args=(self,), daemon=True).start()

    def is_active(self):
        return self.active and not self.closed

    def stop_stream(self):
        self.active = False
        self.stopped = True

    def close(self):
        self.closed = True


def make_fake_pyaudio(supported_rates=(16000,), on_start=None):
    """A stand-in `pyaudio` module with two input devices and one output-only device.

    `on_start(stream)`, if given, runs on its own thread (as PortAudio's callback thread) when a stream starts.
    """
    mod = types.ModuleType("pyaudio")
    mod.paInt16, mod.paContinue = 8, 0
    devices = [
        {"index": 0, "name": "HDA Intel: ALC (hw:0,0)", "defaultSampleRate": 48000.0, "maxInputChannels": 2},
        {"index": 1, "name": "Speakers", "defaultSampleRate": 48000.0, "maxInputChannels": 0},
        {"index": 2, "name": "USB Mic", "defaultSampleRate": 44100.0, "maxInputChannels": 1},
    ]
    mod.opened = []

    class PyAudio:
        terminated = False

        def get_device_count(self):
            return len(devices)

        def get_device_info_by_index(self, i):
            return devices[i]

        def get_default_input_device_info(self):
            return devices[0]

        def is_format_supported(self, rate, **kwargs):
            if rate not in supported_rates:
                raise ValueError("Invalid sample rate")
            return True

        def open(self, **kwargs):
            s = FakeStream(kwargs["stream_callback"], on_start)
            s.kwargs = kwargs
            if kwargs.get("start", True):
                s.start_stream()
            mod.opened.append(s)
            return s

        def terminate(self):
            self.terminated = True

    mod.PyAudio = PyAudio
    return mod


def test_list_devices_and_command_with_fake_pyaudio(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio())
    devs = list_input_devices()
    assert [d["index"] for d in devs] == [0, 2]
    assert devs[1] == {"index": 2, "name": "USB Mic", "default_sample_rate": 44100.0, "max_input_channels": 1, "is_default": False}
    assert main(["devices"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["index", "name", "rate_hz", "channels"]
    assert out[1].split()[0] == "0*" and out[2].split() == ["2", "USB", "Mic", "44100", "1"]


def test_microphone_device_resolution(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio())
    with MicrophoneSource() as mic:
        assert mic.device["index"] == 0 and mic.input_rate == 16000
    assert MicrophoneSource("usb").device["index"] == 2
    assert MicrophoneSource("2").device["index"] == 2
    with pytest.raises(AudioError, match=r"device 1 not found; run 'crab-rt devices'"):
        MicrophoneSource(1)  # output-only
    with pytest.raises(AudioError, match=r"no audio input device named 'webcam'; run 'crab-rt devices'"):
        MicrophoneSource("webcam")


def test_microphone_resamples_queues_and_drops(monkeypatch):
    fake = make_fake_pyaudio(supported_rates=())
    monkeypatch.setitem(sys.modules, "pyaudio", fake)
    mic = MicrophoneSource("USB Mic", chunk_ms=20, max_queue_chunks=3)
    assert mic.input_rate == 44100 and mic.chunk_samples == 882
    stream = fake.opened[-1]
    assert stream.kwargs["rate"] == 44100 and stream.kwargs["input_device_index"] == 2
    tone = (np.sin(np.arange(882 * 5) * 0.05) * 8000).astype(np.int16)
    for k in range(5):  # the consumer is not reading: 2 of 5 chunks are dropped
        assert stream.callback(pcm_bytes(tone[k * 882 : (k + 1) * 882]), 882, {}, 0) == (None, 0)
    assert mic.dropped_chunks == 2 and mic._queue.qsize() == 3
    got: list[np.ndarray] = []
    consumer = threading.Thread(target=lambda: got.extend(mic), daemon=True)
    consumer.start()
    for k in range(5):  # soxr holds back its first ~40 ms: feed more so output appears
        deadline = time.monotonic() + 5
        while mic._queue.qsize() and time.monotonic() < deadline:  # as fast as the consumer reads: no more drops
            time.sleep(0.002)
        stream.callback(pcm_bytes(tone[k * 882 : (k + 1) * 882]), 882, {}, 0)
    deadline = time.monotonic() + 5
    while mic._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    mic.close()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert stream.stopped and stream.closed
    total = sum(c.size for c in got)
    assert 1000 < total <= 8 * 320 and all(c.dtype == np.float32 for c in got)
    assert mic.dropped_chunks == 2
    mic.close()  # idempotent


def _iterate_until_error(mic, timeout=10.0):
    """Iterate `mic` on a thread; returns (chunks, the exception it raised or None, seconds it took)."""
    got, errors = [], []

    def consume():
        try:
            got.extend(mic)
        except Exception as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    t0 = time.monotonic()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout)
    assert not consumer.is_alive(), "the microphone iterator hung"
    return got, (errors[0] if errors else None), time.monotonic() - t0


def _chunk_bytes(n=512):
    return pcm_bytes((np.sin(np.arange(n) * 0.05) * 8000).astype(np.int16))


def test_microphone_starts_recording_when_iteration_starts(monkeypatch):
    """Opening checks the device; nothing is recorded (and nothing goes stale in the queue) before iteration."""
    fake = make_fake_pyaudio()
    monkeypatch.setitem(sys.modules, "pyaudio", fake)
    mic = MicrophoneSource(chunk_ms=32)
    stream = fake.opened[-1]
    assert stream.kwargs["start"] is False and stream.starts == 0 and not stream.is_active()
    it = iter(mic)
    stream.callback(_chunk_bytes(), 512, {}, 0)
    assert next(it).size == 512 and stream.starts == 1
    mic.close()
    assert list(it) == []


def test_microphone_close_after_loss_does_not_wait_on_a_hung_teardown(monkeypatch):
    """JACK: after the server died, PortAudio's stop_stream never returns; close() gives up on it in seconds."""
    release = threading.Event()

    def on_start(stream):
        for _ in range(5):
            stream.callback(_chunk_bytes(), 512, {}, 0)
        stream.active = False  # the server went away
        stream.stop_stream = lambda: release.wait()  # and stop_stream hangs (until the test ends)

    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio(on_start=on_start))
    mic = MicrophoneSource("USB", chunk_ms=32)
    _, error, _ = _iterate_until_error(mic)
    assert isinstance(error, AudioError)
    start = time.monotonic()
    mic.close()
    took = time.monotonic() - start
    release.set()
    assert 1.5 < took < 3.5  # MicrophoneSource._RELEASE_TIMEOUT_S = 2 s, then abandoned


@pytest.mark.parametrize("how", ["inactive", "stalled", "callback_error"])
def test_microphone_lost_device_raises_within_seconds(monkeypatch, how):
    """The audio server dies / the USB mic is pulled: the iterator raises one AudioError in seconds, never hangs."""

    def on_start(stream):
        for _ in range(10):
            assert stream.callback(_chunk_bytes(), 512, {}, 0) == (None, 0)
            time.sleep(0.005)
        if how == "inactive":  # PortAudio reports the failure and stops the stream
            stream.active = False
        elif how == "callback_error":  # garbage from the driver: the callback must not raise on PortAudio's thread
            assert stream.callback(_chunk_bytes(), 512, {}, object()) == (None, 0)
        # "stalled": the callback is simply never called again, is_active() stays True

    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio(on_start=on_start))
    mic = MicrophoneSource("USB", chunk_ms=32)
    got, error, took = _iterate_until_error(mic)
    assert isinstance(error, AudioError), error
    message = str(error)
    assert message.startswith("microphone 'USB Mic' stopped delivering audio: ") and "\n" not in message
    expected = {"inactive": "PortAudio stopped the stream", "stalled": "no audio for",
                "callback_error": "the audio callback failed: TypeError"}[how]
    assert expected in message
    assert sum(c.size for c in got) > 5 * 512 * 16000 // 44100  # the chunks before the loss came out (soxr lags)
    assert took < 3.0
    mic.close()


def test_microphone_that_never_delivers_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio())
    mic = MicrophoneSource(first_audio_timeout_s=0.5, stall_timeout_s=0.5)
    got, error, took = _iterate_until_error(mic)
    assert got == [] and isinstance(error, AudioError) and "no audio arrived within 0.5 s" in str(error)
    assert took < 2.0


def test_microphone_empty_name_is_refused(monkeypatch, capsys, tiny_bundle):
    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio())
    for name in ("", "  "):
        with pytest.raises(AudioError, match="audio input device name is empty"):
            MicrophoneSource(name)
    code = main(["listen", "--bundle", str(tiny_bundle), "--no-asr", "--device", ""])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("crab-rt: error: audio input device name is empty") and err.count("\n") == 1


def test_microphone_drops_are_logged(monkeypatch, caplog):
    fake = make_fake_pyaudio()
    monkeypatch.setitem(sys.modules, "pyaudio", fake)
    mic = MicrophoneSource(chunk_ms=32, max_queue_chunks=2)
    it = iter(mic)
    stream = fake.opened[-1]
    for _ in range(5):
        stream.callback(_chunk_bytes(), 512, {}, 0)
    with caplog.at_level(logging.WARNING, logger="crab_rt.runtime.sources"):
        next(it)
    assert mic.dropped_chunks == 3
    [record] = caplog.records
    assert "3 audio chunk(s) (0.1 s) dropped" in record.getMessage()
    mic.close()


def test_listen_flushes_then_exits_2_when_the_microphone_is_lost(monkeypatch, capsys, tiny_bundle, conversation):
    """The device dies in the middle of the last turn: every turn, the cut one included, is emitted; exit 2."""
    path, truth = conversation
    audio = np.round(load_audio(path) * 32767).astype(np.int16)
    cut = int(10.9 * 16000)  # inside the last turn (10.06-11.70 s)
    assert truth[-1]["start_s"] < cut / 16000 < truth[-1]["end_s"]
    lost_at = []

    def on_start(stream):
        mic = stream.callback.__self__
        for start in range(0, cut, 512):
            while mic._queue.qsize() > mic._queue.maxsize // 2:  # as fast as the consumer goes, never dropping
                time.sleep(0.002)
            stream.callback(pcm_bytes(audio[start: min(start + 512, cut)]), 512, {}, 0)
        mic.dropped_chunks = 3  # as if processing had fallen behind three times
        lost_at.append(time.monotonic())
        stream.active = False

    monkeypatch.setitem(sys.modules, "pyaudio", make_fake_pyaudio(on_start=on_start))
    code = main(["listen", "--bundle", str(tiny_bundle), "--no-asr", "--backend", "onnxruntime", "--device", "USB"])
    finished = time.monotonic()
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and lost_at and finished - lost_at[0] < 5.0
    assert not any("Traceback" in line for line in err)
    assert [line for line in err if line.startswith("crab-rt: error:")] == err[-1:]
    assert err[-1].startswith("crab-rt: error: microphone 'USB Mic' stopped delivering audio: ")
    assert any(line.startswith("utterances 4 ") for line in err), err  # the summary still comes
    assert err[-2] == "crab-rt: warning: 3 microphone chunk(s) (0.1 s of audio) were dropped because processing " \
        "fell behind"
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert len(events) == len(truth)
    for event, turn in zip(events[:-1], truth):
        assert abs(event["start_s"] - turn["start_s"]) < 0.5 and abs(event["end_s"] - turn["end_s"]) < 0.6
    assert events[-1]["end_s"] == pytest.approx(cut / 16000, abs=0.1)  # the utterance in flight, flushed


def test_portaudio_chatter_on_stderr_is_silenced(monkeypatch, capfd):
    """ALSA/JACK print dozens of C-level lines while PortAudio probes devices: silenced, except at -v (DEBUG)."""
    import os

    fake = make_fake_pyaudio()
    noisy = fake.PyAudio

    class ChattyPyAudio(noisy):
        def __init__(self):
            os.write(2, b"ALSA lib pcm.c:2664:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear\n")

        def get_device_count(self):
            os.write(2, b"jack server is not running or cannot be started\n")
            return super().get_device_count()

    fake.PyAudio = ChattyPyAudio
    monkeypatch.setitem(sys.modules, "pyaudio", fake)
    assert main(["devices"]) == 0
    MicrophoneSource().close()
    captured = capfd.readouterr()
    assert "ALSA lib" not in captured.err and "jack server" not in captured.err and "USB Mic" in captured.out
    assert main(["devices", "-v"]) == 0
    assert "ALSA lib" in capfd.readouterr().err
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err == "fd 2 is back\n"


def test_real_microphone_if_available():
    try:
        import pyaudio  # noqa: F401
    except Exception:
        pytest.skip("pyaudio is not installed")
    devs = list_input_devices()
    if not devs:
        pytest.skip("no audio input device")
    with MicrophoneSource(chunk_ms=32) as mic:
        chunk = next(iter(mic))
    assert chunk.dtype == np.float32 and chunk.ndim == 1


def _twenty_seconds(rate, channels=1):
    t = np.arange(20 * rate) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    return np.stack([x, -x * 0.5], axis=1)[:, :channels].astype(np.float32) if channels > 1 else x.astype(np.float32)


@pytest.mark.parametrize("name, rate, channels, subtype", [
    ("a.wav", 16000, 1, "PCM_16"), ("b.wav", 44100, 2, "PCM_16"), ("c.flac", 16000, 1, "PCM_16"),
    ("d.flac", 48000, 1, "PCM_24"), ("e.ogg", 22050, 1, "VORBIS"),
])
def test_file_source_streams_what_load_audio_decodes_whole(tmp_path, name, rate, channels, subtype):
    """20 s files in several formats and rates: the streamed chunks equal the whole-file decode, memory is bounded."""
    import soundfile as sf

    path = tmp_path / name
    sf.write(str(path), _twenty_seconds(rate, channels), rate, subtype=subtype)
    whole = load_audio(path)
    src = FileSource(path, chunk_ms=32)
    chunks = list(src)
    assert all(c.size == 512 for c in chunks[:-1]) and 0 < chunks[-1].size <= 512
    streamed = np.concatenate(chunks)
    assert streamed.size == whole.size
    if rate == 16000:
        np.testing.assert_array_equal(streamed, whole)
    else:  # soxr streaming vs one call: float rounding only
        np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert 0 < src.max_buffered_samples <= 512 + 8192  # one chunk's rest plus one decoded block, never the file


def test_file_source_streams_a_pyav_only_format(tmp_path):
    """A format soundfile cannot read (AAC in MP4, via PyAV): decoded frame by frame, same samples as whole."""
    av = pytest.importorskip("av")
    path = tmp_path / "f.m4a"
    rate = 44100
    x = _twenty_seconds(rate)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(0, x.size, 1024):
            frame = av.AudioFrame.from_ndarray(x[None, i: i + 1024], format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    whole = load_audio(path)
    src = FileSource(path, chunk_ms=32)
    streamed = np.concatenate(list(src))
    np.testing.assert_array_equal(streamed, whole)
    assert abs(whole.size - 20 * 16000) < 16000
    assert src.max_buffered_samples <= 512 + 8192


def test_pcm_decoder_formats_channels_and_partial_frames():
    from crab_rt.audio import PcmDecoder

    x = np.array([0.5, -0.25, 0.125, 1.0], dtype=np.float32)
    assert np.array_equal(PcmDecoder(16000, "f32le").decode(x.astype("<f4").tobytes()), x)
    s16 = np.array([16384, -32768, 1], dtype="<i2").tobytes()
    assert np.allclose(PcmDecoder(16000, "s16le").decode(s16), [0.5, -1.0, 1 / 32768])
    stereo = np.array([[0.5, 0.25], [-1.0, 0.0]], dtype="<f4").tobytes()  # interleaved L R L R
    assert np.allclose(PcmDecoder(16000, "f32le", channels=2).decode(stereo), [0.375, -0.5])
    with pytest.raises(AudioError, match=r"client: 7 bytes is not a whole number of 32-bit x 2-channel sample frames \(8 bytes each\)"):
        PcmDecoder(16000, "f32le", 2, name="client").decode(b"\0" * 7)
    with pytest.raises(AudioError, match="NaN or infinite"):
        PcmDecoder(16000, "f32le").decode(np.array([0.0, np.nan], dtype="<f4").tobytes())
    # finite samples beyond full scale are clipped (3.4e38 would overflow the channel mean and the resampler)
    loud = np.array([[3.4e38, 3.4e38], [-2.0, 0.5], [0.25, 0.75]], dtype="<f4").tobytes()
    assert PcmDecoder(16000, "f32le", channels=2).decode(loud).tolist() == [1.0, -0.25, 0.5]
    resampled = PcmDecoder(48000, "f32le", channels=2).decode(np.full(9600, 3.4e38, "<f4").tobytes())
    assert np.all(np.isfinite(resampled)) and np.abs(resampled).max() <= 1.2  # soxr's overshoot, not inf
    with pytest.raises(AudioError, match="sample format 'u8' is not supported: one of s16le, f32le"):
        PcmDecoder(16000, "u8")
    dec = PcmDecoder(48000, "s16le")  # streaming resampler: 1 s at 48 kHz -> 1 s at 16 kHz in all
    out = np.concatenate([dec.decode(np.zeros(4800, "<i2").tobytes()) for _ in range(10)] + [dec.finish()])
    assert out.size == 16000 and out.dtype == np.float32
