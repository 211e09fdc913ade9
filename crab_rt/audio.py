"""Audio file decoding: any file to 16 kHz mono float32.

soundfile (libsndfile) reads WAV/FLAC/OGG and, in recent versions, MP3; PyAV
(FFmpeg) reads everything else, video containers included. soxr resamples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crab_rt.errors import AudioError

__all__ = ["SAMPLE_RATE", "as_mono_float32", "load_audio", "to_mono_16k", "write_wav"]

SAMPLE_RATE = 16_000


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


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream in the file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except Exception as e:  # FFmpeg raises many error types; all mean "cannot decode"
        raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    if not chunks:
        return np.zeros(0, dtype=np.float32), SAMPLE_RATE
    return np.concatenate(chunks).astype(np.float32), SAMPLE_RATE


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
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception:  # not a libsndfile format: let FFmpeg try
        data, rate = _decode_with_pyav(path)
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
