"""Audio sources (file, raw PCM, microphone) and the `crab-rt devices` command."""

from __future__ import annotations

import io
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
    def __init__(self, callback):
        self.callback = callback
        self.stopped = self.closed = False

    def stop_stream(self):
        self.stopped = True

    def close(self):
        self.closed = True


def make_fake_pyaudio(supported_rates=(16000,)):
    """A stand-in `pyaudio` module with two input devices and one output-only device."""
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
            s = FakeStream(kwargs["stream_callback"])
            s.kwargs = kwargs
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
    mic.close()  # idempotent


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
