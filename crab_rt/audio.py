"""Audio file decoding: any file to 16 kHz mono float32.

soundfile (libsndfile) reads WAV/FLAC/OGG and, in recent versions, MP3; PyAV
(FFmpeg) reads everything else, video containers included. soxr resamples.
`load_audio` decodes a whole file; `AudioReader` decodes it block by block
(memory does not grow with the file's length). `PcmDecoder` turns raw PCM
bytes (s16le or f32le, interleaved, any rate) into the same 16 kHz mono float32,
chunk by chunk, for stdin and the server. Both log a warning when a WAV
file is shorter than its header says (a truncated recording or copy) and
decode the samples that are there.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crab_rt.checks import is_int
from crab_rt.errors import AudioError

__all__ = ["PCM_FORMATS", "SAMPLE_RATE", "AudioReader", "PcmDecoder", "as_mono_float32", "load_audio", "to_mono_16k",
           "write_wav"]

SAMPLE_RATE = 16_000

logger = logging.getLogger(__name__)


def as_mono_float32(samples: np.ndarray, what: str) -> np.ndarray:
    """Check that in-memory audio is 1-D float samples; returns it as contiguous float32.

    Args:
        samples: the array a caller handed in.
        what: how errors name it, e.g. "audio chunk" or "ASR input".

    Raises:
        AudioError: not an array of numbers (None, bytes, a string: named by type), not 1-D, or not a float
            dtype (int PCM must be scaled first).
    """
    if samples is None or isinstance(samples, (str, bytes, bytearray, memoryview)):
        hint = ""
        if isinstance(samples, (bytes, bytearray, memoryview)):
            hint = " (decode raw PCM first, e.g. np.frombuffer(data, '<i2') / 32768)"
        raise AudioError(f"{what} must be a numpy array of float32 samples, got {type(samples).__name__}{hint}")
    x = np.asarray(samples)
    if x.dtype == object:
        raise AudioError(f"{what} must be a numpy array of float32 samples, got {type(samples).__name__} "
                         "of non-numbers")
    if x.ndim != 1:
        raise AudioError(f"{what} must be 1-D mono audio of shape [time], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{what} must be float samples in [-1, 1] at 16 kHz, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def to_mono_16k(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Downmix `[time]` or `[time, channels]` audio to mono and resample.

    Args:
        samples: float or int PCM, shape [T] or [T, C].
        sample_rate: rate of `samples` in Hz.
        target_rate: wanted rate in Hz.

    Returns:
        float32 array of shape [T'] in [-1, 1] (int input is scaled).
    """
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioError(f"audio must have shape [time] or [time, channels], got {x.shape}")
    if sample_rate != target_rate:
        import soxr

        x = soxr.resample(x, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x)


# Raw PCM sample formats: name -> numpy dtype (little-endian).
PCM_FORMATS: dict[str, str] = {"s16le": "<i2", "f32le": "<f4"}


class PcmDecoder:
    """Raw interleaved PCM chunks to 16 kHz mono float32, with a streaming soxr resampler.

    Channels are averaged; s16le is scaled by 1/32768; f32le is taken as is within
    full scale and clipped to [-1, 1] beyond it (as a sound card would: finite
    samples up to float32's limit would otherwise overflow the channel mean and the
    resampler). Each chunk must hold whole sample frames (the caller keeps any
    leftover bytes).

    Args:
        sample_rate: input rate in Hz, an integer in [1000, 384000].
        sample_format: "s16le" or "f32le".
        channels: interleaved channels, in [1, 32].
        name: how errors name the stream.

    Raises:
        AudioError: an unsupported format, rate or channel count.
    """

    def __init__(self, sample_rate: int, sample_format: str = "s16le", channels: int = 1,
                 name: str = "PCM stream") -> None:
        if sample_format not in PCM_FORMATS:
            raise AudioError(f"{name}: sample format {sample_format!r} is not supported: "
                             f"one of {', '.join(PCM_FORMATS)}")
        if not is_int(sample_rate) or not 1000 <= sample_rate <= 384_000:
            raise AudioError(
                f"{name}: sample rate {sample_rate!r} Hz is out of range: must be an integer in [1000, 384000]"
            )
        if not is_int(channels) or not 1 <= channels <= 32:
            raise AudioError(f"{name}: channels = {channels!r} is out of range: must be in [1, 32]")
        self.name = name
        self.sample_rate = sample_rate
        self.channels = channels
        self.dtype = np.dtype(PCM_FORMATS[sample_format])
        self.frame_bytes = self.dtype.itemsize * channels
        self._stream = None
        if sample_rate != SAMPLE_RATE:
            import soxr

            self._stream = soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def decode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Decode one chunk of whole sample frames.

        Raises:
            AudioError: the byte count is not a multiple of the frame size, or f32le holds NaN/inf.
        """
        if len(data) % self.frame_bytes:
            raise AudioError(f"{self.name}: {len(data)} bytes is not a whole number of "
                             f"{self.dtype.itemsize * 8}-bit x {self.channels}-channel sample frames "
                             f"({self.frame_bytes} bytes each)")
        x = np.frombuffer(data, dtype=self.dtype)
        if self.dtype.kind == "i":
            x = x.astype(np.float32) / 32768.0
        else:
            x = x.astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise AudioError(f"{self.name}: f32le audio holds NaN or infinite samples")
            x = np.clip(x, -1.0, 1.0)
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return self._resample(x, last=False)

    def finish(self) -> np.ndarray:
        """End of input: the resampler's last samples (empty at 16 kHz)."""
        return self._resample(np.zeros(0, dtype=np.float32), last=True)

    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._stream is None:
            return x
        return np.asarray(self._stream.resample_chunk(x, last=last), dtype=np.float32).reshape(-1)


def _pyav_blocks(path: Path, container) -> Iterator[np.ndarray]:
    """Decode an open PyAV container frame by frame to 16 kHz mono float32 blocks (one per decoded frame)."""
    import av

    try:
        if not container.streams.audio:
            raise AudioError(f"{path}: no audio stream in the file")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    except AudioError:
        raise
    except Exception as e:  # FFmpeg raises many error types; all mean "cannot decode"
        raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e


def _open_pyav(path: Path):
    import av

    try:
        return av.open(str(path))
    except Exception as e:  # FFmpeg raises many error types; all mean "cannot decode"
        raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    with _open_pyav(path) as container:
        chunks = list(_pyav_blocks(path, container))
    if not chunks:
        return np.zeros(0, dtype=np.float32), SAMPLE_RATE
    return np.concatenate(chunks).astype(np.float32), SAMPLE_RATE


def _wav_header_frames(path: Path) -> tuple[int, int] | None:
    """(frames, rate) that a RIFF/WAVE file's header claims for its data chunk; None for other files or no claim."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            rate = block_align = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(min(size, 16))
                    if len(fmt) < 16:
                        return None
                    _, _, rate, _, block_align = struct.unpack("<HHIIH", fmt[:14])
                    f.seek(size - 16 + (size & 1), 1)
                elif cid == b"data":
                    if not rate or not block_align or size in (0, 0xFFFFFFFF):  # 0/-1: written by a live stream
                        return None
                    return size // block_align, rate
                else:
                    f.seek(size + (size & 1), 1)
    except (OSError, struct.error):
        return None


def _warn_if_truncated(path: Path, frames: int, rate: int) -> None:
    """Log a warning when a WAV header claims more than the `frames` that were decoded (at `rate` Hz)."""
    claim = _wav_header_frames(path)
    if claim is None or rate <= 0:
        return
    claimed, claimed_rate = claim
    if claimed_rate == rate and claimed > frames:
        logger.warning("%s: the file is truncated: its header says %.1f s of audio, the file holds %.1f s; "
                       "decoding the %.1f s present", path, claimed / rate, frames / rate, frames / rate)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")


class AudioReader:
    """A file decoded block by block to 16 kHz mono float32: memory stays bounded whatever the file's length.

    Opens the file on construction (errors then); iterating yields 1-D float32 blocks of at most about
    `block_frames` input frames (resampled). The blocks concatenated equal `load_audio(path)` (within soxr's
    float rounding when the file is not 16 kHz).

    Args:
        path: WAV, FLAC, OGG, MP3, MP4, MKV, ... file.
        block_frames: input frames read per block (soundfile); PyAV yields one block per decoded frame.

    Raises:
        AudioError: the file is missing or a folder, cannot be decoded, holds no samples (raised on construction,
            or at the end of the iteration when only decoding can tell), or holds NaN/infinite samples.
    """

    def __init__(self, path: str | Path, block_frames: int = 8192) -> None:
        self.path = Path(path)
        _check_file(self.path)
        self.block_frames = int(block_frames)
        self._sf = self._av = None
        import soundfile as sf

        try:
            self._sf = sf.SoundFile(str(self.path))
        except Exception:  # not a libsndfile format: let FFmpeg try
            self._av = _open_pyav(self.path)
            if not self._av.streams.audio:
                self.close()
                raise AudioError(f"{self.path}: no audio stream in the file") from None
        if self._sf is not None and self._sf.frames == 0:
            self.close()
            raise AudioError(f"{self.path}: audio file holds no samples")

    @property
    def duration_s(self) -> float | None:
        """The length the file's header gives, or None when it gives none."""
        if self._sf is not None:
            return self._sf.frames / self._sf.samplerate
        if self._av is not None and self._av.duration is not None:
            return self._av.duration / 1_000_000  # av.time_base
        return None

    def __iter__(self) -> Iterator[np.ndarray]:
        blocks = self._soundfile_blocks() if self._sf is not None else _pyav_blocks(self.path, self._av)
        total = 0
        for block in blocks:
            if not np.all(np.isfinite(block)):
                raise AudioError(f"{self.path}: audio contains NaN or infinite samples")
            total += block.size
            if block.size:
                yield block
        if total == 0:
            raise AudioError(f"{self.path}: audio file holds no samples")

    def _soundfile_blocks(self) -> Iterator[np.ndarray]:
        f = self._sf
        resample = None
        if f.samplerate != SAMPLE_RATE:
            import soxr

            stream = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            resample = stream.resample_chunk
        frames = 0
        while True:
            block = f.read(self.block_frames, dtype="float32", always_2d=True)
            frames += block.shape[0]
            last = block.shape[0] < self.block_frames
            mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
            out = mono if resample is None else np.asarray(resample(mono, last=last), dtype=np.float32).reshape(-1)
            yield np.ascontiguousarray(out, dtype=np.float32)
            if last:
                break
        _warn_if_truncated(self.path, frames, f.samplerate)

    def close(self) -> None:
        """Close the file; idempotent."""
        for handle in (self._sf, self._av):
            if handle is not None:
                handle.close()
        self._sf = self._av = None


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Read an audio (or video) file as mono float32 at `sample_rate`.

    Args:
        path: WAV, FLAC, OGG, MP3, MP4, MKV, ... file.
        sample_rate: output rate in Hz.
        max_seconds: keep only the first `max_seconds` seconds when given.

    Returns:
        float32 array [T].

    Raises:
        AudioError: the file is missing, cannot be decoded, or holds no samples.
    """
    path = Path(path)
    _check_file(path)
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception:  # not a libsndfile format: let FFmpeg try
        data, rate = _decode_with_pyav(path)
    else:
        _warn_if_truncated(path, data.shape[0], rate)
    if data.size == 0:
        raise AudioError(f"{path}: audio file holds no samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    audio = to_mono_16k(data, rate, sample_rate)
    if max_seconds is not None:
        audio = audio[: int(round(max_seconds * sample_rate))]
    return audio


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM WAV, creating parent folders."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
