"""Audio sources: files, raw PCM streams and microphones, as float32 mono 16 kHz chunks.

Every source is an iterable of 1-D float32 chunks at 16 kHz (`sample_rate` is
always 16000), has `close()` and is a context manager. Chunks are about
`chunk_ms` long (the last may be shorter; a resampler's first outputs may be
shorter too). PyAudio is imported only by the microphone functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from crab_rt.audio import SAMPLE_RATE, AudioReader, PcmDecoder
from crab_rt.errors import AudioError, ConfigError, DependencyError, missing_dependency

__all__ = [
    "AudioSource",
    "FileSource",
    "PcmStreamSource",
    "MicrophoneSource",
    "list_input_devices",
]

log = logging.getLogger(__name__)

_DEVICES_HINT = "run 'crab-rt devices' to list input devices"


def _chunk_samples(chunk_ms: float, rate: int) -> int:
    if not 1.0 <= chunk_ms <= 10_000.0:
        raise ConfigError(f"chunk_ms = {chunk_ms!r} is out of range: must be in [1, 10000]")
    return max(1, int(round(chunk_ms * rate / 1000.0)))


class AudioSource:
    """Base class: iterate float32 16 kHz mono chunks; `close()`; context manager."""

    sample_rate: int = SAMPLE_RATE

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the source; idempotent."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSource(AudioSource):
    """Chunks of an audio or video file, decoded as it is read (`crab_rt.audio.AudioReader`).

    Memory does not grow with the file's length: the source holds one decoded block (about 0.5 s of input)
    and one chunk at a time (`max_buffered_samples` records the most it held). The chunks concatenated equal
    `load_audio(path)` (within soxr's float rounding when the file is not 16 kHz). The file is opened on
    construction, so a missing or undecodable file fails there; a file that only decoding can tell is empty or
    has NaN samples raises `AudioError` while iterating. Iterating again decodes the file again.

    Args:
        path: WAV, FLAC, MP3, MP4, ... (see `crab_rt.audio.load_audio`).
        chunk_ms: chunk length in milliseconds; every chunk but the last has exactly this many samples.
        realtime: pace chunks at 1x wall clock (a chunk is yielded once its
            last sample would have been recorded), to simulate a live source.

    Raises:
        AudioError: the file is missing, corrupt or empty.
        ConfigError: chunk_ms is out of range.
    """

    def __init__(self, path: str | Path, chunk_ms: float = 32.0, realtime: bool = False) -> None:
        self.path = Path(path)
        self.chunk_samples = _chunk_samples(chunk_ms, SAMPLE_RATE)
        self.realtime = realtime
        self._reader: AudioReader | None = AudioReader(self.path)
        self._closed = False
        self.max_buffered_samples = 0  # the most decoded samples the source held at once

    @property
    def duration_s(self) -> float | None:
        """Length of the file in seconds, as its header gives it (None when it gives none)."""
        reader = self._reader or AudioReader(self.path)
        try:
            return reader.duration_s
        finally:
            if reader is not self._reader:
                reader.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._closed:
            return
        reader, self._reader = self._reader or AudioReader(self.path), None
        t0 = time.perf_counter()
        sent = 0
        pending: list[np.ndarray] = []  # decoded samples not yet yielded, less than one chunk plus one block
        held = 0
        try:
            for block in reader:
                pending.append(block)
                held += block.size
                self.max_buffered_samples = max(self.max_buffered_samples, held)
                if held < self.chunk_samples:
                    continue
                buffer = np.concatenate(pending) if len(pending) > 1 else pending[0]
                full = buffer.size - buffer.size % self.chunk_samples
                for start in range(0, full, self.chunk_samples):
                    if self._closed:
                        return
                    chunk = buffer[start: start + self.chunk_samples]
                    sent = self._pace(t0, sent, chunk.size)
                    yield chunk
                pending = [buffer[full:]] if full < buffer.size else []
                held = buffer.size - full
            if held and not self._closed:
                chunk = np.concatenate(pending)
                self._pace(t0, sent, chunk.size)
                yield chunk
        finally:
            reader.close()

    def _pace(self, t0: float, sent: int, size: int) -> int:
        """With `realtime`, sleep until the chunk's last sample would have been recorded; returns samples sent."""
        sent += size
        if self.realtime:
            delay = t0 + sent / SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return sent

    def close(self) -> None:
        """Stop iteration at the next chunk and close the file."""
        self._closed = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class PcmStreamSource(AudioSource):
    """Raw signed 16-bit little-endian PCM from a binary stream (e.g. `sys.stdin.buffer`).

    Interleaved channels are averaged; other rates are resampled to 16 kHz with
    a streaming soxr resampler. If the stream ends inside a sample frame, the
    leftover bytes are counted in `trailing_bytes` and a warning is logged.

    Args:
        stream: binary file object with `read(n)`.
        sample_rate: input rate in Hz.
        sample_width: bytes per sample; only 2 (s16le) is supported.
        channels: interleaved input channels.
        chunk_ms: input read size in milliseconds.
        name: how messages refer to the stream.

    Raises:
        AudioError: unsupported sample width, rate or channel count.
        ConfigError: chunk_ms is out of range.
    """

    def __init__(
        self,
        stream: IO[bytes],
        sample_rate: int,
        sample_width: int = 2,
        channels: int = 1,
        chunk_ms: float = 32.0,
        name: str = "PCM stream",
    ) -> None:
        if sample_width != 2:
            raise AudioError(
                f"{name}: sample width {sample_width!r} bytes is not supported: "
                "only 2 (signed 16-bit little-endian PCM)"
            )
        PcmDecoder(sample_rate, "s16le", channels, name)  # checks the rate and channel count
        self.stream = stream
        self.name = name
        self.input_rate = sample_rate
        self.channels = channels
        self.sample_width = sample_width
        self._frame_bytes = channels * sample_width
        self._read_bytes = _chunk_samples(chunk_ms, sample_rate) * self._frame_bytes
        self.trailing_bytes = 0
        self._closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        decoder = PcmDecoder(self.input_rate, "s16le", self.channels, self.name)
        pending = b""
        while not self._closed:
            data = self.stream.read(self._read_bytes)
            if not data:
                break
            pending += data
            usable = len(pending) - len(pending) % self._frame_bytes
            if usable == 0:
                continue
            raw, pending = pending[:usable], pending[usable:]
            out = decoder.decode(raw)
            if out.size:
                yield out
        tail = decoder.finish()
        if tail.size:
            yield tail
        if pending:
            self.trailing_bytes = len(pending)
            log.warning(
                "%s: input ended with %d trailing byte(s) that do not form a whole %d-bit x %d-channel "
                "sample frame; they were ignored",
                self.name, len(pending), self.sample_width * 8, self.channels,
            )

    def close(self) -> None:
        """Stop reading (the underlying stream is left open: the caller owns it)."""
        self._closed = True


# -- microphone ---------------------------------------------------------------


def _release_portaudio(stream: Any, pa: Any) -> None:
    """The PortAudio teardown of a microphone: stop_stream, close, terminate (each may be None)."""
    try:
        if stream is not None:
            try:
                stream.stop_stream()
            except OSError as e:  # the device is already gone
                log.debug("stopping the microphone stream: %s", e)
            finally:
                stream.close()
    finally:
        if pa is not None:
            pa.terminate()


def _import_pyaudio() -> Any:
    try:
        import pyaudio
    except (ImportError, OSError) as e:
        base = missing_dependency("pyaudio", "mic")
        raise DependencyError(
            f"{base}; PyAudio also needs the PortAudio library from the system "
            "(apt-get install portaudio19-dev, or brew install portaudio)"
        ) from e
    return pyaudio


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Silence C-level writes to file descriptor 2 (ALSA's and JACK's probing chatter) for the block.

    PortAudio's ALSA and JACK back ends print dozens of lines while they probe devices on a machine without a
    sound card; crab-rt reports the real failures itself (PortAudio's error codes become `AudioError`s). With
    the `crab_rt` logger at DEBUG (`-v`) nothing is silenced, so the library's chatter stays visible.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to silence
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _device_row(info: dict, default_index: int | None) -> dict:
    return {
        "index": int(info["index"]),
        "name": str(info["name"]),
        "default_sample_rate": float(info["defaultSampleRate"]),
        "max_input_channels": int(info["maxInputChannels"]),
        "is_default": int(info["index"]) == default_index,
    }


def _default_input_index(pa: Any) -> int | None:
    try:
        return int(pa.get_default_input_device_info()["index"])
    except (OSError, KeyError):
        return None


def _input_devices(pa: Any) -> list[dict]:
    default = _default_input_index(pa)
    rows = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            rows.append(_device_row(info, default))
    return rows


def list_input_devices() -> list[dict]:
    """The audio input devices PortAudio sees.

    Returns:
        One dict per device: index, name, default_sample_rate (Hz),
        max_input_channels, is_default.

    Raises:
        DependencyError: PyAudio or PortAudio is missing.
    """
    pyaudio = _import_pyaudio()
    with _quiet_c_stderr():
        pa = pyaudio.PyAudio()
        try:
            return _input_devices(pa)
        finally:
            pa.terminate()


def _resolve_device(pa: Any, device: int | str | None) -> dict:
    if isinstance(device, str) and not device.strip():
        raise AudioError(f"audio input device name is empty; pass a device index or name ({_DEVICES_HINT})")
    devices = _input_devices(pa)
    if not devices:
        raise AudioError(f"no audio input device found; {_DEVICES_HINT}")
    if device is None:
        default = [d for d in devices if d["is_default"]]
        if not default:
            raise AudioError(f"no default audio input device; pass a device index or name ({_DEVICES_HINT})")
        return default[0]
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device.strip())
    if isinstance(device, int):
        for d in devices:
            if d["index"] == device:
                return d
        raise AudioError(f"audio input device {device} not found; {_DEVICES_HINT}")
    wanted = device.strip().lower()
    exact = [d for d in devices if d["name"].lower() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d["name"].lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise AudioError(f"no audio input device named {device!r}; {_DEVICES_HINT}")
    names = ", ".join(f"{d['index']}: {d['name']}" for d in partial)
    raise AudioError(f"audio input device name {device!r} is ambiguous ({names}); pass the index")


class MicrophoneSource(AudioSource):
    """Live microphone capture through PyAudio (PortAudio).

    The device is opened on construction (so an unknown or busy device fails there) but recording starts when
    iteration starts, so no stale audio piles up while, say, a model loads. The PortAudio callback thread puts
    raw chunks on a bounded queue; when the consumer falls behind, the oldest chunk is dropped, `dropped_chunks`
    counts it and a warning is logged (at most every few seconds), so memory and latency stay bounded. If the
    device cannot record at `sample_rate_hz`, it is opened at its default rate and resampled.

    The iterator watches the stream's health: when the device goes away (the audio server dies, a USB microphone
    is pulled), PortAudio stops the stream or stops calling back, and iteration raises `AudioError` within about
    `stall_timeout_s` instead of waiting forever.

    Args:
        device: input device index, name (or unique part of it), or None for the default.
        sample_rate_hz: rate to ask the device for.
        chunk_ms: capture chunk length in milliseconds.
        max_queue_chunks: chunks buffered before dropping (default: about 2 s).
        stall_timeout_s: no audio for this long once audio has flowed means the device is gone (before the
            first chunk, `first_audio_timeout_s` applies: some back ends, e.g. ALSA's PulseAudio plugin, deliver
            their first audio up to 2 s after the stream starts).
        first_audio_timeout_s: the longest wait for the first chunk.

    Raises:
        DependencyError: PyAudio or PortAudio is missing.
        AudioError: the device is unknown or cannot be opened; while iterating, the device stopped delivering.
    """

    _POLL_S = 0.25
    _DROP_WARNING_EVERY_S = 5.0
    _RELEASE_TIMEOUT_S = 2.0

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate_hz: int = SAMPLE_RATE,
        chunk_ms: float = 32.0,
        max_queue_chunks: int | None = None,
        stall_timeout_s: float = 2.0,
        first_audio_timeout_s: float = 5.0,
    ) -> None:
        pyaudio = _import_pyaudio()
        self._closed = False
        self._stream = None
        self._pa = None
        self.dropped_chunks = 0
        self.stall_timeout_s = float(stall_timeout_s)
        self.first_audio_timeout_s = max(float(first_audio_timeout_s), self.stall_timeout_s)
        self._callback_error: str | None = None  # set by the callback thread; read by the iterator
        self._last_status = 0  # PortAudio's statusFlags of the latest callback
        self._last_chunk_at: float | None = None  # time.monotonic() of the latest callback with audio
        self._started_at = time.monotonic()
        try:
            with _quiet_c_stderr():
                self._pa = pyaudio.PyAudio()
                self.device = _resolve_device(self._pa, device)
                rate = int(sample_rate_hz)
                try:
                    self._pa.is_format_supported(
                        rate, input_device=self.device["index"], input_channels=1, input_format=pyaudio.paInt16
                    )
                except ValueError:
                    rate = int(round(self.device["default_sample_rate"]))
                self.input_rate = rate
                self.chunk_samples = _chunk_samples(chunk_ms, rate)
                self.chunk_s = self.chunk_samples / rate
                if max_queue_chunks is None:
                    max_queue_chunks = max(4, int(2000.0 / chunk_ms))
                self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_queue_chunks)
                self._lock = threading.Lock()
                self._continue = pyaudio.paContinue
                try:
                    self._stream = self._pa.open(
                        format=pyaudio.paInt16,
                        channels=1,
                        rate=rate,
                        input=True,
                        input_device_index=self.device["index"],
                        frames_per_buffer=self.chunk_samples,
                        stream_callback=self._callback,
                        start=False,
                    )
                except (OSError, ValueError) as e:
                    raise AudioError(
                        f"cannot open audio input device {self.device['index']} ({self.device['name']}) at {rate} Hz: "
                        f"{e}; {_DEVICES_HINT}"
                    ) from e
        except BaseException:
            self.close()
            raise

    @property
    def name(self) -> str:
        return str(self.device["name"])

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        # Runs on PortAudio's thread: an exception here would only be printed there, so none may escape.
        try:
            self._last_status = int(status or 0)
            if in_data:
                self._last_chunk_at = time.monotonic()
                with self._lock:
                    try:
                        self._queue.put_nowait(in_data)
                    except queue.Full:
                        try:
                            self._queue.get_nowait()
                        except queue.Empty:
                            pass
                        self.dropped_chunks += 1
                        self._queue.put_nowait(in_data)
        except BaseException as e:  # noqa: BLE001 - reported by the iterator instead
            if self._callback_error is None:
                self._callback_error = f"the audio callback failed: {type(e).__name__}: {e}"
        return None, self._continue

    def _start(self) -> None:
        stream = self._stream
        if stream is None:
            return
        is_active = getattr(stream, "is_active", None)
        if is_active is not None and is_active():
            return
        self._last_chunk_at = None
        self._started_at = time.monotonic()
        try:
            with _quiet_c_stderr():
                stream.start_stream()
        except OSError as e:
            raise AudioError(f"cannot start microphone {self.name!r}: {e}; {_DEVICES_HINT}") from e

    def _health_problem(self) -> str | None:
        """Why the device stopped delivering audio, or None while it looks healthy."""
        if self._callback_error is not None:
            return self._callback_error
        stream = self._stream
        if stream is None:
            return None
        try:
            active = stream.is_active()
        except (OSError, AttributeError) as e:
            return f"PortAudio cannot query the stream: {e}"
        if not active:
            return "PortAudio stopped the stream (the device or the audio server went away)"
        now = time.monotonic()
        if self._last_chunk_at is None:
            if now - self._started_at > self.first_audio_timeout_s:
                return f"no audio arrived within {self.first_audio_timeout_s:g} s of starting"
        elif now - self._last_chunk_at > self.stall_timeout_s:
            return f"no audio for {now - self._last_chunk_at:.1f} s"
        return None

    def _warn_drops(self, reported: int, warned_at: float) -> tuple[int, float]:
        dropped = self.dropped_chunks
        now = time.monotonic()
        if dropped > reported and now - warned_at >= self._DROP_WARNING_EVERY_S:
            log.warning(
                "microphone %r: %d audio chunk(s) (%.1f s) dropped so far: processing fell behind the device",
                self.name, dropped, dropped * self.chunk_s,
            )
            return dropped, now
        return reported, warned_at

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._closed:
            return
        decoder = PcmDecoder(self.input_rate, "s16le", 1, f"microphone {self.name!r}")
        self._start()
        reported, warned_at = 0, float("-inf")
        while not self._closed:
            if self.dropped_chunks > reported:
                reported, warned_at = self._warn_drops(reported, warned_at)
            try:
                data = self._queue.get(timeout=self._POLL_S)
            except queue.Empty:
                problem = None if self._closed else self._health_problem()
                if problem is not None:
                    self._lost = True
                    raise AudioError(f"microphone {self.name!r} stopped delivering audio: {problem}") from None
                continue
            if data is None:
                break
            out = decoder.decode(data)
            if out.size:
                yield out

    def close(self) -> None:
        """Stop and close the stream and PortAudio; idempotent.

        After the device was lost, PortAudio's teardown can block for good (its JACK host API waits in
        stop_stream for a server that is gone): it then runs in a daemon thread that is given
        `_RELEASE_TIMEOUT_S` and abandoned, so that listen still ends.
        """
        if self._closed:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        pa, self._pa = getattr(self, "_pa", None), None
        try:
            if getattr(self, "_lost", False):
                releaser = threading.Thread(target=_release_portaudio, args=(stream, pa), name="crab-mic-release",
                                            daemon=True)
                releaser.start()
                releaser.join(self._RELEASE_TIMEOUT_S)
                if releaser.is_alive():
                    log.debug("PortAudio did not release the lost device %r within %g s; leaving it",
                              self.name, self._RELEASE_TIMEOUT_S)
            else:
                _release_portaudio(stream, pa)
        finally:
            q = getattr(self, "_queue", None)
            if q is not None:
                try:
                    q.put_nowait(None)
                except queue.Full:
                    pass
